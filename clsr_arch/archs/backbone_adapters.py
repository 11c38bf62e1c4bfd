"""Stage adapters: every SR backbone seen as head -> stages -> tail (LocalSR paper Sec. 3.1,
Fig. 3: "the base branch mirrors standard SR architectures ... enhancing the current feature at
each stage by fusing features from the PIM and GCM"; Sec. 4.1: the GCM's extractor G "is based
on the first few stages of each selected architecture").

An adapter wraps a plain backbone module without copying it and exposes

* ``head(x) -> state``: shallow feature extraction of an RGB input in [0, 1];
* ``stage(i, state) -> state`` for ``i < num_stages``;
* ``tail(state) -> image``: reconstruction/upsampler (plus the backbone's global skips);
* ``state['feat']``: "the feature map after stage i" as ``[B, C, h, w]``, the tensor GCM and
  PIM read and add into; other keys of ``state`` carry what the tail needs (input image,
  shallow feature, CARN's cascade concatenation).

``head`` + all stages + ``tail`` reproduces the backbone's own ``forward`` exactly (tested), so a
plain checkpoint in ``net.base`` gives the plain backbone's output when nothing is injected.

Per backbone the adapter also states ``multiple`` (input size constraint: SwinIR's window),
``group`` (channel granularity a slim PIM must respect) and ``defaults`` -- the CLSR settings
(``roi_pad``, ``gcm.num_windows``, ``gcm.stage``) chosen so that the x4 FLOPs at the paper's
24x24 ROI stay within Table 1's "Ours" (see docs/architecture.md for the measured numbers).
"""
import torch
from torch.nn import functional as F

from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.rrdbnet_arch import RRDBNet
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.archs.srvgg_arch import SRVGGNetCompact
from basicsr.archs.swinir_arch import SwinIR

from .carn_arch import CARN, CARN_M
from .imdn_arch import IMDN


class StageAdapter:
    """Base class; see the module docstring. Holds the backbone by reference (not as a
    submodule) so that parameters keep their plain-backbone names under ``net.base``."""

    multiple = 1
    group = 1
    # chosen per backbone from FLOPs measurements (docs/architecture.md)
    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 64, 'stage': 2}}

    def __init__(self, net):
        self.net = net  # a plain object's attribute: never registered as a child module

    @property
    def scale(self):
        return int(self.net.upscale)

    num_feat = None
    num_stages = None

    def head(self, x):
        raise NotImplementedError

    def stage(self, i, state):
        raise NotImplementedError

    def tail(self, state):
        raise NotImplementedError

    def run(self, x):
        """The backbone's forward through the adapter (head, every stage, tail)."""
        state = self.head(x)
        for i in range(self.num_stages):
            state = self.stage(i, state)
        return self.tail(state)


class MSRResNetAdapter(StageAdapter):
    """SRResNet (BasicSR ``MSRResNet``): head = conv_first + LReLU, a stage = one residual
    block of ``body``, tail = pixel-shuffle upsampler + conv_hr/conv_last + bilinear skip."""

    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 48, 'stage': 1}}

    def __init__(self, net):
        super().__init__(net)
        self.num_feat = net.conv_first.out_channels
        self.num_stages = len(net.body)

    def head(self, x):
        return {'x': x, 'feat': self.net.lrelu(self.net.conv_first(x))}

    def stage(self, i, state):
        return {**state, 'feat': self.net.body[i](state['feat'])}

    def tail(self, state):
        n, out = self.net, state['feat']
        if n.upscale == 4:
            out = n.lrelu(n.pixel_shuffle(n.upconv1(out)))
            out = n.lrelu(n.pixel_shuffle(n.upconv2(out)))
        else:
            out = n.lrelu(n.pixel_shuffle(n.upconv1(out)))
        out = n.conv_last(n.lrelu(n.conv_hr(out)))
        return out + F.interpolate(state['x'], scale_factor=n.upscale, mode='bilinear', align_corners=False)


