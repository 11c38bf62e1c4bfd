"""Where to look, per pixel: a fully convolutional map of SR's and bicubic's expected error (issue 23, item 1).

Not in the LocalSR paper. :class:`~clsr_arch.proposals.GainCNN` regresses one number per box, so
it must learn a box's gain from crops of a few sizes and is run once per candidate box. This
network instead predicts, for every LR pixel, the squared Y error (in dB, ``10 log10 MSE``) that
post-crop SR and that bicubic will make over its ``s x s`` HR pixels -- the two maps
:func:`~clsr_arch.proposals.error_maps` measures against the HR. A box's estimated gain is then
computed exactly as its true gain is (:func:`~clsr_arch.proposals.box_gains`: mean the two error
maps over the box, PSNR of each, difference), so any box size and any number of candidates cost
one pass over the image. The training loss compares estimated and true gains (and PSNRs) on cells
of 8, 16 and 32 LR pixels, i.e. on what proposals rank, not on single pixels, and the order of the
16 px cells' gains within each crop (:func:`rank_loss`).

``python -m clsr_arch.gain_map train`` fits it to the shipped model (CLSR-IMDN-real) on the
training split (LR bicubic / area / area+JPEG, as ``proposals.train``), choosing the checkpoint
on the validation split's share of the oracle (boxes of 24 and 48 px); weights/proposal_map.pth.
"""
import os.path as osp
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .api.errors import LocalSRError
from .api.registry import REPO
from .selective import Y_WEIGHTS
from .utils.flops import count_flops

MAP_WEIGHTS = osp.join(REPO, 'weights', 'proposal_map.pth')
HALO = 16  # LR px: more than the receptive field's radius (11), so tiled maps equal whole ones
CELLS = (8, 16, 32)  # LR px: the cell sizes the loss compares gains on
RANK_CELL = 16  # LR px: the cells whose order within a crop the rank term compares
CAP = 60.  # dB, as proposals.CAP


