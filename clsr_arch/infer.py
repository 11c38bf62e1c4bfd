"""``clsr-infer`` / ``python -m clsr_arch.infer``: super-resolve regions of interest of one image
with CLSR and compare it with the local SR strategies of the LocalSR paper (Sec. 1, Fig. 1;
Sec. 4.2, Table 1): bicubic, pre-cropping (the plain backbone on the ROI alone, plus CLSR's own
``roi_pad`` pixels of context), CLSR (whole image as context, Sec. 3.5 "Inference") and
post-cropping (the plain backbone on the whole image, then cropped). The plain backbone is the
official CARN-M by default (``--base-weights``).

    python -m clsr_arch.infer IMAGE --degrade --roi 40,30,24,24 --roi 10,60,48,48 --out results/infer
    python -m clsr_arch.infer LR.png --grid 24 --out results/infer

IMAGE is an LR image, or with ``--degrade`` an HR image that is cropped to a multiple of the
scale and bicubic-downscaled the paper's way (MATLAB-compatible ``imresize``, uint8 round trip);
the HR crop is then the ground truth (``--hr`` gives one for an LR image). Boxes are
``x,y,w,h`` in LR pixels (docs/design.md). Writes, under ``--out``:

* ``<stem>_roi<i>_<method>.png`` for every ROI and method (``clsr``, ``pre_crop``,
  ``post_crop``, ``bicubic``, and ``gt`` when known);
* ``<stem>_compare.png``: the LR context with the boxes, then per ROI every method labelled
  with its time, GFLOPs (``clsr_arch.utils.flops``) and PSNR (with ground truth);
* ``<stem>_metrics.json``: the same numbers.

Errors (a box outside the image, an unreadable image, weights that do not match the options)
print one line ``clsr-infer: error: ...`` naming the offending thing, and exit with code 2.
"""
import argparse
import copy
import json
import os
import os.path as osp
import sys
import time

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

import clsr_arch  # noqa: F401  (compat + registries)
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize

from clsr_arch.archs import roi as roi_ops
from clsr_arch.archs.backbone_adapters import run_backbone
from clsr_arch.archs.clsr_arch import backbone_state_dict
from clsr_arch.data.context_roi_dataset import validation_grid
from clsr_arch.data.image_io import read_bgr8
from clsr_arch.data.prep import bicubic_lr, mod_crop
from clsr_arch.utils.checkpoint import CheckpointError, safe_load
from clsr_arch.utils.figure import comparison_figure
from clsr_arch.utils.flops import localsr_flops

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
DEFAULT_WEIGHTS = osp.join(REPO, 'weights', 'CLSR_CARN_M_x4.pth')
DEFAULT_OPT = osp.join(REPO, 'options', 'train', 'CLSR_CARN_M_x4_ship.yml')
OFFICIAL_CARN_M = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data', 'weights', 'carn_m.pth'))
METHODS = ('bicubic', 'pre_crop', 'clsr', 'post_crop')
LABELS = {'bicubic': 'bicubic', 'pre_crop': 'pre-crop', 'clsr': 'CLSR (ours)', 'post_crop': 'post-crop',
          'gt': 'ground truth'}


