"""Real-world LocalSR on degraded test sets (issue 21, item 4): every row over the same ROIs.

Rows: bicubic; today's default (CLSR-IMDN, bicubic-trained); the real base (IMDN fine-tuned on
Real-ESRGAN degradations) pre-cropped with 0/2/4/12 LR pixels of real context and post-cropped;
CLSR-IMDN-real. Sets: Set5/Set14/BSD100 degraded four ways by ``data/make_degraded_sets.py``
(Real-ESRGAN second order, JPEG q30, noise sigma 10, blur sigma 1.6), 24x24 and 48x48 ROI grids,
the whole LR image as context (the paper's protocol, Sec. 4.1).

Each row runs through BasicSR's test runner (``clsr_arch/test.py`` on a generated YAML, kept
under ``results/real_world/opts/``), which writes every ROI's PSNR/SSIM (RGB and Y, no border
crop) to ``results/<row>/rois_<set>.csv``; rows already run are reused (``--force`` reruns).
The table compares rows over the ROIs they share (an infinite PSNR in any row drops the ROI
from all, counted), with per-ROI wins of CLSR-IMDN-real (PSNR-Y) and GFLOPs per ROI from
:func:`clsr_arch.utils.flops.localsr_flops`. It is written into ``docs/results.md`` between
the ``real-world`` markers and printed.

    bash data/prepare_real_data.sh
    .venv/bin/python benchmarks/real_world.py            # ~30 min on 2 CPU cores
"""
import argparse
import csv
import math
import os
import os.path as osp
import re
import subprocess
import sys
import time

import numpy as np
import yaml

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)

SETS = ('Set5', 'Set14', 'BSD100')
KINDS = (('realesrgan', 'Real-ESRGAN 2nd order'), ('jpeg30', 'bicubic + JPEG q30'),
         ('noise10', 'bicubic + noise σ=10'), ('blur1.6', 'blur σ=1.6 + bicubic'))
ROIS = (24, 48)
PADS = (0, 2, 4, 12)
METRICS = ('psnr', 'ssim', 'psnr_y', 'ssim_y')
BEGIN, END = '<!-- real-world:begin -->', '<!-- real-world:end -->'


def _net(yml):
    with open(osp.join(REPO, yml)) as f:
        net = yaml.safe_load(f)['network_g']
    return {k: v for k, v in net.items() if k != 'pretrain_backbone'}


def rows(args):
    """(row id, label, network_g, weights, val options) of every row."""
    default = _net('options/train/CLSR_IMDN_x4_ship.yml')
    real = _net('options/train/CLSR_IMDN_real_x4.yml')
    base = real['backbone']
    out = [('bicubic', 'bicubic (each ROI alone)', base, None, {'mode': 'bicubic'}),
           ('default', "today's default: CLSR-IMDN (bicubic-trained)", default, args.default_weights, {'mode': 'clsr'})]
    for p in PADS:
        out.append((f'base_pad{p}', f'real base pre-crop, {p} px of context', base, args.base_weights,
                    {'mode': 'pre_crop', 'pre_crop_pad': p}))
    out.append(('base_post', 'real base post-crop (whole image)', base, args.base_weights, {'mode': 'post_crop'}))
    out.append(('clsr_real', '**CLSR-IMDN-real**', real, args.clsr_weights, {'mode': 'clsr'}))
    return out


def dataset_name(set_name, kind, roi):
    return f'{set_name}_{kind}_roi{roi}'


def test_options(row, net, weights, val, data_root):
    datasets = {}
    for i, (s, (kind, _), roi) in enumerate((s, k, r) for s in SETS for k in KINDS for r in ROIS):
        datasets[f'test_{i}'] = {
            'name': dataset_name(s, kind, roi), 'type': 'ContextROIDataset',
            'dataroot_gt': osp.join(data_root, s, 'HR'), 'dataroot_lq': osp.join(data_root, s, kind, 'X4'),
            'io_backend': {'type': 'disk'}, 'roi_size': roi}
    metrics = {m: {'type': 'calculate_' + m.split('_')[0], 'crop_border': 0, 'test_y_channel': m.endswith('_y')}
               for m in METRICS}
    return {'name': f'real_world_{row}', 'model_type': 'CLSRModel', 'scale': 4, 'num_gpu': 'auto',
            'manual_seed': 0, 'datasets': datasets, 'network_g': net,
            'path': {'pretrain_network_g': weights, 'strict_load_g': True},
            'val': dict(val, save_img=False, suffix=None, pbar=False, metrics=metrics)}