class RCANAdapter(StageAdapter):
    """RCAN: head = mean shift + conv_first, a stage = one residual group (20 RCABs + conv),
    tail = conv_after_body + long skip, upsampler, conv_last, mean shift back.

    Defaults: ``roi_pad 0`` (a 26x26 base already costs 1.17x the 18.38 GFLOPs pre-crop, more
    than Table 1's 19.41 allows) and ``gcm.stage 0`` (one residual group on N=64 windows of
    36 pixels costs ~6.8 GFLOPs; the head alone is ~8 MFLOPs)."""

    defaults = {'roi_pad': 0, 'gcm': {'num_windows': 64, 'stage': 0}}

    def __init__(self, net):
        super().__init__(net)
        self.num_feat = net.conv_first.out_channels
        self.num_stages = len(net.body)

    @property
    def scale(self):
        return _upsample_scale(self.net.upsample)

    def head(self, x):
        n = self.net
        mean = n.mean.to(x)
        shallow = n.conv_first((x - mean) * n.img_range)
        return {'shallow': shallow, 'feat': shallow}

    def stage(self, i, state):
        return {**state, 'feat': self.net.body[i](state['feat'])}

    def tail(self, state):
        n = self.net
        res = n.conv_after_body(state['feat']) + state['shallow']
        x = n.conv_last(n.upsample(res))
        return x / n.img_range + n.mean.to(x)


def _upsample_scale(upsample):
    """Scale of a BasicSR ``Upsample`` (sequence of conv + PixelShuffle)."""
    scale = 1
    for m in upsample:
        if isinstance(m, torch.nn.PixelShuffle):
            scale *= m.upscale_factor
    return scale


class CARNAdapter(StageAdapter):
    """CARN / CARN-M (``carn_arch``): head = sub_mean + entry, stage i = cascading block b_i +
    global 1x1 fusion c_i (the state also carries the cascade concatenation), tail = upsample,
    exit, add_mean. ``group`` = the backbone's group count (CARN-M: 4).

    Defaults: roi_pad 2, G = head + the first cascading block on N=48 windows (~0.4 GFLOPs for
    CARN-M): CARN-M then fits Table 1's 1.63 GFLOPs (whose CARN row costs what CARN-M costs)."""

    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 48, 'stage': 1}}

    def __init__(self, net):
        super().__init__(net)
        self.num_feat = net.entry.out_channels
        self.num_stages = 3
        self.group = net.b1.b1.body[0].groups if isinstance(net, CARN_M) else 1

    def head(self, x):
        feat = self.net.entry(self.net.sub_mean(x))
        return {'cat': feat, 'feat': feat}

    def stage(self, i, state):
        block = getattr(self.net, f'b{i + 1}')
        fuse = getattr(self.net, f'c{i + 1}')
        cat = torch.cat([state['cat'], block(state['feat'])], dim=1)
        return {'cat': cat, 'feat': fuse(cat)}

    def tail(self, state):
        n = self.net
        return n.add_mean(n.exit(n.upsample(state['feat'])))