class InferError(ValueError):
    """A user error: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------- inputs
def parse_box(text):
    """``'x,y,w,h'`` -> (x, y, w, h) ints."""
    parts = text.replace(' ', '').split(',')
    try:
        box = tuple(int(p) for p in parts)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise InferError(f'--roi {text!r}: expected x,y,w,h (four integers, LR pixels)')
    return box


def check_box(box, lr_hw, name):
    x, y, w, h = box
    H, W = lr_hw
    if w < 1 or h < 1:
        raise InferError(f'{name} {x},{y},{w},{h}: w and h must be >= 1')
    if x < 0 or y < 0 or x + w > W or y + h > H:
        raise InferError(f'{name} {x},{y},{w},{h} is outside the {W}x{H} (WxH) LR image: '
                         f'need 0 <= x, x+w <= {W}, 0 <= y, y+h <= {H}')


def grid_boxes(lr_hw, size):
    """Non-overlapping ``size`` x ``size`` grid, row-major (the evaluation protocol's grid)."""
    H, W = lr_hw
    if size < 1 or size > min(H, W):
        raise InferError(f'--grid {size}: needs 1 <= size <= {min(H, W)} (the {W}x{H} LR image)')
    return [tuple(r) for r in validation_grid(H, W, size, size)[0].tolist()]


def read_image(path, what):
    try:
        return read_bgr8(path)
    except ValueError as err:  # DataError: unreadable, truncated, not an image, transparent alpha
        raise InferError(f'{what} {err}') from None


def load_inputs(args, scale):
    """(LR bgr uint8, HR bgr uint8 or None)."""
    img = read_image(args.image, 'image')
    if args.degrade:
        if args.hr:
            raise InferError('--hr and --degrade exclude each other (with --degrade IMAGE is the HR)')
        hr = mod_crop(img, scale)
        if min(hr.shape[:2]) < scale:
            raise InferError(f'image {args.image}: {img.shape[1]}x{img.shape[0]} is too small for x{scale}')
        return bicubic_lr(hr, scale), hr
    hr = None
    if args.hr:
        hr = read_image(args.hr, '--hr')
        want = (scale * img.shape[0], scale * img.shape[1])
        if hr.shape[:2] != want:
            raise InferError(f'--hr {args.hr}: {hr.shape[1]}x{hr.shape[0]} is not x{scale} of the '
                             f'{img.shape[1]}x{img.shape[0]} LR image (expected {want[1]}x{want[0]})')
    return img, hr


# ---------------------------------------------------------------------------------- networks
def load_options(path):
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except OSError as err:
        raise InferError(f'--opt {path}: cannot read ({err.strerror})') from None
    except yaml.YAMLError as err:
        raise InferError(f'--opt {path}: not valid YAML ({str(err).splitlines()[0]})') from None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise InferError(f'--opt {path}: no network_g section')
    if opt['network_g'].get('type') != 'CLSR':
        raise InferError(f'--opt {path}: network_g.type is {opt["network_g"].get("type")!r}, expected CLSR')
    return opt


def params_of(ckpt, path):
    if isinstance(ckpt, dict):
        for key in ('params_ema', 'params'):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return ckpt
    raise InferError(f'--weights {path}: no params_ema/params state dict in the checkpoint')


def build_clsr(opt_path, weights_path):
    """The CLSR network of ``opt_path``'s ``network_g`` with ``weights_path`` loaded strictly."""
    opt = load_options(opt_path)
    net_opt = copy.deepcopy(opt['network_g'])
    net_opt['pretrain_backbone'] = None  # every weight comes from --weights
    try:
        net = build_network(net_opt)
    except ValueError as err:
        raise InferError(f'--opt {opt_path}: network_g: {err}') from None
    try:
        ckpt = safe_load(weights_path)
    except (CheckpointError, ValueError) as err:
        raise InferError(f'--weights: {err}') from None
    sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in params_of(ckpt, weights_path).items()}
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = sorted(f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}' for k in set(sd) & set(own)
                    if sd[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def few(keys):
            return '[' + ', '.join(keys[:4]) + (f', ... {len(keys) - 4} more' if len(keys) > 4 else '') + ']'
        raise InferError(f'--weights {weights_path} do not match the network of --opt {opt_path}: '
                         f'missing {few(missing)}, unexpected {few(unexpected)}, shape mismatches {few(shapes)}')
    net.load_state_dict(sd, strict=True)
    return net.eval(), opt


def resolve_base_weights(net, base_weights):
    """``--base-weights`` -> a checkpoint path, or None for the CLSR's own base.

    ``official`` (default): the official CARN-M (``../shared/data/weights/carn_m.pth``) when the
    base is CARN-M -- the baselines the paper compares with -- else the CLSR's own base;
    ``clsr``: the CLSR's own base; anything else: a plain-backbone checkpoint path."""
    if base_weights == 'clsr':
        return None
    if base_weights == 'official':
        if type(net.base).__name__ != 'CARN_M':
            return None
        if not osp.isfile(OFFICIAL_CARN_M):
            raise InferError(f'--base-weights official: {OFFICIAL_CARN_M} missing (../shared/data must sit '
                             'beside the repository; or pass --base-weights clsr / a checkpoint)')
        return OFFICIAL_CARN_M
    return base_weights


def build_base(net, base_weights):
    """The plain backbone for pre-/post-cropping: a copy of the CLSR's base with
    ``base_weights`` loaded (official multi-scale CARN-M files are mapped), or the base itself."""
    if not base_weights:
        return net.base
    base = copy.deepcopy(net.base)
    try:
        base.load_state_dict(backbone_state_dict(base_weights, base), strict=True)
    except (CheckpointError, ValueError) as err:
        raise InferError(f'--base-weights: {err}') from None
    return base.eval()


# ---------------------------------------------------------------------------------- methods
def to_tensor(img_bgr, device):
    return img2tensor(img_bgr.astype(np.float32) / 255., bgr2rgb=True, float32=True).unsqueeze(0).to(device)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def bicubic_flops(h, w, scale):
    """FLOPs of separable bicubic upscaling of an ``h`` x ``w`` RGB ROI: per output pixel and
    channel 4 taps x 2 passes, a multiply and an add each (MATLAB's kernel has 4 taps when
    upscaling)."""
    return 3 * (scale * h) * (scale * w) * 4 * 2 * 2


def run_methods(net, base, lr, boxes, device, progress=True):
    """Every method on every box -> ``{method: [bgr uint8 per box]}``, ``{method: [seconds per box]}``."""
    s = net.scale
    x = to_tensor(lr, device)
    outs = {m: [] for m in METHODS}
    secs = {m: [] for m in METHODS}
    lr_f = lr.astype(np.float32) / 255.
    with torch.no_grad():
        t0 = time.perf_counter()
        state = net.encode_context(x)  # shared by all ROIs (Sec. 3.4)
        sync(device)
        context_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = run_backbone(base, x, s, net.adapter.multiple)  # SwinIR: pad to its window
        sync(device)
        post_s = time.perf_counter() - t0
        pads = {}
        for bx, by, bw, bh in tqdm(boxes, desc='ROIs', unit='roi', disable=not progress):
            box = torch.tensor([[0, bx, by, bw, bh]])
            t0 = time.perf_counter()
            up = imresize(lr_f[by:by + bh, bx:bx + bw], s)  # MATLAB bicubic of the ROI alone
            secs['bicubic'].append(time.perf_counter() - t0)
            outs['bicubic'].append(np.clip(np.round(up * 255.), 0, 255).astype(np.uint8))

            pad = pads.setdefault((bw, bh), roi_ops.padding_for(bh, bw, net.roi_pad, net.adapter.multiple))
            t0 = time.perf_counter()
            # the same padded window as CLSR's base branch (real context, shifted inward at borders)
            pbox, offset = roi_ops.place_inside(roi_ops.pad_boxes(box, pad), box, x.shape[-2:], net.adapter.multiple)
            sr = roi_ops.crop_outputs(run_backbone(base, roi_ops.crop(x, pbox), s), offset, bh, bw, s)
            sync(device)
            secs['pre_crop'].append(time.perf_counter() - t0)
            outs['pre_crop'].append(tensor2img(sr.cpu()))

            t0 = time.perf_counter()
            sr = net.decode(state, box.to(device))
            sync(device)
            # the context pass is shared: each ROI is charged its share of it
            secs['clsr'].append(time.perf_counter() - t0 + context_s / len(boxes))
            outs['clsr'].append(tensor2img(sr.cpu()))

            outs['post_crop'].append(tensor2img(full[:, :, s * by:s * (by + bh), s * bx:s * (bx + bw)].cpu()))
            secs['post_crop'].append(post_s)  # the whole image is run for any ROI
    return outs, secs


def gflops_per_size(net, lr_hw, sizes):
    """``{(w, h): {'bicubic', 'pre_crop', 'clsr', 'post_crop'}}`` GFLOPs per ROI."""
    out = {}
    for bw, bh in sizes:
        f = localsr_flops(net, lr_hw, (bh, bw), device='cpu', strategies=('post_crop', 'clsr'))
        # pre-crop runs on the ROI grown by CLSR's roi_pad (what run_methods does)
        left, top, right, bottom = roi_ops.padding_for(bh, bw, net.roi_pad, net.adapter.multiple)
        ph, pw = bh + top + bottom, bw + left + right
        pre = localsr_flops(net, (ph, pw), (ph, pw), device='cpu', strategies=('pre_crop',))['pre_crop']
        out[(bw, bh)] = {'bicubic': bicubic_flops(bh, bw, net.scale) / 1e9, 'pre_crop': pre,
                         'clsr': f['clsr'], 'post_crop': f['post_crop']}
    return out


def psnr_ssim(img, ref):
    """Per-ROI metrics as the evaluation (crop_border 0): PSNR RGB, PSNR/SSIM on Y."""
    return {'psnr': float(calculate_psnr(img, ref, 0)),
            'psnr_y': float(calculate_psnr(img, ref, 0, test_y_channel=True)),
            'ssim_y': float(calculate_ssim(img, ref, 0, test_y_channel=True))}


# ---------------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(prog='clsr-infer', description=__doc__.split('\n\n')[0])
    p.add_argument('image', help='LR image (or HR image with --degrade)')
    p.add_argument('--degrade', action='store_true',
                   help='IMAGE is HR: crop to a multiple of the scale, make the LR by MATLAB bicubic')
    p.add_argument('--hr', help='ground-truth HR of an LR IMAGE (for PSNR)')
    p.add_argument('--roi', action='append', default=[], metavar='X,Y,W,H', help='ROI in LR pixels (repeatable)')
    p.add_argument('--grid', type=int, metavar='N', help='every N x N ROI of a non-overlapping grid')
    p.add_argument('--weights', default=DEFAULT_WEIGHTS, help='CLSR checkpoint (default: the shipped model)')
    p.add_argument('--opt', default=DEFAULT_OPT, help="YAML whose network_g builds the weights' network")
    p.add_argument('--base-weights', default='official',
                   help="plain backbone of pre-/post-crop: 'official' (default; CARN-M: the official weights "
                        "in ../shared/data/weights/carn_m.pth, other backbones: the CLSR's base), 'clsr' (the "
                        "CLSR's own base) or a checkpoint path")
    p.add_argument('--out', default='results/infer', help='output folder')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1, ...')
    p.add_argument('--max-figure-rois', type=int, default=6, help='ROIs shown in the figure (all are written)')
    p.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    return p


def infer(args):
    """Run everything; returns the metrics dict that is also written as JSON."""
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device)
    if not args.roi and not args.grid:
        raise InferError('give at least one --roi x,y,w,h or --grid N')
    if args.max_figure_rois < 1:
        raise InferError(f'--max-figure-rois {args.max_figure_rois}: must be >= 1')
    net, _ = build_clsr(args.opt, args.weights)
    s = net.scale
    lr, hr = load_inputs(args, s)
    boxes = [parse_box(t) for t in args.roi]
    for t, box in zip(args.roi, boxes):
        check_box(box, lr.shape[:2], '--roi')
    if args.grid:
        boxes += grid_boxes(lr.shape[:2], args.grid)
    net = net.to(device)
    base_weights = resolve_base_weights(net, args.base_weights)
    base = build_base(net, base_weights).to(device)

    outs, secs = run_methods(net, base, lr, boxes, device, progress=not args.quiet)
    flops = gflops_per_size(net.cpu(), lr.shape[:2], sorted({(b[2], b[3]) for b in boxes}))

    os.makedirs(args.out, exist_ok=True)
    stem = osp.splitext(osp.basename(args.image))[0]
    rois, tiles = [], []
    for i, (bx, by, bw, bh) in enumerate(boxes):
        gt = hr[s * by:s * (by + bh), s * bx:s * (bx + bw)] if hr is not None else None
        entry = {'box': [bx, by, bw, bh], 'methods': {}, 'files': {}}
        row = []
        for m in METHODS:
            img = outs[m][i]
            f = osp.join(args.out, f'{stem}_roi{i}_{m}.png')
            cv2.imwrite(f, img)
            rec = {'seconds': secs[m][i], 'gflops': flops[(bw, bh)][m]}
            name = f'pre-crop (pad {net.roi_pad})' if m == 'pre_crop' else LABELS[m]
            label = f'{name}\n{secs[m][i] * 1e3:.0f} ms, {rec["gflops"]:.3g} GFLOPs'
            if gt is not None:
                rec.update(psnr_ssim(img, gt))
                label += f'\nPSNR-Y {rec["psnr_y"]:.2f} dB'
            entry['methods'][m], entry['files'][m] = rec, f
            row.append((img[:, :, ::-1], label))
        if gt is not None:
            f = osp.join(args.out, f'{stem}_roi{i}_gt.png')
            cv2.imwrite(f, gt)
            entry['files']['gt'] = f
            row.append((gt[:, :, ::-1], f'{LABELS["gt"]}\nx{s} of {bw}x{bh} LR'))
        rois.append(entry)
        tiles.append(row)

    n_fig = min(len(boxes), args.max_figure_rois)
    figure = osp.join(args.out, f'{stem}_compare.png')
    comparison_figure(lr[:, :, ::-1], boxes[:n_fig], tiles[:n_fig], figure,
                      title=f'{osp.basename(args.image)}: x{s} local SR, CLSR vs pre-/post-cropping'
                            + (' (LR = bicubic of the HR)' if args.degrade else ''))
    result = {'image': args.image, 'lr_size': [lr.shape[1], lr.shape[0]], 'scale': s, 'weights': args.weights,
              'base_weights': base_weights or 'the CLSR base',
              'figure': figure, 'rois': rois}
    if hr is not None:
        result['mean'] = {m: {k: float(np.mean([r['methods'][m][k] for r in rois])) for k in ('psnr', 'psnr_y', 'ssim_y')}
                          for m in METHODS}
    with open(osp.join(args.out, f'{stem}_metrics.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        result = infer(args)
    except InferError as err:
        print(f'clsr-infer: error: {err}', file=sys.stderr)
        return 2
    if not args.quiet:
        print(f'figure: {result["figure"]}')
        for m in METHODS:
            line = f'  {LABELS[m]:12s}'
            if 'mean' in result:
                line += f' PSNR-Y {result["mean"][m]["psnr_y"]:.2f} dB  PSNR-RGB {result["mean"][m]["psnr"]:.2f} dB'
            print(line + f'  (mean over {len(result["rois"])} ROIs)' if 'mean' in result else line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
