"""FLOPs of LocalSR strategies (LocalSR paper Table 1 / Sec. 3.4 complexity analysis).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions,
FLOPs = 2 x multiply-accumulates; element-wise ops, softmax and norms are not counted, as in
the usual SR FLOPs tables). Counting runs on ``torch.device('meta')`` tensors by default, so
full-size RCAN / SwinIR on a whole BSD100 or Urban100 context costs no real compute.

* :func:`count_flops` -- FLOPs of one call.
* :func:`localsr_flops` -- per-ROI GFLOPs of ``pre_crop`` (backbone on the ROI alone),
  ``post_crop`` (backbone on the whole context, then cropped) and ``clsr`` (CLSR: one shared
  context pass + the base on one padded ROI; the PIM's HR context head is training-only and
  excluded).
"""
import copy

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from basicsr.archs import build_network

# tensor factories that take a device (what torch.device(...) as a context manager redirects)
_FACTORIES = {getattr(torch, n) for n in (
    'empty', 'empty_like', 'zeros', 'zeros_like', 'ones', 'ones_like', 'full', 'full_like', 'rand', 'randn',
    'randint', 'arange', 'linspace', 'tensor', 'as_tensor', 'eye', 'empty_strided')}


def count_flops(fn_or_module, *inputs, **kwargs):
    """FLOPs (2 x MACs) of ``fn_or_module(*inputs, **kwargs)`` under ``torch.no_grad()``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn_or_module(*inputs, **kwargs)
    return counter.get_total_flops()


class _MetaConstruction(TorchFunctionMode):
    """Like ``with torch.device('meta')`` (parameters are allocated, and initialised, on meta:
    building full-size SwinIR/RCAN costs nothing), except that ``torch.linspace`` stays on the
    CPU: BasicSR's SwinIR calls ``.item()`` on it for its drop-path rates."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get('device') is None:
            kwargs['device'] = 'cpu' if func is torch.linspace else 'meta'
        return func(*args, **kwargs)


def build_on(opt, device):
    """``build_network(opt)`` with its parameters created directly on ``device`` (for meta:
    without initialising full-size weights on the CPU first)."""
    opt = copy.deepcopy(opt)
    if str(device) != 'meta':
        return build_network(opt).to(device)
    with _MetaConstruction():
        net = build_network(opt)
    return net.to('meta')  # plain tensor attributes made by torch.Tensor(...) stay on the CPU


def _on_device(net_or_opt, device):
    if isinstance(net_or_opt, dict):
        return build_on(net_or_opt, device).eval()
    return copy.deepcopy(net_or_opt).to(device).eval()


