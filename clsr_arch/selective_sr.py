"""Selective whole-image SR that beats proportional (issue 23, item 4): the heavy network where an
estimator says it pays, a *learned* light network everywhere else.

Not in the LocalSR paper. PCSR (``../shared/seeds/002``; ``../shared/reference.md`` section 2)
routes each pixel between a heavy and a light upsampler; its easy pixels still get learned SR,
which is why it keeps all but ~0.015 dB at 65-70 % of its FLOPs, while
:func:`clsr_arch.selective.selective_sr` (bicubic outside the chosen tiles) buys quality only in
proportion to what it spends (docs/selective.md). PCSR's light path shares the heavy encoder;
here that would not pay: CARN-M's body is 62 % of its FLOPs (measured with
``torch.utils.flop_counter``), above the 60 % budget of the issue. So, as SSR
(``../shared/seeds/000``) does, the two paths are separate networks on tiles:

* **fallback** -- :class:`LiteSR`, a small CNN (3x3 convs at LR resolution, a sub-pixel head,
  plus a bilinear skip; ~7 % of CARN-M's FLOPs per pixel) run on the whole image once, trained
  here on the training split of the 497 images (``python -m clsr_arch.selective_sr train``;
  weights/lite_sr_x4.pth), the checkpoint chosen on the validation split;
* **heavy** -- the model's plain backbone (the network post-crop runs: official CARN-M for
  CLSR-CARN-M), run as a padded pre-crop on the chosen tiles merged into rectangles (runs of
  adjacent chosen tiles in a tile row, stacked when rows repeat the run), each grown by ``pad``
  LR pixels of real context and cropped back: 4 px closes the pre-/post-crop gap of these
  networks (reference.md section 1). When the rectangles would cost at least the whole image,
  the backbone runs on the whole image, so the top ``k = 1`` is post-crop exactly;
* **where** -- the top ``k`` fraction of the 24x24 tile grid by any estimator of
  :mod:`clsr_arch.selective` (used through its ``scores(image, boxes)`` / ``gflops(hw)``
  interface, unchanged).

The measured PIM alternative: the PIM's own HR prediction ``Y_P`` (Sec. 3.3, Eq. 7) from the
context pass is far *worse* than bicubic for the shipped CLSR-CARN-M (21.68 vs 26.07 dB
whole-image PSNR-Y on Set14; its HR head is a training-time auxiliary), so it is no fallback
(:func:`pim_prediction`; docs/selective.md).

FLOPs are counted, never timed: the backbone's through the repo's ``CostModel`` (fitted to
``torch.utils.flop_counter`` counts), the light network's with ``count_flops`` (it is linear
in the pixels), bicubic/bilinear by their closed forms.
"""
import argparse
import glob
import os.path as osp
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .api.errors import LocalSRError
from .api.registry import REPO
from .utils.flops import count_flops

TILE = 24
PAD = 4
LITE_WEIGHTS = osp.join(REPO, 'weights', 'lite_sr_x4.pth')
SPLIT = osp.join(REPO, 'datasets', 'real', 'split')
RGB_MEAN = 0.45


class LiteSR(nn.Module):
    """The light fallback: ``bilinear(x) + PixelShuffle(conv(relu(conv ... conv(x - 0.45))))``.

    ``channels`` features through ``convs`` 3x3 conv + ReLU layers after a 3x3 head conv, then a
    3x3 conv to ``3 s^2`` channels and PixelShuffle(s): ESPCN's sub-pixel layout (the light
    upsampler of PCSR is of this weight class), learning only the detail over bilinear.
    Receptive field: ``convs + 2`` LR pixels each side (+1 for the bilinear skip)."""

    def __init__(self, channels=32, convs=3, scale=4):
        super().__init__()
        self.scale = scale
        layers = [nn.Conv2d(3, channels, 3, 1, 1), nn.ReLU(inplace=True)]
        for _ in range(convs):
            layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))

    def forward(self, x):
        up = F.interpolate(x, scale_factor=self.scale, mode='bilinear', align_corners=False)
        return self.tail(self.body(x - RGB_MEAN)) + up