class SwinIRAdapter(StageAdapter):
    """SwinIR: head = mean shift + conv_first (+ the patch-embedding LayerNorm), a stage = one
    RSTB run on tokens (the adapter converts ``[B, C, h, w]`` <-> tokens around it), tail =
    final LayerNorm, conv_after_body + long skip, the upsampler (pixelshuffle or
    pixelshuffledirect), mean shift back. ``multiple`` = window size: inputs must be padded to
    it (CLSR pads the ROI with real context, then crops).

    Defaults: gcm.stage 0 (one RSTB on 64 windows costs ~2 GFLOPs lightweight, ~16 classic).
    Classic: roi_pad 0 (a 24x24 ROI is a multiple of the window 8; the next size, 32x32, costs
    1.78x the 15.06 GFLOPs pre-crop). Lightweight: roi_pad 4 (32x32 base, 2.18 GFLOPs -- what
    Table 1 reports as its pre-crop cost, 2.11; the official SwinIR test pads 24 to 32).
    Classic also takes pim.ratio 15/180 (c' = 15, not 18): its six 18-channel PIM blocks cost
    ~70 kFLOPs per context pixel, over the ~51k the paper's Test2K "Ours" (43.56 G) leaves."""

    defaults = {'roi_pad': 0, 'gcm': {'num_windows': 64, 'stage': 0}, 'pim': {'ratio': 15 / 180}}
    lightweight_defaults = {'roi_pad': 4, 'gcm': {'num_windows': 64, 'stage': 0}}

    def __init__(self, net):
        super().__init__(net)
        if net.upsampler not in ('pixelshuffle', 'pixelshuffledirect'):
            raise ValueError(f'CLSR supports SwinIR with upsampler pixelshuffle or pixelshuffledirect '
                             f'(x{net.upscale} SR), got {net.upsampler!r}')
        if net.ape:
            raise ValueError('CLSR: SwinIR with ape=True (absolute position embedding of a fixed '
                             'img_size) cannot run on ROIs of arbitrary size')
        self.num_feat = net.embed_dim
        self.num_stages = len(net.layers)
        self.multiple = net.layers[0].residual_group.blocks[0].window_size
        if net.upsampler == 'pixelshuffledirect':
            self.defaults = self.lightweight_defaults

    def head(self, x):
        n = self.net
        mean = n.mean.to(x)
        shallow = n.conv_first((x - mean) * n.img_range)
        tokens = n.pos_drop(n.patch_embed(shallow))  # LayerNorm over channels
        return {'shallow': shallow, 'feat': _to_map(tokens, shallow.shape[2:])}

    def stage(self, i, state):
        feat = state['feat']
        size = tuple(feat.shape[2:])
        tokens = self.net.layers[i](feat.flatten(2).transpose(1, 2), size)
        return {**state, 'feat': _to_map(tokens, size)}

    def tail(self, state):
        n = self.net
        feat = state['feat']
        size = tuple(feat.shape[2:])
        body = n.patch_unembed(n.norm(feat.flatten(2).transpose(1, 2)), size)
        x = n.conv_after_body(body) + state['shallow']
        if n.upsampler == 'pixelshuffle':
            x = n.conv_last(n.upsample(n.conv_before_upsample(x)))
        else:
            x = n.upsample(x)
        return x / n.img_range + n.mean.to(x)


class IMDNAdapter(StageAdapter):
    """IMDN (``imdn_arch``): head = fea_conv, a stage = one IMDB (the state also carries every
    block's output: IMDN's tail fuses all six), tail = ``c`` over the concatenated outputs,
    LR_conv + the long skip from fea_conv, upsampler.

    The contrast-aware attention inside each IMDB pools over the feature map it is given: in
    CLSR's base that is the padded ROI, so CLSR at initialisation equals pre-crop with the same
    padding (the baseline the reference measurements compare with). Defaults: roi_pad 2 and the
    GCM after the first block on N=48 windows, as for CARN-M."""

    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 48, 'stage': 1}}

    def __init__(self, net):
        super().__init__(net)
        self.num_feat = net.fea_conv.out_channels
        self.num_stages = net.num_block

    def head(self, x):
        fea = self.net.fea_conv(x)
        return {'fea': fea, 'outs': (), 'feat': fea}

    def stage(self, i, state):
        # 'outs' collects each block's output as the next stage received it, i.e. with CLSR's
        # injections (PIM / GCM) added, so that they also reach the tail's fusion of all blocks
        outs = state['outs'] + ((state['feat'], ) if i else ())
        return {**state, 'outs': outs, 'feat': getattr(self.net, f'IMDB{i + 1}')(state['feat'])}

    def tail(self, state):
        n = self.net
        outs = state['outs'] + (state['feat'], )
        return n.upsampler(n.LR_conv(n.c(torch.cat(outs, dim=1))) + state['fea'])


class EDSRAdapter(RCANAdapter):
    """EDSR (BasicSR ``EDSR``; issue 24): RCAN's layout -- mean shift + conv_first, ``body``,
    conv_after_body + long skip, upsampler, conv_last, mean back -- with one stage per residual
    block (16 in EDSR-baseline, 32 in EDSR) instead of per residual group.

    Defaults as SRResNet's (a 16-block, 64-channel body of the same cost, ~2.4 MFLOPs per LR
    pixel): roi_pad 2, the GCM after the first block on N=48 windows."""

    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 48, 'stage': 1}}


