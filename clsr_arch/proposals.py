"""Where to look: ROI proposals -- the boxes where SR gains most over bicubic (issue 23, items 1-2).

Not in the LocalSR paper (whose ROIs are given); "Suggest where to look" of the viewer,
``image.propose`` of the API and ``clsr-infer --propose``. The *gain* of a box is
``PSNR-Y(post-crop SR) - PSNR-Y(bicubic)`` over it (dB, against the HR; :func:`box_gains`).

Why today's proposals landed on flat sky and the top row (measured, docs/selective.md, section
"Proposals"): the PIM's HR head (``pim.tail``, whose output :class:`~clsr_arch.selective.PIMResidual`
reads as "predicted detail") adds a fixed pattern per sub-pixel phase of +-0.02..0.07 that grows
with brightness and is there on a perfectly flat image; its magnitude ranks *brightness*
(Spearman +0.45 with the LR luminance on the DIV2K photo, -0.28 with its gradient energy), so
bright flat sky wins; the zero padding of its convolutions adds more at the image border (top
8 HR rows 18 % above the middle), which put the boxes on y = 0. The learned CNN, trained on six
images of MATLAB-bicubic LR for another model, ranks a soft area-downscaled or JPEG photo's
tree foliage and sky corners first; gradient energy prefers foliage texture, where SR gains little.

The fixes here:

* :class:`PIMDetail` -- the PIM's detail with its fixed pattern removed (each sub-pixel phase
  minus its own local mean) and the border rows/columns the padding corrupts left out;
* :class:`GainCNN` -- :class:`~clsr_arch.selective.TileGainNet` retrained for the shipped model
  on boxes of 16-64 px of the *training* split, LR made three ways (MATLAB bicubic, area, area +
  JPEG q50-95), checkpoint chosen on the validation split by the proposals' share of the oracle
  gain (``python -m clsr_arch.proposals train``; weights/proposal_gain.pth);
* :class:`~clsr_arch.gain_map.GainMap` (``'map'``, the default) -- per-pixel error maps of SR and
  bicubic predicted by a small fully convolutional network, a box scored by :func:`box_gains` of
  them (the truth's own formula); trained on the whole training split (:mod:`clsr_arch.gain_map`);
* :func:`propose` does non-maximum suppression (``max_overlap``, 0 = disjoint boxes) and returns
  every box's score;
* :func:`propose_tiled` proposes on an image read region by region (gigapixel TIFF): on a pyramid
  level read whole, then refined on the full-resolution tiles only around what it found.
"""
import argparse
import os
import os.path as osp
import time

import numpy as np
import torch
from torch.nn import functional as F

from .api.errors import LocalSRError
from .api.methods import ESTIMATOR_NAMES
from .api.registry import REPO
from .gain_map import GainMap
from .selective import (GradientEnergy, LearnedGain, PIMResidual, TileGainNet, box_means, luma, whole_bicubic)

PROPOSAL_WEIGHTS = osp.join(REPO, 'weights', 'proposal_gain.pth')
DEFAULT_ESTIMATOR = ESTIMATOR_NAMES[0]
LEVEL_PIXELS = 2 ** 22  # a tiled image is proposed on its finest pyramid level of at most this many pixels
CAP = 60.  # dB: the PSNR of a box is capped here (flat boxes), as in selective.tile_gains


