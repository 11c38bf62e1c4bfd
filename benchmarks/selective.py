"""Where SR matters (issue 15): how well three SR-gain estimators rank the tiles of an image, and
what selective whole-image SR (CLSR on the top k % of tiles, bicubic elsewhere) buys per GFLOP.

On Set14 and BSD100 (LR = MATLAB bicubic x1/4 of the HR, cropped to the 24x24 grid), shipped
CLSR-CARN-M x4 (its base = the official CARN-M gives post-crop):

* per tile, ground truth = PSNR-Y(post-crop) - PSNR-Y(whole-image bicubic) (dB, capped at 60 dB);
* per estimator (gradient energy, PIM detail, learned CNN; random as the floor): Spearman rank
  correlation with the truth over all tiles of the set, recall of the top 10 % tiles, and its
  GFLOPs per image next to the SR's;
* selective SR sweep k = 0, 5, 10, 25, 50, 100 %: whole-image PSNR-Y (border 4) against GFLOPs
  per image (estimator + context pass + one CLSR decode per chosen tile, grown by its 2-pixel
  blending margin + bicubic) for each ranking and the oracles, next to post-crop; plot
  docs/selective.png, tables in docs/selective.md. (Tiles are decoded one by one -- ``plan=False``
  -- so that every ranking and k reuse one decode per tile; the planner would merge neighbours.)

    .venv/bin/python benchmarks/selective.py            # ~10 min on the 2-core CPU
"""
import argparse
import glob
import os.path as osp

import numpy as np

import common  # noqa: F401  (repo on sys.path, compat)

import cv2  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from basicsr.metrics import calculate_psnr  # noqa: E402
from clsr_arch import selective  # noqa: E402
from clsr_arch.api import LocalSR, bicubic_flops  # noqa: E402
from clsr_arch.data.context_roi_dataset import validation_grid  # noqa: E402
from clsr_arch.data.prep import bicubic_lr, mod_crop  # noqa: E402

SHARED = osp.join(common.REPO, '..', 'shared', 'data')
DOC = osp.join(common.REPO, 'docs', 'selective.md')
PLOT = osp.join(common.REPO, 'docs', 'selective.png')
KS = (0, 0.05, 0.10, 0.25, 0.50, 1.0)
RANKINGS = ('gradient', 'pim', 'learned', 'random', 'oracle', 'oracle_mse')
LABELS = {'gradient': 'gradient energy (heuristic)', 'pim': 'PIM detail (context pass)', 'learned': 'learned CNN',
          'random': 'random (floor)', 'oracle': 'oracle (true gain, dB)', 'oracle_mse': 'oracle (true MSE reduction)'}


def load(path, tile=selective.TILE):
    hr = mod_crop(cv2.imread(path, cv2.IMREAD_COLOR), 4)[:, :, ::-1]
    lr = bicubic_lr(np.ascontiguousarray(hr), 4)
    rois, (kh, kw) = validation_grid(lr.shape[0], lr.shape[1], tile, tile)
    return (np.ascontiguousarray(lr[:kh, :kw]), np.ascontiguousarray(hr[:4 * kh, :4 * kw]),
            [tuple(r) for r in rois.tolist()])


def whole_psnr(sr, hr):
    return float(calculate_psnr(sr[..., ::-1], hr[..., ::-1], 4, test_y_channel=True))


def run_set(model, name, paths, rng):
    ests = selective.estimators(model)
    tiles = {'truth': [], **{r: [] for r in RANKINGS if r not in ('oracle', )}}
    curve = {r: {k: ([], []) for k in KS} for r in RANKINGS}
    post_psnr, post_gflops, est_gflops, clsr_all = [], [], {e: [] for e in ests}, []
    for i, path in enumerate(paths):
        lr, hr, boxes = load(path)
        with model.open(lr) as image:
            truth, mse_gain, post, bic = selective.tile_gains(image, hr, boxes)
            scores = {e: est.scores(image, boxes) for e, est in ests.items()}
            scores['random'] = rng.random(len(boxes))
            scores['oracle'], scores['oracle_mse'] = truth, mse_gain
            for e in ests:
                est_gflops[e].append(ests[e].gflops(image.hw))
            tiles['truth'] += list(truth)
            for r in tiles:
                if r != 'truth':
                    tiles[r] += list(scores[r])
            post_psnr.append(whole_psnr(post, hr))
            post_gflops.append(model.cost.base(*image.hw) / 1e9)
            context = model.cost.context(*image.hw) / 1e9
            clsr_all.append(context + len(boxes) * model.cost.decode(24, 24, image.hw) / 1e9)
            bic_g = bicubic_flops(*image.hw, model.scale) / 1e9
            image.encode()  # the context pass once; each alternative below is charged for it when it uses it
            cache = {}  # each grown tile decoded once per image, whatever ranking and k choose it
            for r in RANKINGS:
                # the PIM estimator's own cost includes the context pass, which CLSR then reuses
                extra = ests[r].gflops(image.hw) if r in ests else 0.
                for k in KS:
                    out, run, _ = selective.selective_sr(image, scores[r], k, bicubic=bic, plan=False, cache=cache)
                    g = bic_g + extra
                    if run is not None:  # CLSR ran: its decodes (the plan saw the context as done) ...
                        g += run['gflops']
                        if run['route'] == 'clsr' and r != 'pim':
                            g += context  # ... and the context pass, unless the estimator paid it
                    curve[r][k][0].append(whole_psnr(out, hr))
                    curve[r][k][1].append(g)
        print(f'{name} {i + 1}/{len(paths)} {osp.basename(path)}', flush=True)
    truth = np.array(tiles['truth'])
    top = truth >= np.quantile(truth, 0.9)
    ranking_rows = []
    for r in ('gradient', 'pim', 'learned', 'random'):
        est = np.array(tiles[r])
        rho = spearmanr(est, truth)[0]
        chosen = est >= np.quantile(est, 0.9)
        recall = (chosen & top).sum() / top.sum()
        g = np.mean(est_gflops[r]) if r in est_gflops else 0.
        ranking_rows.append([LABELS[r], f'{rho:.3f}', f'{recall:.2f}', f'{g:.4f}'])
    return {'rows': ranking_rows, 'tiles': len(truth), 'curve': curve, 'post': (np.mean(post_psnr), np.mean(post_gflops)),
            'clsr_all': float(np.mean(clsr_all)), 'images': len(paths)}


