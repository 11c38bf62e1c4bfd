"""Proof that our CARN_M reproduces the official CARN-M weights' published x4 results.

CARN paper (Ahn et al. 2018, Table 2), CARN-M x4, PSNR / SSIM on Y, 4-pixel border cropped:
Set5 31.92 / 0.8903, Set14 28.42 / 0.7762, B100 27.44 / 0.7304. The LocalSR paper's CARN
backbone (Table 1, 0.65 GFLOPs at 24x24) is this network.

Protocol (the standard MATLAB one, done with BasicSR's ports): HR cropped to a multiple of 4;
LR = ``basicsr.utils.matlab_functions.imresize(HR, 1/4)`` (MATLAB bicubic with antialiasing)
rounded to uint8 as a saved PNG would be; SR rounded to uint8 (``tensor2img``); metrics
``calculate_psnr/calculate_ssim(crop_border=4, test_y_channel=True)`` averaged over images.
Grayscale images (Set14 bridge.png) are read as 3 equal channels.

Also measures FLOPs (``torch.utils.flop_counter.FlopCounterMode``: 2 x MACs per conv) of
CARN and CARN-M at x4 for 24x24 and 144x216 LR inputs, and writes ``docs/carn_m_official.md``.

    .venv/bin/python benchmarks/carn_m_official.py [--sets Set5 Set14 BSD100] [--no-doc]
"""
import argparse
import os
import os.path as osp
import sys
import time

import cv2
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)

import clsr_arch  # noqa: E402,F401  (compat + registries)
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import img2tensor, tensor2img  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402
from clsr_arch.archs.carn_arch import CARN, CARN_M, official_carn_m_to_single_scale  # noqa: E402

SHARED_DATA = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data'))
WEIGHTS = osp.join(SHARED_DATA, 'weights', 'carn_m.pth')
SCALE = 4
# (PSNR, SSIM) of the official CARN-M weights at x4, CARN paper Table 2.
PUBLISHED = {'Set5': (31.92, 0.8903), 'Set14': (28.42, 0.7762), 'BSD100': (27.44, 0.7304)}
PAPER_NAME = {'Set5': 'Set5', 'Set14': 'Set14', 'BSD100': 'B100'}
# LocalSR Table 1 / Sec. 4 cost of the "CARN" backbone at x4, GFLOPs (= 2 x GMACs).
PAPER_GFLOPS = {(24, 24): 0.65, (144, 216): 35.37}
DOC = osp.join(REPO, 'docs', 'carn_m_official.md')


def load_official_carn_m(path=WEIGHTS, scale=SCALE):
    """Our single-scale ``CARN_M(upscale=scale)`` with the official weights, in eval mode."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    net = CARN_M(upscale=scale)
    net.load_state_dict(official_carn_m_to_single_scale(state, scale), strict=True)
    return net.eval()


def read_hr(path, scale=SCALE):
    """HR as BGR uint8 HxWx3 (grayscale -> 3 equal channels), cropped to a multiple of scale."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read image {path!r}')
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale]


def bicubic_lr(hr_bgr_uint8, scale=SCALE):
    """MATLAB ``imresize(HR, 1/scale, 'bicubic')`` then the uint8 rounding of a saved PNG."""
    lr = imresize(hr_bgr_uint8.astype(np.float32) / 255., 1 / scale)
    return np.clip(np.round(lr * 255.), 0, 255).astype(np.uint8)


@torch.no_grad()
def evaluate_image(net, hr_path, scale=SCALE):
    """(PSNR, SSIM) on Y with a ``scale``-pixel border cropped for one HR image."""
    hr = read_hr(hr_path, scale)
    lr = bicubic_lr(hr, scale)
    x = img2tensor(lr.astype(np.float32) / 255., bgr2rgb=True, float32=True).unsqueeze(0)  # RGB [0,1]
    sr = tensor2img(net(x), rgb2bgr=True, min_max=(0, 1))  # clamp, BGR, uint8 rounding
    if sr.shape != hr.shape:
        raise ValueError(f'{hr_path}: SR shape {sr.shape} != HR shape {hr.shape}')
    return (calculate_psnr(sr, hr, crop_border=scale, test_y_channel=True),
            calculate_ssim(sr, hr, crop_border=scale, test_y_channel=True))


