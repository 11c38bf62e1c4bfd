"""Any single-image SR network for LocalSR, loaded through spandrel (issue 24, item 3).

People bring a ``.pth``/``.safetensors`` from a model zoo (ESRGAN, SwinIR, HAT, CRAFT, SPAN, ...)
and load it with `spandrel <https://github.com/chaiNNer-org/spandrel>`_, as chaiNNer and ComfyUI
do. :func:`load_sr_model` reads such a file into a :class:`SpandrelSR` module -- the plain
network behind the LocalSR paper's *pre-crop* and *post-crop* baselines (Sec. 1, Table 1) -- that
respects spandrel's size requirements (``minimum``, ``multiple_of``): an input smaller than the
minimum or not a multiple is padded at the bottom/right (reflect, replicate for tiny inputs) and
the output cropped back, as :func:`clsr_arch.archs.backbone_adapters.run_backbone` does for
SwinIR's window. Pre-crop asks for the multiple with real context first (``roi.padding_for``),
so the padding inside only ever meets the image border.

Bad files are :class:`~clsr_arch.api.errors.LocalSRError` naming the file: one spandrel does not
recognise, a network that is not single-image SR (scale 1, inpainting, other channel counts),
a checkpoint for another scale than asked.
"""
import hashlib
import os
import os.path as osp

import numpy as np
from torch import nn
from torch.nn import functional as F

from .errors import LocalSRError
from .registry import TRAINED_CLSR