def localsr_flops(net_or_opt, context_hw, roi_hw=(24, 24), device='meta',
                  strategies=('pre_crop', 'post_crop', 'clsr'), **clsr_kwargs):
    """Per-ROI GFLOPs ``{'pre_crop', 'post_crop', 'clsr', 'clsr_context', 'clsr_roi'}`` for one
    context and one ROI (``clsr = clsr_context + clsr_roi``: the shared context pass counted once).

    Args:
        net_or_opt: a CLSR network, a plain backbone, or either's BasicSR options dict
            (``{'type': 'CLSR', 'backbone': {...}, ...}`` or ``{'type': 'MSRResNet', ...}``). A
            plain backbone is wrapped in a CLSR with ``clsr_kwargs`` (``roi_pad``, ``gcm``,
            ``pim``; unset: the backbone's defaults).
        context_hw: ``(H, W)`` of the LR context (BSD100: 144 x 216, Urban100: 384 x 480).
        roi_hw: ``(h, w)`` of the ROI (paper Table 1: 24 x 24); placed at the context centre.
        device: where the counting runs; ``'meta'`` computes nothing (but dispatches every op
            through Python meta kernels: for small inputs ``'cpu'`` can be faster).
        strategies: which of the three to count (post-crop of a big context on SwinIR is the
            slow one: its shifted-window masks are rebuilt per block on the CPU).
    """
    from clsr_arch.archs.backbone_adapters import get_adapter, run_backbone
    from clsr_arch.archs.clsr_arch import CLSR

    if isinstance(net_or_opt, dict) and net_or_opt.get('type') != 'CLSR':
        net_or_opt = {'type': 'CLSR', 'backbone': net_or_opt, **clsr_kwargs}
    elif not isinstance(net_or_opt, (dict, CLSR)):
        raise ValueError(f'localsr_flops: got a {type(net_or_opt).__name__} module; pass a plain backbone '
                         f'as its options dict, or a CLSR network')
    elif clsr_kwargs:
        raise ValueError(f'localsr_flops: {sorted(clsr_kwargs)} only apply when wrapping a plain backbone')
    net = _on_device(net_or_opt, device)
    adapter = get_adapter(net.base)

    (H, W), (h, w) = context_hw, roi_hw
    if h > H or w > W:
        raise ValueError(f'localsr_flops: ROI {h}x{w} larger than context {H}x{W}')
    context = torch.zeros(1, 3, H, W, device=device)
    box = torch.tensor([[0, (W - w) // 2, (H - h) // 2, w, h]])
    roi = torch.zeros(1, 3, h, w, device=device)

    unknown = set(strategies) - {'pre_crop', 'post_crop', 'clsr'}
    if unknown:
        raise ValueError(f'localsr_flops: unknown strategies {sorted(unknown)}')
    out = {}
    if 'pre_crop' in strategies:
        out['pre_crop'] = count_flops(run_backbone, adapter.run, roi, adapter.scale, adapter.multiple) / 1e9
    if 'post_crop' in strategies:
        out['post_crop'] = count_flops(run_backbone, adapter.run, context, adapter.scale, adapter.multiple) / 1e9
    if 'clsr' in strategies:
        # Sec. 3.4: one context pass O_G(HW) + O_P(HW), shared by all ROIs, plus O(hw) per ROI
        out['clsr_context'] = count_flops(net.encode_context, context) / 1e9
        with torch.no_grad():
            state = net.encode_context(context)
        out['clsr_roi'] = count_flops(net.decode, state, box) / 1e9
        out['clsr'] = out['clsr_context'] + out['clsr_roi']
    return out


# Full-size x4 backbones of the paper's Table 1 and its reported GFLOPs (24x24 ROI):
# (pre-crop, Ours at BSD100 144x216, Ours at Urban100 384x480, post-crop at BSD100). The CARN row is costed with
# CARN-M (its 0.65 GFLOPs pre-crop is CARN-M's); CARN itself is listed without a target.
PAPER_BACKBONES = {
    'SRResNet': ({'type': 'MSRResNet', 'num_feat': 64, 'num_block': 16, 'upscale': 4}, (2.93, 5.08, 8.94, 158.19)),
    'CARN-M': ({'type': 'CARN_M', 'upscale': 4}, (0.65, 1.63, 5.65, 35.37)),
    'CARN': ({'type': 'CARN', 'upscale': 4}, (None, None, None, None)),
    'RCAN': ({'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_group': 10, 'num_block': 20,
              'upscale': 4}, (18.38, 19.41, 21.50, 992.73)),
    'SwinIR-light': ({'type': 'SwinIR', 'upscale': 4, 'img_size': 64, 'window_size': 8, 'embed_dim': 60,
                      'depths': [6, 6, 6, 6], 'num_heads': [6, 6, 6, 6], 'mlp_ratio': 2,
                      'upsampler': 'pixelshuffledirect'}, (2.11, 3.18, 6.74, 113.70)),
    'SwinIR': ({'type': 'SwinIR', 'upscale': 4, 'img_size': 48, 'window_size': 8, 'embed_dim': 180,
                'depths': [6] * 6, 'num_heads': [6] * 6, 'mlp_ratio': 2, 'upsampler': 'pixelshuffle'},
               (15.08, 23.23, 31.02, 814.40)),
    # BasicSR's other SR archs (issue 24; not in the paper): EDSR-baseline, ESRGAN's RRDBNet,
    # Real-ESRGAN's realesr-general-x4v3 (SRVGGNetCompact, 32 convs)
    'EDSR': ({'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16, 'upscale': 4},
             (None, None, None, None)),
    'RRDBNet': ({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': 4, 'num_feat': 64, 'num_block': 23,
                 'num_grow_ch': 32}, (None, None, None, None)),
    # the name BasicSR registers it under (plain 'SRVGGNetCompact' works too, with a notice on stdout)
    'SRVGGNetCompact': ({'type': 'SRVGGNetCompact_basicsr', 'num_feat': 64, 'num_conv': 32, 'upscale': 4},
                        (None, None, None, None)),
}
BSD100_HW, URBAN100_HW = (144, 216), (384, 480)


def main(argv=None):
    """Print the Table 1 comparison (CLSR with each backbone's defaults) as markdown."""
    import argparse
    parser = argparse.ArgumentParser(description='GFLOPs of CLSR vs the LocalSR paper, Table 1 (x4, 24x24 ROI)')
    parser.add_argument('--backbones', default=','.join(PAPER_BACKBONES))
    parser.add_argument('--post-crop', action='store_true', help='also count post-crop (slow for SwinIR)')
    args = parser.parse_args(argv)
    strategies = ('pre_crop', 'post_crop', 'clsr') if args.post_crop else ('pre_crop', 'clsr')
    print('| backbone | roi_pad | gcm N / stage | PIM c\' | pre-crop | CLSR BSD100 (144×216) | '
          'CLSR Urban100 (384×480) | context pass BSD / Urban | post-crop BSD100 |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name in args.backbones.split(','):
        opt, paper = PAPER_BACKBONES[name]
        net = build_on({'type': 'CLSR', 'backbone': opt}, 'meta')
        bsd = localsr_flops(net, BSD100_HW, strategies=strategies)
        urban = localsr_flops(net, URBAN100_HW, strategies=('clsr', ))

        def fmt(v, p):
            return f'{v:.2f}' + (f' ({p:.2f})' if p is not None else '')

        post = fmt(bsd['post_crop'], paper[3]) if 'post_crop' in bsd else '-'
        print(f"| {name} | {net.roi_pad} | {net.gcm_opt['num_windows']} / {net.gcm_opt['stage']} | "
              f"{net.pim.channels} | {fmt(bsd['pre_crop'], paper[0])} | {fmt(bsd['clsr'], paper[1])} | "
              f"{fmt(urban['clsr'], paper[2])} | {bsd['clsr_context']:.2f} / {urban['clsr_context']:.2f} | "
              f"{post} |", flush=True)


if __name__ == '__main__':
    main()


class CostModel:
    """FLOPs of the pieces a many-ROI plan is made of (:mod:`clsr_arch.planner`), for one CLSR.

    Counting one call with :func:`count_flops` takes ~0.2 s, too slow to price thousands of
    candidate merges. Every pass here is a sum of convolutions and matmuls whose FLOPs are
    affine in a few size terms, so each is fitted once from exact counts and then evaluated in
    closed form (``fit_error`` is the fit's largest relative error on its own probes; tests compare
    it with counted FLOPs at random sizes):

    * ``decode(h, w, context_hw)``: one ROI through :meth:`CLSR.decode` = ``a*A + b*Q + d*Q*L + c``
      with ``A`` the padded ROI's pixels (after ``roi_pad``, the size multiple and the clip to
      the context), ``Q`` the GCM's stride-2 query tokens ``ceil(h'/2) * ceil(w'/2)`` and ``L``
      the context's key tokens (N windows of ``ceil(r/2)^2``); ROIs of a batch add up;
    * ``base(h, w)``: the plain backbone (``run_backbone``, padded to its size multiple) =
      ``a*A + c`` -- post-crop when ``(h, w)`` is the whole image, a tile of tiled whole-image SR;
    * ``context(h, w)``: :meth:`CLSR.encode_context` = ``p*H*W + g*N + k`` with ``N`` the GCM's
      windows of that context.
    """

    _PROBES = ((6, 6), (9, 14), (17, 11), (24, 24), (31, 40))

    def __init__(self, net):
        import numpy as np
        from clsr_arch.archs.backbone_adapters import get_adapter, run_backbone

        self.net = _on_device(net, 'meta')
        self.adapter = get_adapter(self.net.base)
        self.roi_pad, self.multiple = self.net.roi_pad, self.adapter.multiple
        m = self.multiple
        # the probes are padded boxes: grown with a roi_pad above 2 so that the ROI inside keeps
        # >= 2 px (CLSR-IMDN-real's roi_pad 4 left the 6x6 probe a -2 px ROI); unchanged up to 2
        grow = 2 * max(0, self.roi_pad - 2)
        sizes = [(h + grow + (-(h + grow)) % m, w + grow + (-(w + grow)) % m) for h, w in self._PROBES]
        # a size multiple near 2 * roi_pad (CRAFT: 16, roi_pad 4) can leave no ROI inside a probe: grow it by
        # the multiple until the ROI keeps >= 2 px (sizes of the other backbones unchanged)
        sizes = [(self._roomy(ph), self._roomy(pw)) for ph, pw in sizes]
        big = max(max(s) for s in sizes) + 2 * self.roi_pad + 2 * m
        with torch.no_grad():
            state = self.net.encode_context(torch.zeros(1, 3, big, big, device='meta'))
        full = state.get('gcm')
        rows, dec, base, sizes_l = [], [], [], []
        for ph, pw in sizes:
            # an interior ROI whose padded box is exactly ph x pw
            left, top, right, bottom = self._pads(ph, pw)
            h, w = ph - top - bottom, pw - left - right
            box = torch.tensor([[0, big // 2 - w // 2, big // 2 - h // 2, w, h]])
            q = -(-ph // 2) * -(-pw // 2)
            for keep in ((1, 2) if full is not None else (1, )):  # all keys, and half of them
                if full is not None:
                    n = full['pos'].shape[0] // keep
                    state['gcm'] = {'k': full['k'][:, :, :n], 'v': full['v'][:, :, :n], 'pos': full['pos'][:n]}
                else:
                    n = 0
                rows.append((ph * pw, q, q * n, 1.))
                dec.append(count_flops(self.net.decode, state, box))
                sizes_l.append((ph, pw, n))
            base.append(count_flops(run_backbone, self.adapter.run, torch.zeros(1, 3, ph, pw, device='meta'),
                                    self.adapter.scale, m))
        rows = np.array(rows)
        self._dec = np.linalg.lstsq(rows, np.array(dec, dtype=np.float64), rcond=None)[0]
        self._base = np.linalg.lstsq(np.array([(ph * pw, 1.) for ph, pw in sizes]),
                                     np.array(base, dtype=np.float64), rcond=None)[0]
        self.fit_error = max(max(abs(self._decode_padded(ph, pw, n) - d) / d for (ph, pw, n), d in zip(sizes_l, dec)),
                             max(abs(self.base(ph, pw) - b) / b for (ph, pw), b in zip(sizes, base)))
        # context pass = p * H*W (PIM) + g * N (GCM windows) + k: fitted on contexts with few and many windows
        ctx_sizes = [(7, 9), (13, 20), (40, 31), (64, 64), (30, 90)]
        ctx_rows = np.array([(h * w, self._windows((h, w)), 1.) for h, w in ctx_sizes])
        ctx = np.array([count_flops(self.net.encode_context, torch.zeros(1, 3, h, w, device='meta'))
                        for h, w in ctx_sizes], dtype=np.float64)
        self._ctx = np.linalg.lstsq(ctx_rows, ctx, rcond=None)[0]
        self.fit_error = max(self.fit_error, max(abs(self.context(h, w) - c) / c for (h, w), c in zip(ctx_sizes, ctx)))

    def _roomy(self, side):
        while side - sum(self._pads(side, side)[1::2]) < 2:
            side += self.multiple
        return side

    def _pads(self, h, w, pad=None):
        from clsr_arch.archs.roi import padding_for
        return padding_for(h, w, self.roi_pad if pad is None else pad, self.multiple)

    def padded_size(self, h, w, context_hw, pad=None):
        """``(h', w')`` of the crop the base branch runs on for an ``h x w`` ROI (as decode), or
        pre-crop with another ``pad`` (a spandrel model's calibrated pad beside its CLSR's roi_pad)."""
        left, top, right, bottom = self._pads(h, w, pad)
        ph, pw = h + top + bottom, w + left + right
        if self.multiple == 1:  # roi.place_inside cuts a side longer than the context
            ph, pw = min(ph, context_hw[0]), min(pw, context_hw[1])
        return ph, pw

    def _decode_padded(self, ph, pw, keys):
        a, b, d, c = self._dec
        q = (-(-ph // 2)) * (-(-pw // 2))
        return float(a * ph * pw + b * q + d * q * keys + c)

    def _windows(self, context_hw):
        """N: the GCM's windows for a context of ``context_hw`` (0 without a GCM)."""
        if self.net.gcm is None:
            return 0
        from clsr_arch.archs.roi import grid_counts
        r = self.net.gcm_opt['window']
        nh, nw = grid_counts(max(1, context_hw[0] // r), max(1, context_hw[1] // r), self.net.gcm_opt['num_windows'])
        return nh * nw

    def keys(self, context_hw):
        """``L``: the GCM's key tokens for a context of ``context_hw`` (0 without a GCM)."""
        if self.net.gcm is None:
            return 0
        return self._windows(context_hw) * (-(-self.net.gcm_opt['window'] // 2)) ** 2

    def decode(self, h, w, context_hw):
        """FLOPs of CLSR's decode of one ``h x w`` ROI of an ``context_hw`` context."""
        return self._decode_padded(*self.padded_size(h, w, context_hw), self.keys(context_hw))

    def base(self, h, w):
        """FLOPs of the plain backbone on an ``h x w`` input (padded to its size multiple)."""
        m = self.multiple
        a, c = self._base
        return float(a * (h + (-h) % m) * (w + (-w) % m) + c)

    def context(self, h, w):
        """FLOPs of the shared context pass over an ``h x w`` context."""
        p, g, k = self._ctx
        return float(p * h * w + g * self._windows((h, w)) + k)

    def pim(self, pixels):
        """FLOPs of the PIM branch over ``pixels`` LR pixels (ROI-local tiles, issue 17)."""
        return float(self._ctx[0] * pixels)

    def gcm(self, context_hw):
        """FLOPs of encoding the GCM's windows of a ``context_hw`` context."""
        _, g, k = self._ctx
        return float(g * self._windows(tuple(context_hw)) + k)

    def per_pixel(self, context_hw):
        """Decode FLOPs per LR pixel of ROI that every decode costs at least (``Q >= A / 4``,
        and the padded area ``A`` covers the ROI): for pruning plans that cannot win."""
        a, b, d, _ = self._dec
        return float(max(a, 0) + max(b, 0) / 4 + max(d, 0) * self.keys(context_hw) / 4)
