"""Where SR matters: per-tile SR-gain estimates, ROI proposals and selective whole-image SR.

Not in the LocalSR paper; the ideas of two related systems brought to CLSR's context pass:
SSR (``../shared/seeds/000``) classifies tiles of interest and super-resolves only those; PCSR
(``../shared/seeds/002``) routes each pixel to a light or a heavy upsampler by a learned
difficulty. Here, the *gain* of a tile is how much better SR is than bicubic on it:
``PSNR-Y(post-crop SR) - PSNR-Y(bicubic)`` (dB, per tile, against the HR). Three estimators
guess it from the LR image alone (no ground truth):

* :class:`GradientEnergy` -- a heuristic: mean squared gradient of the LR luminance;
* :class:`PIMResidual` -- from CLSR's own context pass: the mean magnitude of the PIM's
  predicted HR detail, ``|Y_P - bilinear(LR)|`` (Sec. 3.3's HR context head ``Y_P``);
* :class:`LearnedGain` -- a small CNN on the LR tile, trained on the training images' tiles to
  regress the gain (``python -m clsr_arch.selective train``; weights in weights/tile_gain.pth).

:func:`propose` turns an estimate into ROI proposals (non-overlapping boxes of any size with the
highest estimated gain); :func:`selective_sr` super-resolves the top ``k`` % of tiles with CLSR
(whole image as context; boxes planned as :mod:`clsr_arch.planner` does) and bicubic elsewhere,
with the seams blended over a margin. docs/selective.md measures all of it.
"""
import argparse
import glob
import os
import os.path as osp

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from basicsr.metrics import calculate_psnr
from basicsr.utils.matlab_functions import imresize

from .api.errors import LocalSRError  # leaf modules: the API imports this module, not back
from .api.registry import REPO
from .data.context_roi_dataset import validation_grid
from .utils.flops import count_flops

TILE = 24
LEARNED_WEIGHTS = osp.join(REPO, 'weights', 'tile_gain.pth')
Y_WEIGHTS = (65.481 / 255., 128.553 / 255., 24.966 / 255.)  # BT.601 luma of RGB in [0, 1], as basicsr's


def luma(rgb_u8):
    """LR luminance ``[H, W]`` in [0, 1] (the Y of ``basicsr.utils.rgb2ycbcr`` without offset)."""
    x = rgb_u8.astype(np.float32) / 255.
    return x[..., 0] * Y_WEIGHTS[0] + x[..., 1] * Y_WEIGHTS[1] + x[..., 2] * Y_WEIGHTS[2]


def box_means(score_map, boxes):
    """Mean of ``score_map`` ``[H, W]`` over each ``(x, y, w, h)`` box (integral image)."""
    ii = np.pad(np.cumsum(np.cumsum(score_map.astype(np.float64), 0), 1), ((1, 0), (1, 0)))
    out = []
    for x, y, w, h in boxes:
        total = ii[y + h, x + w] - ii[y, x + w] - ii[y + h, x] + ii[y, x]
        out.append(total / (w * h))
    return np.array(out)


class GradientEnergy:
    """Heuristic: where the LR image has edges and texture, SR beats bicubic most."""
    name = 'gradient energy'

    def score_map(self, image):
        y = luma(image.rgb)
        gx = np.zeros_like(y)
        gy = np.zeros_like(y)
        gx[:, 1:-1] = (y[:, 2:] - y[:, :-2]) / 2
        gy[1:-1] = (y[2:] - y[:-2]) / 2
        return gx ** 2 + gy ** 2

    def scores(self, image, boxes):
        return box_means(self.score_map(image), boxes)

    def gflops(self, hw):
        # luma 5, two central differences 2 each, energy 3 per LR pixel
        return 12 * hw[0] * hw[1] / 1e9