# ------------------------------------------------------------------------------ the fixed estimators
class PIMDetail(PIMResidual):
    """The PIM's predicted HR detail without the head's fixed sub-pixel pattern (issue 23).

    ``detail = pim.tail(features)`` ``[1, 3, sH, sW]``; for each of the ``s x s`` sub-pixel
    phases, its local mean over ``window`` LR pixels is subtracted (the pattern varies slowly
    with brightness, detail does not), then ``|.|`` averaged over channels and phases per LR
    pixel. The ``border`` LR pixels at the image edge, where the convolutions' zero padding adds
    a response of its own, take the value of their inner neighbours."""
    name = 'PIM detail, pattern removed'

    def __init__(self, model, window=5, border=2):
        super().__init__(model)
        self.window, self.border = window, border

    def score_map(self, image):
        image.encode()
        pim = self.model.net.pim
        with torch.no_grad():
            d = pim.tail(image.state['pim'][-1])[0]  # [3, sH, sW]
        s = self.model.scale
        c, hs, ws = d.shape
        ph = d.view(c, hs // s, s, ws // s, s).permute(0, 2, 4, 1, 3).reshape(c * s * s, 1, hs // s, ws // s)
        k = self.window
        local = F.avg_pool2d(F.pad(ph, (k // 2, ) * 4, mode='replicate'), k, 1)
        m = (ph - local).abs().mean(0)[0].cpu().numpy()
        b = self.border
        if b and m.shape[0] > 2 * b and m.shape[1] > 2 * b:
            m = np.pad(m[b:-b, b:-b], b, mode='edge')
        return m


class GainCNN(LearnedGain):
    """:class:`~clsr_arch.selective.TileGainNet` retrained for proposals (:func:`train`)."""
    name = 'gain CNN (retrained)'

    def __init__(self, weights=PROPOSAL_WEIGHTS):
        if not osp.isfile(weights):
            raise LocalSRError(f'{weights} missing: train it with python -m clsr_arch.proposals train')
        self.net = TileGainNet()
        self.net.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
        self.net.eval()


ESTIMATORS = {
    # today's (before issue 23), kept for comparison
    'gradient': lambda model: GradientEnergy(),
    'pim': lambda model: PIMResidual(model),
    'learned': lambda model: LearnedGain(),
    # fixed
    'pim-detail': lambda model: PIMDetail(model),
    'cnn': lambda model: GainCNN(),
    'map': lambda model: GainMap(model),
}


def get_estimator(model, estimator):
    """An estimator object from its name (:data:`ESTIMATORS`) or the object itself."""
    if not isinstance(estimator, str):
        return estimator
    if estimator not in ESTIMATORS:
        raise LocalSRError(f'estimator {estimator!r}: expected one of {", ".join(ESTIMATORS)}')
    return ESTIMATORS[estimator](model)


# ------------------------------------------------------------------------------ candidates and NMS
def candidates(hw, w, h, stride):
    """Boxes ``(x, y, w, h)`` every ``stride`` pixels, the last row/column flush with the edge."""
    H, W = hw
    xs = sorted(set(list(range(0, W - w + 1, stride)) + [W - w]))
    ys = sorted(set(list(range(0, H - h + 1, stride)) + [H - h]))
    return [(x, y, w, h) for y in ys for x in xs]


def overlap(a, b):
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def suppress(boxes, scores, n, max_overlap=0.):
    """Greedy non-maximum suppression: the best box, then the best whose IoU with every chosen
    one is at most ``max_overlap`` (0: no shared pixel), ... until ``n``. Returns indices."""
    chosen = []
    for i in np.argsort(-np.asarray(scores, np.float64), kind='stable'):
        if all(overlap(boxes[i], boxes[j]) <= max_overlap for j in chosen):
            chosen.append(int(i))
            if len(chosen) == n:
                break
    return chosen


def _check(image_hw, n, size, what='propose'):
    w, h = (size, size) if np.isscalar(size) else size
    H, W = image_hw
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise LocalSRError(f'{what}: n must be >= 1, got {n}')
    if w > W or h > H or w < 1 or h < 1:
        raise LocalSRError(f'{what}: box {w}x{h} does not fit the {W}x{H} LR image')
    return int(w), int(h)


def propose(image, n, size=48, estimator=DEFAULT_ESTIMATOR, stride=None, max_overlap=0.):
    """The ``n`` boxes of ``size x size`` (or ``(w, h)``) LR pixels with the highest estimated SR
    gain, near-duplicates suppressed (:func:`suppress`; ``max_overlap`` = largest IoU between two
    proposals, 0 = disjoint). Candidates every ``stride`` px (default a quarter of the box).
    An image read region by region goes through :func:`propose_tiled`.
    Returns ``([(x, y, w, h), ...], [score, ...])``, best first."""
    if getattr(image, 'rgb', None) is None and hasattr(image, 'lazy'):
        return propose_tiled(image, n, size, estimator, max_overlap=max_overlap)
    w, h = _check(image.hw, n, size)
    est = get_estimator(image.model, estimator)
    stride = stride or max(1, min(w, h) // 4)
    cands = candidates(image.hw, w, h, stride)
    scores = np.asarray(est.scores(image, cands), np.float64)
    keep = suppress(cands, scores, n, max_overlap)
    return [cands[i] for i in keep], [float(scores[i]) for i in keep]


# ------------------------------------------------------------------------------ tiled images
def pick_level(levels, max_pixels):
    """The pyramid level to propose on: the finest whose pixel count is at most ``max_pixels``
    (read whole, in memory); 0 when level 0 itself fits (proposed on directly)."""
    for k, (lh, lw) in enumerate(levels):
        if lh * lw <= max_pixels:
            return k
    raise LocalSRError(f'no pyramid level of at most {max_pixels} pixels (levels {levels}): '
                       'write the TIFF with a pyramid (data/make_tiled_tiff.py)')


def propose_tiled(image, n, size=48, estimator=DEFAULT_ESTIMATOR, max_overlap=0., max_pixels=None, oversample=3):
    """Proposals on an image read region by region (:class:`~clsr_arch.api.tiled_image.TiledImage`).

    1. Coarse: the finest pyramid level of at most ``max_pixels`` (default :data:`LEVEL_PIXELS`) pixels is read whole and
       proposed on as an ordinary image, the box shrunk by the level's factor ``f`` (at least 4
       px), ``oversample * n`` disjoint boxes.
    2. Refine: around each, a full-resolution region (the box grown by ``f`` coarse pixels' worth
       of position uncertainty, at least a quarter box) is read -- only those tiles -- and the
       estimator scores the ``size`` boxes inside it every quarter box; the best of each region.
    3. Non-maximum suppression over the refined boxes (full-resolution scores).

    Returns ``(boxes, scores)`` in level-0 LR pixels, best first; ``image.last_proposal`` says
    what it read (level, its size, regions, pixels read)."""
    w, h = _check(image.hw, n, size)
    H, W = image.hw
    k = pick_level(image.levels, max_pixels or LEVEL_PIXELS)
    lh, lw = image.levels[k]
    fy, fx = H / lh, W / lw
    model = image.model
    est = get_estimator(model, estimator)
    if k == 0:
        with model.open(image.read(0, H, 0, W, 0), f'{image.name} (level 0)') as whole:
            boxes, scores = propose(whole, n, (w, h), est, max_overlap=max_overlap)
        image.last_proposal = {'level': 0, 'level_hw': (H, W), 'regions': 0, 'pixels_read': H * W}
        return boxes, scores
    cw, ch = max(4, min(lw, round(w / fx))), max(4, min(lh, round(h / fy)))
    with model.open(image.read(0, lh, 0, lw, k), f'{image.name} (level {k})') as level:
        coarse_boxes, _ = propose(level, oversample * n, (cw, ch), est)
    read = lh * lw
    refined, refined_scores = [], []
    for cx, cy, _, _ in coarse_boxes:
        x, y = round(cx * fx), round(cy * fy)
        gx, gy = max(w // 4, round(fx)), max(h // 4, round(fy))
        x0, y0 = max(0, x - gx), max(0, y - gy)
        x1, y1 = min(W, x + w + gx), min(H, y + h + gy)
        x0, y0 = max(0, min(x0, x1 - w)), max(0, min(y0, y1 - h))
        with model.open(image.read(y0, y1, x0, x1, 0), f'{image.name} region') as region:
            b, s = propose(region, 1, (w, h), est)
        read += (y1 - y0) * (x1 - x0)
        refined.append((b[0][0] + x0, b[0][1] + y0, w, h))
        refined_scores.append(s[0])
    keep = suppress(refined, refined_scores, n, max_overlap)
    image.last_proposal = {'level': k, 'level_hw': (lh, lw), 'regions': len(coarse_boxes), 'pixels_read': read}
    return [refined[i] for i in keep], [float(refined_scores[i]) for i in keep]


# ------------------------------------------------------------------------------ the truth
def error_maps(post, bic, hr, scale):
    """Per LR pixel, the mean over its ``scale x scale`` HR pixels of the squared Y error (0-255
    scale, BT.601 as basicsr's PSNR-Y) of post-crop and of bicubic: ``(E_post, E_bic)`` float64."""
    yh = luma(hr).astype(np.float64) * 255.
    out = []
    for img in (post, bic):
        e = (luma(img).astype(np.float64) * 255. - yh) ** 2
        H, W = e.shape[0] // scale, e.shape[1] // scale
        out.append(e[:H * scale, :W * scale].reshape(H, scale, W, scale).mean((1, 3)))
    return out


def box_gains(e_post, e_bic, boxes, cap=CAP):
    """True gain of each box: PSNR-Y(post-crop) - PSNR-Y(bicubic) over it, PSNRs capped at ``cap``
    dB (what ``selective.tile_gains`` computes, from :func:`error_maps` by integral images)."""
    return _psnr(box_means(e_post, boxes), cap) - _psnr(box_means(e_bic, boxes), cap)


def _psnr(mse, cap):
    return np.minimum(10 * np.log10(255. ** 2 / np.maximum(mse, 1e-10)), cap)


def truth(image, hr):
    """``(E_post, E_bic)`` of an in-memory image against its HR (post-crop by the model's base)."""
    s = image.model.scale
    post = image.super_resolve([(0, 0, image.hw[1], image.hw[0])], method='post_crop')[0]
    bic = whole_bicubic(image.rgb, s)
    return error_maps(post, bic, hr, s)


def oracle(e_post, e_bic, hw, n, size, stride=None):
    """The ``n`` disjoint boxes of highest *true* gain (greedy over the same candidates)."""
    w, h = (size, size) if np.isscalar(size) else size
    cands = candidates(hw, w, h, stride or max(1, min(w, h) // 4))
    g = box_gains(e_post, e_bic, cands)
    keep = suppress(cands, g, n)
    return [cands[i] for i in keep], g[keep]


# ------------------------------------------------------------------------------ training
def split_images(shared=None):
    """The 497 training images split as data/prepare_real_data.sh splits them (every 20th of the
    sorted list is validation): ``(train paths, val paths)``."""
    shared = shared or osp.join(REPO, os.pardir, 'shared', 'data')
    train, val = [], []
    i = 0
    for src in ('BSDS500/train', 'BSDS500/test', 'DIV2K/HR', 'Flickr2K/HR', 'T91'):
        for f in sorted(os.listdir(osp.join(shared, src))):
            i += 1
            (val if i % 20 == 0 else train).append(osp.join(shared, src, f))
    return train, val


def make_lr(hr_rgb, kind, scale=4, rng=None):
    """LR of an HR RGB uint8 (sides multiples of ``scale``): ``bicubic`` (MATLAB), ``area`` (box
    average, as PIL/OpenCV area downscaling) or ``jpegQ`` (area, then JPEG quality Q)."""
    import cv2
    from .data.prep import bicubic_lr
    if kind == 'bicubic':
        return bicubic_lr(hr_rgb, scale)
    h, w = hr_rgb.shape[:2]
    lr = cv2.resize(hr_rgb, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
    if kind.startswith('jpeg'):
        ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(lr[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(kind[4:])])
        lr = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    elif kind != 'area':
        raise LocalSRError(f'make_lr: unknown kind {kind!r}')
    return np.ascontiguousarray(lr)


def load_hr(path, scale=4, max_side=None):
    from .data.image_io import read_bgr8
    from .data.prep import mod_crop
    hr = read_bgr8(path)[:, :, ::-1]
    if max_side and max(hr.shape[:2]) > max_side:  # the 2K images: a centre crop keeps it quick
        h, w = hr.shape[:2]
        y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        hr = hr[y0:y0 + max_side, x0:x0 + max_side]
    return np.ascontiguousarray(mod_crop(hr, scale))


def prepare(model, paths, kinds, seed=0, max_side=1024, log=print):
    """Per image and LR kind: ``(lr uint8, E_post, E_bic)`` (:func:`truth`)."""
    rng = np.random.default_rng(seed)
    items = []
    for i, p in enumerate(paths):
        hr = load_hr(p, model.scale, max_side)
        for kind in kinds:
            k = f'jpeg{rng.integers(50, 96)}' if kind == 'jpeg' else kind
            lr = make_lr(hr, k, model.scale)
            if min(lr.shape[:2]) < 16:
                continue
            with model.open(lr) as image:
                ep, eb = truth(image, hr)
            items.append((lr, ep.astype(np.float32), eb.astype(np.float32), osp.basename(p), k))
        if (i + 1) % 50 == 0:
            log(f'  {i + 1}/{len(paths)} images')
    return items


def share_of_oracle(items, est_scores, n=5, size=24):
    """Share of the oracle over a set: the mean true gain of the top-``n`` proposals of each image
    over the mean true gain of its top-``n`` oracle boxes (a ratio of means: per-image ratios
    explode where an image's oracle gains little, e.g. on JPEG input)."""
    got, best = [], []
    for (lr, ep, eb, *_), sc in zip(items, est_scores):
        hw = lr.shape[:2]
        w = min(size, hw[1], hw[0])
        cands = candidates(hw, w, w, max(1, w // 4))
        g = box_gains(ep, eb, cands)
        best.append(g[suppress(cands, g, n)].mean())
        got.append(g[suppress(cands, sc(lr, cands), n)].mean())
    return float(np.mean(got) / np.mean(best))


def prepared_truth(model, cache=None, seed=0, exclude=('0004.png', ), every=1, log=print):
    """``{'train': items, 'val': items}`` (:func:`prepare`, 3 LR kinds) of the training split
    (``exclude`` left out, every ``every``-th image) and the validation split, read from
    ``cache`` (a .pt file) when it holds them, else prepared and, with ``cache``, kept there.
    What the gain estimators are trained and chosen on."""
    data = torch.load(cache, weights_only=False) if cache and osp.isfile(cache) else {}
    if 'train' not in data:
        train_paths, val_paths = split_images()
        train_paths = [p for p in train_paths if osp.basename(p) not in exclude][::every]
        log(f'truth of {len(train_paths)} training and {len(val_paths)} validation images, 3 LR kinds each')
        data['train'] = prepare(model, train_paths, ('bicubic', 'area', 'jpeg'), seed, log=log)
        data['val'] = prepare(model, val_paths, ('bicubic', 'area', 'jpeg'), seed + 1, log=log)
        if cache:
            torch.save(data, cache)
    return data


def train_args(description, iters, out):
    """The command line shared by the gain estimators' ``train`` commands."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('command', choices=['train'])
    p.add_argument('--iters', type=int, default=iters)
    p.add_argument('--out', default=out)
    p.add_argument('--cache', help='keep the prepared truth here (a .pt file) for reruns')
    p.add_argument('--every', type=int, default=1, help='train on every k-th training image (CPU time)')
    p.add_argument('--threads', type=int, default=2)
    return p


def train(model, out=PROPOSAL_WEIGHTS, iters=4000, seed=0, exclude=('0004.png', ), log=print, cache=None, every=1):
    """Fit :class:`TileGainNet` to true box gains of the training split (boxes 16-64 px at random
    positions, LR bicubic / area / area+JPEG), L1; every 250 iterations the validation split's
    share of the oracle (5 boxes of 24 px) picks the checkpoint. ``exclude``: images measured
    by benchmarks/proposals.py (the DIV2K photo of the issue), never trained on."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    data = prepared_truth(model, cache, seed, exclude, every, log)
    tr, va = data['train'], data['val']
    log(f'{len(tr)} training and {len(va)} validation LR images ({time.time() - t0:.0f} s)')
    net = TileGainNet()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    weights = np.array([lr.shape[0] * lr.shape[1] for lr, *_ in tr], np.float64)
    weights /= weights.sum()

    def scorer(lr, cands):
        x = torch.from_numpy(lr).permute(2, 0, 1).float().div(255.)
        w, h = cands[0][2], cands[0][3]
        with torch.no_grad():
            return torch.cat([net(torch.stack([x[:, b[1]:b[1] + h, b[0]:b[0] + w] for b in cands[c:c + 512]]))
                              for c in range(0, len(cands), 512)]).numpy()

    best, best_state, batch = -9., None, 32
    for it in range(1, iters + 1):
        net.train()
        size = int(rng.integers(16, 65))
        xs, ys = [], []
        while len(xs) < batch:
            lr, ep, eb = tr[rng.choice(len(tr), p=weights)][:3]
            H, W = lr.shape[:2]
            if H < size or W < size:
                continue
            x, y = int(rng.integers(0, W - size + 1)), int(rng.integers(0, H - size + 1))
            xs.append(torch.from_numpy(np.ascontiguousarray(lr[y:y + size, x:x + size])).permute(2, 0, 1))
            ys.append(box_gains(ep, eb, [(x, y, size, size)])[0])
        xb = torch.stack(xs).float().div(255.)
        if it % 2:
            xb = xb.flip(-1)
        xb = torch.rot90(xb, int(it // 2 % 4), (2, 3))
        loss = (net(xb) - torch.tensor(ys, dtype=torch.float32)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 250 == 0:
            net.eval()
            share = share_of_oracle(va, [scorer] * len(va))
            log(f'iter {it}: train L1 {loss.item():.3f} dB, validation share of the oracle {share:.3f}')
            if share > best:
                best, best_state = share, {k: v.clone() for k, v in net.state_dict().items()}
    from .utils.checkpoint import atomic_save
    atomic_save(best_state, out)
    log(f'saved {out} (validation share of the oracle {best:.3f}; {time.time() - t0:.0f} s)')
    return best


def main(argv=None):
    args = train_args('Train the proposals\' gain CNN for a shipped model (issue 23).', 4000, PROPOSAL_WEIGHTS).parse_args(argv)
    torch.set_num_threads(args.threads)
    from .api.model import LocalSR
    train(LocalSR(device='cpu'), args.out, args.iters, cache=args.cache, every=args.every,
          log=lambda m: print(m, flush=True))


if __name__ == '__main__':
    main()