class RRDBNetAdapter(StageAdapter):
    """RRDBNet (BasicSR ``RRDBNet``, ESRGAN / Real-ESRGAN x4; issue 24): head = conv_first, a
    stage = one RRDB of ``body`` (23), tail = conv_body + long skip, two nearest x2 + conv +
    LReLU, conv_hr + LReLU, conv_last. Only ``scale=4``: RRDBNet x2/x1 pixel-unshuffle the input
    first, so their features are not on the LR pixel grid the PIM crops and the GCM indexes.

    Defaults: roi_pad 2 and ``gcm.stage 0`` (an RRDB costs ~1.4 MFLOPs per pixel: one on N=64
    windows of 36 pixels would be ~3.3 GFLOPs, the head alone ~8 MFLOPs), as for RCAN."""

    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 64, 'stage': 0}}

    def __init__(self, net):
        super().__init__(net)
        if net.scale != 4:
            raise ValueError(f'CLSR supports RRDBNet with scale 4 only, got scale {net.scale} (x2/x1 '
                             'pixel-unshuffle the input: features off the LR pixel grid)')
        if net.conv_first.in_channels != 3:
            raise ValueError(f'CLSR needs an RGB backbone; RRDBNet has num_in_ch {net.conv_first.in_channels}')
        self.num_feat = net.conv_first.out_channels
        self.num_stages = len(net.body)

    @property
    def scale(self):
        return int(self.net.scale)

    def head(self, x):
        feat = self.net.conv_first(x)
        return {'shallow': feat, 'feat': feat}

    def stage(self, i, state):
        return {**state, 'feat': self.net.body[i](state['feat'])}

    def tail(self, state):
        n = self.net
        feat = state['shallow'] + n.conv_body(state['feat'])
        feat = n.lrelu(n.conv_up1(F.interpolate(feat, scale_factor=2, mode='nearest')))
        feat = n.lrelu(n.conv_up2(F.interpolate(feat, scale_factor=2, mode='nearest')))
        return n.conv_last(n.lrelu(n.conv_hr(feat)))


class SRVGGNetCompactAdapter(StageAdapter):
    """SRVGGNetCompact (BasicSR ``SRVGGNetCompact``, Real-ESRGAN's realesr-*-v3; issue 24): a
    plain conv stack ``body = [conv, act, (conv, act) x num_conv, conv]``. Head = the first conv
    and its activation; a stage = ``convs_per_stage`` (2) body convs, each with its activation
    (the last stage takes what is left when ``num_conv`` is odd); tail = the last conv
    (``num_feat -> 3 s^2``), pixel shuffle, + the nearest-upsampled input.

    The feature GCM and PIM see is the activation's output, ``num_feat`` channels (the last conv's
    ``3 s^2`` are the tail's); PReLU's per-channel slopes stay inside the stages. Two convs per
    stage give one slim PIM block (two convs) per two base convs, as SRResNet's residual blocks.
    Defaults as SRResNet's: roi_pad 2, the GCM after the first stage on N=48 windows."""

    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 48, 'stage': 1}}
    convs_per_stage = 2

    def __init__(self, net):
        super().__init__(net)
        if net.num_in_ch != 3 or net.num_out_ch != 3:
            raise ValueError(f'CLSR needs an RGB backbone; SRVGGNetCompact has num_in_ch {net.num_in_ch}, '
                             f'num_out_ch {net.num_out_ch}')
        self.num_feat = net.num_feat
        k = self.convs_per_stage
        # body indices of each stage's (conv, act) pairs: body[2 + 2j], body[3 + 2j], j < num_conv
        self.bounds = [(2 + 2 * j, 2 + 2 * min(j + k, net.num_conv)) for j in range(0, net.num_conv, k)]
        self.num_stages = len(self.bounds)

    @property
    def scale(self):
        return int(self.net.upscale)

    def head(self, x):
        return {'x': x, 'feat': self.net.body[1](self.net.body[0](x))}

    def stage(self, i, state):
        out = state['feat']
        for layer in self.net.body[self.bounds[i][0]:self.bounds[i][1]]:
            out = layer(out)
        return {**state, 'feat': out}

    def tail(self, state):
        n = self.net
        out = n.upsampler(n.body[-1](state['feat']))
        return out + F.interpolate(state['x'], scale_factor=n.upscale, mode='nearest')