class PIMResidual:
    """From the context pass: the PIM's HR head predicts the HR context as bilinear + detail;
    the detail it adds is large where SR has something to add."""
    name = 'PIM detail (context pass)'

    def __init__(self, model):
        if model.net.pim is None:
            raise LocalSRError('PIMResidual needs a CLSR with a PIM')
        self.model = model

    def score_map(self, image):
        image.encode()
        pim = self.model.net.pim
        with torch.no_grad():
            detail = pim.tail(image.state['pim'][-1])  # Y_P - bilinear(context), [1, 3, sH, sW]
        s = self.model.scale
        m = detail.abs().mean(1, keepdim=True)
        return F.avg_pool2d(m, s)[0, 0].cpu().numpy()

    def scores(self, image, boxes):
        return box_means(self.score_map(image), boxes)

    def gflops(self, hw, with_context=True):
        """The context pass (which CLSR then reuses: count it once) plus the PIM's HR head."""
        tail = self.model.net.pim.tail
        head = count_flops(tail, torch.zeros(1, self.model.net.pim.channels, 64, 64)) * hw[0] * hw[1] / 64 ** 2
        return (head + (self.model.cost.context(*hw) if with_context else 0.)) / 1e9


class TileGainNet(nn.Module):
    """A small CNN regressor: LR RGB tile -> estimated SR gain (dB). Fully convolutional with a
    global average, so it takes any tile size (the SSR/PCSR classifiers are also small CNNs)."""

    def __init__(self, width=16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, width, 3, 1, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.1, True))
        self.head = nn.Linear(4 * width, 1)

    def forward(self, x):
        # input: RGB in [0, 1] plus its local gradient magnitude (a hint the CNN would learn anyway)
        y = (x * torch.tensor(Y_WEIGHTS, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        g = (F.pad(y, (1, 1, 1, 1), mode='replicate').unfold(2, 3, 1).unfold(3, 3, 1).std((-1, -2)))
        f = self.body(torch.cat([x - 0.45, g * 10], 1))
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return self.head(pooled)[:, 0]


class LearnedGain:
    """The learned predictor (:class:`TileGainNet`) with the shipped weights."""
    name = 'learned CNN'

    def __init__(self, weights=LEARNED_WEIGHTS):
        if not osp.isfile(weights):
            raise LocalSRError(f'{weights} missing: train it with python -m clsr_arch.selective train')
        self.net = TileGainNet()
        self.net.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
        self.net.eval()

    def scores(self, image, boxes):
        x = torch.from_numpy(image.rgb).permute(2, 0, 1).float().div(255.)
        out = np.zeros(len(boxes))
        by_size = {}
        for i, (bx, by, w, h) in enumerate(boxes):
            by_size.setdefault((w, h), []).append(i)
        with torch.no_grad():
            for (w, h), idx in by_size.items():
                for c in range(0, len(idx), 256):
                    chunk = idx[c:c + 256]
                    crops = torch.stack([x[:, boxes[i][1]:boxes[i][1] + h, boxes[i][0]:boxes[i][0] + w] for i in chunk])
                    out[chunk] = self.net(crops).numpy()
        return out

    def gflops(self, hw):
        return count_flops(self.net, torch.zeros(1, 3, 64, 64)) * hw[0] * hw[1] / 64 ** 2 / 1e9


def estimators(model, learned=True):
    """The three estimators by short name."""
    out = {'gradient': GradientEnergy(), 'pim': PIMResidual(model)}
    if learned:
        out['learned'] = LearnedGain()
    return out


# ------------------------------------------------------------------------------ ground truth
def psnr_y(a, b):
    """PSNR-Y without border of RGB uint8 images (``basicsr.metrics.calculate_psnr``)."""
    return float(calculate_psnr(a[..., ::-1], b[..., ::-1], 0, test_y_channel=True))


def whole_bicubic(rgb_u8, scale):
    """MATLAB bicubic upscaling of the whole LR image (what selective SR shows elsewhere)."""
    up = imresize(rgb_u8.astype(np.float32) / 255., scale)
    return np.clip(np.round(up * 255.), 0, 255).astype(np.uint8)


def tile_gains(image, hr, boxes, cap=60.):
    """Ground truth per box: PSNR-Y(post-crop) - PSNR-Y(whole-image bicubic) against ``hr``
    (RGB uint8, x scale of the image); PSNRs capped at ``cap`` dB (flat tiles). Returns
    ``(gains dB, MSE-Y reductions, post-crop HR, bicubic HR)``: the MSE reduction is what a
    tile adds to *whole-image* PSNR, so it ranks tiles for selective SR better than dB do."""
    s = image.model.scale
    post = image.super_resolve([(0, 0, image.hw[1], image.hw[0])], method='post_crop')[0]
    bic = whole_bicubic(image.rgb, s)
    gains, mse = [], []
    for x, y, w, h in boxes:
        sl = (slice(s * y, s * (y + h)), slice(s * x, s * (x + w)))
        gains.append(min(psnr_y(post[sl], hr[sl]), cap) - min(psnr_y(bic[sl], hr[sl]), cap))
        yp, yb, yh = (luma(a[sl]) * 255. for a in (post, bic, hr))
        mse.append(np.mean((yb - yh) ** 2) - np.mean((yp - yh) ** 2))
    return np.array(gains), np.array(mse), post, bic


# ------------------------------------------------------------------------------ proposals
def propose(image, n, size=48, estimator='pim', stride=None):
    """Moved to :func:`clsr_arch.proposals.propose` (issue 23: scores, non-maximum suppression,
    fixed estimators); kept here under its old name and default estimator."""
    from .proposals import propose as _propose  # proposals imports this module: import on call
    return _propose(image, n, size, estimator, stride)


# ------------------------------------------------------------------------------ selective SR
def selective_sr(image, scores, k, tile=TILE, margin=2, bicubic=None, plan=True, cache=None):
    """Whole-image x s output: CLSR on the top ``k`` (fraction 0..1) of the ``tile`` grid by
    ``scores`` (one per grid tile, row-major), bicubic elsewhere, seams blended.

    Each chosen tile is super-resolved grown by ``margin`` LR pixels (clipped at the image); its
    weight is 1 on the tile and falls linearly to 0 across the margin, so a chosen tile fades
    into bicubic, and two chosen neighbours fade into each other. ``plan``: the grown tiles go
    through the planner (merged when cheaper); False decodes each on its own, reusing the
    outputs in ``cache`` (a dict, for sweeps over ``k``). Returns (RGB uint8 HR, the CLSR part's
    run -- ``gflops``, ``route``; the API's ``last_run`` when planned -- or None, chosen boxes)."""
    H, W = image.hw
    s = image.model.scale
    grid = [tuple(r) for r in validation_grid(H, W, tile, tile)[0].tolist()]
    if len(scores) != len(grid):
        raise LocalSRError(f'selective_sr: {len(scores)} scores for {len(grid)} tiles')
    bic = (whole_bicubic(image.rgb, s) if bicubic is None else bicubic).astype(np.float32) / 255.
    n = int(round(k * len(grid)))
    if n == 0:
        return np.clip(np.round(bic * 255.), 0, 255).astype(np.uint8), None, []
    order = np.argsort(-np.asarray(scores), kind='stable')[:n]
    chosen = [grid[i] for i in sorted(order)]
    grown = []
    for x, y, w, h in chosen:
        x0, y0 = max(0, x - margin), max(0, y - margin)
        x1, y1 = min(W, x + w + margin), min(H, y + h + margin)
        grown.append((x0, y0, x1 - x0, y1 - y0))
    if plan:
        outs = image.super_resolve(grown, output='tensor')
        run = dict(image.last_run)
    else:
        cache = {} if cache is None else cache
        missing = [g for g in grown if g not in cache]
        if missing:
            for g, out in zip(missing, image.super_resolve(missing, output='tensor', plan=False)):
                cache[g] = out
        outs = [cache[g] for g in grown]
        cost = image.model.cost
        run = {'route': 'clsr', 'gflops': sum(cost.decode(gh, gw, (H, W)) for _, _, gw, gh in grown) / 1e9
               + (0. if image.encoded else cost.context(H, W) / 1e9)}
    acc = np.zeros_like(bic)
    wsum = np.zeros(bic.shape[:2], np.float32)
    ramp = float(s * margin)
    for (x, y, w, h), (gx, gy, gw, gh), out in zip(chosen, grown, outs):
        ys = np.arange(s * gy, s * (gy + gh)) + 0.5
        xs = np.arange(s * gx, s * (gx + gw)) + 0.5
        # distance (HR px) outside the tile core, on the sides that have a margin
        dy = np.maximum(s * y - ys, ys - s * (y + h)).clip(min=0)
        dx = np.maximum(s * x - xs, xs - s * (x + w)).clip(min=0)
        wy = 1 - np.minimum(dy / ramp, 1) if ramp else (dy == 0).astype(float)
        wx = 1 - np.minimum(dx / ramp, 1) if ramp else (dx == 0).astype(float)
        wgt = (wy[:, None] * wx[None, :]).astype(np.float32)
        sl = (slice(s * gy, s * (gy + gh)), slice(s * gx, s * (gx + gw)))
        acc[sl] += wgt[..., None] * out.clamp(0, 1).permute(1, 2, 0).numpy()
        wsum[sl] += wgt
    over = wsum > 1
    mixed = acc + (1 - np.minimum(wsum, 1))[..., None] * bic
    mixed[over] = acc[over] / wsum[over][:, None]
    return np.clip(np.round(mixed * 255.), 0, 255).astype(np.uint8), run, chosen


# ------------------------------------------------------------------------------ training
def training_tiles(model, tile=TILE):
    """(LR tiles [N, 3, t, t] float, gains [N], image index [N]) from the training images
    (../shared/data DIV2K + Flickr2K, LR = MATLAB bicubic x1/s), gains as :func:`tile_gains`."""
    from .data.prep import bicubic_lr, mod_crop
    from .data.image_io import read_bgr8
    data = osp.join(REPO, os.pardir, 'shared', 'data')
    paths = sorted(glob.glob(osp.join(data, 'DIV2K', 'HR', '*.png')) + glob.glob(osp.join(data, 'Flickr2K', 'HR', '*.png')))
    if not paths:
        raise LocalSRError(f'no training images under {data}')
    xs, gains, which = [], [], []
    for k, p in enumerate(paths):
        hr = mod_crop(read_bgr8(p), model.scale)[:, :, ::-1]
        lr = bicubic_lr(np.ascontiguousarray(hr), model.scale)
        rois, (kh, kw) = validation_grid(lr.shape[0], lr.shape[1], tile, tile)
        boxes = [tuple(r) for r in rois.tolist()]
        with model.open(np.ascontiguousarray(lr[:kh, :kw])) as image:
            g = tile_gains(image, np.ascontiguousarray(hr[:model.scale * kh, :model.scale * kw]), boxes)[0]
        t = torch.from_numpy(np.ascontiguousarray(lr[:kh, :kw])).permute(2, 0, 1).float() / 255.
        xs += [t[:, y:y + tile, x:x + tile] for x, y, _, _ in boxes]
        gains += list(g)
        which += [k] * len(boxes)
        print(f'{osp.basename(p)}: {len(boxes)} tiles, mean gain {np.mean(g):.2f} dB', flush=True)
    return torch.stack(xs), torch.tensor(gains, dtype=torch.float32), np.array(which)


def train(model, out=LEARNED_WEIGHTS, iters=3000, seed=0):
    """Fit :class:`TileGainNet` to the training tiles' gains (L1, Adam, flips/rotations); the
    last training image is held out and the iteration with its best Spearman is kept."""
    from scipy.stats import spearmanr
    torch.manual_seed(seed)
    x, y, which = training_tiles(model)
    held = which == which.max()
    xt, yt, xv, yv = x[~held], y[~held], x[held], y[held]
    net = TileGainNet()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    best, best_state = -2., None
    for it in range(1, iters + 1):
        idx = torch.randint(0, len(xt), (64, ))
        xb = xt[idx]
        if it % 2:
            xb = xb.flip(-1)
        xb = torch.rot90(xb, int(it // 2 % 4), (2, 3))
        loss = (net(xb) - yt[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 200 == 0:
            with torch.no_grad():
                rho = spearmanr(net(xv).numpy(), yv.numpy())[0]
            print(f'iter {it}: train L1 {loss.item():.3f} dB, held-out Spearman {rho:.3f}', flush=True)
            if rho > best:
                best, best_state = rho, {k: v.clone() for k, v in net.state_dict().items()}
    torch.save(best_state, out)
    print(f'saved {out} (held-out Spearman {best:.3f})')
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description='Train the learned tile-gain predictor on the training images.')
    p.add_argument('command', choices=['train'])
    p.add_argument('--iters', type=int, default=3000)
    p.add_argument('--out', default=LEARNED_WEIGHTS)
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .api.model import LocalSR  # the command line only (the API's modules never import this one's main)
    train(LocalSR(device='cpu'), args.out, args.iters)


if __name__ == '__main__':
    main()