def load_lite(weights=LITE_WEIGHTS, device='cpu'):
    """:class:`LiteSR` with ``weights`` (a ``{'params', 'config'}`` checkpoint), eval mode."""
    if not osp.isfile(weights):
        raise LocalSRError(f'{weights} missing: train it with python -m clsr_arch.selective_sr train')
    ckpt = torch.load(weights, map_location='cpu', weights_only=True)
    if not isinstance(ckpt, dict) or 'params' not in ckpt:
        raise LocalSRError(f'{weights}: not a LiteSR checkpoint (no params)')
    net = LiteSR(**ckpt.get('config', {}))
    try:
        net.load_state_dict(ckpt['params'], strict=True)
    except RuntimeError as err:
        raise LocalSRError(f'{weights}: does not match LiteSR ({str(err).splitlines()[0]})') from None
    return net.eval().to(device)


def to_tensor(rgb_u8, device='cpu'):
    return torch.from_numpy(np.ascontiguousarray(rgb_u8)).permute(2, 0, 1)[None].float().div(255.).to(device)


def to_u8(t):
    """``[1, 3, H, W]`` (or ``[3, H, W]``) float in [0, 1] -> RGB uint8 ``[H, W, 3]``, rounded."""
    t = t[0] if t.dim() == 4 else t
    return (t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.).round().astype(np.uint8)


def pim_prediction(model, rgb_u8):
    """The PIM's HR context prediction ``Y_P`` (Sec. 3.3, Eq. 7) of the whole LR image, RGB
    uint8: the candidate fallback the issue asks to measure first (docs/selective.md)."""
    pim = model.net.pim
    if pim is None:
        raise LocalSRError('pim_prediction: the model has no PIM')
    x = to_tensor(rgb_u8, model.device)
    with torch.no_grad():
        return to_u8(pim.predict_context(pim.encode(x), x))


# ------------------------------------------------------------------------------ FLOPs
_LITE_PER_PIXEL = {}


def lite_flops(net, h, w):
    """FLOPs of :class:`LiteSR` on an ``h x w`` LR image: its convs counted once per network by
    ``count_flops`` on a 32x32 input (they are linear in the pixels), plus the bilinear skip
    (4 taps, a multiply and an add each, per HR pixel and channel)."""
    key = id(net)
    if key not in _LITE_PER_PIXEL:
        _LITE_PER_PIXEL[key] = count_flops(lambda x: net.tail(net.body(x)), torch.zeros(1, 3, 32, 32)) / 32 ** 2
    s = net.scale
    return _LITE_PER_PIXEL[key] * h * w + 3 * (s * h) * (s * w) * 4 * 2


# ------------------------------------------------------------------------------ routing
def tile_grid(hw, tile=TILE):
    """The ``tile x tile`` grid of an LR image whose sides are multiples of ``tile``:
    ``[(x, y, w, h), ...]`` row-major (what :func:`clsr_arch.selective.selective_sr` scores)."""
    H, W = hw
    if H % tile or W % tile or H < tile or W < tile:
        raise LocalSRError(f'selective SR: the LR image ({W}x{H}) must be a non-empty multiple of the '
                           f'{tile}-pixel tile (crop it first)')
    return [(x, y, tile, tile) for y in range(0, H, tile) for x in range(0, W, tile)]


def rectangles(chosen, hw, tile=TILE):
    """Chosen tiles (a boolean ``[rows, cols]`` mask) as few rectangles: maximal horizontal runs
    of each tile row, then runs with the same columns in consecutive rows stacked.
    Returns ``[(x, y, w, h), ...]`` in LR pixels; they partition the chosen tiles."""
    rows, cols = chosen.shape
    runs = []  # (c0, c1, r0, r1): columns c0..c1-1, rows r0..r1-1
    open_runs = {}
    for r in range(rows):
        here = []
        c = 0
        while c < cols:
            if chosen[r, c]:
                c0 = c
                while c < cols and chosen[r, c]:
                    c += 1
                here.append((c0, c))
            else:
                c += 1
        nxt = {}
        for span in here:
            if span in open_runs:
                open_runs[span][3] = r + 1
                nxt[span] = open_runs.pop(span)
            else:
                nxt[span] = [span[0], span[1], r, r + 1]
        runs += list(open_runs.values())
        open_runs = nxt
    runs += list(open_runs.values())
    return sorted((c0 * tile, r0 * tile, (c1 - c0) * tile, (r1 - r0) * tile) for c0, c1, r0, r1 in runs)


