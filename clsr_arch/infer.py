"""``clsr-infer`` / ``python -m clsr_arch.infer``: super-resolve regions of interest of one image
with CLSR and compare it with the local SR strategies of the LocalSR paper (Sec. 1, Fig. 1;
Sec. 4.2, Table 1): bicubic, pre-cropping (the plain backbone on the ROI plus CLSR's own
``roi_pad`` pixels of real context), CLSR (whole image as context, Sec. 3.5 "Inference") and
post-cropping (the plain backbone on the whole image, then cropped). A thin command line over
the Python API (:mod:`clsr_arch.api`): it parses arguments and writes files; the API loads the
model, plans the boxes and runs the methods.

    python -m clsr_arch.infer IMAGE --degrade --roi 40,30,24,24 --roi 10,60,48,48 --out results/infer
    python -m clsr_arch.infer LR.png --grid 24 --out results/infer
    python -m clsr_arch.infer BIG.png --roi 1000,1000,48,48 --methods clsr,pre_crop --max-memory 8G

IMAGE is an LR image, or with ``--degrade`` an HR image that is cropped to a multiple of the
scale and bicubic-downscaled the paper's way (MATLAB-compatible ``imresize``, uint8 round trip);
the HR crop is then the ground truth (``--hr`` gives one for an LR image). Boxes are
``x,y,w,h`` in LR pixels (docs/design.md). ``--methods`` picks among ``clsr``, ``bicubic``,
``pre_crop``, ``post_crop`` (default: all that fit the memory budget ``--max-memory``; a method
that does not fit is skipped with one line saying why -- asked for by name, it is an error).
Whole-image SR that does not fit runs tiled (``--tile``, ``--tile-overlap``). Writes, under
``--out`` (all files appear together at the end; an error leaves nothing):

* ``<stem>_roi<i>_<method>.png`` for every ROI and method run (and ``gt`` when known);
* ``<stem>_compare.png``: the LR context with the boxes, then per ROI every method labelled
  with its time, GFLOPs (``clsr_arch.utils.flops``) and PSNR (with ground truth);
* ``<stem>_metrics.json``: the same numbers, the plan, the peak RSS.

Errors (a box outside the image, an unreadable image, weights that do not match the options, a
pass over the memory budget with tiling off) print one line ``clsr-infer: error: ...`` naming
the offending thing, and exit with code 2.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
from basicsr.metrics import calculate_psnr, calculate_ssim

from clsr_arch import api
from clsr_arch.api import DEFAULT_OPT, DEFAULT_WEIGHTS, METHODS, REPO, LocalSRError, MemoryBudgetError  # noqa: F401
from clsr_arch.data.context_roi_dataset import validation_grid
from clsr_arch.data.prep import bicubic_lr, mod_crop
from clsr_arch.utils.figure import comparison_figure
from clsr_arch.utils.memory import format_bytes, peak_rss_bytes

LABELS = {'bicubic': 'bicubic', 'pre_crop': 'pre-crop', 'clsr': 'CLSR (ours)', 'post_crop': 'post-crop',
          'gt': 'ground truth'}


class InferError(LocalSRError):
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


def load_inputs(args, scale):
    """(LR rgb uint8, HR rgb uint8 or None), by the dataset's conversion rules."""
    img, _ = api.load_image(args.image)
    if args.degrade:
        if args.hr:
            raise InferError('--hr and --degrade exclude each other (with --degrade IMAGE is the HR)')
        hr = mod_crop(img, scale)
        if min(hr.shape[:2]) < scale:
            raise InferError(f'image {args.image}: {img.shape[1]}x{img.shape[0]} is too small for x{scale}')
        return bicubic_lr(hr, scale), hr
    return img, load_hr(args, scale, img.shape[:2])


def load_hr(args, scale, lr_hw):
    """The ``--hr`` image (read whole) checked against the LR size, or None."""
    if not args.hr:
        return None
    try:
        hr, _ = api.load_image(args.hr)
    except LocalSRError as err:
        raise InferError(f'--hr {str(err)[len("image "):]}') from None
    want = (scale * lr_hw[0], scale * lr_hw[1])
    if hr.shape[:2] != want:
        raise InferError(f'--hr {args.hr}: {hr.shape[1]}x{hr.shape[0]} is not x{scale} of the '
                         f'{lr_hw[1]}x{lr_hw[0]} LR image (expected {want[1]}x{want[0]})')
    return hr


