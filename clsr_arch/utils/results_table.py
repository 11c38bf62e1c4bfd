"""docs/results.md: the shipped CLSR-CARN-M against bicubic, pre-cropping and post-cropping
(the LocalSR paper's Table 1 protocol, Sec. 4.1-4.2) on Set14 and BSD100, 24x24 and 48x48 ROIs.

Reads what ``clsr_arch/test.py -opt options/test/CLSR_CARN_M_x4_results_<row>.yml`` wrote
(``results/<name>/metrics_<dataset>.json``) and adds GFLOPs per ROI measured with
:func:`clsr_arch.utils.flops.localsr_flops` on each test image's (grid-cropped) LR size,
averaged over the images. FLOPs convention (paper Table 1): the cost of restoring one ROI
alone -- post-cropping runs the whole image, CLSR runs its context pass plus the ROI.

    .venv/bin/python -m clsr_arch.utils.results_table > docs/results.md
"""
import argparse
import json
import os
import os.path as osp
import sys

import numpy as np

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir, os.pardir))
ROWS = (('bicubic', 'Bicubic (each ROI alone)'),
        ('pre_crop', 'Pre-crop CARN-M, no padding'),
        ('pre_crop_pad2', 'Pre-crop CARN-M, padding 2 (= CLSR base branch)'),
        ('post_crop', 'Post-crop CARN-M (whole image)'),
        ('clsr', '**CLSR-CARN-M (ours, shipped)**'))
DATASETS = ('Set14', 'BSD100')
ROI_SIZES = (24, 48)
METRICS = (('psnr', 'PSNR RGB', '{:.3f}'), ('ssim', 'SSIM RGB', '{:.4f}'),
           ('psnr_y', 'PSNR Y', '{:.3f}'), ('ssim_y', 'SSIM Y', '{:.4f}'))
ROI_PAD = 2  # options/train/CLSR_CARN_M_x4_ship.yml network_g.roi_pad


def lr_sizes(dataset, roi, data_root):
    """Grid-cropped LR (H, W) of every image of ``dataset`` (as ContextROIDataset crops them)."""
    from clsr_arch.data.image_io import image_size, list_images
    folder = osp.join(data_root, dataset, 'LR_bicubic', 'X4')
    sizes = []
    for name in list_images(folder):
        h, w = image_size(osp.join(folder, name))
        sizes.append(((h // roi) * roi, (w // roi) * roi))
    return sizes


def gflops(sizes, roi, net_opt):
    """Mean GFLOPs per ROI of every row over the images' LR sizes (cached per size)."""
    from clsr_arch.infer import bicubic_flops
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


def load(results_root, row, dataset):
    path = osp.join(results_root, f'CLSR_CARN_M_x4_results_{row}', f'metrics_{dataset}.json')
    if not osp.isfile(path):
        raise SystemExit(f'results_table: {path} missing: run clsr_arch/test.py -opt '
                         f'options/test/CLSR_CARN_M_x4_results_{row}.yml first')
    with open(path) as f:
        return json.load(f)


def build(results_root, data_root):
    import yaml

    with open(osp.join(REPO, 'options', 'train', 'CLSR_CARN_M_x4_ship.yml')) as f:
        net_opt = yaml.safe_load(f)['network_g']
    net_opt = {k: v for k, v in net_opt.items() if k != 'pretrain_backbone'}
    lines = []
    summary = []
    for ds in DATASETS:
        for roi in ROI_SIZES:
            name = f'{ds}_roi{roi}'
            res = {row: load(results_root, row, name) for row, _ in ROWS}
            flops = gflops(lr_sizes(ds, roi, data_root), roi, net_opt)
            first = res['clsr']
            lines.append(f'\n### {ds}, {roi}x{roi} ROIs ({first["num_rois"]} ROIs in {first["num_images"]} images)\n')
            lines.append('| method | ' + ' | '.join(m[1] for m in METRICS) + ' | GFLOPs / ROI |')
            lines.append('|---|' + '---:|' * (len(METRICS) + 1))
            for row, label in ROWS:
                m = res[row]['metrics']
                if res[row]['num_rois'] != first['num_rois']:
                    raise SystemExit(f'results_table: {name}: row {row} has {res[row]["num_rois"]} ROIs, '
                                     f'clsr has {first["num_rois"]}: rerun both')
                vals = ' | '.join(fmt.format(m[key]) for key, _, fmt in METRICS)
                lines.append(f'| {label} | {vals} | {flops[row]:.3g} |')
            c = res['clsr']['metrics']
            summary.append((name, *(c[k] - res[r]['metrics'][k] for r in ('pre_crop', 'pre_crop_pad2', 'post_crop')
                                    for k in ('psnr', 'psnr_y'))))
    out = ['\n## CLSR minus each baseline (dB; positive = CLSR better)\n',
           '| set | vs pre-crop RGB | vs pre-crop Y | vs pre-crop pad 2 RGB | vs pre-crop pad 2 Y | '
           'vs post-crop RGB | vs post-crop Y |', '|---|' + '---:|' * 6]
    for name, *d in summary:
        out.append(f'| {name} | ' + ' | '.join(f'{v:+.3f}' for v in d) + ' |')
    return '\n'.join(lines), '\n'.join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--results', default=osp.join(REPO, 'results'))
    p.add_argument('--data', default=osp.join(REPO, 'datasets', 'ship'))
    p.add_argument('--header', default=osp.join(REPO, 'docs', 'results_header.md'),
                   help='markdown put above the tables (training run, commands)')
    args = p.parse_args(argv)
    import clsr_arch  # noqa: F401  (compat + registries)
    tables, deltas = build(args.results, args.data)
    header = open(args.header).read().rstrip() + '\n' if osp.isfile(args.header) else ''
    sys.stdout.write(header + '\n## Per-ROI results (means over all ROIs)\n' + tables + '\n' + deltas + '\n')


if __name__ == '__main__':
    main()
