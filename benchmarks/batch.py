"""Batch clsr-infer (issue 22): boxes of a detector over a folder of LR images, through the command
line a user runs, with 1 rank x 2 threads and with 2 torchrun ranks x 1 thread, on the CPU.

Inputs (written to a work folder, seeded): 200 LR images -- 40 2K frames (the six DIV2K/Flickr2K
HR images of ../shared/data taken as LR frames, each in up to 8 orientations: flips and
rotations) and 160 Set14/BSD100-sized images (the HR of Set14 and BSD100 made LR by MATLAB
bicubic x1/4, the paper's degradation; 46 of the BSD100 ones also mirrored) -- named so that
both kinds interleave, and a CSV of 5 plate-like boxes per image at seeded random positions
with float coordinates, as a detector writes them.

Runs (each a fresh ``clsr-infer`` process or torchrun job; boxes/s over the batch's own time,
``summary.json`` ``seconds``: the slowest rank from its first image to its last, without
process start and model loading, which the wall time includes):

* CLSR (the default: ROI-local or whole-frame context by the plan) on the 200 images and on the
  40 2K frames alone; CLSR with the whole-frame context for every box (``--no-plan``) on the 2K
  frames, to show what the ROI-local context buys;
* padded pre-crop (``--methods pre_crop``: the plain backbone on each box plus CLSR's roi_pad of
  real context) on the same;
* post-crop (``--methods post_crop``: whole-image SR of each frame, then the boxes cut out --
  what a user does today) on 2 of the 2K frames and 20 of the small images (a 2K frame takes
  about a minute), boxes/s per kind.

Peak RSS: the largest rank's ``ru_maxrss`` at the end, and (1 rank) after 25, 50, 100 and 200
images (each manifest line records it): flat when the images do not accumulate. ``--rss-probe
kept|trimmed`` (untimed) follows the current RSS too, through the API in one process.

    flock /tmp/clsr_bench.lock .venv/bin/python benchmarks/batch.py     # ~15 min on 2 cores
    .venv/bin/python benchmarks/batch.py --quick --out /tmp/b.md          # a smoke run (tests)

Targets: CLSR >= 30x post-crop's boxes/s on the 2K frames; 2 ranks >= 0.9x the 1-rank boxes/s;
peak RSS flat in the number of images.
"""
import argparse
import csv
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

import common

SHARED = osp.join(common.REPO, os.pardir, 'shared', 'data')