def parse_methods(text):
    """``--methods`` -> (methods in display order, explicitly asked?)."""
    if text is None:
        return list(METHODS), False
    asked = [m.strip() for m in text.split(',') if m.strip()]
    unknown = [m for m in asked if m not in METHODS]
    if unknown or not asked:
        raise InferError(f'--methods {text!r}: expected a comma-separated subset of {",".join(METHODS)}')
    return [m for m in METHODS if m in asked], True


def parse_tile(text):
    if text == 'auto':
        return 'auto'
    try:
        tile = int(text)
    except ValueError:
        tile = -1
    if tile < 0:
        raise InferError(f"--tile {text!r}: expected 'auto', 0 (no tiling) or a tile size in LR pixels")
    return tile


# ---------------------------------------------------------------------------------- metrics
def psnr_ssim(img, ref):
    """Per-ROI metrics as the evaluation (crop_border 0): PSNR RGB, PSNR/SSIM on Y (BGR inputs)."""
    return {'psnr': float(calculate_psnr(img, ref, 0)),
            'psnr_y': float(calculate_psnr(img, ref, 0, test_y_channel=True)),
            'ssim_y': float(calculate_ssim(img, ref, 0, test_y_channel=True))}


def per_roi_gflops(model, image, method, box, run_info):
    """GFLOPs charged to one ROI: CLSR = context pass + this ROI's decode (Table 1's per-ROI
    cost), pre-crop = the backbone on the padded ROI, post-crop = whole-image SR as run,
    bicubic = its separable filter."""
    x, y, w, h = box
    cost, hw = model.cost, image.hw
    if method == 'clsr' and isinstance(image, api.TiledImage):
        # ROI-local context: the GCM's windows, the PIM tiles this ROI's crop meets, its decode
        return (cost.gcm(hw) + cost.pim(image.roi_context_pixels(box)) + cost.decode(h, w, hw)) / 1e9
    if method == 'clsr':
        return (cost.context(*hw) + cost.decode(h, w, hw)) / 1e9
    if method == 'pre_crop':
        ph, pw = cost.padded_size(h, w, hw)
        return cost.base(ph, pw) / 1e9
    if method == 'post_crop':
        return run_info['gflops']
    return api.bicubic_flops(h, w, model.scale) / 1e9


# ---------------------------------------------------------------------------------- main
def build_parser():
    p = argparse.ArgumentParser(prog='clsr-infer', description=__doc__.split('\n\n')[0])
    p.add_argument('image', help='LR image (or HR image with --degrade)')
    p.add_argument('--degrade', action='store_true',
                   help='IMAGE is HR: crop to a multiple of the scale, make the LR by MATLAB bicubic')
    p.add_argument('--hr', help='ground-truth HR of an LR IMAGE (for PSNR)')
    p.add_argument('--roi', action='append', default=[], metavar='X,Y,W,H', help='ROI in LR pixels (repeatable)')
    p.add_argument('--grid', type=int, metavar='N', help='every N x N ROI of a non-overlapping grid')
    p.add_argument('--propose', type=int, metavar='N',
                   help='add the N non-overlapping boxes with the highest estimated SR gain (where to look)')
    p.add_argument('--propose-size', type=int, default=48, metavar='S', help='side of proposed boxes (default 48)')
    p.add_argument('--propose-by', default='pim', choices=('pim', 'gradient', 'learned'),
                   help='gain estimator of --propose (default pim: from the context pass)')
    p.add_argument('--methods', metavar='M[,M...]',
                   help=f'which of {",".join(METHODS)} to run (default: all that fit the memory budget)')
    api.add_model_args(p)
    p.add_argument('--base-weights', default='official',
                   help="plain backbone of pre-/post-crop: 'official' (default; CARN-M: the official weights "
                        "in ../shared/data/weights/carn_m.pth, other backbones: the CLSR's base), 'clsr' (the "
                        "CLSR's own base) or a checkpoint path")
    p.add_argument('--out', default='results/infer', help='output folder')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1, ...')
    p.add_argument('--threads', type=int, help='CPU threads (default: torch\'s)')
    p.add_argument('--max-memory', metavar='BYTES',
                   help='memory budget, e.g. 8G or 512M (default: 80%% of the available RAM)')
    p.add_argument('--tile', default='auto', metavar='auto|0|N',
                   help='LR tile size of the context pass and of whole-image SR when they do not fit the budget '
                        "(default auto; 0: never tile, too large is an error)")
    p.add_argument('--tile-overlap', type=int, default=16, help='LR pixels around whole-image SR tiles (default 16)')
    p.add_argument('--no-plan', action='store_true',
                   help='CLSR: decode every ROI on its own (default: plan the ROIs: merge, or whole-image SR '
                        'when cheaper by FLOPs)')
    p.add_argument('--max-figure-rois', type=int, default=6, help='ROIs shown in the figure (all are written)')
    p.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    return p