def _to_map(tokens, size):
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, size[0], size[1])


# --- the adapter registry (issue 24, item 1) ---------------------------------------------------
class AdapterRegistry:
    """Stage adapters keyed by backbone, the way BasicSR's ``ARCH_REGISTRY`` keys archs.

    A key is a backbone **class** or a **type name** (a string): a BasicSR type name (``'EDSR'``,
    resolved through ``ARCH_REGISTRY`` when a net is looked up, so it may be registered before
    the arch is) or a qualified class name ``'package.module.ClassName'`` (nothing is imported).
    Lookup is by the net's exact class -- a subclass may change ``forward``, so it needs its own
    registration (tested) -- first among class keys, then among name keys.
    """

    def __init__(self):
        self._by_class = {}
        self._by_name = {}

    def register(self, backbone, adapter=None, override=False):
        """Register ``adapter`` (a :class:`StageAdapter` subclass) for ``backbone``; without
        ``adapter`` returns a class decorator. A key registered twice raises ``ValueError``
        unless ``override`` (or unless it is the same adapter again)."""
        if adapter is None:
            return lambda cls: self.register(backbone, cls, override)
        if not (isinstance(adapter, type) and issubclass(adapter, StageAdapter)):
            raise TypeError(f'register_adapter: adapter must be a StageAdapter subclass, got {adapter!r}')
        if isinstance(backbone, str):
            table, key = self._by_name, backbone.strip()
            if not key:
                raise ValueError('register_adapter: empty backbone type name')
        elif isinstance(backbone, type):
            table, key = self._by_class, backbone
        else:
            raise TypeError(f'register_adapter: backbone must be a class or a type name, got {backbone!r}')
        old = table.get(key)
        if old is not None and old is not adapter and not override:
            raise ValueError(f'register_adapter: {_key_name(key)!r} already has adapter {old.__name__} '
                             f'(pass override=True to replace it with {adapter.__name__})')
        table[key] = adapter
        return adapter

    def unregister(self, backbone):
        """Remove the registration of ``backbone`` (class or name); returns its adapter or None."""
        return (self._by_name if isinstance(backbone, str) else self._by_class).pop(backbone, None)

    def lookup(self, backbone):
        """The adapter class for a backbone module, class or type name; None when there is none."""
        if isinstance(backbone, str):
            if backbone in self._by_name:
                return self._by_name[backbone]
            cls = _registered_arch(backbone)
            return None if cls is None else self.lookup(cls)
        cls = backbone if isinstance(backbone, type) else type(backbone)
        if cls in self._by_class:
            return self._by_class[cls]
        qualified = f'{cls.__module__}.{cls.__qualname__}'
        for name, adapter in self._by_name.items():
            arch = _registered_arch(name)
            if arch is cls or (arch is None and name in (cls.__name__, qualified)):
                return adapter
        return None

    def names(self):
        """Every registered key as a name (classes by ``__name__``), in registration order."""
        return [_key_name(k) for k in self._by_class] + list(self._by_name)

    def items(self):
        """``[(key, adapter class)]``, keys as registered (classes or names)."""
        return list(self._by_class.items()) + list(self._by_name.items())


def _key_name(key):
    return key if isinstance(key, str) else key.__name__


def _registered_arch(name):
    """The class BasicSR's ARCH_REGISTRY holds under ``name``, or None."""
    from basicsr.utils.registry import ARCH_REGISTRY
    # the registry's own get() prints a notice on stdout for the '_basicsr' fallback (breaking
    # tables scripts print); look both names up quietly instead
    for key in (name, f'{name}_basicsr'):
        if key in ARCH_REGISTRY:
            return ARCH_REGISTRY.get(key)
    return None


ADAPTER_REGISTRY = AdapterRegistry()