def evaluate_set(net, folder, scale=SCALE, progress=True):
    """Mean (PSNR, SSIM) over every image of ``folder``, and the per-image list."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(('.png', '.bmp', '.jpg')))
    if not names:
        raise ValueError(f'no images in {folder!r}')
    rows = []
    for name in tqdm(names, desc=osp.basename(osp.dirname(folder)), disable=not progress, leave=False):
        rows.append((name, *evaluate_image(net, osp.join(folder, name), scale)))
    return float(np.mean([r[1] for r in rows])), float(np.mean([r[2] for r in rows])), rows


@torch.no_grad()
def protocol_variants(net, folder, scale=SCALE):
    """Mean Y-PSNR over ``folder`` under common variants of the evaluation protocol (to judge
    how much of a residual gap to published numbers the protocol alone can explain)."""
    from basicsr.metrics.metric_util import to_y_channel

    def psnr(a, b):
        return 10 * np.log10(255.**2 / np.mean((a.astype(np.float64) - b.astype(np.float64))**2))

    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(('.png', '.bmp', '.jpg')))
    out = {}
    for name in names:
        hr = read_hr(osp.join(folder, name), scale)
        x = img2tensor(bicubic_lr(hr, scale).astype(np.float32) / 255., bgr2rgb=True).unsqueeze(0)
        sr = net(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1] * 255.  # BGR float
        sr_bgr_in = net(x.flip(1)).flip(1)[0].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1] * 255.
        y_hr = to_y_channel(hr)
        cases = {
            'as tested (float Y, 4-px border, SR rounded)': (to_y_channel(np.round(sr).astype(np.float32)), 4),
            'Y rounded to uint8 (MATLAB rgb2ycbcr on uint8)': (np.round(to_y_channel(np.round(sr).astype(
                np.float32))), 4),
            '6-px border': (to_y_channel(np.round(sr).astype(np.float32)), 6),
            '8-px border': (to_y_channel(np.round(sr).astype(np.float32)), 8),
            'SR truncated to uint8': (to_y_channel(np.floor(sr).astype(np.float32)), 4),
            'BGR fed to the network': (to_y_channel(np.round(sr_bgr_in).astype(np.float32)), 4),
        }
        for key, (y_sr, cb) in cases.items():
            ref = np.round(y_hr) if key.startswith('Y rounded') else y_hr
            out.setdefault(key, []).append(psnr(y_sr[cb:-cb, cb:-cb], ref[cb:-cb, cb:-cb]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def count_gflops(net, lr_hw):
    """GFLOPs (2 x MACs, FlopCounterMode) of one forward pass on a 1x3xHxW input."""
    x = torch.rand(1, 3, *lr_hw)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x)
    return counter.get_total_flops() / 1e9


def n_params(net, trainable_only=False):
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sets', nargs='+', default=list(PUBLISHED), choices=list(PUBLISHED))
    parser.add_argument('--weights', default=WEIGHTS)
    parser.add_argument('--no-doc', action='store_true', help='only print, do not write docs/carn_m_official.md')
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    net = load_official_carn_m(args.weights)
    results, per_image = {}, {}
    t0 = time.time()
    for name in args.sets:
        folder = osp.join(SHARED_DATA, name, 'HR')
        psnr, ssim, rows = evaluate_set(net, folder)
        results[name] = (psnr, ssim, len(rows))
        per_image[name] = rows
    eval_s = time.time() - t0
    variants = protocol_variants(net, osp.join(SHARED_DATA, 'Set5', 'HR'))
    vtable = '\n'.join(['| Set5 protocol variant | PSNR | vs published |', '|---|---|---|'] +
                        [f'| {k} | {v:.3f} | {v - PUBLISHED["Set5"][0]:+.3f} |' for k, v in variants.items()])

    lines = ['| set | images | PSNR (ours) | PSNR (published) | diff (dB) | SSIM (ours) | SSIM (published) | diff |',
             '|---|---|---|---|---|---|---|---|']
    for name, (psnr, ssim, n) in results.items():
        pp, ps = PUBLISHED[name]
        lines.append(f'| {PAPER_NAME[name]} | {n} | {psnr:.3f} | {pp:.2f} | {psnr - pp:+.3f} | {ssim:.4f} | '
                     f'{ps:.4f} | {ssim - ps:+.4f} |')
    table = '\n'.join(lines)
    small = [n for n in per_image if len(per_image[n]) <= 20]  # B100's 100 rows stay out of the doc
    plines = ['| set | image | PSNR | SSIM |', '|---|---|---|---|']
    plines += [f'| {PAPER_NAME[n]} | {img} | {p:.3f} | {s:.4f} |' for n in small for img, p, s in per_image[n]]
    per_image_table = '\n'.join(plines)

    nets = {'CARN-M': CARN_M(upscale=SCALE).eval(), 'CARN': CARN(upscale=SCALE).eval()}
    flines = ['| network (x4, single-scale) | params (all) | params (trainable) | GFLOPs 24x24 | GFLOPs 144x216 |',
              '|---|---|---|---|---|']
    for label, m in nets.items():
        g = [count_gflops(m, hw) for hw in PAPER_GFLOPS]
        flines.append(f'| {label} | {n_params(m):,} | {n_params(m, True):,} | {g[0]:.3f} | {g[1]:.2f} |')
    for label, cls in (('CARN-M', CARN_M), ('CARN', CARN)):
        m = cls(upscale=SCALE, multi_scale=True)
        flines.append(f'| {label} multi-scale (official layout) | {n_params(m):,} | {n_params(m, True):,} | '
                      f'(x4 path as above) | |')
    flines.append(f'| LocalSR paper, Table 1 "CARN" | | | {PAPER_GFLOPS[(24, 24)]} | {PAPER_GFLOPS[(144, 216)]} |')
    ftable = '\n'.join(flines)

    cmd = 'OMP_NUM_THREADS=2 .venv/bin/python benchmarks/carn_m_official.py'
    print(table)
    print()
    print(vtable)
    print()
    print(ftable)
    print(f'\n(evaluation {eval_s:.0f} s)')
    if args.no_doc:
        return
    doc = f"""# Official CARN-M weights through our `CARN_M` (x4)