def weights_hash(path, chunk=1 << 20):
    """SHA-256 of a weights file (hex): the key of everything calibrated for it."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


class SpandrelSR(nn.Module):
    """A spandrel-loaded SR network as a plain backbone: RGB ``[B, 3, h, w]`` in [0, 1] to
    ``[B, 3, s*h, s*w]``, any ``h, w >= 1`` (padded to spandrel's ``minimum``/``multiple_of``
    inside, output cropped back).

    Attributes: ``model`` (the spandrel network, a submodule: its parameters keep their names
    under ``model.``), ``upscale``, ``minimum``, ``multiple``, ``architecture`` (spandrel's id,
    e.g. ``'CRAFT'``), ``path`` and ``sha256`` of the file."""

    def __init__(self, model, scale, minimum=0, multiple=1, architecture='?', path=None, sha256=None, square=False):
        super().__init__()
        self.model = model
        self.upscale = int(scale)
        self.minimum = int(minimum or 0)
        self.multiple = max(1, int(multiple or 1))
        self.architecture = architecture
        self.path, self.sha256 = path, sha256
        self.square = bool(square)

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.multiple
        th, tw = max(h, self.minimum), max(w, self.minimum)
        if self.square:
            th = tw = max(th, tw)
        th, tw = th + (-th) % m, tw + (-tw) % m
        if (th, tw) != (h, w):
            mode = 'reflect' if th - h < h and tw - w < w else 'replicate'
            x = F.pad(x, (0, tw - w, 0, th - h), mode=mode)
        out = self.model(x)
        s = self.upscale
        return out[..., :s * h, :s * w]


def load_sr_model(path, scale=None, device='cpu'):
    """The SR network in ``path`` (any file spandrel recognises) as a :class:`SpandrelSR` in eval
    mode; ``scale``: the scale asked for (None: the file's). LocalSRError naming the file when it
    cannot be read, spandrel does not recognise it, it is not single-image RGB SR, or its scale
    is not ``scale``."""
    try:
        import spandrel
    except ImportError:  # pragma: no cover - setup.py installs it
        raise LocalSRError('loading a model file needs spandrel: pip install spandrel') from None
    path = os.fspath(path)
    if not osp.isfile(path):
        raise LocalSRError(f'model {path}: no such file')
    try:
        desc = spandrel.ModelLoader().load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise LocalSRError(f'model {path}: not a network spandrel {spandrel.__version__} recognises (its state dict '
                           'matches none of spandrel\'s architectures)') from None
    except ValueError as err:  # spandrel: unsupported extension
        raise LocalSRError(f'model {path}: {err}') from None
    except Exception as err:  # unreadable pickle / safetensors / zip, truncated file, ...
        raise LocalSRError(f'model {path}: cannot be read as a model file ({type(err).__name__}: '
                           f'{str(err).splitlines()[0] if str(err) else ""})') from None
    arch = desc.architecture.id
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise LocalSRError(f'model {path}: a {arch} network of kind {type(desc).__name__} (purpose {desc.purpose}), '
                           'not single-image super-resolution')
    if desc.scale == 1 or desc.purpose != 'SR':
        raise LocalSRError(f'model {path}: a x{desc.scale} {arch} network (purpose {desc.purpose}), not '
                           'super-resolution: LocalSR needs a network that upscales')
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise LocalSRError(f'model {path}: a {arch} network with {desc.input_channels} input and '
                           f'{desc.output_channels} output channels; LocalSR needs RGB in and out')
    if scale is not None and int(scale) != desc.scale:
        raise LocalSRError(f'model {path}: a x{desc.scale} {arch} checkpoint, but x{int(scale)} was asked for')
    req = desc.size_requirements
    net = SpandrelSR(desc.model, desc.scale, req.minimum, req.multiple_of, arch, path, weights_hash(path), req.square)
    return net.eval().to(device)


# --- the network inside a LocalSR ---------------------------------------------------------------
def _register():
    """``SpandrelModel`` in BasicSR's ARCH_REGISTRY (``{type: SpandrelModel, path: ..., scale: 4}``
    builds any spandrel-recognised file with its weights; ``wrap: False`` gives spandrel's own
    module, for a registered stage adapter) and :class:`PlainAdapter` for :class:`SpandrelSR`."""
    from basicsr.utils.registry import ARCH_REGISTRY

    from ..archs.backbone_adapters import StageAdapter, register_adapter

    if 'SpandrelModel' not in ARCH_REGISTRY:
        def SpandrelModel(path, scale=None, wrap=True):  # noqa: N802 (a BasicSR arch name)
            net = load_sr_model(path, scale)
            return net if wrap else net.model
        ARCH_REGISTRY.register(SpandrelModel)

    @register_adapter(SpandrelSR)
    class PlainAdapter(StageAdapter):
        """A network without a stage adapter as a CLSR of no stages, no GCM and no PIM: head =
        the input, tail = the whole network. CLSR's decode is then exactly pre-crop with
        ``roi_pad`` pixels of real context (to the size multiple), and the planner
        (:mod:`clsr_arch.planner`) prices and batches those decodes, merges overlapping boxes
        and switches to whole-image SR when cheaper, for any network."""

        num_feat = 3
        num_stages = 0
        defaults = {'roi_pad': 4, 'gcm': {'num_windows': 0, 'stage': 0}}

        def __init__(self, net):
            super().__init__(net)
            self.multiple = net.multiple

        def head(self, x):
            return {'feat': x}

        def tail(self, state):
            return self.net(state['feat'])
    return PlainAdapter


PlainAdapter = _register()


def has_adapter(sr):
    """Whether a stage adapter is registered for the spandrel network inside ``sr`` (then CLSR,
    with its GCM and PIM, can be built around it)."""
    from ..archs import craft_adapter  # noqa: F401  (registers CRAFT)
    from ..archs.backbone_adapters import adapter_class
    return adapter_class(type(sr.model)) is not None


def build_clsr(sr, roi_pad):
    """The CLSR of a :class:`~clsr_arch.api.LocalSR` over ``sr`` (a :class:`SpandrelSR`), built
    around the loaded module itself (its weights not read again): with a stage adapter for its
    class, CLSR around spandrel's module with the adapter's GCM and PIM, zero-initialised (so it
    equals padded pre-crop until trained); else the context-free :class:`PlainAdapter` CLSR."""
    if has_adapter(sr):
        return _clsr_around(sr.model, roi_pad=roi_pad).eval()
    return _clsr_around(sr, roi_pad=roi_pad, gcm=None, pim=None).eval()


def _clsr_around(module, **kwargs):
    """``CLSR(backbone=<module>, **kwargs)`` for an already built module (handed to BasicSR's
    ``build_network`` through a one-shot registry entry)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    from ..archs.clsr_arch import CLSR

    key = '_PrebuiltModule'
    if key not in ARCH_REGISTRY:
        def _PrebuiltModule(ref):  # noqa: N802
            return _PREBUILT.pop(ref)
        ARCH_REGISTRY.register(_PrebuiltModule)
    _PREBUILT[id(module)] = module
    try:
        return CLSR({'type': key, 'ref': id(module)}, **kwargs)
    finally:
        _PREBUILT.pop(id(module), None)


