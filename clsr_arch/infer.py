"""clsr-infer / python -m clsr_arch.infer: the command line of the Python API (clsr_arch.api).

It parses arguments and writes what the API returns; loading, budgets, plans and routes are the
API's. Heavy modules (torch, BasicSR) are imported only after the arguments are parsed, so that
--help answers at once.
"""
import argparse
import os
import os.path as osp
import sys

from clsr_arch.api.errors import LocalSRError
from clsr_arch.api.methods import ESTIMATOR_NAMES, LABELS, METHODS
from clsr_arch.api.registry import REPO, add_model_args, auto_or_count  # noqa: F401  (REPO: the demo's)

DEFAULT_OUT = osp.join('results', 'infer')

DESCRIPTION = """\
Super-resolve (x4) regions of interest of images with CLSR (LocalSR, Ji & Yao): only the boxes
are super-resolved, with the whole image as context, at the boxes' cost and not the image's.

By default every box of every input is written as its own PNG, by CLSR alone:
  clsr-infer frames/ --boxes detections.csv -o results/plates
  clsr-infer photo.png other.jpg --roi 120,40,24,24 --roi 10,10,32,20
  clsr-infer 'frames/*.png' --grid 48
With --compare, each image also gets bicubic, pre-crop and post-crop of the same boxes, a
comparison figure and a metrics JSON (PSNR with --degrade or --hr):
  clsr-infer photo_hr.png --degrade --roi 34,14,24,24 --compare
Many processes, one job (images split between the ranks, one manifest per rank):
  torchrun --nproc_per_node 2 -m clsr_arch.infer frames/ --boxes dets.csv -o out
"""

EPILOG = """\
inputs:
  Files, folders (their .png .jpg .jpeg .bmp .webp .tif .tiff .npy files, not recursive) and
  glob patterns (quote them). Tiled TIFFs and .npy are read region by region. Without inputs,
  the images named in --boxes are used (paths relative to the boxes file).

boxes (LR pixels: x = left column, y = top row, w, h):
  --boxes FILE  CSV lines image,x,y,w,h[,label] (a header line "image,x,y,w,h,label" is
                allowed), or COCO JSON: "images" [{"id", "file_name"}], "annotations"
                [{"image_id", "bbox": [x, y, w, h], "category_id"}], "categories" [{"id",
                "name"}] (the name is the label). Image names match an input by path, by path
                relative to the boxes file, or by file name. Float boxes are rounded outward:
                x and y down, x+w and y+h up, so that every pixel the detector marked is
                super-resolved; a rounded box is clipped to the image where only the rounding
                crossed its border. A box that leaves its image, a missing image or a
                malformed line is one line in errors.txt (file and line number); the rest runs.
  --roi and --grid apply to every input.

outputs (in --out, default results/infer):
  <image>_x<X>_y<Y>_<W>x<H>[_<label>]_<suffix>.<ext>   one per box and method, written
      atomically (a hidden temporary file renamed into place); --suffix (default: the
      method, e.g. "clsr"; "{method}" is replaced by it), --ext png|jpg|webp|auto (auto: the
      input's format).
  manifest.rank<R>.jsonl   one JSON line per written box: image, box, label, file, method,
      route, context, seconds (the box's own), gflops. A rerun skips every box already in a
      manifest whose file exists: a run killed at any point and rerun writes every box once.
  errors.txt   one line per image or box that failed (tab-separated: image, box, reason).
  summary.json   done / skipped / failed counts, seconds, peak RSS, per rank.
  With --compare: <image>_roi<i>_<method>.png, <image>_compare.png, <image>_metrics.json.

exit status:
  0 every box written (or already done); 1 some boxes failed (see errors.txt);
  2 a usage error (bad option, unreadable weights or boxes file), nothing run.

plans:
  All boxes of an image share one plan: CLSR decodes of the boxes (merged where one decode of
  their union costs less), with the context pass over the whole frame or only around the boxes
  (GCM windows and PIM tiles), whichever costs fewer FLOPs; or whole-image SR when that is
  cheaper than any CLSR decodes (a full grid, say) -- said before it starts, with an estimate.
  --no-plan decodes each box on its own with the whole-frame context.
"""


