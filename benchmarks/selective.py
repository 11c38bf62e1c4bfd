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

Issue 23 item 4 (``--part selective-sr``; clsr_arch/selective_sr.py): selective SR with a learned
light fallback (LiteSR on the whole image, the plain backbone as a padded pre-crop on the chosen
tiles) swept over k on the validation split of the 497 training images (datasets/real/split/val,
from data/prepare_real_data.sh), where the estimator and k are chosen (the smallest GFLOPs within
0.05 dB of post-crop), and measured on Set14/BSD100 beside today's curve (the gradient ranking
with the bicubic fallback, as above) and PCSR's points (../shared/reference.md section 2); the
PIM's HR prediction Y_P is measured as a candidate fallback. Plot docs/selective.png, table
between the selective-sr markers of docs/selective.md.

    .venv/bin/python benchmarks/selective.py --part old           # ~10 min on the 2-core CPU
    .venv/bin/python benchmarks/selective.py --part selective-sr  # ~20 min
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
from clsr_arch import selective_sr as ssr  # noqa: E402
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


def plot_old(results, path):
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


# ------------------------------------------------------------------------------ issue 23 item 4
NEW_KS = (0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)
TODAY_KS = (0, 0.05, 0.10, 0.25, 0.50, 1.0)
NEW_RANKINGS = ('gradient', 'learned', 'lite', 'oracle')
NEW_LABELS = {'gradient': 'LiteSR + heavy, gradient energy', 'learned': 'LiteSR + heavy, learned CNN',
              'lite': 'LiteSR + heavy, LiteSR detail (free)',
              'oracle': 'LiteSR + heavy, oracle (true MSE gain over LiteSR)'}
VAL = osp.join(common.REPO, 'datasets', 'real', 'split', 'val')
# ../shared/reference.md section 2: PCSR-CARN (its own k) -- (FLOPs / its CARN, PSNR-Y - its CARN's)
PCSR = {'Set14': [(0.706, 28.426 - 28.441), (0.598, 28.403 - 28.441), (0.561, 28.368 - 28.441),
                  (0.516, 28.193 - 28.441)],
        'BSD100': [(0.674, 27.424 - 27.438), (0.570, 27.405 - 27.438), (0.503, 27.289 - 27.438)]}
TARGET = (0.60, -0.05)


def tile_mse_gain(a, b, hr, boxes, s=4):
    """Per tile: MSE-Y(a) - MSE-Y(b) against ``hr`` (what replacing a by b there adds to the image)."""
    out = []
    for x, y, w, h in boxes:
        sl = (slice(s * y, s * (y + h)), slice(s * x, s * (x + w)))
        ya, yb, yh = (selective.luma(v[sl]) * 255. for v in (a, b, hr))
        out.append(np.mean((ya - yh) ** 2) - np.mean((yb - yh) ** 2))
    return np.array(out)


def run_new(model, sel, name, paths, today=True):
    """The selective-SR sweep of one set: per image PSNR-Y and GFLOPs of every (ranking, k),
    of today's selective SR (gradient ranking, bicubic fallback), bicubic, LiteSR, Y_P, post-crop."""
    ests = {e: est for e, est in selective.estimators(model).items() if e in NEW_RANKINGS}
    new = {r: {k: ([], []) for k in NEW_KS} for r in NEW_RANKINGS}
    old = {k: ([], []) for k in TODAY_KS}
    single = {'bicubic': ([], []), 'LiteSR alone (k = 0)': ([], []), 'PIM HR prediction Y_P': ([], []),
              'post-crop (whole image)': ([], [])}
    for i, path in enumerate(paths):
        lr, hr, boxes = load(path)
        if not boxes:
            print(f'{name}: {osp.basename(path)} has no 24x24 tile, left out', flush=True)
            continue
        hw = lr.shape[:2]
        with model.open(lr) as image:
            scores = {e: est.scores(image, boxes) for e, est in ests.items()}
            est_g = {e: est.gflops(hw) for e, est in ests.items()}
            fb = sel.fallback(lr)
            fb_u8 = ssr.to_u8(fb)
            heavy_cache = {}  # heavy rectangles decoded once per image, whatever ranking and k ask for them
            post, post_plan = sel.run(lr, np.zeros(len(boxes)), 1.0, cache=heavy_cache)
            post_g = post_plan['gflops']['total']
            scores['oracle'], est_g['oracle'] = tile_mse_gain(fb_u8, post, hr, boxes), 0.
            scores['lite'], est_g['lite'] = ssr.lite_detail(fb, lr, boxes), ssr.lite_detail_flops(*hw) / 1e9
            bic = selective.whole_bicubic(lr, 4)
            bic_g = bicubic_flops(*hw, 4) / 1e9
            for label, out, g in (('bicubic', bic, bic_g), ('LiteSR alone (k = 0)', fb_u8, ssr.lite_flops(sel.lite, *hw) / 1e9),
                                  ('PIM HR prediction Y_P', ssr.pim_prediction(model, lr), model.cost.context(*hw) / 1e9),
                                  ('post-crop (whole image)', post, post_g)):
                single[label][0].append(whole_psnr(out, hr))
                single[label][1].append(g)
            for r in NEW_RANKINGS:
                for k in NEW_KS:
                    out, plan = sel.run(lr, scores[r], k, fallback=fb, cache=heavy_cache)
                    new[r][k][0].append(whole_psnr(out, hr))
                    new[r][k][1].append(plan['gflops']['total'] + est_g[r])
            if today:  # the issue-15 mode exactly as run_set charges it (gradient ranking)
                context = model.cost.context(*hw) / 1e9
                image.encode()
                cache = {}
                for k in TODAY_KS:
                    out, run, _ = selective.selective_sr(image, scores['gradient'], k, bicubic=bic, plan=False, cache=cache)
                    g = bic_g + est_g['gradient']
                    if run is not None:
                        g += run['gflops'] + (context if run['route'] == 'clsr' else 0.)
                    old[k][0].append(whole_psnr(out, hr))
                    old[k][1].append(g)
        print(f'{name} {i + 1}/{len(paths)} {osp.basename(path)}', flush=True)
    return {'new': new, 'old': old, 'single': single, 'images': len(single['bicubic'][0])}


