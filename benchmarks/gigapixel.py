"""An ROI's cost independent of the image's size (issue 17): CLSR on a lazily read 1-gigapixel
LR image and on a 2K one, side by side, the default model, CPU.

1. Writes the inputs with ``data/make_tiled_tiff.py`` (timed): a ~40800x25200 mosaic of the six
   DIV2K/Flickr2K images in ../shared/data (centre-cropped to 1200x1200 cells, cycled), and the 2K
   DIV2K 0004 image, both tiled pyramidal TIFFs.
2. One fresh subprocess per image (so ``ru_maxrss`` is its own): open, the first 48x48 ROI in the
   middle (its time includes reading and encoding the GCM's windows and the PIM tiles it needs),
   then 50 ROIs each of 24x24, 48x48 and 96x96 at seeded random positions, one
   ``super_resolve`` call each: p50/p95 ms, PIM tiles computed per ROI, peak RSS.

    .venv/bin/python benchmarks/gigapixel.py                   # ~5 min, ~2.5 GB of temp disk
    .venv/bin/python benchmarks/gigapixel.py --quick           # a small mosaic, for a smoke run

Targets (issue 17): first ROI <= 1 s, later 48x48 ROIs <= 200 ms p50, peak RSS <= 1.5 GiB, per-ROI
time on the gigapixel image <= 1.2x the same size on the 2K image.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import common  # noqa: F401  (repo on sys.path, compat)

SHARED = osp.join(common.REPO, os.pardir, 'shared', 'data')
SIZES = (24, 48, 96)


def write_inputs(work, quick):
    """The two TIFFs (mosaic, 2K) and how long writing each took."""
    sys.path.insert(0, osp.join(common.REPO, 'data'))
    import make_tiled_tiff as mt
    src = osp.join(work, 'src')
    os.makedirs(src, exist_ok=True)
    for folder in ('DIV2K', 'Flickr2K'):
        for name in sorted(os.listdir(osp.join(SHARED, folder, 'HR'))):
            os.symlink(osp.join(SHARED, folder, 'HR', name), osp.join(src, f'{folder}_{name}'))
    grid, cell = ((4, 3), (600, 600)) if quick else ((34, 21), (1200, 1200))
    out = {}
    for key, source, g, c in (('giga', src, grid, cell), ('2k', osp.join(SHARED, 'DIV2K', 'HR', '0004.png'), None, None)):
        path = osp.join(work, f'{key}.tif')
        s = mt.write_tiff(mt.build_mosaic(source, g, c, repeat=g is not None), path, progress=True)
        out[key] = s
        print(json.dumps(s), flush=True)
    return out


def one_image(args):
    """Child process: one image, everything measured here."""
    import torch
    from clsr_arch.api import LocalSR
    from clsr_arch.utils.memory import peak_rss_bytes
    torch.set_num_threads(args.threads)
    model = LocalSR(device='cpu')
    model.cost  # built once per model, as the API does before timing a call
    t0 = time.perf_counter()
    image = model.open(args.one)
    h, w = image.hw
    first_box = ((w - 48) // 2, (h - 48) // 2, 48, 48)
    image.super_resolve([first_box])
    first = {'seconds': time.perf_counter() - t0, 'gcm_seconds': image.context_info['seconds'],
             'pim_tiles': image.last_run.get('pim_tiles')}
    rng = np.random.default_rng(0)
    per_size = {}
    for s in SIZES:
        times, tiles = [], []
        for _ in range(args.rois):
            box = (int(rng.integers(0, w - s)), int(rng.integers(0, h - s)), s, s)
            t1 = time.perf_counter()
            image.super_resolve([box])
            times.append((time.perf_counter() - t1) * 1e3)
            tiles.append(image.last_run.get('pim_tiles', 0))
        # the same ROI cost with nothing cached (every PIM tile it needs computed): the like-for-like
        # comparison, since a 2K image's tiles soon are all in the cache and a gigapixel one's are not
        cold, ctx, pim = [], image.state['context'], image.state['pim']
        read0, pim0 = ctx.read_seconds, pim.pim_seconds
        for _ in range(args.rois // 2):
            box = (int(rng.integers(0, w - s)), int(rng.integers(0, h - s)), s, s)
            pim.clear()
            t1 = time.perf_counter()
            image.super_resolve([box])
            cold.append((time.perf_counter() - t1) * 1e3)
        n = max(1, args.rois // 2)
        split = {'read_ms': (ctx.read_seconds - read0) / n * 1e3, 'pim_ms': (pim.pim_seconds - pim0) / n * 1e3}
        per_size[s] = {'p50': float(np.percentile(times, 50)), 'p95': float(np.percentile(times, 95)),
                       'tiles_per_roi': float(np.mean(tiles)), 'gflops': image.last_run['gflops'],
                       'cold_p50': float(np.percentile(cold, 50)), 'cold_mean': float(np.mean(cold)), **split}
    pim = image.state['pim']
    out = {'image': args.one, 'hw': [h, w], 'model': osp.basename(model.weights or ''), 'first': first,
           'sizes': per_size, 'peak_rss': peak_rss_bytes(), 'pim_cache_bytes': pim.cached_bytes,
           'pim_computed': pim.computed, 'pim_hits': pim.hits, 'pixels_read': image.state['context'].pixels_read}
    image.release()
    with open(args.json, 'w') as f:
        json.dump(out, f)


def run_child(path, args):
    with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
        out_json = f.name
    cmd = [sys.executable, osp.abspath(__file__), '--one', path, '--json', out_json, '--threads', str(args.threads),
           '--rois', str(args.rois)]
    subprocess.run(cmd, check=True)
    with open(out_json) as f:
        out = json.load(f)
    os.remove(out_json)
    print(json.dumps(out), flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    common.add_common_args(parser)
    parser.add_argument('--rois', type=int, default=50, help='random ROIs per size')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--work', help='folder for the TIFFs (default: a temporary one, removed)')
    parser.add_argument('--one', help=argparse.SUPPRESS)
    parser.add_argument('--json', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.one:
        return one_image(args)
    from clsr_arch.utils.memory import format_bytes
    work = args.work or tempfile.mkdtemp(prefix='clsr-gigapixel-')
    try:
        written = write_inputs(work, args.quick)
        res = {k: run_child(osp.join(work, f'{k}.tif'), args) for k in ('giga', '2k')}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    g, k = res['giga'], res['2k']
    rows = []
    for key, r in (('giga', g), ('2k', k)):
        wr = written[key]
        mp = wr['width'] * wr['height'] / 1e6
        rows.append([f"{wr['width']}x{wr['height']} ({mp:,.0f} MP)", f"{wr['seconds']:.1f} s, {format_bytes(wr['bytes'])}",
                     f"{r['first']['seconds'] * 1e3:.0f} (GCM windows {r['first']['gcm_seconds'] * 1e3:.0f})"]
                    + [f"{r['sizes'][str(s)]['p50']:.0f} / {r['sizes'][str(s)]['p95']:.0f} "
                       f"({r['sizes'][str(s)]['tiles_per_roi']:.1f}); cold {r['sizes'][str(s)]['cold_p50']:.0f}"
                       for s in SIZES]
                    + [format_bytes(r['peak_rss'])])
    ratio = ['gigapixel / 2K (p50)', '', f"{g['first']['seconds'] / k['first']['seconds']:.2f}x"] + \
        [f"{g['sizes'][str(s)]['p50'] / k['sizes'][str(s)]['p50']:.2f}x; cold "
         f"{g['sizes'][str(s)]['cold_p50'] / k['sizes'][str(s)]['cold_p50']:.2f}x" for s in SIZES] + \
        [f"{g['peak_rss'] / k['peak_rss']:.2f}x"]
    header = ['LR image (tiled pyramidal TIFF)', 'writing (make_tiled_tiff)', 'first 48x48 ROI ms']
    header += [f'{s}x{s} ROI p50 / p95 ms (PIM tiles / ROI); cold p50' for s in SIZES] + ['peak RSS']
    split = ['| where a cold ROI\'s time goes (mean ms) | ' + ' | '.join(f'{s}x{s}' for s in SIZES) + ' |',
             '|---|' + '---:|' * len(SIZES)]
    for key, r in (('gigapixel', g), ('2K', k)):
        for part, label in (('read_ms', 'reading the file (TIFF tiles, decompression)'), ('pim_ms', 'PIM tiles'),
                            (None, 'the rest (CLSR decode, GCM attention, bookkeeping)')):
            cells = []
            for s in SIZES:
                d = r['sizes'][str(s)]
                cells.append(f"{d[part]:.0f}" if part else f"{d['cold_mean'] - d['read_ms'] - d['pim_ms']:.0f}")
            split.append(f'| {key}: {label} | ' + ' | '.join(cells) + ' |')
    body = (f'Produced by `{common.command_line(__file__, args.argv)}` ({common.env_line("cpu", args.threads)}); '
            f"default model ({g['model']}), one subprocess per image (peak RSS = its `ru_maxrss`); "
            f'{args.rois} ROIs per size at seeded random positions, one `super_resolve` call each, after the first '
            'ROI (which includes opening the file, reading and encoding the GCM windows, and its PIM tiles). '
            'PIM tiles of 128 LR px with the receptive-field halo, LRU cache 256 MiB. *Cold*: '
            f'{args.rois // 2} more ROIs per size with the PIM cache emptied before each (every tile the ROI '
            'needs is computed: the same work on both images).\n\n'
            + common.markdown_table(header, rows + [ratio]) + '\n\n' + '\n'.join(split))
    print(body)
    common.write_section(args.out, 'gigapixel', body)


if __name__ == '__main__':
    main()