Generated by `{cmd}` (evaluation took {eval_s:.0f} s on CPU, {torch.get_num_threads()} threads).

Weights: `../shared/data/weights/carn_m.pth` (nmhkahn/CARN-pytorch, multi-scale), mapped with
`clsr_arch.archs.carn_arch.official_carn_m_to_single_scale(state, 4)` into `CARN_M(upscale=4)`
(strict load). Protocol: HR cropped to a multiple of 4; LR by BasicSR's MATLAB-compatible
`imresize` (bicubic, antialiased) rounded to uint8; SR rounded to uint8; Y channel (BT.601, as
MATLAB `rgb2ycbcr`), 4-pixel border cropped, BasicSR `calculate_psnr` / `calculate_ssim`,
averaged over images. Set14 `bridge.png` (grayscale) is read as 3 equal channels. Published
numbers: CARN paper (Ahn et al. 2018), Table 2, CARN-M x4.

{table}

Our B100 is the 480x320 SelfExSR release, not the original 481x321 images (see
`../shared/data/README.md`), so a few hundredths of a dB of difference there are expected.

All three sets land within 0.05 dB (the tolerance `tests/test_carn.py` asserts for Set5 and
Set14). The CARN paper does not spell out its evaluation script; common variants of the protocol move
Set5 by a few hundredths of a dB (same weights, same LR):

{vtable}

We keep the protocol fixed by the task (float Y, 4-pixel border, SR rounded to uint8). Feeding
BGR instead of RGB moves Set5 by only a few hundredths too (the network is nearly
colour-symmetric), so channel order cannot be checked by PSNR alone.

Per image:

{per_image_table}

## Parameters and FLOPs

FLOPs by `torch.utils.flop_counter.FlopCounterMode` (convolutions, 2 x MACs; ReLU, adds and
PixelShuffle are not counted), one x4 forward pass on a 3-channel LR input of the given size.
Parameter counts include the frozen mean-shift convolutions (24 parameters); "trainable"
leaves them out. The CARN paper's 1,592K (CARN) and 412K (CARN-M) are multi-scale counts.

{ftable}

Our counts are linear in the LR pixel count (35.09 = 0.650 x 144*216 / 24*24); the paper's
35.37 at 144x216 is 0.8 % above its own 0.65 scaled the same way, so it was presumably counted
with a different tool (one that also counts some elementwise ops) and is not reproduced to the
last digit by `FlopCounterMode`.

The LocalSR paper's "CARN" row (0.65 GFLOPs for a 24x24 ROI at x4) is CARN-M's cost: CARN-M
has 32.5 G multi-adds for a 1280x720 output (LR 320x180 = 100 x 24x24 pixels), i.e. 0.65 GFLOPs
at 24x24, while full CARN (90.9 G multi-adds) would be about 1.8 GFLOPs.
"""
    with open(DOC, 'w') as f:
        f.write(doc)
    print(f'wrote {DOC}')


if __name__ == '__main__':
    main()