def run_row(row, opt, results_root, force):
    folder = osp.join(results_root, opt['name'])
    expected = [osp.join(folder, f'rois_{d["name"]}.csv') for d in opt['datasets'].values()]
    if not force and all(osp.isfile(p) for p in expected):
        return 'reused'
    opt_dir = osp.join(results_root, 'real_world', 'opts')
    os.makedirs(opt_dir, exist_ok=True)
    path = osp.join(opt_dir, f'{row}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    t0 = time.time()
    env = dict(os.environ, CLSR_ROOT=osp.dirname(results_root))
    subprocess.run([sys.executable, osp.join(REPO, 'clsr_arch', 'test.py'), '-opt', path], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return f'{time.time() - t0:.0f} s'


def load_rois(results_root, row, dataset):
    path = osp.join(results_root, f'real_world_{row}', f'rois_{dataset}.csv')
    with open(path, newline='') as f:
        return {(r['image'], int(r['roi'])): {m: float(r[m]) for m in METRICS} for r in csv.DictReader(f)}


def gflops_per_roi(data_root, set_name, kind, roi, row_nets):
    """Mean GFLOPs to restore one ROI alone, over the set's grid-cropped LR sizes."""
    from clsr_arch.api import bicubic_flops
    from clsr_arch.data.image_io import image_size, list_images
    from clsr_arch.utils.flops import localsr_flops
    lr = osp.join(data_root, set_name, kind, 'X4')
    sizes = []
    for n in list_images(lr):
        h, w = image_size(osp.join(lr, n))
        sizes.append(((h - roi) // roi * roi + roi, (w - roi) // roi * roi + roi))
    out = {}
    for row, net, val in row_nets:
        mode = val['mode']
        if mode == 'bicubic':
            out[row] = bicubic_flops(roi, roi, 4) / 1e9
        elif mode == 'pre_crop':
            side = roi + 2 * val['pre_crop_pad']
            out[row] = localsr_flops(net, (side, side), (side, side), strategies=('pre_crop',))['pre_crop']
        else:
            key = 'post_crop' if mode == 'post_crop' else 'clsr'
            out[row] = float(np.mean([localsr_flops(net, hw, (roi, roi), strategies=(key,))[key] for hw in sizes]))
    return out


def table(results_root, data_root, row_defs):
    """Markdown: a summary of CLSR-IMDN-real's margins, then one table per degraded set and ROI size."""
    row_nets = [(r, net, val) for r, _, net, _, val in row_defs]
    summary, parts = [], []
    for s in SETS:
        for kind, kind_label in KINDS:
            for roi in ROIS:
                d = dataset_name(s, kind, roi)
                data = {r: load_rois(results_root, r, d) for r, *_ in row_defs}
                keys = set.intersection(*(set(v) for v in data.values()))
                finite = sorted(k for k in keys if all(math.isfinite(v[k][m]) for v in data.values()
                                                        for m in ('psnr', 'psnr_y')))
                dropped = len(keys) - len(finite)
                means = {r: {m: float(np.mean([data[r][k][m] for k in finite])) for m in METRICS} for r in data}
                wins = {r: sum(data['clsr_real'][k]['psnr_y'] > data[r][k]['psnr_y'] for k in finite) for r in data}
                flops = gflops_per_roi(data_root, s, kind, roi, row_nets)
                parts.append(f'\n#### {s}, {kind_label}, {roi}x{roi} ROIs — {len(finite)} ROIs'
                             + (f' ({dropped} dropped: infinite PSNR in some row)' if dropped else '') + '\n')
                parts.append('| method | PSNR-Y | SSIM-Y | PSNR RGB | SSIM RGB | GFLOPs / ROI | CLSR-real better (PSNR-Y) |')
                parts.append('|---|---:|---:|---:|---:|---:|---:|')
                for r, label, *_ in row_defs:
                    m = means[r]
                    win = '' if r == 'clsr_real' else f'{wins[r]} / {len(finite)}'
                    parts.append(f'| {label} | {m["psnr_y"]:.3f} | {m["ssim_y"]:.4f} | {m["psnr"]:.3f} | '
                                 f'{m["ssim"]:.4f} | {flops[r]:.3g} | {win} |')
                c = means['clsr_real']['psnr_y']
                summary.append((s, kind_label, roi, c - means['default']['psnr_y'], c - means['base_pad4']['psnr_y'],
                                c - means['base_post']['psnr_y'], c - means['bicubic']['psnr_y'],
                                flops['clsr_real'], flops['base_pad4'], flops['base_post'],
                                wins['base_pad4'], len(finite)))
    head = ['\n### CLSR-IMDN-real minus each row (PSNR-Y, dB, over the same ROIs)\n',
            '| set | degradation | ROI | vs today\'s default | vs real base pad 4 | vs real base post-crop | '
            'vs bicubic | GFLOPs CLSR / pad 4 / post | ROIs CLSR wins vs pad 4 |',
            '|---|---|---:|---:|---:|---:|---:|---|---:|']
    for s, k, roi, dd, dp, dpo, db, fc, fp, fpo, w, n in summary:
        head.append(f'| {s} | {k} | {roi} | {dd:+.3f} | {dp:+.3f} | {dpo:+.3f} | {db:+.3f} | '
                    f'{fc:.3g} / {fp:.3g} / {fpo:.3g} | {w} / {n} |')
    per_kind = []
    for kind, kind_label in KINDS:
        sel = [x for x in summary if x[1] == kind_label]
        per_kind.append(f'| {kind_label} | {np.mean([x[3] for x in sel]):+.3f} | {np.mean([x[4] for x in sel]):+.3f} | '
                        f'{np.mean([x[5] for x in sel]):+.3f} |')
    head += ['\n**Averaged over sets and ROI sizes** (each set/ROI-size cell weighted equally):\n',
             '| degradation | vs today\'s default | vs real base pad 4 | vs real base post-crop |', '|---|---:|---:|---:|']
    head += per_kind
    head.append(f'| **all degraded sets** | {np.mean([x[3] for x in summary]):+.3f} | '
                f'{np.mean([x[4] for x in summary]):+.3f} | {np.mean([x[5] for x in summary]):+.3f} |')
    return '\n'.join(head) + '\n' + '\n'.join(parts) + '\n'


def write_into(doc, block):
    """Replace the marked block of ``doc`` (or append it) with ``block``."""
    text = open(doc).read() if osp.isfile(doc) else ''
    new = f'{BEGIN}\n{block.strip()}\n{END}'
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + '.*?' + re.escape(END), lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip() + '\n\n' + new + '\n'
    tmp = doc + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, doc)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default=osp.join(REPO, 'datasets', 'real'))
    p.add_argument('--results', default=osp.join(REPO, 'results'))
    p.add_argument('--default-weights', default=osp.join(REPO, 'weights', 'CLSR_IMDN_x4.pth'))
    p.add_argument('--base-weights', default=osp.join(REPO, 'weights', 'IMDN_real_x4.pth'))
    p.add_argument('--clsr-weights', default=osp.join(REPO, 'weights', 'CLSR_IMDN_real_x4.pth'))
    p.add_argument('--doc', default=osp.join(REPO, 'docs', 'results.md'))
    p.add_argument('--force', action='store_true', help='rerun rows whose CSVs exist')
    args = p.parse_args(argv)
    for s in SETS:
        for kind, _ in KINDS:
            if not osp.isdir(osp.join(args.data, s, kind)):
                raise SystemExit(f'real_world: {osp.join(args.data, s, kind)} missing: run bash data/prepare_real_data.sh')
    for w in (args.default_weights, args.base_weights, args.clsr_weights):
        if not osp.isfile(w):
            raise SystemExit(f'real_world: weights {w} missing')
    row_defs = rows(args)
    for row, label, net, weights, val in row_defs:
        status = run_row(row, test_options(row, net, weights, val, args.data), args.results, args.force)
        print(f'{row:10s} {status}', flush=True)
    import clsr_arch  # noqa: F401  (compat + registries for the FLOPs model)
    block = ('## Real-world models on degraded test sets (issue 21)\n\n'
             'Made by `benchmarks/real_world.py` (its docstring has the protocol; data: '
             '`bash data/prepare_real_data.sh`, seed 0).\n' + table(args.results, args.data, row_defs))
    write_into(args.doc, block)
    print(block)


if __name__ == '__main__':
    main()