def normalise_argv(argv):
    """``--roi -1,0,5,5`` -> ``--roi=-1,0,5,5``: argparse takes a value starting with '-' for an
    option, so a negative box would stop in argparse instead of getting the box error."""
    out, it = [], iter(argv)
    for a in it:
        if a in ('--roi', '--grid', '--tile', '--tile-overlap', '--threads', '--max-figure-rois'):
            nxt = next(it, None)
            out.append(a if nxt is None else f'{a}={nxt}')
        else:
            out.append(a)
    return out


def run_methods(image, boxes, methods, explicit, plan, say):
    """``{method: (outputs, run_info)}`` for the methods that run; skipped ones are said."""
    results = {}
    for m in methods:
        try:
            outs = image.super_resolve(boxes, method=m, plan=plan)
        except MemoryBudgetError as err:
            if explicit:
                raise
            say(f'{m} skipped: {err}')
            continue
        results[m] = (outs, dict(image.last_run))
        if image.last_run.get('tile'):
            run, whole = image.last_run['tiles'], image.model.whole_bytes(image.hw)
            say(f'{m}: whole-image SR tiled ({image.last_run["tile"]}-pixel LR tiles, overlap '
                f'{image.model.tile_overlap}; the {run[0]} of {run[1]} tiles the ROIs touch): untiled it needs '
                f'~{format_bytes(whole * api.SAFETY)}, over the memory budget of {format_bytes(image.model.max_memory)}')
    if not results:
        raise InferError('no method fits the memory budget (see the lines above); raise --max-memory or allow tiling')
    return results


