"""docs/results.md: the shipped CLSR models (CLSR-IMDN, CLSR-CARN-M) against bicubic, pre-cropping
and post-cropping (the LocalSR paper's Table 1 protocol, Sec. 4.1-4.2) on Set14 and BSD100, 24x24
and 48x48 ROIs, plus the validation split the checkpoints were chosen on.

Reads what ``clsr_arch/test.py -opt options/test/CLSR_<model>_x4_results_<row>.yml`` wrote:
``results/<name>/rois_<dataset>.csv``, every ROI's metrics. Rows are compared over **the same
ROIs**: an ROI whose PSNR is infinite in any row (restored exactly) is dropped from every row and
counted. Per-ROI wins: on how many of those ROIs CLSR's PSNR-Y is above the row's. GFLOPs per
ROI: :func:`clsr_arch.utils.flops.localsr_flops` on each image's (grid-cropped) LR size, averaged
over the images -- the cost of restoring one ROI alone (post-cropping runs the whole image, CLSR
runs its context pass plus the ROI; paper Table 1).

    .venv/bin/python -m clsr_arch.utils.results_table --out docs/results.md
"""
import argparse
import csv
import math
import os
import os.path as osp
import sys

import numpy as np

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir, os.pardir))
MODELS = (('IMDN', 'IMDN'), ('CARN_M', 'CARN-M'))
ROWS = (('bicubic', 'Bicubic (each ROI alone)'),
        ('pre_crop', 'Pre-crop {b}, no padding'),
        ('pre_crop_pad2', 'Pre-crop {b}, padding 2 (= CLSR base branch)'),
        ('post_crop', 'Post-crop {b} (whole image)'),
        ('clsr', '**CLSR-{b} (ours, shipped)**'))
SETS = (('heldout2_roi24s16', 'val', 24, 16), ('Set14_roi24', 'Set14', 24, 24), ('Set14_roi48', 'Set14', 48, 48),
        ('BSD100_roi24', 'BSD100', 24, 24), ('BSD100_roi48', 'BSD100', 48, 48))
METRICS = (('psnr', 'PSNR RGB', '{:.3f}'), ('ssim', 'SSIM RGB', '{:.4f}'),
           ('psnr_y', 'PSNR Y', '{:.3f}'), ('ssim_y', 'SSIM Y', '{:.4f}'))
ROI_PAD = 2  # network_g.roi_pad of both shipped models


