"""CLSR, the LocalSR paper's context-based local super-resolution network (Sec. 3.1-3.5, Fig. 3),
written once for every backbone and registered as ``CLSR`` in BasicSR's ``ARCH_REGISTRY``.

Three branches (Sec. 3.1):

* **base** (``net.base``): the plain backbone module, built by ``build_network(backbone)``, run
  through its stage adapter (:mod:`.backbone_adapters`) on the ROI padded by ``roi_pad`` LR
  pixels of real context (shifted inward at the context border, ``roi.place_inside``; then to a
  multiple of SwinIR's window) and cropped back to ``s*h x s*w``;
* **global context** (``net.gcm``, Sec. 3.2): N subsampled ``r x r`` context windows encoded by
  the base's own head and first ``gcm.stage`` stages (shared weights), attended to from the base
  feature after stage ``gcm.stage`` and added there once (Sec. 4.1);
* **proximity integration** (``net.pim``, Sec. 3.3): a slim branch over the whole context whose
  stage features are cropped to the padded ROI and fused into the base at every stage; its own
  HR output ``Y_P`` feeds the training loss (Eq. 7) and is skipped at inference.

Sec. 3.4's shared context pass: :meth:`CLSR.encode_context` computes everything that does not
depend on the ROI (GCM keys/values, PIM features) once; :meth:`CLSR.decode` then serves any
number of ROIs. At initialisation every injection is exactly zero (zero-initialised ``W_V``,
scale convs and PIM fusion convs), so CLSR loaded with ``pretrain_backbone`` reproduces the
plain backbone on the padded ROI.

Contract: docs/design.md. Per-backbone defaults and measured FLOPs: docs/architecture.md.
"""
import copy

import torch
from torch import nn

from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from ..utils.checkpoint import safe_load
from . import roi as roi_ops
from .backbone_adapters import get_adapter, import_adapter_modules
from .carn_arch import CARN, CARN_M, official_carn_m_to_single_scale
from .gcm import GlobalContextModule
from .pim import ProximityIntegrationBranch
from .local_context import LazyContext, PIMTiles, crop_context
from .tiling import as_float_image, crop_features, encode_pim_tiled

DEFAULT = 'default'  # "use the backbone's default" (None disables a module)
GCM_KEYS = {'window', 'num_windows', 'heads', 'stage', 'dist_scale_init'}
PIM_KEYS = {'ratio'}


def _options(name, given, defaults, allowed):
    if given is None:
        return None
    if given == DEFAULT:
        given = {}
    if not isinstance(given, dict):
        raise ValueError(f'CLSR option {name} must be a dict, null (disabled) or omitted, got {given!r}')
    unknown = set(given) - allowed
    if unknown:
        raise ValueError(f'CLSR option {name}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}')
    return {**defaults, **given}


def checkpoint_params(ckpt):
    """The state dict inside a loaded checkpoint -- BasicSR's ``params_ema`` (preferred) or
    ``params``, or the checkpoint itself when it is a plain state dict -- with a ``module.``
    prefix (``nn.DataParallel``) stripped; None when there is none."""
    sd = None
    if isinstance(ckpt, dict):
        for key in ('params_ema', 'params'):
            if isinstance(ckpt.get(key), dict):
                sd = ckpt[key]
                break
        else:
            if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
                sd = ckpt
    if sd is None:
        return None
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}