def summary(res):
    """(delta PSNR-Y vs post-crop dB, GFLOPs fraction of post-crop) of every point: means over images."""
    p0, g0 = (np.mean(v) for v in res['single']['post-crop (whole image)'])
    pt = lambda v: (np.mean(v[0]) - p0, np.mean(v[1]) / g0)  # noqa: E731
    return {'new': {r: {k: pt(res['new'][r][k]) for k in NEW_KS} for r in NEW_RANKINGS},
            'old': {k: pt(res['old'][k]) for k in TODAY_KS} if res['old'][0][0] else {},
            'single': {n: pt(v) for n, v in res['single'].items()}, 'post': (p0, g0)}


PICKS = ('fewest GFLOPs within 0.05 dB', 'best PSNR at <= 60 % GFLOPs', 'best PSNR at <= 70 % GFLOPs')


def choose(val):
    """On validation only (the oracle excluded: it needs the HR), three operating points
    ``{rule: (ranking, k)}``: the fewest GFLOPs within 0.05 dB of post-crop (None when no point
    reaches it), and the best PSNR at <= 60 % and at <= 70 % of post-crop's GFLOPs."""
    pts = [(r, k) + val['new'][r][k] for r in ('gradient', 'learned', 'lite') for k in NEW_KS]
    near = [p for p in pts if p[2] >= TARGET[1]]
    out = {PICKS[0]: min(near, key=lambda p: p[3])[:2] if near else None}
    for rule, cap in zip(PICKS[1:], (0.60, 0.70)):
        under = [p for p in pts if p[3] <= cap]
        out[rule] = max(under, key=lambda p: p[2])[:2] if under else None
    return out


