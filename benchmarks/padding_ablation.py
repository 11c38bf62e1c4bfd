"""How much context does a region need? The LocalSR paper's Table 5 padding ablation, for the
official CARN-M and IMDN x4 (issue 13, item 3): pre-crop with 0, 2, 4, 8, 12 LR pixels of real
context around each 24x24 ROI (moved inward at the image border, as CLSR's base does) vs
post-crop (the whole LR image, then cropped), on the Set14 and BSD100 24x24 grids.

Per-ROI PSNR-Y without border (``basicsr.metrics.calculate_psnr``), averaged over the ROIs; an ROI
whose PSNR is infinite in any row is dropped from every row (and counted), so all rows average
the same ROIs; per-ROI wins against post-crop are counted. LR = MATLAB bicubic x1/4 of the HR
(cropped to a multiple of 4), then cropped to the 24x24 grid. Writes docs/padding_ablation.md and
docs/padding_ablation.png.

    .venv/bin/python benchmarks/padding_ablation.py      # ~6 min on the 2-core CPU
"""
import argparse
import glob
import os.path as osp

import numpy as np
import torch

import common  # noqa: F401  (repo on sys.path, compat)

import cv2  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402
from basicsr.utils import tensor2img  # noqa: E402
from clsr_arch.archs import roi as roi_ops  # noqa: E402
from clsr_arch.archs.backbone_adapters import run_backbone  # noqa: E402
from clsr_arch.archs.carn_arch import CARN_M, official_carn_m_to_single_scale  # noqa: E402
from clsr_arch.archs.clsr_arch import backbone_state_dict  # noqa: E402
from clsr_arch.archs.imdn_arch import IMDN  # noqa: E402
from clsr_arch.data.context_roi_dataset import validation_grid  # noqa: E402
from clsr_arch.data.prep import bicubic_lr, mod_crop  # noqa: E402

SHARED = osp.join(common.REPO, '..', 'shared', 'data')
PADS = (0, 2, 4, 8, 12)
DOC = osp.join(common.REPO, 'docs', 'padding_ablation.md')
PLOT = osp.join(common.REPO, 'docs', 'padding_ablation.png')


def networks():
    carn = CARN_M(upscale=4)
    carn.load_state_dict(official_carn_m_to_single_scale(
        torch.load(osp.join(SHARED, 'weights', 'carn_m.pth'), map_location='cpu', weights_only=True), 4))
    imdn = IMDN(upscale=4)
    imdn.load_state_dict(backbone_state_dict(osp.join(SHARED, 'weights', 'IMDN_x4.pth'), imdn))
    return {'CARN-M': carn.eval(), 'IMDN': imdn.eval()}


def roi_psnrs(net, hr_path, tile=24):
    """{row: [per-ROI PSNR-Y]} for one image: pre pad p for every p, and post-crop."""
    hr = mod_crop(cv2.imread(hr_path, cv2.IMREAD_COLOR), 4)
    lr = bicubic_lr(hr, 4)
    rois, (kh, kw) = validation_grid(lr.shape[0], lr.shape[1], tile, tile)
    lr, hr = lr[:kh, :kw], hr[:4 * kh, :4 * kw]
    x = torch.from_numpy(np.ascontiguousarray(lr[:, :, ::-1]).astype(np.float32) / 255.).permute(2, 0, 1)[None]
    boxes = torch.cat([torch.zeros(len(rois), 1, dtype=torch.long), rois], 1)
    out = {}
    with torch.no_grad():
        post = tensor2img(run_backbone(net, x, 4), rgb2bgr=True)
        for p in PADS:
            pads = roi_ops.padding_for(tile, tile, p)
            pb, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, pads), boxes, x.shape[-2:])
            srs = roi_ops.crop_outputs(net(roi_ops.crop(x, pb)), offsets, tile, tile, 4)
            out[f'pre pad {p}'] = [calculate_psnr(tensor2img(s, rgb2bgr=True), hr[4 * b[2]:4 * b[2] + 96, 4 * b[1]:4 * b[1] + 96], 0,
                                                  test_y_channel=True) for s, b in zip(srs, boxes.tolist())]
    out['post-crop'] = [calculate_psnr(post[4 * y:4 * y + 96, 4 * x0:4 * x0 + 96], hr[4 * y:4 * y + 96, 4 * x0:4 * x0 + 96], 0,
                                       test_y_channel=True) for x0, y, _, _ in rois.tolist()]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='two Set5 images (tests)')
    p.add_argument('--out', default=DOC)
    p.add_argument('--plot', default=PLOT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = ({'Set5': sorted(glob.glob(osp.join(SHARED, 'Set5', 'HR', 'b*.png')))[:2]} if args.quick else
            {s: sorted(glob.glob(osp.join(SHARED, s, 'HR', '*.png'))) for s in ('Set14', 'BSD100')})
    nets = networks()
    rows_all, table = {}, {}
    for net_name, net in nets.items():
        for set_name, paths in sets.items():
            rows = {}
            for path in paths:
                for k, v in roi_psnrs(net, path).items():
                    rows.setdefault(k, []).extend(v)
            arr = {k: np.array(v) for k, v in rows.items()}
            finite = np.all([np.isfinite(v) for v in arr.values()], axis=0)
            means = {k: float(v[finite].mean()) for k, v in arr.items()}
            wins = {k: int((v[finite] > arr['post-crop'][finite]).sum()) for k, v in arr.items()}
            table[(net_name, set_name)] = (means, wins, int(finite.sum()), int((~finite).sum()))
            rows_all[(net_name, set_name)] = means
            print(net_name, set_name, {k: round(m, 3) for k, m in means.items()}, flush=True)
    keys = [f'pre pad {p}' for p in PADS] + ['post-crop']
    cols = list(table)
    header = ['row'] + [f'{n}, {s} ({table[(n, s)][2]} ROIs)' for n, s in cols]
    body_rows = []
    for k in keys:
        cells = []
        for c in cols:
            means, wins, n, _ = table[c]
            d = means[k] - means['post-crop']
            cells.append(f'{means[k]:.3f}' + ('' if k == 'post-crop' else f' ({d:+.3f}; {wins[k]}/{n} ROIs above post-crop)'))
        body_rows.append([k] + cells)
    dropped = ', '.join(f'{n} {s}: {table[(n, s)][3]}' for n, s in cols)
    text = (f'Produced by `{common.command_line(__file__, argv)}` ({common.env_line("cpu", args.threads)}). '
            f'Mean per-ROI PSNR-Y (dB) over the same ROIs in every row; in brackets: minus post-crop, and on how many '
            f'ROIs the row beats post-crop. ROIs dropped for an infinite PSNR in some row: {dropped}.\n\n'
            + common.markdown_table(header, body_rows))
    common.write_section(args.out, 'padding-ablation', text)
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for c in cols:
            means = rows_all[c]
            ax.plot(PADS, [means[f'pre pad {p}'] - means['post-crop'] for p in PADS], marker='o', label=f'{c[0]}, {c[1]}')
        ax.axhline(0, color='k', lw=0.8)
        ax.set_xlabel('pre-crop padding (LR pixels of real context per side)')
        ax.set_ylabel('PSNR-Y minus post-crop (dB)')
        ax.set_title('24x24 ROIs, x4: how much context closes the gap')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot)
        plt.close(fig)
    return table


if __name__ == '__main__':
    main()