class GainMapNet(nn.Module):
    """LR RGB ``[B, 3, H, W]`` in [0, 1] -> ``[B, 2, H, W]``: per LR pixel, the predicted
    ``10 log10`` of the squared Y error (0-255 scale) of post-crop SR (channel 0) and bicubic
    (channel 1). Dilated 3x3 convolutions (receptive field 23 px) with replicate padding, so the
    image border looks like its inside rather than like a black frame. With ``self_sr`` it also
    reads the two error maps of :func:`self_sr_maps` (the model's own gain one scale down)."""

    def __init__(self, width=32, dilations=(1, 2, 4, 2, 1), self_sr=False):
        super().__init__()
        self.self_sr = self_sr
        layers, c = [], 6 if self_sr else 4
        for d in dilations:
            layers += [nn.Conv2d(c, width, 3, 1, d, dilation=d, padding_mode='replicate'), nn.LeakyReLU(0.1, True)]
            c = width
        layers.append(nn.Conv2d(width, 2, 1))
        self.body = nn.Sequential(*layers)
        nn.init.zeros_(layers[-1].weight)
        nn.init.constant_(layers[-1].bias, 15.)  # ~ an MSE of 30: a typical LR pixel's error

    def forward(self, x, self_db=None):
        # RGB plus its local contrast (3x3 std of the luma), as TileGainNet
        y = (x * torch.tensor(Y_WEIGHTS, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        g = F.pad(y, (1, 1, 1, 1), mode='replicate').unfold(2, 3, 1).unfold(3, 3, 1).std((-1, -2))
        feats = [x - 0.45, g * 10]
        if self.self_sr:
            feats.append((self_db - 15.) / 10.)
        return self.body(torch.cat(feats, 1))


def self_sr_maps(model, rgb_u8):
    """The model's gain one scale down, a self-similarity hint: the LR image shrunk by the scale
    (MATLAB bicubic), super-resolved by post-crop and by bicubic, each compared with the LR image
    itself. Returns the two squared-Y-error maps (MSE per LR pixel of the shrunk image's ``s x s``
    block, float32 ``[2, H, W]`` in ``10 log10`` dB, edges replicated where ``H, W`` are not
    multiples of ``s``). Costs a whole-image SR of an image ``s^2`` times smaller."""
    from .data.prep import bicubic_lr
    from .proposals import error_maps
    from .selective import whole_bicubic
    s = model.scale
    H, W = rgb_u8.shape[:2]
    hs, ws = H // s * s, W // s * s
    if min(hs, ws) < 4 * s:  # too small to shrink: no hint (a typical error everywhere)
        return np.full((2, H, W), 15., np.float32)
    src = np.ascontiguousarray(rgb_u8[:hs, :ws])
    small = bicubic_lr(src, s)
    with model.open(small) as image:
        sr = image.super_resolve([(0, 0, image.hw[1], image.hw[0])], method='post_crop')[0]
    maps = np.stack(error_maps(sr, whole_bicubic(small, s), src, s))
    db = 10 * np.log10(np.maximum(maps, 1e-3)).repeat(s, 1).repeat(s, 2)
    return np.pad(db, ((0, 0), (0, H - hs), (0, W - ws)), mode='edge').astype(np.float32)


def predict_maps(net, rgb_u8, self_db=None, tile=512):
    """``(E_post, E_bic)`` estimated for an LR RGB uint8 image (float64, MSE per LR pixel), in
    tiles of ``tile`` px with a :data:`HALO` so memory stays bounded on any image size.
    ``self_db``: :func:`self_sr_maps` of the image, for a ``self_sr`` network."""
    x = torch.from_numpy(np.ascontiguousarray(rgb_u8)).permute(2, 0, 1).float().div(255.)[None]
    z = torch.from_numpy(self_db)[None] if net.self_sr else None
    H, W = rgb_u8.shape[:2]
    out = np.zeros((2, H, W), np.float64)
    with torch.no_grad():
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                ya, xa = max(0, y0 - HALO), max(0, x0 - HALO)
                yb, xb = min(H, y0 + tile + HALO), min(W, x0 + tile + HALO)
                d = net(x[:, :, ya:yb, xa:xb], None if z is None else z[:, :, ya:yb, xa:xb])[0].double()
                y1, x1 = min(H, y0 + tile), min(W, x0 + tile)
                out[:, y0:y1, x0:x1] = d[:, y0 - ya:y1 - ya, x0 - xa:x1 - xa].numpy()
    e = 10. ** (out / 10.)
    return e[0], e[1]


class GainMap:
    """Estimator (``estimator='map'``): box scores = :func:`~clsr_arch.proposals.box_gains` of
    the predicted error maps, i.e. the estimated gain in dB over bicubic. Whether the network
    reads the self-SR hint is read off its weights (6 input channels instead of 4)."""
    name = 'gain map'

    def __init__(self, model, weights=MAP_WEIGHTS):
        if not osp.isfile(weights):
            raise LocalSRError(f'{weights} missing: train it with python -m clsr_arch.gain_map train')
        state = torch.load(weights, map_location='cpu', weights_only=True)
        self.net = GainMapNet(self_sr=state['body.0.weight'].shape[1] == 6)
        self.net.load_state_dict(state)
        self.net.eval()
        self.model = model
        self._cache = (None, None)

    def maps(self, rgb_u8):
        """``(E_post, E_bic)`` estimated for the image, kept for the last image (propose() and
        the tiled refinement score many box sets of one image)."""
        if self._cache[0] is not rgb_u8:
            z = self_sr_maps(self.model, rgb_u8) if self.net.self_sr else None
            self._cache = (rgb_u8, predict_maps(self.net, rgb_u8, z))
        return self._cache[1]

    def scores(self, image, boxes):
        from .proposals import box_gains
        return box_gains(*self.maps(image.rgb), boxes)

    def gflops(self, hw):
        net = count_flops(self.net, torch.zeros(1, 3, 64, 64), *([torch.zeros(1, 2, 64, 64)] if self.net.self_sr else []))
        out = net * hw[0] * hw[1] / 64 ** 2
        if self.net.self_sr:  # the backbone over the image shrunk s x s (the self-SR hint)
            out += self.model.cost.base(hw[0] // self.model.scale, hw[1] // self.model.scale)
        return out / 1e9


# ------------------------------------------------------------------------------ training
def _cell_psnr(mse, k):
    m = F.avg_pool2d(mse, k, k // 2)
    return torch.clamp(10 * torch.log10(255. ** 2 / m.clamp_min(1e-10)), max=CAP)


def cell_loss(pred_db, e_true, cells=CELLS, rank=1.):
    """L1 between estimated and true gains (and, half-weighted, the two PSNRs) on cells of each
    size in ``cells`` (stride half a cell), plus ``rank`` times :func:`rank_loss` on the
    :data:`RANK_CELL` cells. ``pred_db`` ``[B, 2, H, W]``, ``e_true`` the two true MSE maps
    ``[B, 2, H, W]``."""
    e_hat = 10. ** (pred_db / 10.)
    loss = 0.
    for k in cells:
        p_hat, p = _cell_psnr(e_hat, k), _cell_psnr(e_true, k)
        g_hat, g = p_hat[:, 0] - p_hat[:, 1], p[:, 0] - p[:, 1]
        loss = loss + (g_hat - g).abs().mean() + 0.5 * (p_hat - p).abs().mean()
    loss = loss / len(cells)
    if rank:
        p_hat, p = _cell_psnr(e_hat, RANK_CELL), _cell_psnr(e_true, RANK_CELL)
        loss = loss + rank * rank_loss(p_hat[:, 0] - p_hat[:, 1], p[:, 0] - p[:, 1])
    return loss


def rank_loss(g_hat, g):
    """What proposals need is the *order* of the gains within an image: over every pair of cells
    of a crop, a logistic loss on the estimated difference having the true difference's sign,
    weighted by the size of the true difference (near-ties matter little). ``[B, h, w]`` each."""
    gh, gt = g_hat.flatten(1), g.flatten(1)
    dt = gt[:, :, None] - gt[:, None, :]
    dh = gh[:, :, None] - gh[:, None, :]
    w = dt.abs()
    return (w * F.softplus(-torch.sign(dt) * dh)).sum() / w.sum().clamp_min(1e-6)


def val_share(net, items, hints=None, sizes=(24, 48)):
    """Mean over ``sizes`` of the validation share of the oracle (top 5 disjoint boxes);
    ``hints``: each item's :func:`self_sr_maps`, for a ``self_sr`` network."""
    from .proposals import box_gains, share_of_oracle
    net.eval()
    maps = [predict_maps(net, it[0], hints[i] if hints else None) for i, it in enumerate(items)]
    shares = [share_of_oracle(items, [lambda lr, c, m=m: box_gains(*m, c) for m in maps], size=s) for s in sizes]
    return float(np.mean(shares)), shares


def train(model, out=MAP_WEIGHTS, iters=3000, seed=0, crop=64, batch=16, self_sr=False, rank=1., cache=None, every=1,
          exclude=('0004.png', ), log=print):
    """Fit :class:`GainMapNet` to the true error maps of the training split (random ``crop`` px
    crops, flips and rotations), Adam 2e-3 cosine; every 250 iterations the validation share of
    the oracle picks the checkpoint. ``rank``: the weight of :func:`rank_loss`. ``exclude``: the
    DIV2K photo benchmarks/proposals.py measures.
    ``cache``: a .pt file keeping the prepared truth (and self-SR hints) for reruns."""
    from .proposals import prepared_truth
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    data = prepared_truth(model, cache, seed, exclude, every, log)
    if self_sr and 'hints_train' not in data:
        log('self-SR hints (the model on each LR image shrunk x%d)' % model.scale)
        for split in ('train', 'val'):
            data['hints_' + split] = [self_sr_maps(model, it[0]) for it in data[split]]
        if cache:
            torch.save(data, cache)
    tr, va = data['train'], data['val']
    tr_hints = data['hints_train'] if self_sr else [None] * len(tr)
    va_hints = data['hints_val'] if self_sr else None
    keep = [i for i, t in enumerate(tr) if min(t[0].shape[:2]) >= crop]
    tr, tr_hints = [tr[i] for i in keep], [tr_hints[i] for i in keep]
    log(f'{len(tr)} training and {len(va)} validation LR images ({time.time() - t0:.0f} s)')
    weights = np.array([lr.shape[0] * lr.shape[1] for lr, *_ in tr], np.float64)
    weights /= weights.sum()
    net = GainMapNet(self_sr=self_sr)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    best, best_state = -9., None
    for it in range(1, iters + 1):
        net.train()
        xs, es, zs = [], [], []
        for i in rng.choice(len(tr), batch, p=weights):
            lr, ep, eb = tr[i][:3]
            H, W = lr.shape[:2]
            y, x = int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))
            win = (slice(y, y + crop), slice(x, x + crop))
            xs.append(torch.from_numpy(np.ascontiguousarray(lr[win])).permute(2, 0, 1))
            es.append(torch.from_numpy(np.stack([ep[win], eb[win]])))
            if self_sr:
                zs.append(torch.from_numpy(np.ascontiguousarray(tr_hints[i][:, win[0], win[1]])))
        batch_t = [torch.stack(xs).float().div(255.), torch.stack(es).float()] + ([torch.stack(zs)] if self_sr else [])
        if it % 2:
            batch_t = [t.flip(-1) for t in batch_t]
        batch_t = [torch.rot90(t, int(it // 2 % 4), (2, 3)) for t in batch_t]
        xb, eb_ = batch_t[:2]
        loss = cell_loss(net(xb, batch_t[2] if self_sr else None), eb_, rank=rank)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % 250 == 0 or it == iters:
            share, shares = val_share(net, va, va_hints)
            log(f'iter {it}: train loss {loss.item():.3f} dB, validation share of the oracle {share:.3f} '
                f'(24 px {shares[0]:.3f}, 48 px {shares[1]:.3f})')
            if share > best:
                best, best_state = share, {k: v.clone() for k, v in net.state_dict().items()}
    from .utils.checkpoint import atomic_save
    atomic_save(best_state, out)
    log(f'saved {out} (validation share of the oracle {best:.3f}; {time.time() - t0:.0f} s)')
    return best


def main(argv=None):
    from .proposals import train_args
    p = train_args('Train the proposals\' gain map for the shipped model (issue 23).', 3000, MAP_WEIGHTS)
    p.add_argument('--self-sr', action='store_true',
                   help='also read the self-SR hint (self_sr_maps; measured no better on validation, docs/selective.md)')
    p.add_argument('--rank', type=float, default=1., help='weight of the rank term of the loss (0: L1 on the gains only)')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from .api.model import LocalSR
    train(LocalSR(device='cpu'), args.out, args.iters, self_sr=args.self_sr, rank=args.rank, cache=args.cache, every=args.every,
          log=lambda m: print(m, flush=True))


if __name__ == '__main__':
    main()