def infer(args, say=None):
    """Run everything; returns the metrics dict that is also written as JSON."""
    say = say or (lambda line: print(f'clsr-infer: {line}', file=sys.stderr))
    if not args.roi and not args.grid and not args.propose:
        raise InferError('give at least one --roi x,y,w,h, --grid N or --propose N')
    if args.max_figure_rois < 1:
        raise InferError(f'--max-figure-rois {args.max_figure_rois}: must be >= 1')
    methods, explicit = parse_methods(args.methods)
    weights, opt = api.model_paths(args)
    model = api.LocalSR(weights, opt, device=args.device, threads=args.threads,
                        max_memory=args.max_memory, tile=parse_tile(args.tile), tile_overlap=args.tile_overlap,
                        base_weights=args.base_weights, progress=not args.quiet)
    s = model.scale
    if api.is_lazy_path(args.image) and not args.degrade:  # tiled TIFF / .npy: read region by region
        image = model.open(args.image)
        lr, hr = None, load_hr(args, s, image.hw)
    else:
        lr, hr = load_inputs(args, s)
        image = model.open(lr, name=args.image)
    hw = image.hw
    boxes = [parse_box(t) for t in args.roi]
    for box in boxes:
        check_box(box, hw, '--roi')
    if args.grid:
        boxes += grid_boxes(hw, args.grid)
    t0 = time.perf_counter()
    with image:
        proposed = []
        if args.propose:
            proposed, scores = image.propose(args.propose, args.propose_size, args.propose_by)
            say(f'proposed (by {args.propose_by}): ' + ', '.join(f'{",".join(map(str, b))} ({sc:.3g})'
                                                               for b, sc in zip(proposed, scores)))
            boxes += proposed
        results = run_methods(image, boxes, methods, explicit, not args.no_plan, say)
        flops = {m: [per_roi_gflops(model, image, m, b, results[m][1]) for b in boxes] for m in results}
        context = image.context_info
        overview = (lr, 1.0, (0, 0)) if lr is not None else image.overview(boxes)
    total_s = time.perf_counter() - t0
    # everything is written to a hidden folder first and moved into --out at the end
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.clsr-infer-', dir=args.out)
    try:
        result = write_outputs(args, tmp, overview, hw, hr, boxes, results, flops, s, model, context, total_s,
                               proposed)
        for name in os.listdir(tmp):
            os.replace(osp.join(tmp, name), osp.join(args.out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def write_outputs(args, tmp, overview, hw, hr, boxes, results, flops, s, model, context, total_s, proposed=()):
    """PNGs of every ROI and method, the comparison figure (``overview``: ``(rgb, scale,
    origin)`` of the context panel) and the metrics JSON, into ``tmp``."""
    stem = osp.splitext(osp.basename(args.image))[0]
    ran = [m for m in METHODS if m in results]
    rois, tiles = [], []
    for i, (bx, by, bw, bh) in enumerate(boxes):
        gt = hr[s * by:s * (by + bh), s * bx:s * (bx + bw)] if hr is not None else None
        entry = {'box': [bx, by, bw, bh], 'proposed': (bx, by, bw, bh) in proposed, 'methods': {}, 'files': {}}
        row = []
        for m in ran:
            img = results[m][0][i]  # RGB
            name = f'{stem}_roi{i}_{m}.png'
            cv2.imwrite(osp.join(tmp, name), img[:, :, ::-1])
            info = results[m][1]
            # per ROI: the method's time shared over its ROIs (post-crop: the whole image runs for any ROI)
            secs = info['seconds'] if m == 'post_crop' else info['seconds'] / len(boxes)
            rec = {'seconds': secs, 'gflops': flops[m][i]}
            label_name = f'pre-crop (pad {model.net.roi_pad})' if m == 'pre_crop' else LABELS[m]
            if m == 'clsr' and info.get('plan', {}).get('mode') == 'whole':
                label_name += ' = whole-image SR (planned)'
            if info.get('tiles'):
                label_name += f' (tiled, {info["tiles"][0]}/{info["tiles"][1]} tiles)'
            label = f'{label_name}\n{secs * 1e3:.0f} ms, {rec["gflops"]:.3g} GFLOPs'
            if gt is not None:
                rec.update(psnr_ssim(img[:, :, ::-1], gt[:, :, ::-1]))
                label += f'\nPSNR-Y {rec["psnr_y"]:.2f} dB'
            entry['methods'][m] = rec
            entry['files'][m] = osp.join(args.out, name)
            row.append((img, label))
        if gt is not None:
            name = f'{stem}_roi{i}_gt.png'
            cv2.imwrite(osp.join(tmp, name), gt[:, :, ::-1])
            entry['files']['gt'] = osp.join(args.out, name)
            row.append((gt, f'{LABELS["gt"]}\nx{s} of {bw}x{bh} LR'))
        rois.append(entry)
        tiles.append(row)

    figure = f'{stem}_compare.png'
    # proposals are ROIs too (their own rows), and are always drawn on the context
    shown = list(range(min(len(boxes), args.max_figure_rois)))
    shown += [i for i, b in enumerate(boxes) if b in proposed and i not in shown]
    comparison_figure(overview[0], [boxes[i] for i in shown], [tiles[i] for i in shown], osp.join(tmp, figure),
                      context_scale=overview[1], context_origin=overview[2], full_size=(hw[1], hw[0]),
                      title=f'{osp.basename(args.image)}: x{s} local SR, CLSR vs pre-/post-cropping'
                            + (' (LR = bicubic of the HR)' if args.degrade else ''))
    result = {'image': args.image, 'lr_size': [hw[1], hw[0]], 'scale': s, 'weights': model.weights,
              'base_weights': model.base_weights or 'the CLSR base', 'methods': ran,
              'runs': {m: results[m][1] for m in ran}, 'context_pass': context,
              'seconds': total_s, 'peak_rss_bytes': peak_rss_bytes(),
              'max_memory_bytes': model.max_memory, 'figure': osp.join(args.out, figure), 'rois': rois}
    if hr is not None:
        result['mean'] = {m: {k: float(np.mean([r['methods'][m][k] for r in rois])) for k in ('psnr', 'psnr_y', 'ssim_y')}
                          for m in ran}
    with open(osp.join(tmp, f'{stem}_metrics.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


def main(argv=None):
    args = build_parser().parse_args(normalise_argv(sys.argv[1:] if argv is None else list(argv)))
    try:
        result = infer(args)
    except LocalSRError as err:
        print(f'clsr-infer: error: {err}', file=sys.stderr)
        return 2
    if not args.quiet:
        print(f'figure: {result["figure"]}')
        for m in result['methods']:
            run = result['runs'][m]
            line = f'  {LABELS[m]:12s} {run["seconds"]:8.2f} s  {run["gflops"]:10.3f} GFLOPs'
            if 'mean' in result:
                line += f'  PSNR-Y {result["mean"][m]["psnr_y"]:.2f} dB  PSNR-RGB {result["mean"][m]["psnr"]:.2f} dB'
            if m == 'clsr' and 'plan' in run:
                line += f'  (plan: {run["plan"]["mode"]}, {run["plan"]["pieces"]} pieces)'
            print(line)
        print(f'  {len(result["rois"])} ROIs of the {result["lr_size"][0]}x{result["lr_size"][1]} LR image in '
              f'{result["seconds"]:.2f} s; peak RSS {format_bytes(result["peak_rss_bytes"])} '
              f'(memory budget {format_bytes(result["max_memory_bytes"])})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