def lr_sizes(folder, roi, stride):
    """Grid-cropped LR (H, W) of every image of ``folder`` (as ContextROIDataset crops them)."""
    from clsr_arch.data.image_io import image_size, list_images
    lr = osp.join(folder, 'LR_bicubic', 'X4')
    sizes = []
    for name in list_images(lr):
        h, w = image_size(osp.join(lr, name))
        sizes.append(((h - roi) // stride * stride + roi, (w - roi) // stride * stride + roi))
    return sizes


def gflops(sizes, roi, net_opt):
    """Mean GFLOPs per ROI of every row over the images' LR sizes (cached per size)."""
    from clsr_arch.api import bicubic_flops
    from clsr_arch.utils.flops import localsr_flops
    pad = roi + 2 * ROI_PAD
    pre = localsr_flops(net_opt['backbone'], (roi, roi), (roi, roi), strategies=('pre_crop',))['pre_crop']
    pre_pad = localsr_flops(net_opt['backbone'], (pad, pad), (pad, pad), strategies=('pre_crop',))['pre_crop']
    cache = {}
    for hw in sizes:
        if hw not in cache:
            cache[hw] = localsr_flops(net_opt, hw, (roi, roi), strategies=('post_crop', 'clsr'))
    per = [cache[hw] for hw in sizes]
    return {'bicubic': bicubic_flops(roi, roi, 4) / 1e9, 'pre_crop': pre, 'pre_crop_pad2': pre_pad,
            'post_crop': float(np.mean([p['post_crop'] for p in per])),
            'clsr': float(np.mean([p['clsr'] for p in per]))}


def load_rois(results_root, model, row, dataset):
    """``{(image, roi index): {metric: value}}`` of one row."""
    name = f'CLSR_{model}_x4_results_{row}'
    path = osp.join(results_root, name, f'rois_{dataset}.csv')
    if not osp.isfile(path):
        raise SystemExit(f'results_table: {path} missing: run clsr_arch/test.py -opt options/test/{name}.yml first')
    with open(path, newline='') as f:
        return {(r['image'], int(r['roi'])): {k: float(r[k]) for k, _, _ in METRICS} for r in csv.DictReader(f)}


def common_rois(rows, where):
    """The ROIs every row has, minus those with an infinite PSNR in any row; (keys, dropped)."""
    keys = set.intersection(*(set(r) for r in rows.values()))
    for row, r in rows.items():
        if set(r) != keys:
            raise SystemExit(f'results_table: {where}: row {row} has {len(r)} ROIs, others {len(keys)}: rerun them')
    finite = sorted(k for k in keys if all(math.isfinite(r[k][m]) for r in rows.values() for m in ('psnr', 'psnr_y')))
    return finite, len(keys) - len(finite)


def model_tables(results_root, data_root, model, label):
    import yaml
    with open(osp.join(REPO, 'options', 'train', f'CLSR_{model}_x4_ship.yml')) as f:
        net_opt = yaml.safe_load(f)['network_g']
    net_opt = {k: v for k, v in net_opt.items() if k != 'pretrain_backbone'}
    lines, deltas = [], []
    for dataset, folder, roi, stride in SETS:
        rows = {row: load_rois(results_root, model, row, dataset) for row, _ in ROWS}
        keys, dropped = common_rois(rows, f'{model} {dataset}')
        images = len({k[0] for k in keys})
        flops = gflops(lr_sizes(osp.join(data_root, folder), roi, stride), roi, net_opt)
        what = ('**validation split** (chose the checkpoint; two held-out training images, 24x24 ROIs every 16 px)'
                if folder == 'val' else f'{folder}, {roi}x{roi} ROIs')
        lines.append(f'\n### {label}: {what} — {len(keys)} ROIs in {images} images'
                     + (f' ({dropped} dropped from every row: infinite PSNR in some row)' if dropped else '') + '\n')
        lines.append('| method | ' + ' | '.join(m[1] for m in METRICS) + ' | GFLOPs / ROI | CLSR better (PSNR-Y) |')
        lines.append('|---|' + '---:|' * (len(METRICS) + 2))
        means = {row: {m: float(np.mean([rows[row][k][m] for k in keys])) for m, _, _ in METRICS} for row in rows}
        wins = {row: sum(rows['clsr'][k]['psnr_y'] > rows[row][k]['psnr_y'] for k in keys) for row in rows}
        for row, name in ROWS:
            vals = ' | '.join(fmt.format(means[row][m]) for m, _, fmt in METRICS)
            win = '' if row == 'clsr' else f'{wins[row]} / {len(keys)}'
            lines.append(f'| {name.format(b=label)} | {vals} | {flops[row]:.3g} | {win} |')
        deltas.append((dataset, [means['clsr'][m] - means[r][m] for r in ('pre_crop', 'pre_crop_pad2', 'post_crop')
                                 for m in ('psnr', 'psnr_y')],
                       [wins[r] for r in ('pre_crop_pad2', 'post_crop')], len(keys)))
    out = [f'\n### CLSR-{label} minus each baseline (dB, over the same ROIs; positive = CLSR better)\n',
           '| set | vs pre-crop RGB | vs pre-crop Y | vs pre-crop pad 2 RGB | vs pre-crop pad 2 Y | '
           'vs post-crop RGB | vs post-crop Y | ROIs CLSR wins vs pad 2 / vs post (Y) |', '|---|' + '---:|' * 7]
    for dataset, d, w, n in deltas:
        out.append(f'| {dataset} | ' + ' | '.join(f'{v:+.3f}' for v in d) + f' | {w[0]} / {w[1]} of {n} |')
    return '\n'.join(lines), '\n'.join(out)


def build(results_root, data_root, models=MODELS):
    parts = []
    for model, label in models:
        tables, deltas = model_tables(results_root, data_root, model, label)
        parts.append(f'\n## CLSR-{label}\n' + deltas + '\n' + tables + '\n')
    return ''.join(parts)


def kept_sections(path):
    """The marked sections of ``path`` (``<!-- BEGIN x -->`` ... ``<!-- END x -->``), verbatim, so
    that regenerating the tables above them does not drop what other scripts wrote."""
    import re
    if not osp.isfile(path):
        return ''
    with open(path) as f:
        text = f.read()
    found = [m.group(0) for m in re.finditer(r'<!-- BEGIN (\S+) -->.*?<!-- END \1 -->', text, flags=re.S)]
    return ''.join('\n' + b + '\n' for b in found)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--results', default=osp.join(REPO, 'results'))
    p.add_argument('--data', default=osp.join(REPO, 'datasets', 'ship'))
    p.add_argument('--header', default=osp.join(REPO, 'docs', 'results_header.md'),
                   help='markdown put above the tables (training runs, commands)')
    p.add_argument('--out', help='write here (atomically) instead of stdout, keeping its <!-- BEGIN name --> '
                                 'sections (written by benchmarks/real_world.py); a shell redirect would empty it first')
    args = p.parse_args(argv)
    import clsr_arch  # noqa: F401  (compat + registries)
    header = open(args.header).read().rstrip() + '\n' if osp.isfile(args.header) else ''
    text = header + build(args.results, args.data)
    if not args.out:
        sys.stdout.write(text)
        return
    text += kept_sections(args.out)
    with open(args.out + '.tmp', 'w') as f:
        f.write(text)
    os.replace(args.out + '.tmp', args.out)


if __name__ == '__main__':
    main()
