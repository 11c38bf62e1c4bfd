"""LocalSR at the size it exists for (issue 12): the API on very large LR images and on full ROI
grids, with the shipped CLSR-CARN-M x4, on real pixels (mosaics of the DIV2K/Flickr2K images in
../shared/data), CPU.

Three parts, each a marked section of docs/benchmarks.md:

* ``contexts``: LR contexts of 3000x4000 and 10000x10000 under a memory budget -- context pass
  seconds, how it ran (tile, store), peak RSS of the process, and decode ms of 24/48/96/192
  ROIs (median of 5 positions). One fresh subprocess per context, so ``ru_maxrss`` is its own.
* ``grid``: every ROI of the 24x24 grid of a BSD100 image and of a 2K DIV2K image (LR = bicubic
  x1/4), planned CLSR (``image.super_resolve(grid)``, a fresh image each run, so the context pass
  is paid whenever the plan needs it) vs post-crop (``method='post_crop'``), interleaved, median
  of ``--repeats`` runs after one warm-up of each.
* ``cli``: ``clsr-infer big.png --compare --roi 1000,1000,48,48`` on a 3000x4000 LR PNG, default methods:
  wall time and the peak RSS the command prints.

    .venv/bin/python benchmarks/large_images.py                 # all parts, ~6 min, ~10 GB of temp disk
    .venv/bin/python benchmarks/large_images.py --parts grid --repeats 7
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

import numpy as np

import common  # noqa: F401  (repo on sys.path, compat)

import cv2  # noqa: E402
import torch  # noqa: E402

from clsr_arch.api import LocalSR  # noqa: E402
from clsr_arch.data.context_roi_dataset import validation_grid  # noqa: E402
from clsr_arch.data.prep import bicubic_lr, mod_crop  # noqa: E402
from clsr_arch.utils.memory import format_bytes, parse_bytes, peak_rss_bytes  # noqa: E402

SHARED = osp.join(common.REPO, os.pardir, 'shared', 'data')
CONTEXTS = {'3000x4000': (3000, 4000), '10000x10000': (10000, 10000)}
QUICK_CONTEXTS = {'300x400': (300, 400), '500x500': (500, 500)}
ROI_SIZES = (24, 48, 96, 192)
QUICK_ROI_SIZES = (24, 48)
GRID_IMAGES = {'BSD100 img_001': ('BSD100', 'img_001.png'), 'DIV2K 0004 (2K)': ('DIV2K', '0004.png')}


def mosaic(h, w):
    """An ``h x w`` RGB uint8 mosaic of the real training images (flipped in turn so that
    neighbouring copies differ); deterministic."""
    paths = sorted(glob.glob(osp.join(SHARED, 'DIV2K', 'HR', '*.png')) + glob.glob(osp.join(SHARED, 'Flickr2K', 'HR', '*.png')))
    if not paths:
        sys.exit(f'large_images: no images under {SHARED} (../shared/data must sit beside the repository)')
    images = [cv2.imread(p, cv2.IMREAD_COLOR)[:, :, ::-1] for p in paths]
    canvas = np.empty((h, w, 3), np.uint8)
    k, y = 0, 0
    while y < h:
        x, row_h = 0, 0
        while x < w:
            im = images[k % len(images)]
            im = im[::-1] if (k // len(images)) % 2 else im
            ph, pw = min(im.shape[0], h - y), min(im.shape[1], w - x)
            canvas[y:y + ph, x:x + pw] = im[:ph, :pw]
            x, row_h, k = x + pw, max(row_h, ph), k + 1
        y += row_h
    return canvas


def one_context(args):
    """Child process: one context, everything measured in this process."""
    h, w = (int(v) for v in args.one.split('x'))
    torch.set_num_threads(args.threads)
    image_rgb = mosaic(h, w)
    model = LocalSR(device='cpu', max_memory=args.max_memory)
    rss_image = peak_rss_bytes()
    image = model.open(image_rgb, name=args.one)
    t0 = time.perf_counter()
    image.encode()
    encode_s = time.perf_counter() - t0
    rss_encode = peak_rss_bytes()
    rng = np.random.default_rng(0)
    decode = {}
    for s in QUICK_ROI_SIZES if args.quick else ROI_SIZES:
        image.super_resolve([((w - s) // 2, (h - s) // 2, s, s)], plan=False)  # warm-up of this size
        times = []
        for _ in range(5):
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            t0 = time.perf_counter()
            image.super_resolve([(x, y, s, s)], plan=False)
            times.append(time.perf_counter() - t0)
        decode[s] = float(np.median(times)) * 1e3
    info = image.context_info
    image.release()
    out = {'context': args.one, 'encode_s': encode_s, 'tile': info['tile'], 'store': info['store'],
           'estimated_bytes': info['estimated_bytes'], 'feature_bytes': info['feature_bytes'],
           'max_memory': model.max_memory, 'rss_before_encode': rss_image, 'rss_after_encode': rss_encode,
           'peak_rss': peak_rss_bytes(), 'decode_ms': decode}
    with open(args.json, 'w') as f:
        json.dump(out, f)


def run_child(extra, threads):
    with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
        path = f.name
    cmd = [sys.executable, osp.abspath(__file__), '--threads', str(threads), '--json', path] + extra
    subprocess.run(cmd, check=True)
    with open(path) as f:
        out = json.load(f)
    os.remove(path)
    return out


def part_contexts(args, contexts):
    rows = []
    for name in contexts:
        r = run_child(['--one', name, '--max-memory', args.max_memory] + (['--quick'] if args.quick else []),
                      args.threads)
        sizes = [int(k) for k in r['decode_ms']]
        print(json.dumps(r), flush=True)
        how = 'untiled' if r['tile'] is None else f"{r['tile']}-px tiles"
        mp = np.prod([int(v) for v in name.split('x')]) / 1e6
        rows.append([f'{name} ({mp:.3g} MP)',
                     f"{r['encode_s']:.1f}", f"{how}, features in {r['store']}",
                     format_bytes(r['feature_bytes']), format_bytes(r['rss_before_encode']),
                     format_bytes(r['peak_rss'])] + [f"{r['decode_ms'][str(s)]:.0f}" for s in sizes])
    header = ['LR context (H×W)', 'context pass s', 'how', 'PIM features', 'RSS before (image loaded)', 'peak RSS'] + \
        [f'{s}x{s} ROI ms' for s in sizes]
    body = (f'Produced by `{common.command_line(__file__, args.argv)}` ({common.env_line("cpu", args.threads)}); shipped '
            f'CLSR-CARN-M x4, memory budget `max_memory={args.max_memory}`, one subprocess per context '
            '(peak RSS = its `ru_maxrss`, the mosaic and the interpreter included); decode = median of 5 random '
            'positions after one warm-up, `plan=False` (one CLSR decode per ROI).\n\n'
            + common.markdown_table(header, rows))
    common.write_section(args.out, 'large-contexts', body)


def grid_image(folder, name):
    hr = mod_crop(cv2.imread(osp.join(SHARED, folder, 'HR', name), cv2.IMREAD_COLOR), 4)
    lr = bicubic_lr(hr, 4)[:, :, ::-1]
    rois, (kh, kw) = validation_grid(lr.shape[0], lr.shape[1], 24, 24)
    return np.ascontiguousarray(lr[:kh, :kw]), [tuple(r) for r in rois.tolist()]


def part_grid(args, images):
    torch.set_num_threads(args.threads)
    model = LocalSR(device='cpu')
    rows = []
    for label, (folder, name) in images.items():
        lr, boxes = grid_image(folder, name)
        times = {'clsr': [], 'post_crop': []}
        plan = None
        for rep in range(args.repeats + 1):  # the first run of each is a warm-up
            for method in ('clsr', 'post_crop'):
                image = model.open(lr)
                t0 = time.perf_counter()
                image.super_resolve(boxes, method=method)
                dt = time.perf_counter() - t0
                if rep:
                    times[method].append(dt)
                if method == 'clsr':
                    plan = image.last_run['plan']
                image.release()
        c, p = float(np.median(times['clsr'])), float(np.median(times['post_crop']))
        print(label, c, p, c / p, plan, flush=True)
        rows.append([label, f'{lr.shape[1]}x{lr.shape[0]}', len(boxes), plan['mode'],
                     f"{plan['gflops_singles']:.1f} / {plan['gflops_pieces']:.1f} / {plan['gflops_whole']:.1f}",
                     f'{c:.3f}', f'{p:.3f}', f'{c / p:.3f}'])
    header = ['image', 'LR (WxH)', 'ROIs', 'plan', 'GFLOPs singles / merged / whole', 'planned CLSR s',
              'post-crop s', 'planned / post-crop']
    body = (f'Produced by `{common.command_line(__file__, args.argv)}` ({common.env_line("cpu", args.threads)}); shipped '
            f'CLSR-CARN-M x4, every ROI of the 24x24 grid; median of {args.repeats} interleaved runs after one '
            'warm-up of each, a freshly opened image per run (no context pass carried over).\n\n'
            + common.markdown_table(header, rows))
    common.write_section(args.out, 'large-grid', body)


def part_cli(args, hw):
    h, w = hw
    folder = tempfile.mkdtemp(prefix='clsr-bench-cli-')
    path = osp.join(folder, 'big.png')
    cv2.imwrite(path, mosaic(h, w)[:, :, ::-1])
    cmd = [sys.executable, '-m', 'clsr_arch.infer', path, '--compare', '--roi', f'{w // 4},{h // 3},48,48',
           '--out', osp.join(folder, 'out'), '--threads', str(args.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f'clsr-infer failed ({proc.returncode}): {proc.stderr[-2000:]}')
    summary = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith('clsr-infer:')]
    print('\n'.join(summary + notes), flush=True)
    shown = ' '.join(['clsr-infer', f'big.png ({w}x{h} LR mosaic)'] + cmd[4:6] + ['--threads', str(args.threads)])
    body = (f'Produced by `{common.command_line(__file__, args.argv)}` ({common.env_line("cpu", args.threads)}): '
            f'`{shown}`, default methods and memory budget, finished in {wall:.1f} s wall. Its summary:\n\n```\n'
            + '\n'.join(notes + summary) + '\n```')
    common.write_section(args.out, 'large-cli', body)
    import shutil
    shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--parts', default='contexts,grid,cli')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--max-memory', default='4G', help='budget of the contexts part (default 4G)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--quick', action='store_true', help='small contexts and images (seconds; tests)')
    p.add_argument('--out', default=common.DOC)
    p.add_argument('--one', help=argparse.SUPPRESS)
    p.add_argument('--json', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv  # the command line named under each table (None: this process's)
    if args.one:
        return one_context(args)
    parse_bytes(args.max_memory)
    parts = args.parts.split(',')
    if 'contexts' in parts:
        part_contexts(args, QUICK_CONTEXTS if args.quick else CONTEXTS)
    if 'grid' in parts:
        part_grid(args, {'BSD100 img_001': ('BSD100', 'img_001.png')} if args.quick else GRID_IMAGES)
    if 'cli' in parts:
        part_cli(args, (120, 160) if args.quick else (3000, 4000))


if __name__ == '__main__':
    main()