def grow(box, hw, pad):
    """``box`` grown by ``pad`` LR pixels each side, clipped at the image."""
    H, W = hw
    x, y, w, h = box
    x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(W, x + w + pad), min(H, y + h + pad)
    return x0, y0, x1 - x0, y1 - y0


class SelectiveSR:
    """Selective whole-image SR: heavy backbone on the chosen tiles, :class:`LiteSR` elsewhere.

    Args:
        model: a :class:`~clsr_arch.api.LocalSR`; its plain backbone ``model.base`` (what
            post-crop runs) is the heavy network and ``model.cost`` prices it.
        lite: a :class:`LiteSR` (default: the shipped weights/lite_sr_x4.pth).
        tile: tile size in LR pixels (the estimators' grid, 24). ``pad``: LR pixels of real
            context around each heavy rectangle (4: reference.md section 1).
    """

    def __init__(self, model, lite=None, tile=TILE, pad=PAD):
        self.model = model
        self.lite = load_lite(device=model.device) if lite is None else lite.eval().to(model.device)
        self.tile, self.pad = tile, pad
        self.scale = model.scale
        if self.lite.scale != self.scale:
            raise LocalSRError(f'LiteSR is x{self.lite.scale}, the model x{self.scale}')

    # --- the two paths
    def fallback(self, rgb_u8):
        """The light network on the whole LR image: float ``[1, 3, sH, sW]`` (unclamped)."""
        with torch.no_grad():
            return self.lite(to_tensor(rgb_u8, self.model.device))

    def heavy(self, rgb_u8, box):
        """The backbone on ``box`` grown by ``pad`` (clipped), cropped back to ``box``: float
        ``[1, 3, s h, s w]``; for the whole image it is post-crop."""
        from .archs.backbone_adapters import run_backbone
        s = self.scale
        x, y, w, h = box
        gx, gy, gw, gh = grow(box, rgb_u8.shape[:2], self.pad)
        crop = to_tensor(rgb_u8[gy:gy + gh, gx:gx + gw], self.model.device)
        with torch.no_grad():
            out = run_backbone(self.model.base, crop, s, self.model.multiple)
        return out[..., s * (y - gy):s * (y - gy + h), s * (x - gx):s * (x - gx + w)]

    # --- the plan and its FLOPs
    def _option(self, hw, chosen):
        """(boxes, whole, light FLOPs, heavy FLOPs) of running the heavy network on ``chosen``."""
        rows, cols = hw[0] // self.tile, hw[1] // self.tile
        mask = np.zeros((rows, cols), bool)
        mask.flat[list(chosen)] = True
        boxes = rectangles(mask, hw, self.tile)
        cost = self.model.cost
        heavy = sum(cost.base(gh, gw) for _, _, gw, gh in (grow(b, hw, self.pad) for b in boxes))
        light = lite_flops(self.lite, *hw)
        if len(chosen) and heavy + light >= cost.base(*hw):
            # the whole image is cheaper: post-crop, and no light pass at all
            return [(0, 0, hw[1], hw[0])], True, 0., cost.base(*hw)
        return boxes, False, light, heavy

    def plan(self, hw, scores, k):
        """What :meth:`run` does for the top ``k`` (fraction 0..1) of the tiles by ``scores``
        (one per :func:`tile_grid` tile): ``{'chosen': [tile index], 'asked': n, 'boxes': heavy
        rectangles, 'whole': bool, 'gflops': {'light', 'heavy', 'total'}}`` (estimator not included).

        The heavy network gets the top ``n = round(k * tiles)`` tiles -- or the top ``n' > n``
        when those cost fewer FLOPs: a tile that joins two rectangles (or rows of one) can save
        more padding than it adds, and the whole image can be cheaper than rectangles plus the
        light pass. More heavy tiles for fewer FLOPs is better on both counts, and it makes the
        cost non-decreasing in ``k`` (tested)."""
        grid = tile_grid(hw, self.tile)
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if len(scores) != len(grid):
            raise LocalSRError(f'selective SR: {len(scores)} scores for {len(grid)} tiles')
        if not 0 <= k <= 1:
            raise LocalSRError(f'selective SR: k must be a fraction in [0, 1], got {k}')
        n = int(round(k * len(grid)))
        order = np.argsort(-scores, kind='stable').tolist()
        best = None
        for m in range(n, len(grid) + 1):
            boxes, whole, light, heavy = self._option(hw, order[:m])
            if best is None or light + heavy < best[4] + best[3]:
                best = (m, boxes, whole, light, heavy)
        m, boxes, whole, light, heavy = best
        return {'chosen': sorted(order[:m]), 'asked': n, 'boxes': boxes, 'whole': whole,
                'gflops': {'light': light / 1e9, 'heavy': heavy / 1e9, 'total': (light + heavy) / 1e9}}

    def run(self, rgb_u8, scores, k, fallback=None, cache=None):
        """Whole-image x s RGB uint8 output and its :meth:`plan`. ``fallback``: the light output
        already computed (:meth:`fallback`, for sweeps over ``k``); ``cache``: a dict of heavy
        rectangles already decoded for this image (keyed by box)."""
        hw = rgb_u8.shape[:2]
        plan = self.plan(hw, scores, k)
        s = self.scale
        cache = {} if cache is None else cache
        if plan['whole']:
            box = plan['boxes'][0]
            if box not in cache:
                cache[box] = self.heavy(rgb_u8, box)
            return to_u8(cache[box]), plan
        out = (self.fallback(rgb_u8) if fallback is None else fallback).clone()
        for box in plan['boxes']:
            if box not in cache:
                cache[box] = self.heavy(rgb_u8, box)
            x, y, w, h = box
            out[..., s * y:s * (y + h), s * x:s * (x + w)] = cache[box]
        return to_u8(out), plan