class InferError(LocalSRError):
    """A user error: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------- arguments
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


def parse_methods(text, default, auto=False):
    """``--methods`` -> (methods in display order, explicitly asked?); ``auto``: a --model-path
    model, whose calibrated ``auto`` is a method too."""
    if text is None:
        return list(default), False
    known = (('auto', ) if auto else ()) + METHODS
    asked = [m.strip() for m in text.split(',') if m.strip()]
    unknown = [m for m in asked if m not in known]
    if unknown or not asked:
        raise InferError(f'--methods {text!r}: expected a comma-separated subset of {",".join(known)}')
    return [m for m in known if m in asked], True


def parse_pad(text):
    return auto_or_count(text, '--pad', "'auto' or LR pixels >= 0")


def parse_tile(text):
    return auto_or_count(text, '--tile', "'auto', 0 (no tiling) or a tile size in LR pixels")


def build_parser():
    p = argparse.ArgumentParser(prog='clsr-infer', description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', nargs='*', metavar='INPUT', help='image files, folders or glob patterns')
    p.add_argument('-i', '--input', action='append', default=[], metavar='INPUT',
                   help='another input (as Real-ESRGAN\'s -i); repeatable')
    p.add_argument('-o', '--out', '--output', dest='out', default=DEFAULT_OUT,
                   help=f'output folder (default {DEFAULT_OUT}, created if missing)')
    p.add_argument('--boxes', metavar='FILE', help='boxes of a detector: CSV image,x,y,w,h[,label] or COCO JSON')
    p.add_argument('--roi', action='append', default=[], metavar='X,Y,W,H', help='a box of every input (repeatable)')
    p.add_argument('--grid', type=int, metavar='N', help='every N x N box of a non-overlapping grid of every input')
    p.add_argument('--suffix', default='{method}',
                   help='output file name suffix (default "{method}": clsr, pre_crop, ...; "" for none)')
    p.add_argument('--ext', default='png', choices=('png', 'jpg', 'webp', 'auto'),
                   help='output format (default png; auto: the input\'s)')
    p.add_argument('--methods', metavar='M[,M...]',
                   help=f'which of {",".join(METHODS)} to run (default: clsr; with --compare all that fit '
                        'the memory budget)')
    p.add_argument('--compare', action='store_true',
                   help='every method on the same boxes, a comparison figure and metrics per image')
    p.add_argument('--degrade', action='store_true',
                   help='--compare: INPUT is HR; crop to a multiple of the scale, make the LR by MATLAB bicubic')
    p.add_argument('--hr', help='--compare: ground-truth HR of an LR INPUT (for PSNR)')
    p.add_argument('--propose', type=int, metavar='N',
                   help='--compare: add the N non-overlapping boxes with the highest estimated SR gain')
    p.add_argument('--propose-size', type=int, default=48, metavar='S', help='side of proposed boxes (default 48)')
    p.add_argument('--propose-by', default=ESTIMATOR_NAMES[0], choices=ESTIMATOR_NAMES,
                   help=f'gain estimator of --propose (default {ESTIMATOR_NAMES[0]}; docs/selective.md compares them: '
                        'map = per-pixel error maps, cnn = per-box gain network, pim and learned are the '
                        'pre-fix estimators, kept for comparison)')
    p.add_argument('--max-figure-rois', type=int, default=6, help='--compare: ROIs shown in the figure (all are written)')
    add_model_args(p)
    p.add_argument('--model-path', metavar='FILE',
                   help='any single-image SR network file spandrel recognises (.pth/.safetensors: ESRGAN, SwinIR, '
                        'HAT, CRAFT, ...) instead of --model: pre-crop, post-crop and the planner with it, CLSR when '
                        'a stage adapter exists for its class; default method auto (docs/spandrel.md)')
    p.add_argument('--scale', type=int, help='--model-path: the scale you expect (an error if the file is another)')
    p.add_argument('--pad', default='auto', metavar='auto|N',
                   help="--model-path: pre-crop's real-context pad; auto (default) calibrates it once per model on "
                        'validation crops (cached by the weights\' hash)')
    p.add_argument('--base-weights', default='official',
                   help="plain backbone of pre-/post-crop: 'official' (default; CARN-M: the official weights "
                        "in ../shared/data/weights/carn_m.pth, other backbones: the CLSR's base), 'clsr' (the "
                        "CLSR's own base) or a checkpoint path")
    p.add_argument('--device', default='auto',
                   help='auto, cpu, cuda, cuda:1, ... (under torchrun, auto/cuda: one GPU per rank)')
    p.add_argument('--threads', type=int,
                   help="CPU threads (default: the machine's cores shared among this node's ranks)")
    p.add_argument('--max-memory', metavar='BYTES',
                   help='memory budget, e.g. 8G or 512M (default: 80%% of the available RAM)')
    p.add_argument('--tile', default='auto', metavar='auto|0|N',
                   help='LR tile size of the context pass and of whole-image SR when they do not fit the budget '
                        '(default auto; 0: never tile, too large is an error)')
    p.add_argument('--tile-overlap', type=int, default=16, help='LR pixels around whole-image SR tiles (default 16)')
    p.add_argument('--no-plan', action='store_true',
                   help='CLSR: decode every box on its own with the whole-frame context (default: plan them)')
    p.add_argument('--quiet', action='store_true', help='no progress bar or summary')
    return p


def normalise_argv(argv):
    """``--roi -1,0,5,5`` -> ``--roi=-1,0,5,5``: argparse takes a value starting with '-' for an
    option, so a negative box would stop in argparse instead of getting the box error."""
    out, it = [], iter(argv)
    for a in it:
        if a in ('--roi', '--grid', '--tile', '--tile-overlap', '--threads', '--max-figure-rois', '--suffix'):
            nxt = next(it, None)
            out.append(a if nxt is None else f'{a}={nxt}')
        else:
            out.append(a)
    return out


def make_model(args, ranks=None, progress=False, say=None):
    from clsr_arch import api
    device = ranks.device(args.device) if ranks else args.device
    threads = ranks.threads(args.threads) if ranks else args.threads
    if getattr(args, 'model_path', None):
        for flag, given in (('--weights', args.weights), ('--opt', args.opt)):
            if given:
                raise InferError(f'{flag} goes with --model, not with --model-path')

        def calibrating(done, total):
            if say and done == 1:
                say(f'calibrating {args.model_path} on {total} validation crops (once per model; cached)')
        model = api.LocalSR.from_model(args.model_path, scale=args.scale, pad=parse_pad(args.pad), device=device,
                                       threads=threads, max_memory=args.max_memory, tile=parse_tile(args.tile),
                                       tile_overlap=args.tile_overlap, progress=progress,
                                       calibration_progress=calibrating)
        if say:
            say(model.describe())
        return model
    weights, opt = api.model_paths(args)
    return api.LocalSR(weights, opt, device=device, threads=threads, max_memory=args.max_memory,
                       tile=parse_tile(args.tile), tile_overlap=args.tile_overlap, base_weights=args.base_weights,
                       progress=progress)


# ---------------------------------------------------------------------------------- batch (default)
def batch(args, say):
    """The default: every box of every input, CLSR (or ``--methods``), one file each."""
    from clsr_arch import api
    for flag in ('degrade', 'hr', 'propose'):
        if getattr(args, flag):
            raise InferError(f'--{flag.replace("_", "-")} goes with --compare')
    if args.grid is not None and args.grid < 1:
        raise InferError(f'--grid {args.grid}: must be >= 1')
    auto = bool(args.model_path)
    methods, _ = parse_methods(args.methods, ['auto' if auto else 'clsr'], auto)
    rois = [parse_box(t) for t in args.roi]
    # 'auto' is resolved per image by a --model-path model (spandrel_model.AutoMethod)
    job = api.BatchJob(args.inputs + args.input, args.out, args.boxes, rois, args.grid, methods, args.suffix,
                       args.ext, plan=not args.no_plan, progress=not args.quiet,
                       extra_methods=('auto', ) if auto else ())
    ranks = api.Ranks().start()
    try:
        model = make_model(args, ranks, progress=not args.quiet, say=say if ranks.rank == 0 else None)
        return api.run_batch(job, model, ranks, say=say)
    finally:
        ranks.close()


def print_summary(s):
    rate = s['done'] / s['seconds'] if s['seconds'] else 0.
    print(f'{s["images"]} images on {s["ranks"]} rank(s): {s["done"]} boxes written, {s["skipped"]} skipped '
          f'(done before), {s["failed"]} failed; {s["seconds"]:.1f} s ({rate:.2f} boxes/s); '
          f'peak RSS {s["peak_rss_bytes"] / 2**20:.0f} MiB (largest rank)')
    print(f'outputs: {s["out"]}' + (f'; errors: {s["errors_file"]}' if s['errors_file'] else ''))


# ---------------------------------------------------------------------------------- --compare
def infer(args, say=None):
    """``--compare`` on the first input (the demo's entry); the metrics dict also written as JSON."""
    return compare(args, say)[0]


def compare(args, say=None):
    """Every method on the boxes of each input: PNGs, a comparison figure and a metrics JSON per
    input; returns their metrics dicts. Any error stops the run (exit 2) and, for the image it
    hit, leaves nothing written."""
    from clsr_arch import api
    say = say or (lambda line: print(f'clsr-infer: {line}', file=sys.stderr))
    if not args.roi and not args.grid and not args.propose and not args.boxes:
        raise InferError('give at least one --roi x,y,w,h, --grid N, --propose N or --boxes FILE')
    if args.max_figure_rois < 1:
        raise InferError(f'--max-figure-rois {args.max_figure_rois}: must be >= 1')
    methods, explicit = parse_methods(args.methods, METHODS, bool(args.model_path))
    rois = [parse_box(t) for t in args.roi]
    paths, problems = api.expand_inputs(args.inputs + args.input)
    by_image = {}
    if args.boxes:
        found, bad = api.read_boxes(args.boxes)
        if not paths:
            from clsr_arch.api.box_files import images_of
            paths = images_of(found, args.boxes)
        from clsr_arch.api.box_files import match_images
        by_image, missing = match_images(found, paths, args.boxes)
        problems += bad + missing
    if problems:
        raise InferError(problems[0][1])
    if not paths:
        raise InferError('no input image given')
    if len(paths) > 1 and args.hr:
        raise InferError('--hr goes with one input image')
    model = make_model(args, progress=not args.quiet, say=say)
    if not explicit and args.model_path and not model.has_clsr:  # no stage adapter: no CLSR row
        methods = [m for m in methods if m != 'clsr']
    return [compare_image(args, model, path, rois, by_image.get(path, []), methods, explicit, say) for path in paths]


def compare_image(args, model, path, rois, file_boxes, methods, explicit, say):
    import time

    from clsr_arch import api
    from clsr_arch.api.box_files import to_pixels
    image, lr, hr = api.open_compared(model, path, args.degrade, args.hr)
    hw, s = image.hw, model.scale
    boxes = list(rois)
    for box in boxes:
        check_box(box, hw, '--roi')
    boxes += [to_pixels(b, hw) for b in file_boxes]
    if args.grid:
        boxes += api.grid_boxes(hw, args.grid)
    t0 = time.perf_counter()
    with image:
        proposed = []
        if args.propose:
            proposed, scores = image.propose(args.propose, args.propose_size, args.propose_by)
            say(f'proposed (by {args.propose_by}): ' + ', '.join(f'{",".join(map(str, b))} ({sc:.3g})'
                                                               for b, sc in zip(proposed, scores)))
            boxes += proposed
        if not boxes:
            raise InferError(f'{path}: no boxes for this image')
        results = api.run_methods(image, boxes, methods, explicit, not args.no_plan, say)
        flops = {m: [api.roi_gflops(image, m, b, results[m][1]) for b in boxes] for m in results}
        context = image.context_info
        overview = (lr, 1.0, (0, 0)) if lr is not None else image.overview(boxes)
    total_s = time.perf_counter() - t0
    import shutil
    import tempfile
    # everything is written to a hidden folder first and moved into --out at the end
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.clsr-infer-', dir=args.out)
    try:
        result = write_outputs(args, path, tmp, overview, hw, hr, boxes, results, flops, s, model, context, total_s,
                               proposed)
        for name in os.listdir(tmp):
            os.replace(osp.join(tmp, name), osp.join(args.out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def psnr_ssim(img, ref):
    """Per-ROI metrics as the evaluation (crop_border 0): PSNR RGB, PSNR/SSIM on Y (BGR inputs)."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    return {'psnr': float(calculate_psnr(img, ref, 0)),
            'psnr_y': float(calculate_psnr(img, ref, 0, test_y_channel=True)),
            'ssim_y': float(calculate_ssim(img, ref, 0, test_y_channel=True))}


def write_outputs(args, path, tmp, overview, hw, hr, boxes, results, flops, s, model, context, total_s, proposed=()):
    """PNGs of every ROI and method, the comparison figure (``overview``: ``(rgb, scale,
    origin)`` of the context panel) and the metrics JSON, into ``tmp``."""
    import json

    import cv2
    import numpy as np

    from clsr_arch.utils.figure import comparison_figure
    from clsr_arch.utils.memory import peak_rss_bytes
    stem = osp.splitext(osp.basename(path))[0]
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
            secs = info['box_seconds'][i]  # the box's own (post-crop: the whole image runs for any box)
            rec = {'seconds': secs, 'gflops': flops[m][i]}
            label_name = f'pre-crop (pad {info["pad"]})' if m == 'pre_crop' else LABELS[m]
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
                      title=f'{osp.basename(path)}: x{s} local SR, CLSR vs pre-/post-cropping'
                            + (' (LR = bicubic of the HR)' if args.degrade else ''))
    result = {'image': path, 'lr_size': [hw[1], hw[0]], 'scale': s, 'weights': model.weights,
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


def print_compare(result):
    from clsr_arch.utils.memory import format_bytes
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


def main(argv=None):
    args = build_parser().parse_args(normalise_argv(sys.argv[1:] if argv is None else list(argv)))

    def say(line):
        print(f'clsr-infer: {line}', file=sys.stderr, flush=True)
    try:
        if args.compare:
            results = compare(args, say)
        else:
            summary = batch(args, say)
    except LocalSRError as err:
        print(f'clsr-infer: error: {err}', file=sys.stderr)
        return 2
    if args.compare:
        if not args.quiet:
            for r in results:
                print_compare(r)
        return 0
    if not args.quiet and summary['rank'] == 0:  # rank 0 reports for everyone
        print_summary(summary)
    return 1 if summary['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