_PREBUILT = {}


# --- LocalSR of a model file --------------------------------------------------------------------
class AutoMethod:
    """Mixin of the images a :class:`SpandrelLocalSR` opens: ``method=None``/``'auto'`` runs what the
    model's calibration chose (``last_run['auto']`` says what and why), ``pad=None`` is the
    model's pad, and ``'clsr'`` needs a stage adapter."""

    def super_resolve(self, boxes, method=None, output='uint8', plan=True, pad=None, only=None):
        m = self.model
        method = m.default_method if method is None else method
        auto = None
        if method == 'clsr' and m.clsr_alias == 'auto':  # clsr-view's main pane: what auto runs
            method = 'auto'
        if method == 'auto':
            method, auto = m.auto_method, {'chose': m.auto_method, 'reason': m.auto_reason, 'pad': m.pad}
        if method == 'clsr' and not m.has_clsr and auto is None:
            raise LocalSRError(f'model {m.weights}: no stage adapter for {m.sr.architecture}, so no CLSR (its GCM and '
                               'PIM need one: docs/adapters.md); methods: auto (planned pre-crop), pre_crop, post_crop, '
                               'bicubic')
        if method == 'pre_crop' and pad is None:
            pad = m.pad
        outs = super().super_resolve(boxes, method=method, output=output, plan=plan, pad=pad, only=only)
        if not m.has_clsr and method == 'clsr':  # the context-free CLSR: planned pre-crop
            self.last_run['method'] = 'pre_crop'
            self.last_run['pad'] = m.net.roi_pad
            self.last_run['planned'] = True
            if self.last_run.get('route') == 'clsr':
                self.last_run['route'] = 'planned pre-crop (one padded crop per piece)'
        if auto is not None:
            auto['chose'] = self.last_run['method']
            self.last_run['auto'] = auto
        return outs


_AUTO_CLASSES = {}


def _with_auto(image):
    cls = type(image)
    if cls not in _AUTO_CLASSES:
        _AUTO_CLASSES[cls] = type(f'Auto{cls.__name__}', (AutoMethod, cls), {})
    image.__class__ = _AUTO_CLASSES[cls]
    return image