def lite_detail(fallback, rgb_u8, boxes, scale=4):
    """A free estimator of where the heavy network pays: per tile, the mean squared detail the
    light network adds over bilinear, ``mean((LiteSR - bilinear)^2)`` on the luminance (the PIM
    detail idea of :class:`clsr_arch.selective.PIMResidual`, on the fallback that runs anyway;
    squared, because whole-image PSNR is set by the MSE). ``fallback``: :meth:`SelectiveSR.fallback`."""
    x = to_tensor(rgb_u8, fallback.device)
    with torch.no_grad():
        up = F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False)
        w = torch.tensor((65.481, 128.553, 24.966), device=fallback.device).view(1, 3, 1, 1)
        d = (((fallback - up) * w).sum(1)[0] ** 2).cpu().numpy()
    from .selective import box_means
    return box_means(d, [(scale * bx, scale * by, scale * bw, scale * bh) for bx, by, bw, bh in boxes])


def lite_detail_flops(h, w, scale=4):
    """Its FLOPs: the bilinear (counted as in :func:`lite_flops`), difference, luma, square, tile sums."""
    return 3 * (scale * h) * (scale * w) * 4 * 2 + (scale * h) * (scale * w) * (3 + 5 + 1 + 1)


# ------------------------------------------------------------------------------ training
def _read_rgb(path):
    import cv2
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise LocalSRError(f'{path}: not a readable image')
    return np.ascontiguousarray(img[:, :, ::-1])


def _pairs(folder, scale=4):
    """(LR, HR) RGB uint8 of every image in ``folder`` (MATLAB bicubic LR of the mod-cropped HR)."""
    from .data.prep import bicubic_lr, mod_crop
    paths = sorted(glob.glob(osp.join(folder, '*')))
    if not paths:
        raise LocalSRError(f'no images in {folder}: run bash data/prepare_real_data.sh first')
    out = []
    for p in paths:
        hr = np.ascontiguousarray(mod_crop(_read_rgb(p), scale))
        out.append((bicubic_lr(hr, scale), hr))
    return out


def _psnr_y(sr_u8, hr_u8, border=4):
    from basicsr.metrics import calculate_psnr
    return float(calculate_psnr(sr_u8[..., ::-1], hr_u8[..., ::-1], border, test_y_channel=True))