def dihedral(img, k):
    """The k-th of the 8 flips/rotations of an image."""
    out = np.rot90(img, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def plate_boxes(rng, hw, n, small):
    """``n`` plate-like float boxes inside an ``hw`` image."""
    H, W = hw
    boxes = []
    for _ in range(n):
        w = rng.uniform(16, 32) if small else rng.uniform(40, 80)
        h = rng.uniform(8, 16) if small else rng.uniform(14, 28)
        w, h = min(w, W - 1), min(h, H - 1)
        boxes.append((round(rng.uniform(0, W - w - 1), 1), round(rng.uniform(0, H - h - 1), 1), round(w, 1), round(h, 1)))
    return boxes


def make_inputs(work, n2k, nsmall, quick=False):
    """Writes ``work/images/*.png`` and ``work/boxes.csv``; returns (2K names, small names)."""
    from clsr_arch.data.prep import bicubic_lr, mod_crop
    rng = np.random.default_rng(0)
    sources = sorted(osp.join(SHARED, d, 'HR', f) for d in ('DIV2K', 'Flickr2K')
                     for f in os.listdir(osp.join(SHARED, d, 'HR')) if f.endswith('.png'))
    frames = []
    for k in range(8):
        for s in sources:
            frames.append((s, k))
    frames = frames[:n2k]
    smalls = sorted(osp.join(SHARED, 'Set14', 'HR', f) for f in os.listdir(osp.join(SHARED, 'Set14', 'HR')))
    smalls += sorted(osp.join(SHARED, 'BSD100', 'HR', f) for f in os.listdir(osp.join(SHARED, 'BSD100', 'HR')))
    smalls = [(p, 0) for p in smalls] + [(p, 4) for p in smalls[14:]]
    smalls = smalls[:nsmall]
    order = rng.permutation(len(frames) + len(smalls))  # both kinds interleave in file-name order
    images = os.path.join(work, 'images')
    os.makedirs(images, exist_ok=True)
    rows, names2k, names_small = [], [], []
    for i, (src, k) in enumerate(frames + smalls):
        is2k = i < len(frames)
        img = cv2.imread(src, cv2.IMREAD_COLOR)
        if is2k:
            lr = img[:384, :512] if quick else img  # the HR frame as an LR frame
        else:
            lr = bicubic_lr(mod_crop(img[:, :, ::-1], 4), 4)[:, :, ::-1]
        lr = dihedral(lr, k)
        name = f'{order[i]:03d}_{"2k" if is2k else "small"}_{osp.splitext(osp.basename(src))[0]}_{k}.png'
        cv2.imwrite(osp.join(images, name), lr)
        (names2k if is2k else names_small).append(name)
        rows += [(f'images/{name}', *b) for b in plate_boxes(rng, lr.shape[:2], 5, not is2k)]  # relative to the CSV
    with open(osp.join(work, 'boxes.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(('image', 'x', 'y', 'w', 'h'))
        w.writerows(rows)
    return sorted(names2k), sorted(names_small)


def gflops_per_box(recs):
    """Mean GFLOPs per box; post-crop's whole-image run (each box's record) counted once per image."""
    if recs[0]['method'] != 'post_crop':
        return float(np.mean([r['gflops'] for r in recs]))
    return sum({r['image']: r['gflops'] for r in recs}.values()) / len(recs)


def run(work, names, method, ranks, threads, out, extra=()):
    """One clsr-infer run over ``names`` of ``work/images``; returns its numbers."""
    files = [osp.join(work, 'images', n) for n in names]
    args = files + ['--boxes', osp.join(work, 'boxes.csv'), '-o', out, '--methods', method,
                    '--threads', str(threads), '--device', 'cpu', '--quiet', *extra]
    if ranks == 1:
        cmd = [sys.executable, '-m', 'clsr_arch.infer'] + args
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(ranks),
               '-m', 'clsr_arch.infer'] + args
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS='ignore')
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f'clsr-infer failed ({proc.returncode}): {proc.stderr[-3000:]}')
    summary = json.load(open(osp.join(out, 'summary.json')))
    recs = []
    for f in sorted(os.listdir(out)):
        if f.startswith('manifest.rank'):
            recs += [dict(json.loads(line), rank=int(f[13:-6])) for line in open(osp.join(out, f)) if line.strip()]
    assert summary['done'] == len(recs) == 5 * len(names) and summary['failed'] == 0, summary
    res = {'method': method, 'ranks': ranks, 'threads': threads, 'images': len(names), 'boxes': summary['done'],
           'seconds': summary['seconds'], 'wall': wall, 'rate': summary['done'] / summary['seconds'],
           'peak_rss': summary['peak_rss_bytes'], 'gflops_per_box': gflops_per_box(recs),
           'extra': ' '.join(extra), 'routes': sorted({r['route'] for r in recs}),
           'contexts': sorted({str(r['context']) for r in recs})}
    if ranks == 1:  # peak RSS after the k-th image, in the order written
        seen, curve = [], {}
        for r in recs:
            if r['image'] not in seen:
                seen.append(r['image'])
            curve[len(seen)] = r['peak_rss_bytes']
        res['rss_curve'] = curve
    print(f'{method} {extra} {ranks}x{threads}: {len(names)} images, {res["boxes"]} boxes in {res["seconds"]:.1f} s '
          f'({res["rate"]:.2f} boxes/s; wall {wall:.1f} s), peak RSS {res["peak_rss"] / 2**20:.0f} MiB, '
          f'{res["gflops_per_box"]:.2f} GFLOPs/box, contexts {res["contexts"]}', flush=True)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--quick', action='store_true', help='2 small "2K" frames and 4 small images (tests)')
    p.add_argument('--configs', default='1x2,2x1', help='ranks x threads per rank, comma-separated')
    p.add_argument('--work', help='folder for the inputs and outputs (default: a temporary one, removed)')
    p.add_argument('--out', default=common.DOC, help='markdown file whose "batch" section is (re)written')
    p.add_argument('--prepare-only', action='store_true', help='write the inputs into --work and stop')
    p.add_argument('--rss-probe', choices=('kept', 'trimmed'),
                   help='untimed: CLSR over the inputs in this process (1 thread), RSS after each image, freed '
                        'heap pages kept by glibc or given back between images (one mode per process)')
    args = p.parse_args(argv)
    n2k, nsmall, post2k, postsmall = (2, 4, 1, 2) if args.quick else (40, 160, 2, 20)
    work = args.work or tempfile.mkdtemp(prefix='clsr-bench-batch-')
    os.makedirs(work, exist_ok=True)
    try:
        t0 = time.perf_counter()
        made = osp.join(work, 'inputs.json')  # a --work folder keeps its inputs for the next run
        key = {'n2k': n2k, 'nsmall': nsmall, 'quick': args.quick}
        if osp.exists(made) and json.load(open(made))['key'] == key:
            names2k, small = json.load(open(made))['names']
        else:
            names2k, small = make_inputs(work, n2k, nsmall, args.quick)
            with open(made, 'w') as f:
                json.dump({'key': key, 'names': [names2k, small]}, f)
        if args.prepare_only:
            return []
        if args.rss_probe:
            return rss_probe(work, sorted(names2k + small), args.rss_probe == 'trimmed')
        every = sorted(names2k + small)
        print(f'inputs: {len(names2k)} 2K frames + {len(small)} small LR images, {5 * len(every)} boxes '
              f'({time.perf_counter() - t0:.0f} s)', flush=True)
        configs = [tuple(int(v) for v in c.split('x')) for c in args.configs.split(',')]
        results = []
        for k, (ranks, threads) in enumerate(configs):
            def go(names, what, method, extra=()):
                out = osp.join(work, f'out-{len(results)}')
                results.append(dict(run(work, names, method, ranks, threads, out, extra), what=what))
                shutil.rmtree(out, ignore_errors=True)
            every_label = f'all {len(every)} images'
            go(every, every_label, 'clsr')
            go(names2k, '2K frames', 'clsr')
            if args.quick:  # a smoke run: the two rows the headline ratio needs
                go(names2k[:post2k], '2K frames', 'post_crop')
                continue
            if k == 0:
                go(names2k, '2K frames', 'clsr', ('--no-plan', ))
            go(every, every_label, 'pre_crop')
            go(names2k, '2K frames', 'pre_crop')
            go(names2k[:post2k], '2K frames', 'post_crop')
            go(small[:postsmall], 'small images', 'post_crop')
        body = report(results, len(names2k), len(small), configs, args)
        common.write_section(args.out, 'batch', body)
        print(body)
        return results
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def rss_probe(work, names, trim):
    """The current and peak RSS after each image of a CLSR loop over ``names`` through the API,
    with and without giving freed heap pages back between images (no timing: run it any time)."""
    import resource

    from clsr_arch import api
    from clsr_arch.api.batch import release_freed_memory
    from clsr_arch.api.box_files import read_boxes, to_pixels
    boxes, _ = read_boxes(osp.join(work, 'boxes.csv'))
    model = api.LocalSR(device='cpu', threads=1).prepare()
    page = os.sysconf('SC_PAGE_SIZE')
    marks = sorted({1, len(names) // 8, len(names) // 4, len(names) // 2, len(names)})
    out = {}
    for k, name in enumerate(names, 1):
        with model.open(osp.join(work, 'images', name)) as image:
            image.super_resolve([to_pixels(b, image.hw) for b in boxes[f'images/{name}']])
        if trim:
            release_freed_memory()
        if k in marks:
            rss = int(open('/proc/self/statm').read().split()[1]) * page
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out[k] = (rss, peak)
            print(f'{"trimmed" if trim else "kept"} after {k} images: current {rss / 2**20:.0f} MiB, '
                  f'peak {peak / 2**20:.0f} MiB', flush=True)
    return out


def report(results, n2k, nsmall, configs, args):
    kinds = {}
    rows = []
    for r in results:
        what = r['what']
        kinds[(r['method'], r['extra'], r['ranks'], what)] = r
        name = {'clsr': 'CLSR', 'pre_crop': 'pre-crop (padded)', 'post_crop': 'post-crop'}[r['method']]
        if r['extra']:
            name += ' (whole-frame context, --no-plan)'
        rows.append((name, what, f'{r["ranks"]} x {r["threads"]}', r['images'], r['boxes'], f'{r["seconds"]:.1f}',
                     f'**{r["rate"]:.2f}**', f'{r["wall"]:.1f}', f'{r["peak_rss"] / 2**20:.0f} MiB',
                     f'{r["gflops_per_box"]:.2f}'))
    table = common.markdown_table(('method', 'images', 'ranks x threads', 'images', 'boxes', 'batch s', 'boxes/s',
                                   'wall s (with start)', 'peak RSS (largest rank)', 'GFLOPs / box'), rows)
    lines = []
    r1 = configs[0][0]
    for ranks, threads in configs:
        clsr, post = kinds.get(('clsr', '', ranks, '2K frames')), kinds.get(('post_crop', '', ranks, '2K frames'))
        if clsr and post:
            lines.append(f'* {ranks} x {threads}: CLSR {clsr["rate"]:.2f} boxes/s vs post-crop {post["rate"]:.3f} on the '
                         f'2K frames: **{clsr["rate"] / post["rate"]:.0f}x** (target >= 30x; FLOPs per box '
                         f'{post["gflops_per_box"]:.0f} vs {clsr["gflops_per_box"]:.2f} = '
                         f'{post["gflops_per_box"] / clsr["gflops_per_box"]:.0f}x).')
        nop = kinds.get(('clsr', '--no-plan', ranks, '2K frames'))
        if nop and clsr:
            lines.append(f'* {ranks} x {threads}: the ROI-local context on the 2K frames: {clsr["rate"]:.2f} boxes/s, '
                         f'{clsr["gflops_per_box"]:.2f} GFLOPs/box; the whole-frame context for every box '
                         f'{nop["rate"]:.2f} boxes/s, {nop["gflops_per_box"]:.2f} GFLOPs/box.')
    if len(configs) > 1:
        (ra, ta), (rb, tb) = configs[0], configs[1]
        for method in ('clsr', 'pre_crop', 'post_crop'):
            for what in (f'all {n2k + nsmall} images', '2K frames', 'small images'):
                a, b = kinds.get((method, '', ra, what)), kinds.get((method, '', rb, what))
                if a and b:
                    lines.append(f'* {method} on {what}: {rb} x {tb} gives {b["rate"] / a["rate"]:.2f}x the boxes/s of '
                                 f'{ra} x {ta} (target >= 0.9x for CLSR).')
    curve = kinds.get(('clsr', '', r1, f'all {n2k + nsmall} images'), {}).get('rss_curve')
    if curve:
        n = max(curve)
        marks = sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n})
        lines.append('* CLSR, peak RSS after ' + ', '.join(f'{k} images: {curve[k] / 2**20:.0f} MiB' for k in marks)
                     + ' (1 rank).')
    cmd = common.command_line(__file__, sys.argv[1:] if args.out == common.DOC else None)
    return (f'Produced by `flock /tmp/clsr_bench.lock {cmd}` ({common.env_line("cpu")}), the default model, each run a fresh `clsr-infer` process (`torchrun '
            f'--standalone --nproc_per_node 2` for 2 ranks); {n2k} 2K LR frames and {nsmall} Set14/BSD100-sized '
            'LR images, 5 plate-like float boxes each from one CSV. *batch s*: the slowest rank from its first '
            'image to its last (`summary.json`); *wall*: the whole command, with process start and model '
            'loading.\n\n' + table + '\n\n' + '\n'.join(lines))


if __name__ == '__main__':
    main()