def _make_local_sr_class():
    from .model import LocalSR

    class SpandrelLocalSR(LocalSR):
        """:class:`~clsr_arch.api.LocalSR` of any SR network file spandrel loads (what
        :meth:`LocalSR.from_model` returns). Pre-crop and post-crop run the network itself
        (:class:`SpandrelSR`: its size requirements met); CLSR runs when a stage adapter exists for
        its class (zero-initialised GCM + PIM, or a trained CLSR given as ``clsr=(weights, opt)``);
        without one the planner serves padded pre-crop (:class:`PlainAdapter`).

        Args:
            path: the model file. scale: the scale asked for (an error if the file's differs).
            pad: pre-crop's real-context pad: ``'auto'`` (calibrated, :mod:`.calibration`) or LR pixels.
            method: the images' default: ``'auto'`` (calibrated: CLSR or padded pre-crop) or a method.
            clsr: ``(weights, opt)`` of a CLSR trained over this network (its base must be the same arch);
                None (default): the one shipped for exactly this weights file, if any
                (``registry.TRAINED_CLSR``, by SHA-256: CRAFT x4), else an untrained one; False: untrained.
            calibration_dir: where calibrations are cached (default ``~/.cache/clsr/calibration``,
                env ``CLSR_CACHE``); calibration_limit: validation images used (tests); progress.
            other keyword arguments: :class:`LocalSR`'s (device, threads, max_memory, tile, ...).
        """

        def __init__(self, path, scale=None, pad='auto', method='auto', clsr=None, calibration_dir=None,
                     calibration_limit=None, calibration_progress=None, **kwargs):
            from .methods import METHODS
            from .networks import load_network
            if not (pad == 'auto' or (isinstance(pad, (int, np.integer)) and not isinstance(pad, bool) and pad >= 0)):
                raise LocalSRError(f"pad must be 'auto' or an integer >= 0 (LR pixels), got {pad!r}")
            if method != 'auto' and method not in METHODS:
                raise LocalSRError(f'method {method!r}: expected auto or one of {", ".join(METHODS)}')
            sr = load_sr_model(path, scale)
            if clsr is None:  # a CLSR shipped for exactly these weights (registry.TRAINED_CLSR)
                clsr = TRAINED_CLSR.get(sr.sha256)
                if clsr is not None and not osp.isfile(clsr[0]):
                    clsr = None
            if clsr:
                weights, opt = clsr
                net = load_network(opt, weights)
                if type(net.base) is not type(sr.model):
                    raise LocalSRError(f'clsr {weights}: a CLSR over {type(net.base).__name__}, but {path} is a '
                                       f'{sr.architecture} network')
                clsr_trained = True
                key_extra = '-clsr' + weights_hash(weights)[:16]
            else:
                net = build_clsr(sr, 4 if pad == 'auto' else int(pad))
                clsr_trained = False if has_adapter(sr) else None
                key_extra = ''
            kwargs.pop('base_weights', None)
            super().__init__(net=net, base_weights=None, **kwargs)
            self.sr = sr.to(self.device)
            self.base = self.sr  # pre-/post-crop: the network itself, its size requirements met
            self.weights, self.opt = os.fspath(path), None
            self.has_clsr = clsr_trained is not None
            self.default_method = method
            self.clsr_alias = None  # 'auto': an explicit 'clsr' runs auto (clsr-view --model-path)
            self.calibration = None
            if pad == 'auto' or method == 'auto':
                self.calibration = calibrate_model(self, sr.sha256 + key_extra, clsr_trained, calibration_dir,
                                                   calibration_limit, calibration_progress)
            self.pad = self.calibration['pad'] if pad == 'auto' else int(pad)
            if clsr is None and self.net.roi_pad != self.pad:
                self.net.roi_pad = self.pad  # CLSR's base (or the planned pre-crop) gets the same context
                self._cost = self._meta = None
                self._estimates = {}
            if self.calibration is not None:
                self.auto_method, self.auto_reason = self.calibration['method'], self.calibration['reason']
            else:
                self.auto_method = 'clsr' if not self.has_clsr else 'pre_crop'
                self.auto_reason = f'pad {self.pad} given; method auto not calibrated'
            if not self.has_clsr and self.auto_method == 'pre_crop':
                self.auto_method = 'clsr'  # the context-free CLSR: pre-crop with the planner
                self.auto_reason += ' (planned: merged where cheaper, whole-image SR when cheaper)'

        def open(self, image, name=None):
            return _with_auto(super().open(image, name))

        def describe(self):
            """One line: the network, its requirements, the pad and the method auto runs, and why."""
            from .calibration import summary
            s = self.sr
            head = (f'{s.architecture} x{s.upscale} ({osp.basename(s.path)}, sha256 {s.sha256[:12]}; input minimum '
                    f'{s.minimum}, multiple of {s.multiple}; stage adapter: {"yes" if self.has_clsr else "no"})')
            return head + (f'; {summary(self.calibration)}' if self.calibration else f'; pad {self.pad}')
    return SpandrelLocalSR


def calibrate_model(model, key, clsr_trained, cache_dir, limit, progress):
    from .calibration import calibrate
    return calibrate(model, key, clsr_trained, cache_dir=cache_dir, limit=limit, progress=progress)


def __getattr__(name):  # SpandrelLocalSR: built on first use (model.py imports this module lazily)
    if name == 'SpandrelLocalSR':
        cls = _make_local_sr_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