def register_adapter(backbone, adapter=None, override=False):
    """Register a stage adapter for a backbone class or BasicSR type name (see
    :class:`AdapterRegistry`). As a decorator::

        @register_adapter('EDSR')        # or @register_adapter(EDSR)
        class EDSRAdapter(StageAdapter): ...
    """
    return ADAPTER_REGISTRY.register(backbone, adapter, override)


def adapter_class(backbone):
    """The registered adapter class for a backbone module, class or type name, or None."""
    return ADAPTER_REGISTRY.lookup(backbone)


def get_adapter(net):
    """The stage adapter for a built backbone module; ``ValueError`` for unsupported types."""
    adapter = ADAPTER_REGISTRY.lookup(net)
    if adapter is None:
        raise ValueError(f'CLSR has no stage adapter for backbone type {type(net).__name__!r}; registered: '
                         f'{", ".join(ADAPTER_REGISTRY.names())}. Write one (docs/adapters.md) and name its module '
                         f'in network_g.adapter_modules, or call register_adapter() before building the network')
    return adapter(net)


def import_adapter_modules(modules, what='adapter_modules'):
    """Import each of ``modules`` -- dotted module names (``my_pkg.my_adapter``) or paths of
    ``.py`` files -- for their registration side effects (adapters, and archs into BasicSR's
    ARCH_REGISTRY); the YAML option ``network_g.adapter_modules``. Returns the modules. An
    import that fails raises ``ValueError`` naming the module (or file) and why."""
    import importlib
    import importlib.util
    import os.path as osp
    import sys
    import zlib

    if modules is None:
        return []
    if isinstance(modules, str):
        modules = [modules]
    if not isinstance(modules, (list, tuple)) or not all(isinstance(m, str) and m.strip() for m in modules):
        raise ValueError(f'{what} must be a list of module names or .py paths, got {modules!r}')
    out = []
    for name in modules:
        name = name.strip()
        if name.endswith('.py') or osp.sep in name:
            path = osp.abspath(osp.expanduser(name))
            if not osp.isfile(path):
                raise ValueError(f'{what}: no such file {path!r}')
            key = f'clsr_user_adapters.{osp.splitext(osp.basename(path))[0]}_{zlib.crc32(path.encode()):08x}'
            if key in sys.modules:
                out.append(sys.modules[key])
                continue
            spec = importlib.util.spec_from_file_location(key, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[key]
                raise ValueError(f'{what}: importing {path!r} failed: {type(err).__name__}: {err}') from err
        else:
            try:
                module = importlib.import_module(name)
            except Exception as err:
                raise ValueError(f'{what}: cannot import module {name!r}: {type(err).__name__}: {err}') from err
        out.append(module)
    return out


# the built-in adapters
register_adapter(MSRResNet, MSRResNetAdapter)
register_adapter(RCAN, RCANAdapter)
register_adapter(CARN_M, CARNAdapter)
register_adapter(CARN, CARNAdapter)
register_adapter(SwinIR, SwinIRAdapter)
register_adapter(IMDN, IMDNAdapter)
register_adapter(EDSR, EDSRAdapter)
register_adapter(RRDBNet, RRDBNetAdapter)
register_adapter(SRVGGNetCompact, SRVGGNetCompactAdapter)


def run_backbone(net, lq, scale, size_multiple=1):
    """Plain SR network on ``lq`` [B, 3, h, w]; reflect-pads bottom/right to ``size_multiple``
    (SwinIR's window) and crops the output back to ``scale*h x scale*w``."""
    h, w = lq.shape[-2:]
    pad_h, pad_w = (-h) % size_multiple, (-w) % size_multiple
    x = lq
    if pad_h or pad_w:
        # reflect needs the pad to be smaller than the side; tiny inputs fall back to replicate
        mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
        x = F.pad(lq, (0, pad_w, 0, pad_h), mode=mode)
    out = net(x)
    if out.shape[-2:] != (scale * x.shape[-2], scale * x.shape[-1]):
        raise ValueError(f'backbone output {tuple(out.shape)} is not x{scale} of its input '
                         f'{tuple(x.shape)}: check the option `scale`')
    return out[..., :scale * h, :scale * w]