def validate(net, pairs):
    """Mean whole-image PSNR-Y (border 4) of ``net`` over ``pairs``."""
    net.eval()
    with torch.no_grad():
        vals = [_psnr_y(to_u8(net(to_tensor(lr))), hr) for lr, hr in pairs]
    net.train()
    return float(np.mean(vals))


def train(out=LITE_WEIGHTS, minutes=25., batch=16, patch=32, lr_rate=2e-3, seed=0, every=250, config=None):
    """Fit :class:`LiteSR` (L1 on HR, Adam, cosine to 0 over the time budget, flips/rotations)
    on the training split's images (``datasets/real/split/train_*``, MATLAB bicubic x1/4);
    every ``every`` iterations it is validated on ``split/val`` and the best kept. Time-bounded
    (``minutes``) because it runs on a shared 2-core CPU."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = dict(config or {'channels': 32, 'convs': 3, 'scale': 4})
    s = config['scale']
    t0 = time.time()
    data = _pairs(osp.join(SPLIT, 'train_small'), s) + _pairs(osp.join(SPLIT, 'train_big'), s)
    small = sum(min(lr.shape[:2]) < patch for lr, _ in data)
    data = [(lr, hr) for lr, hr in data if min(lr.shape[:2]) >= patch]  # a few T91 images are smaller
    val = _pairs(osp.join(SPLIT, 'val'), s)
    areas = np.array([lr.shape[0] * lr.shape[1] for lr, _ in data], np.float64)
    areas /= areas.sum()
    print(f'{len(data)} training images ({small} smaller than the patch left out), {len(val)} validation, read in {time.time() - t0:.0f} s', flush=True)
    net = LiteSR(**config)
    opt = torch.optim.Adam(net.parameters(), lr_rate)
    best, best_it, it = -1., 0, 0
    budget = minutes * 60.
    t_start = time.time()
    while True:
        frac = (time.time() - t_start) / budget
        if frac >= 1:
            break
        for g in opt.param_groups:
            g['lr'] = lr_rate * 0.5 * (1 + np.cos(np.pi * frac))
        xs, ys = [], []
        for i in rng.choice(len(data), batch, p=areas):
            lr, hr = data[i]
            py, px = rng.integers(0, lr.shape[0] - patch + 1), rng.integers(0, lr.shape[1] - patch + 1)
            xs.append(lr[py:py + patch, px:px + patch])
            ys.append(hr[s * py:s * (py + patch), s * px:s * (px + patch)])
        x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255.)
        y = torch.from_numpy(np.stack(ys)).permute(0, 3, 1, 2).float().div(255.)
        if it % 2:
            x, y = x.flip(-1), y.flip(-1)
        r = int(it // 2 % 4)
        x, y = torch.rot90(x, r, (2, 3)), torch.rot90(y, r, (2, 3))
        loss = (net(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        it += 1
        if it % every == 0:
            v = validate(net, val)
            print(f'iter {it} ({time.time() - t_start:.0f} s): L1 {loss.item():.4f}, validation PSNR-Y {v:.3f}', flush=True)
            if v > best:
                best, best_it = v, it
                torch.save({'params': net.state_dict(), 'config': config,
                            'meta': {'iter': it, 'val_psnr_y': v}}, out)
    v = validate(net, val)
    print(f'iter {it} (end): validation PSNR-Y {v:.3f}', flush=True)
    if v > best:
        best, best_it = v, it
        torch.save({'params': net.state_dict(), 'config': config, 'meta': {'iter': it, 'val_psnr_y': v}}, out)
    print(f'saved {out}: iteration {best_it}, validation PSNR-Y {best:.3f}')
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description='Train the light fallback LiteSR of selective SR.')
    p.add_argument('command', choices=['train'])
    p.add_argument('--minutes', type=float, default=25.)
    p.add_argument('--channels', type=int, default=32)
    p.add_argument('--convs', type=int, default=3)
    p.add_argument('--out', default=LITE_WEIGHTS)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train(args.out, args.minutes, config={'channels': args.channels, 'convs': args.convs, 'scale': 4})


if __name__ == '__main__':
    main()