def plot_new(sums, picked, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sums), figsize=(5.6 * len(sums), 4.6), dpi=110)
    for ax, (name, sm) in zip(np.atleast_1d(axes), sums.items()):
        ax.axvspan(0, 100 * TARGET[0], ymin=0, ymax=1, color='g', alpha=0.04)
        ax.axhline(TARGET[1], color='g', lw=0.8, ls=':', label='target: -0.05 dB at <= 60 %')
        ax.axvline(100 * TARGET[0], color='g', lw=0.8, ls=':')
        for r in NEW_RANKINGS:
            pts = [sm['new'][r][k] for k in NEW_KS]
            ax.plot([100 * f for _, f in pts], [d for d, _ in pts], marker='o', ms=3.5, label=NEW_LABELS[r],
                    ls='--' if r == 'oracle' else '-')
        if sm['old']:
            pts = [sm['old'][k] for k in TODAY_KS]
            ax.plot([100 * f for _, f in pts], [d for d, _ in pts], marker='s', ms=3.5, color='0.5',
                    label="today's: CLSR + bicubic, gradient energy")
        if name in PCSR:
            ax.plot([100 * f for f, _ in PCSR[name]], [d for _, d in PCSR[name]], marker='^', ms=6, ls='none',
                    color='m', label="PCSR-CARN (its own CARN = 0; reference.md)")
        for (rule, pick), mk in zip(picked.items(), ('*', 'P', 'X')):
            if pick is not None:
                d, f = sm['new'][pick[0]][pick[1]]
                ax.plot([100 * f], [d], marker=mk, ms=11, color='r', ls='none',
                        label=f'chosen on validation ({rule}): {pick[0]}, k = {int(100 * pick[1])} %')
        ax.plot([100], [0], marker='*', ms=10, color='k', ls='none', label='post-crop (CARN-M, whole image)')
        ax.set_ylim(-0.8, 0.05)
        ax.set_xlim(0, 160)
        ax.set_xlabel('GFLOPs, % of post-crop (estimator + light + heavy)')
        ax.set_ylabel('whole-image PSNR-Y minus post-crop (dB)')
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc='lower right')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def new_tables(results, sums, picked, cmd, env, sel):
    body = [f'Produced by `{cmd}` ({env}). Cells: whole-image PSNR-Y (border 4) minus post-crop\'s (dB) / '
            'GFLOPs as % of post-crop\'s, means over the images. LiteSR: '
            f'{sum(p.numel() for p in sel.lite.parameters()):,} parameters.\n',
            'Operating points chosen on the validation split: ' + '; '.join(
                f'{rule}: ' + (f'**{p[0]}, k = {int(100 * p[1])} %**' if p else 'none') for rule, p in picked.items()) + '.\n']
    for name, res in results.items():
        sm = sums[name]
        p0, g0 = sm['post']
        rows = []
        for n, (d, f) in sm['single'].items():
            p, g = (np.mean(v) for v in res['single'][n])
            rows.append([n, f'{p:.3f}', f'{d:+.3f}', f'{g:.2f}', f'{100 * f:.1f} %'])
        body.append(f'**{name}** ({res["images"]} images; post-crop {p0:.3f} dB, {g0:.2f} GFLOPs per image)\n')
        body.append(common.markdown_table(['single method', 'PSNR-Y', 'minus post-crop', 'GFLOPs', '% of post-crop'], rows) + '\n')
        rows = []
        for r in NEW_RANKINGS:
            chosen = {p for p in picked.values() if p}
            rows.append([NEW_LABELS[r]] + [('**' if (r, k) in chosen else '') + f'{sm["new"][r][k][0]:+.3f} / '
                                           f'{100 * sm["new"][r][k][1]:.0f} %' + ('**' if (r, k) in chosen else '')
                                           for k in NEW_KS])
        body.append(common.markdown_table(['selective SR'] + [f'k = {int(k * 100)} %' for k in NEW_KS], rows) + '\n')
        if sm['old']:
            rows = [["today's (CLSR + bicubic, gradient)"] + [f'{sm["old"][k][0]:+.3f} / {100 * sm["old"][k][1]:.0f} %'
                                                               for k in TODAY_KS]]
            body.append(common.markdown_table(['issue-15 mode'] + [f'k = {int(k * 100)} %' for k in TODAY_KS], rows) + '\n')
    return '\n'.join(body)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='one Set5 image (tests)')
    p.add_argument('--part', choices=['old', 'selective-sr', 'all'], default='all',
                   help='old: the issue-15 ranking and sweep tables; selective-sr: issue 23 item 4 (table + plot)')
    p.add_argument('--out', default=DOC)
    p.add_argument('--plot', default=PLOT)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = LocalSR('clsr-carn-m', device='cpu')  # the model the tables are of (not the default real one)
    cmd, env = common.command_line(__file__, argv), common.env_line('cpu', args.threads)
    sets = ({'Set5': sorted(glob.glob(osp.join(SHARED, 'Set5', 'HR', 'bird.png')))} if args.quick else
            {'Set14': sorted(glob.glob(osp.join(SHARED, 'Set14', 'HR', '*.png'))),
             'BSD100': sorted(glob.glob(osp.join(SHARED, 'BSD100', 'HR', '*.png')))})
    if args.part in ('old', 'all'):
        old_main(model, sets, args, cmd, env)
    if args.part in ('selective-sr', 'all'):
        sel = ssr.SelectiveSR(model)
        val_paths = sorted(glob.glob(osp.join(VAL, '*')))
        if args.quick:  # a smoke test: one validation image, or a training image when the split is not made
            val_paths = val_paths[:1] or [osp.join(SHARED, 'T91', 't1.png')]
        if not val_paths:
            raise SystemExit(f'no validation images in {VAL}: run bash data/prepare_real_data.sh first')
        results = {'validation': run_new(model, sel, 'validation', val_paths, today=False)}
        results.update({name: run_new(model, sel, name, paths) for name, paths in sets.items()})
        sums = {name: summary(res) for name, res in results.items()}
        picked = choose(sums['validation'])
        common.write_section(args.out, 'selective-sr-table', new_tables(results, sums, picked, cmd, env, sel))
        if args.plot:
            plot_new(sums, picked, args.plot)


def old_main(model, sets, args, cmd, env):
    rng = np.random.default_rng(0)
    results = {name: run_set(model, name, paths, rng) for name, paths in sets.items()}
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


if __name__ == '__main__':
    main()