def state_dict_mismatch(own, sd):
    """``(missing, unexpected, shapes)`` of state dict ``sd`` against a module's ``own``: sorted
    key lists and ``(key, shape in sd, shape in own)`` for keys whose shapes differ."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted((k, tuple(sd[k].shape), tuple(own[k].shape)) for k in set(sd) & set(own)
                    if sd[k].shape != own[k].shape)
    return missing, unexpected, shapes


def backbone_state_dict(path, base):
    """The plain-backbone state dict stored at ``path``, keyed for ``base``.

    Accepts BasicSR checkpoints (``params_ema`` preferred, else ``params``) and plain state
    dicts; strips a ``module.`` prefix; maps an official multi-scale CARN/CARN-M checkpoint onto a
    single-scale backbone. Raises ``ValueError`` naming the file and the differing keys.
    """
    ckpt = safe_load(path)
    sd = checkpoint_params(ckpt)
    if sd is None:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f'pretrain_backbone {path!r}: no params_ema/params state dict (found {keys})')
    if isinstance(base, (CARN, CARN_M)) and not base.multi_scale and any(
            k.startswith('upsample.up4.') for k in sd):
        sd = official_carn_m_to_single_scale(sd, base.upscale)
    missing, unexpected, shapes = state_dict_mismatch(base.state_dict(), sd)
    shapes = [f'{k}: checkpoint {a} vs backbone {b}' for k, a, b in shapes]
    if missing or unexpected or shapes:
        raise ValueError(f'pretrain_backbone {path!r} does not match backbone {type(base).__name__}: '
                         f'missing keys {missing[:10]}{" ..." if len(missing) > 10 else ""}, '
                         f'unexpected keys {unexpected[:10]}{" ..." if len(unexpected) > 10 else ""}, '
                         f'shape mismatches {shapes[:10]}')
    return sd


@ARCH_REGISTRY.register()
class CLSR(nn.Module):
    """Context-based local SR around any supported backbone (module docstring).

    Args:
        backbone: BasicSR arch options of the base, e.g. ``{type: MSRResNet, num_block: 16}``.
        roi_pad: LR pixels of context around the ROI for the base branch (default: per backbone).
        gcm: ``{window, num_windows, heads, stage, dist_scale_init}`` (missing keys: per-backbone
            defaults, window 6, heads 4), or None to disable the GCM.
        pim: ``{ratio}`` (default 0.1), or None to disable the PIM.
        pretrain_backbone: path of a plain-backbone checkpoint loaded strictly into ``base``.
        adapter_modules: modules (dotted names or ``.py`` paths) imported first, for what they
            register: a stage adapter for the backbone, and the backbone arch itself if BasicSR
            does not know it (issue 24; docs/adapters.md).
    """

    def __init__(self, backbone, roi_pad=None, gcm=DEFAULT, pim=DEFAULT, pretrain_backbone=None,
                 adapter_modules=None):
        super().__init__()
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise ValueError(f'CLSR option backbone must be a dict with a type, got {backbone!r}')
        import_adapter_modules(adapter_modules, 'CLSR option adapter_modules')
        self.base = build_network(copy.deepcopy(dict(backbone)))
        self.adapter = get_adapter(self.base)
        defaults = self.adapter.defaults
        self.roi_pad = int(defaults['roi_pad'] if roi_pad is None else roi_pad)
        if self.roi_pad < 0:
            raise ValueError(f'CLSR option roi_pad must be >= 0, got {roi_pad}')
        self.scale = self.adapter.scale

        self.gcm_opt = _options('gcm', gcm, {'window': 6, 'heads': 4, 'dist_scale_init': 0.01, **defaults['gcm']},
                                GCM_KEYS)
        if self.gcm_opt is not None:
            stage = self.gcm_opt['stage']
            if not 0 <= stage <= self.adapter.num_stages:
                raise ValueError(f'CLSR option gcm.stage={stage} outside 0..{self.adapter.num_stages} '
                                 f'(the {type(self.base).__name__} stages)')
            self.gcm = GlobalContextModule(self.adapter.num_feat, self.gcm_opt['heads'],
                                           self.gcm_opt['dist_scale_init'])
        else:
            self.gcm = None

        self.pim_opt = _options('pim', pim, {'ratio': 0.1, **defaults.get('pim', {})}, PIM_KEYS)
        if self.pim_opt is not None:
            self.pim = ProximityIntegrationBranch(self.adapter.num_feat, self.adapter.num_stages, self.scale,
                                                  self.pim_opt['ratio'], self.adapter.group)
        else:
            self.pim = None

        if pretrain_backbone:
            self.base.load_state_dict(backbone_state_dict(pretrain_backbone, self.base), strict=True)

    # --- the shared context pass -------------------------------------------------------------
    def _check_context(self, context):
        if not torch.is_tensor(context) or context.dim() != 4 or context.shape[1] != 3:
            shape = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
            raise ValueError(f'CLSR context must be a [B, 3, H, W] tensor, got {shape}')
        if context.dtype != torch.uint8 and not context.is_floating_point():
            raise ValueError(f'CLSR context must be float in [0, 1] or uint8, got {context.dtype}')

    def _run_to_stage(self, x, stage):
        """The base's head and first ``stage`` stages, nothing injected: ``G`` of the GCM."""
        state = self.adapter.head(x)
        for i in range(stage):
            state = self.adapter.stage(i, state)
        return state['feat']

    def encode_context(self, context, tile=None, store='memory', folder=None, progress=None):
        """Everything the ROIs share (paper Sec. 3.4), computed once per context.

        ``context``: ``[B, 3, H, W]``, float in [0, 1] or uint8 (kept as uint8 and converted per
        crop: a quarter of the memory for large images). ``tile``: run the PIM over ``tile x
        tile`` tiles with its receptive-field halo (:mod:`.tiling`; one context at a time), into
        ``store`` ``'memory'`` or ``'disk'`` (under ``folder``); None: one untiled pass.

        Returns a dict: ``context``; ``pim`` (list of per-stage PIM features, or a
        ``tiling.DiskFeatures``) if the PIM is on; ``gcm`` (keys, values, token positions) if the
        GCM is on.
        """
        self._check_context(context)
        state = {'context': context}
        if self.pim is not None:
            if tile:
                state['pim'] = encode_pim_tiled(self.pim, context, tile, store, folder, progress)
            else:
                state['pim'] = self.pim.encode(as_float_image(context))
        if self.gcm is not None:
            state['gcm'] = self.encode_gcm(context)
        return state

    def encode_gcm(self, context):
        """The GCM's keys/values (Sec. 3.2): N ``r x r`` windows cropped from ``context`` (a
        tensor or a ``LazyContext``: only the windows are read) and encoded by ``G``."""
        b, _, h, w = context.shape
        r = self.gcm_opt['window']
        corners = roi_ops.window_grid(h, w, r, self.gcm_opt['num_windows'])  # [N, 2]
        n = corners.shape[0]
        boxes = torch.cat([torch.arange(b).repeat_interleave(n)[:, None], corners.repeat(b, 1),
                           torch.full((b * n, 2), r, dtype=torch.long)], dim=1)
        # SwinIR: extend each window right/bottom with real context to a window multiple
        boxes = roi_ops.pad_boxes(boxes, roi_ops.padding_for(r, r, 0, self.adapter.multiple))
        windows = as_float_image(crop_context(context, boxes))
        feat = self._run_to_stage(windows, self.gcm_opt['stage'])[:, :, :r, :r]
        return self.gcm.encode_keys(feat.reshape(b, n, *feat.shape[1:]), corners)

    def encode_local(self, image, tile=128, cache_bytes=256 * 2**20, device='cpu'):
        """The ROI-local context pass of a lazily read image (issue 17, :mod:`.local_context`):
        the GCM's windows are read and encoded now; the PIM's features are computed per
        ``tile x tile`` tile when a decode needs them, kept in an LRU cache of ``cache_bytes``.
        ``image``: anything with ``hw`` and ``read(y0, y1, x0, x1) -> uint8 [h, w, 3]``.
        :meth:`decode` then gives what it gives after :meth:`encode_context` of the whole image."""
        context = LazyContext(image, device)
        state = {'context': context}
        if self.pim is not None:
            state['pim'] = PIMTiles(self.pim, context, tile, cache_bytes)
        if self.gcm is not None:
            state['gcm'] = self.encode_gcm(context)
        return state

    def decode(self, state, boxes):
        """SR of ROIs ``boxes`` (``LongTensor[R, 5]``, one (h, w)) -> ``[R, 3, s*h, s*w]``."""
        context = state['context']
        boxes = roi_ops.validate_boxes(boxes, context.shape)
        h, w = roi_ops.box_size(boxes)
        pads = roi_ops.padding_for(h, w, self.roi_pad, self.adapter.multiple)
        # padding from real context, shifted inward at the context border (roi.place_inside)
        pboxes, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, pads), boxes, context.shape[-2:],
                                                  self.adapter.multiple)

        s = self.adapter.head(as_float_image(crop_context(context, pboxes)))
        gcm_stage = self.gcm_opt['stage'] if self.gcm is not None else None
        origins, batch_index = pboxes[:, 1:3], pboxes[:, 0].to(context.device)
        pim_crops = crop_features(state['pim'], pboxes, context.device) if self.pim is not None else None
        if gcm_stage == 0:
            s['feat'] = s['feat'] + self.gcm(s['feat'], origins, batch_index, state['gcm'])
        for i in range(self.adapter.num_stages):
            s = self.adapter.stage(i, s)
            if self.pim is not None:
                s['feat'] = self.pim.fuse_into(i, s['feat'], pim_crops[i])
            if gcm_stage == i + 1:
                s['feat'] = s['feat'] + self.gcm(s['feat'], origins, batch_index, state['gcm'])
        return roi_ops.crop_outputs(self.adapter.tail(s), offsets, h, w, self.scale)

    def predict_context(self, state):
        """The PIM's HR context ``Y_P`` ``[B, 3, sH, sW]`` (training loss only)."""
        if self.pim is None:
            raise ValueError('CLSR: return_context=True needs the PIM (pim is None in this network)')
        if not isinstance(state['pim'], list):
            raise ValueError('CLSR: predict_context needs the in-memory context pass (store="memory")')
        return self.pim.predict_context(state['pim'], as_float_image(state['context']))

    def forward(self, context, boxes, return_context=False):
        state = self.encode_context(context)
        sr = self.decode(state, boxes)
        if return_context:
            return sr, self.predict_context(state)
        return sr