def plot(results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6.2 * len(results), 4.4), dpi=110)
    for ax, (name, res) in zip(np.atleast_1d(axes), results.items()):
        for r in RANKINGS:
            xs = [np.mean(res['curve'][r][k][1]) for k in KS]
            ys = [np.mean(res['curve'][r][k][0]) for k in KS]
            ax.plot(xs, ys, marker='o', ms=3.5, label=LABELS[r], linestyle='--' if r in ('random', 'oracle') else '-')
        p, g = res['post']
        ax.plot([g], [p], marker='*', ms=12, color='k', linestyle='none', label='post-crop (whole-image SR)')
        ax.set_xscale('symlog', linthresh=1.0)
        ax.set_xlabel('GFLOPs per image (estimator + CLSR + bicubic)')
        ax.set_ylabel('whole-image PSNR-Y (dB)')
        ax.set_title(f'{name} ({res["images"]} images): top k = 0, 5, 10, 25, 50, 100 % of tiles by CLSR')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='one Set5 image (tests)')
    p.add_argument('--out', default=DOC)
    p.add_argument('--plot', default=PLOT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = LocalSR(device='cpu')
    rng = np.random.default_rng(0)
    sets = ({'Set5': sorted(glob.glob(osp.join(SHARED, 'Set5', 'HR', 'bird.png')))} if args.quick else
            {'Set14': sorted(glob.glob(osp.join(SHARED, 'Set14', 'HR', '*.png'))),
             'BSD100': sorted(glob.glob(osp.join(SHARED, 'BSD100', 'HR', '*.png')))})
    results = {name: run_set(model, name, paths, rng) for name, paths in sets.items()}
    cmd, env = common.command_line(__file__, argv), common.env_line('cpu', args.threads)
    rank_body = [f'Produced by `{cmd}` ({env}).\n']
    for name, res in results.items():
        rank_body.append(f'**{name}** ({res["images"]} images, {res["tiles"]} tiles of 24x24; SR per image: post-crop '
                         f'{res["post"][1]:.2f} GFLOPs, CLSR on every tile {res["clsr_all"]:.2f} GFLOPs)\n')
        rank_body.append(common.markdown_table(['estimator', 'Spearman vs true gain', 'recall of the top 10 %',
                                                'GFLOPs per image'], res['rows']) + '\n')
    common.write_section(args.out, 'selective-ranking', '\n'.join(rank_body))
    sweep_body = [f'Produced by `{cmd}` ({env}); mean whole-image PSNR-Y (border 4) / mean GFLOPs per image.\n']
    for name, res in results.items():
        rows = []
        for r in RANKINGS:
            rows.append([LABELS[r]] + [f'{np.mean(res["curve"][r][k][0]):.3f} / {np.mean(res["curve"][r][k][1]):.2f}'
                                       for k in KS])
        p_, g_ = res['post']
        rows.append(['post-crop (whole image)'] + [''] * (len(KS) - 1) + [f'{p_:.3f} / {g_:.2f}'])
        sweep_body.append(f'**{name}**\n')
        sweep_body.append(common.markdown_table(['ranking'] + [f'k = {int(k * 100)} %' for k in KS], rows) + '\n')
    common.write_section(args.out, 'selective-sweep', '\n'.join(sweep_body))
    if args.plot:
        plot(results, args.plot)


if __name__ == '__main__':
    main()
