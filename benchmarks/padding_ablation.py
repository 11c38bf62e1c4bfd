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

Any network spandrel loads (issue 24, item 3), e.g. CRAFT x4 (``../shared/data/weights/CRAFT_x4.pth``)
through :func:`clsr_arch.api.spandrel_model.load_sr_model` -- the network LocalSR's pre-/post-crop
serve: spandrel's size requirements (CRAFT: minimum 16, multiple of 16) are met by reflect padding
at the bottom/right, so the pad-0 row is the bare 24x24 ROI reflected to 32; pads whose 24 + 2p is a
multiple of 16 (4, 12, 20, 36) see only real context. CRAFT costs ~1.5 s per ROI crop on the shared
2-core CPU, so its per-image results are cached (``--cache``) and a run can be resumed or cut
(``--max-images``); it writes its own section of the doc:

    flock -s /tmp/clsr_bench.lock .venv/bin/python benchmarks/padding_ablation.py --nets CRAFT \
        --pads 0,4,12 --no-plot
"""
import argparse
import glob
import json
import os
import os.path as osp
import time

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


def networks(names=('CARN-M', 'IMDN')):
    nets = {}
    if 'CRAFT' in names:
        from clsr_arch.api.spandrel_model import load_sr_model
        nets['CRAFT'] = load_sr_model(osp.join(SHARED, 'weights', 'CRAFT_x4.pth'), scale=4)
    if not {'CARN-M', 'IMDN'} & set(names):
        return nets
    carn = CARN_M(upscale=4)
    carn.load_state_dict(official_carn_m_to_single_scale(
        torch.load(osp.join(SHARED, 'weights', 'carn_m.pth'), map_location='cpu', weights_only=True), 4))
    imdn = IMDN(upscale=4)
    imdn.load_state_dict(backbone_state_dict(osp.join(SHARED, 'weights', 'IMDN_x4.pth'), imdn))
    nets.update({'CARN-M': carn.eval(), 'IMDN': imdn.eval()})
    return {n: nets[n] for n in names}


def roi_psnrs(net, hr_path, tile=24, pads=PADS):
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
        for p in pads:
            pads_ = roi_ops.padding_for(tile, tile, p)
            pb, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, pads_), boxes, x.shape[-2:])
            srs = roi_ops.crop_outputs(net(roi_ops.crop(x, pb)), offsets, tile, tile, 4)
            out[f'pre pad {p}'] = [calculate_psnr(tensor2img(s, rgb2bgr=True), hr[4 * b[2]:4 * b[2] + 96, 4 * b[1]:4 * b[1] + 96], 0,
                                                  test_y_channel=True) for s, b in zip(srs, boxes.tolist())]
    out['post-crop'] = [calculate_psnr(post[4 * y:4 * y + 96, 4 * x0:4 * x0 + 96], hr[4 * y:4 * y + 96, 4 * x0:4 * x0 + 96], 0,
                                       test_y_channel=True) for x0, y, _, _ in rois.tolist()]
    return out


def border_mask(hr_path, tile=24):
    """Per ROI of :func:`roi_psnrs`'s grid (row-major): whether it lies in the first/last grid
    row or column (the image border of the LR image post-crop runs on)."""
    hr = cv2.imread(hr_path, cv2.IMREAD_UNCHANGED)
    h, w = hr.shape[0] // 4, hr.shape[1] // 4
    ny, nx = (h - tile) // tile + 1, (w - tile) // tile + 1
    return [y in (0, ny - 1) or x in (0, nx - 1) for y in range(ny) for x in range(nx)]


def _cache_file(cache, net_name, path):
    return osp.join(cache, net_name, osp.basename(osp.dirname(osp.dirname(path))), osp.basename(path) + '.json')


def is_cached(net_name, path, pads, cache):
    f = _cache_file(cache, net_name, path) if cache else None
    if not f or not osp.exists(f):
        return False
    with open(f) as fh:
        have = json.load(fh)
    return all(f'pre pad {p}' in have for p in pads) and 'post-crop' in have


def cached_roi_psnrs(net, net_name, path, pads, cache):
    """:func:`roi_psnrs`, the rows already in ``cache`` (a folder; None: no cache) read back."""
    if cache is None:
        return roi_psnrs(net, path, pads=pads)
    f = _cache_file(cache, net_name, path)
    have = {}
    if osp.exists(f):
        with open(f) as fh:
            have = json.load(fh)
    missing = [p for p in pads if f'pre pad {p}' not in have]
    if missing or 'post-crop' not in have:
        have.update(roi_psnrs(net, path, pads=missing))
        os.makedirs(osp.dirname(f), exist_ok=True)
        with open(f + '.tmp', 'w') as fh:
            json.dump(have, fh)
        os.replace(f + '.tmp', f)
    return {k: have[k] for k in [f'pre pad {p}' for p in pads] + ['post-crop']}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='two Set5 images (tests)')
    p.add_argument('--out', default=DOC)
    p.add_argument('--plot', default=PLOT)
    p.add_argument('--no-plot', dest='plot', action='store_const', const=None)
    p.add_argument('--nets', default='CARN-M,IMDN', help='comma list of CARN-M, IMDN, CRAFT')
    p.add_argument('--pads', default=','.join(map(str, PADS)), help='pre-crop paddings (LR pixels per side)')
    p.add_argument('--sets', default='Set14,BSD100')
    p.add_argument('--max-images', type=int, help='first N images of each set (a cut run says so)')
    p.add_argument('--cached-only', action='store_true',
                   help='use only the images whose rows are all in --cache (a cut run), and say how many')
    p.add_argument('--cache', help='folder of per-image results (resumable runs); default for CRAFT: '
                   'results/padding_ablation')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = tuple(n.strip() for n in args.nets.split(','))
    pads = tuple(int(v) for v in args.pads.split(','))
    cache = args.cache or (osp.join(common.REPO, 'results', 'padding_ablation') if 'CRAFT' in names else None)
    sets = ({'Set5': sorted(glob.glob(osp.join(SHARED, 'Set5', 'HR', 'b*.png')))[:2]} if args.quick else
            {s: sorted(glob.glob(osp.join(SHARED, s, 'HR', '*.png')))[:args.max_images] for s in args.sets.split(',')})
    nets = networks(names)
    rows_all, table, splits, counts = {}, {}, {}, {}
    for net_name, net in nets.items():
        for set_name, paths in sets.items():
            rows, border = {}, []
            used = 0
            for path in paths:
                if args.cached_only and not is_cached(net_name, path, pads, cache):
                    continue
                used += 1
                border += border_mask(path)
                t0 = time.perf_counter()
                for k, v in cached_roi_psnrs(net, net_name, path, pads, cache).items():
                    rows.setdefault(k, []).extend(v)
                print(f'  {net_name} {set_name} {osp.basename(path)} {time.perf_counter() - t0:.1f} s', flush=True)
            arr = {k: np.array(v) for k, v in rows.items()}
            finite = np.all([np.isfinite(v) for v in arr.values()], axis=0)
            means = {k: float(v[finite].mean()) for k, v in arr.items()}
            wins = {k: int((v[finite] > arr['post-crop'][finite]).sum()) for k, v in arr.items()}
            table[(net_name, set_name)] = (means, wins, int(finite.sum()), int((~finite).sum()))
            counts[(net_name, set_name)] = (used, len(paths))
            edge = np.array(border)[finite]
            splits[(net_name, set_name)] = {k: (float(v[finite][edge].mean() - arr['post-crop'][finite][edge].mean()),
                                                float(v[finite][~edge].mean() - arr['post-crop'][finite][~edge].mean()))
                                            for k, v in arr.items() if k != 'post-crop'}, int(edge.sum())
            rows_all[(net_name, set_name)] = means
            print(net_name, set_name, {k: round(m, 3) for k, m in means.items()}, flush=True)
    keys = [f'pre pad {p}' for p in pads] + ['post-crop']
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
    cut = f' First {args.max_images} images of each set only.' if args.max_images else ''
    if args.cached_only:
        cut += ' Images with every row measured (a run cut by time): ' + ', '.join(
            f'{n} {s_}: {u} of {t}' for (n, s_), (u, t) in counts.items()) + '.'
    text = (f'Produced by `{common.command_line(__file__, argv)}` ({common.env_line("cpu", args.threads)}).{cut} '
            f'Mean per-ROI PSNR-Y (dB) over the same ROIs in every row; in brackets: minus post-crop, and on how many '
            f'ROIs the row beats post-crop. ROIs dropped for an infinite PSNR in some row: {dropped}.\n\n'
            + common.markdown_table(header, body_rows))
    if set(names) - {'CARN-M', 'IMDN'}:  # where the difference to post-crop lives (CRAFT, issue 24)
        text += '\n\nMinus post-crop on the ROIs at the image border (first/last grid row or column) / in the interior:\n\n'
        text += common.markdown_table(['row'] + [f'{n}, {s_} ({splits[(n, s_)][1]} border / {table[(n, s_)][2] - splits[(n, s_)][1]} '
                                                 'interior ROIs)' for n, s_ in cols],
                                      [[k] + [f'{splits[c][0][k][0]:+.3f} / {splits[c][0][k][1]:+.3f}' for c in cols]
                                       for k in keys if k != 'post-crop'])
    section = 'padding-ablation' if set(names) <= {'CARN-M', 'IMDN'} else 'padding-ablation-' + '-'.join(
        n.lower() for n in names)
    common.write_section(args.out, section, text)
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for c in cols:
            means = rows_all[c]
            ax.plot(pads, [means[f'pre pad {p}'] - means['post-crop'] for p in pads], marker='o', label=f'{c[0]}, {c[1]}')
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
