"""Do the proposals land where SR gains most? (issue 23, item 1; clsr_arch/proposals.py)

For each image: the true gain of a box is PSNR-Y(post-crop SR) - PSNR-Y(bicubic) over it (dB,
capped at 60 dB as selective.tile_gains), with the model the viewer runs (default: the shipped
default model). The top-n proposals of an estimator (disjoint boxes) are scored by the sum of
their true gains as a fraction of the top-n *oracle*'s (the same greedy choice of disjoint
boxes over the same candidates, ranked by the true gain); the table gives the mean of that
share over the images of each set, the mean true gain per proposed box (dB) and how many of the
proposals touch the image's top row (the issue's symptom).

Sets, measured only (nobody tuned on them): Set14 and BSD100 (LR = MATLAB bicubic x1/4 of the
mod-4 HR, as data/prepare_*.sh make them; 5 boxes of 24 px), and the issue's DIV2K photo 0004
shrunk x4 by area averaging (510x336; as PNG and as JPEG q75; 5 boxes of 48 px; 0004 is left out
of the gain CNN's training). Rows: random scores (mean of 20 draws), today's estimators (before
issue 23) and the fixed ones. ``--figure`` draws the proposals on real photos without ground
truth (docs/proposals.png), to be judged by eye.

    flock -s /tmp/clsr_bench.lock .venv/bin/python benchmarks/proposals.py            # ~10 min, 2 CPU threads
    flock -s /tmp/clsr_bench.lock .venv/bin/python benchmarks/proposals.py --figure-only      # or --diagnose-only
"""
import argparse
import glob
import os.path as osp
import time

import numpy as np

import common  # noqa: F401  (repo on sys.path, compat)

import torch  # noqa: E402

from clsr_arch import proposals as P  # noqa: E402
from clsr_arch.api import LocalSR, add_model_args, model_paths  # noqa: E402

SHARED = osp.join(common.REPO, '..', 'shared', 'data')
DOC = osp.join(common.REPO, 'docs', 'selective.md')
FIGURE = osp.join(common.REPO, 'docs', 'proposals.png')
GAIN_FIGURE = osp.join(common.REPO, 'docs', 'proposal_gain_map.png')
BEFORE = ('gradient', 'pim', 'learned')
AFTER = ('pim-detail', 'cnn', 'map')
LABELS = {'random': 'random (floor)', 'gradient': 'gradient energy (today)', 'pim': 'PIM detail (today; the viewer\'s)',
          'learned': 'learned CNN (today)', 'pim-detail': 'PIM detail, pattern removed (fixed)',
          'cnn': 'gain CNN, retrained (fixed)', 'map': 'gain map, per-pixel error maps (fixed)'}
LABELS[P.DEFAULT_ESTIMATOR] = LABELS[P.DEFAULT_ESTIMATOR][:-1] + '; the default)'
FIGURE_PHOTOS = ('RealESRGAN_inputs/OST_009.png', 'RealESRGAN_inputs/00017_gray.png', 'RealSRSet/dog.png')


def sets(quick=False):
    """name -> (list of (label, HR path, LR kind)), box size."""
    set14 = sorted(glob.glob(osp.join(SHARED, 'Set14', 'HR', '*.png')))
    bsd = sorted(glob.glob(osp.join(SHARED, 'BSD100', 'HR', '*.png')))
    div = osp.join(SHARED, 'DIV2K', 'HR', '0004.png')
    if quick:
        return {'Set14': ([(p, 'bicubic') for p in set14[:2]], 24), 'BSD100': ([(p, 'bicubic') for p in bsd[:2]], 24)}
    return {'Set14': ([(p, 'bicubic') for p in set14], 24),
            'BSD100': ([(p, 'bicubic') for p in bsd], 24),
            'DIV2K 0004, area, PNG': ([(div, 'area')], 48),
            'DIV2K 0004, area, JPEG q75': ([(div, 'jpeg75')], 48)}


def measure(model, items, size, n, ests, rng, draws=20):
    """Per row: (share of the oracle = mean true gain per proposed box / mean true gain per oracle
    box over the images, mean true gain per proposed box, proposals per image on the top row)."""
    gain = {r: [] for r in ('random', *ests)}
    top = {r: 0. for r in gain}
    oracle_gain = []
    for path, kind in items:
        hr = P.load_hr(path, model.scale)
        lr = P.make_lr(hr, kind, model.scale)
        with model.open(lr, osp.basename(path)) as image:
            ep, eb = P.truth(image, hr)
            w = min(size, *image.hw)
            cands = P.candidates(image.hw, w, w, max(1, w // 4))
            g = P.box_gains(ep, eb, cands)
            oracle_gain.append(g[P.suppress(cands, g, n)].mean())
            picks = {'random': [P.suppress(cands, rng.random(len(cands)), n) for _ in range(draws)]}
            for e, est in ests.items():
                picks[e] = [P.suppress(cands, np.asarray(est.scores(image, cands), np.float64), n)]
            for r, ks in picks.items():
                gain[r].append(np.mean([g[k].mean() for k in ks]))
                top[r] += np.mean([sum(cands[i][1] == 0 for i in k) for k in ks])
    o = float(np.mean(oracle_gain))
    return {r: (float(np.mean(gain[r])) / o, float(np.mean(gain[r])), top[r] / len(items)) for r in gain}, o


def table(model, n, quick, log=print):
    ests = {e: P.get_estimator(model, e) for e in BEFORE + AFTER}
    rng = np.random.default_rng(0)
    res, oracle = {}, {}
    for name, (items, size) in sets(quick).items():
        t0 = time.time()
        res[name], oracle[name] = measure(model, items, size, n, ests, rng)
        log(f'{name}: {len(items)} images, {time.time() - t0:.0f} s')
    names = list(res)
    header = ['proposals (top %d, disjoint)' % n] + names + ['mean of the columns']
    rows = []
    for r in ('random', *BEFORE, *AFTER):
        cells = [f'{res[s][r][0]:.2f} ({res[s][r][1]:+.2f} dB{", %.1f on y = 0" % res[s][r][2] if "DIV2K" in s else ""})'
                 for s in names]
        rows.append([LABELS[r]] + cells + [f'**{np.mean([res[s][r][0] for s in names]):.2f}**'])
    rows.append(['oracle (true gain)'] + [f'1.00 ({oracle[s]:+.2f} dB)' for s in names] + ['1.00'])
    return common.markdown_table(header, rows), res


def validation(model, names=('random', 'gradient', 'learned', 'cnn', 'map'), sizes=(24, 48)):
    """The selection data: the share of the oracle on the validation split (24 images x 3 LR
    kinds, prepared as the training scripts prepare it), boxes of 24 and 48 px."""
    items = P.prepare(model, P.split_images()[1], ('bicubic', 'area', 'jpeg'), seed=1, log=lambda m: None)
    rng = np.random.default_rng(0)
    ests = {e: P.get_estimator(model, e) for e in names if e != 'random'}

    def scorer(est):
        def score(lr, cands):
            if est is None:
                return rng.random(len(cands))
            with model.open(lr) as image:
                return np.asarray(est.scores(image, cands), np.float64)
        return score
    kinds = {k: [i for i, it in enumerate(items) if it[4].startswith(k)] for k in ('bicubic', 'area', 'jpeg')}
    rows = []
    for e in names:
        cells = []
        for size in sizes:
            for k, idx in kinds.items():
                sub = [items[i] for i in idx]
                cells.append(P.share_of_oracle(sub, [scorer(ests.get(e))] * len(sub), size=size))
        rows.append([LABELS[e]] + [f'{c:.3f}' for c in cells] + [f'**{np.mean(cells):.3f}**'])
    header = ['validation split (72 LR images)'] + [f'{k}, {s} px' for s in sizes for k in ('bicubic', 'area', 'JPEG')] + ['mean']
    return common.markdown_table(header, rows)


def diagnose(model):
    """Why today's PIM estimate picks flat sky and the top row: the PIM head's response on flat
    images, and on the DIV2K photo its correlation with brightness / gradient energy, by rows."""
    from scipy.stats import spearmanr
    from clsr_arch import selective
    old, new = selective.PIMResidual(model), P.PIMDetail(model)
    lines = ['| measurement | today\'s PIM detail | pattern removed (fixed) |', '|---|---|---|']
    for v in (30, 128, 230):
        with model.open(np.full((64, 64, 3), v, np.uint8)) as flat:
            lines.append(f'| mean score on a flat grey image of value {v} (no detail at all) | '
                         f'{old.score_map(flat).mean():.4f} | {new.score_map(flat).mean():.4f} |')
    hr = P.load_hr(osp.join(SHARED, 'DIV2K', 'HR', '0004.png'), model.scale)
    with model.open(P.make_lr(hr, 'area', model.scale)) as image:
        y = P.luma(image.rgb)
        g = selective.GradientEnergy().score_map(image)
        for est, label in ((old, 'old'), (new, 'new')):
            m = est.score_map(image)
            if label == 'old':
                cells = [[f'{spearmanr(m.ravel(), y.ravel())[0]:+.2f}'], [f'{spearmanr(m.ravel(), g.ravel())[0]:+.2f}'],
                         [f'{m[:2].mean() / m[8:-8].mean():.2f}']]
            else:
                for c, v in zip(cells, (spearmanr(m.ravel(), y.ravel())[0], spearmanr(m.ravel(), g.ravel())[0],
                                        m[:2].mean() / m[8:-8].mean())):
                    c.append(f'{v:+.2f}' if c is not cells[2] else f'{v:.2f}')
    names = ('DIV2K photo: Spearman of the per-pixel score with the LR brightness',
             'DIV2K photo: Spearman with the gradient energy (where the detail is)',
             'DIV2K photo: mean score of the top 2 LR rows / of the rows 8 px or more from the border')
    lines += [f'| {n} | {c[0]} | {c[1]} |' for n, c in zip(names, cells)]
    return '\n'.join(lines)


def figure(model, out, estimator=P.DEFAULT_ESTIMATOR, before='pim', per_photo=(4, 3, 3)):
    """Proposals of the fixed estimator (solid, with scores) and today's viewer's (dashed) on real
    photos of ../shared/data/real, 10 boxes in all."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, axes = plt.subplots(1, len(FIGURE_PHOTOS), figsize=(6 * len(FIGURE_PHOTOS), 5.6))
    for ax, rel, n in zip(axes, FIGURE_PHOTOS, per_photo):
        with model.open(osp.join(SHARED, 'real', rel)) as image:
            size = max(16, min(48, min(image.hw) // 5))
            new, scores = image.propose(n, size, estimator)
            old, _ = image.propose(n, size, before)
            ax.imshow(image.rgb, interpolation='nearest')
        for (x, y, w, h) in old:
            ax.add_patch(Rectangle((x - .5, y - .5), w, h, fill=False, ec='orange', lw=1.5, ls='--'))
        for i, ((x, y, w, h), s) in enumerate(zip(new, scores)):
            ax.add_patch(Rectangle((x - .5, y - .5), w, h, fill=False, ec='lime', lw=2))
            ax.text(x, y - 2, f'{i + 1}: {s:.2f}', color='lime', fontsize=9, va='bottom',
                    bbox=dict(fc='black', alpha=.6, pad=1, lw=0))
        ax.set_title(f'{rel} ({image.hw[1]}x{image.hw[0]}), {size}px boxes', fontsize=10)
        ax.axis('off')
    fig.suptitle(f'solid green: {LABELS[estimator]}, rank: estimated gain (dB);  dashed orange: {LABELS[before]}',
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def gain_figure(model, out, estimator=P.DEFAULT_ESTIMATOR, n=5, size=48, cell=16):
    """The issue's DIV2K photo (area x1/4, never trained on): the true gain per ``cell`` px cell
    beside the estimator's, with its top-``n`` proposals (green) and the oracle's (white)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    hr = P.load_hr(osp.join(SHARED, 'DIV2K', 'HR', '0004.png'), model.scale)
    with model.open(P.make_lr(hr, 'area', model.scale), '0004.png') as image:
        ep, eb = P.truth(image, hr)
        est = P.get_estimator(model, estimator)
        cells = P.candidates(image.hw, cell, cell, cell)
        true_g = P.box_gains(ep, eb, cells)
        est_g = np.asarray(est.scores(image, cells), np.float64)
        boxes, _ = P.propose(image, n, size, est)
        o_boxes, _ = P.oracle(ep, eb, image.hw, n, size)
        rgb = image.rgb
    H, W = rgb.shape[:2]

    def grid(v):
        m = np.full((H, W), np.nan)
        for (x, y, w, h), g in zip(cells, v):
            m[y:y + h, x:x + w] = g
        return m
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6))
    axes[0].imshow(rgb, interpolation='nearest')
    axes[0].set_title(f'LR ({W}x{H}); green: top-{n} {estimator} proposals, white: top-{n} oracle', fontsize=10)
    for ax, v, title in ((axes[1], true_g, 'true gain (post-crop - bicubic, dB)'),
                         (axes[2], est_g, f'estimated gain ({LABELS[estimator]}), dB')):
        im = ax.imshow(grid(v), cmap='magma', vmin=min(0, np.percentile(true_g, 2)), vmax=np.percentile(true_g, 98))
        fig.colorbar(im, ax=ax, fraction=0.03)
        ax.set_title(f'{title}, per {cell} px cell', fontsize=10)
    for ax in axes:
        for b, c in [(b, 'white') for b in o_boxes] + [(b, 'lime') for b in boxes]:
            ax.add_patch(Rectangle((b[0] - .5, b[1] - .5), b[2], b[3], fill=False, ec=c, lw=1.8))
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(p)
    p.add_argument('-n', type=int, default=5, help='proposals per image')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--quick', action='store_true', help='two images of Set14/BSD100 (the test)')
    p.add_argument('--out', default=DOC, help='markdown file whose proposals-table block is rewritten')
    p.add_argument('--figure', default=FIGURE)
    p.add_argument('--figure-only', action='store_true')
    p.add_argument('--no-figure', action='store_true')
    p.add_argument('--diagnose-only', action='store_true', help='only the measurements of why today\'s PIM estimate fails')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = LocalSR(*model_paths(args), device='cpu')
    if not args.figure_only and not args.quick:
        text = diagnose(model)
        write_block(args.out, 'proposals-diagnosis', f'Produced by `{common.command_line(__file__, argv)}`.\n\n' + text)
        print(text)
    if args.diagnose_only:
        return 0
    if not args.figure_only and not args.quick:
        text = validation(model)
        write_block(args.out, 'proposals-validation', f'Produced by `{common.command_line(__file__, argv)}`.\n\n' + text)
        print(text)
    if not args.figure_only:
        body, res = table(model, args.n, args.quick)
        text = (f'Produced by `{common.command_line(__file__, argv)}` ({common.env_line("cpu", args.threads)}); '
                f'model {osp.basename(model.weights)}. Each cell: mean over the images of the top-{args.n} proposals\' '
                'mean true gain per box as a share of the top-{0} oracle\'s, over the images of the set (in brackets: '
                'the mean true gain per proposed box; DIV2K: proposals on the top row, y = 0).\n\n'.format(args.n) + body)
        write_block(args.out, 'proposals-table', text)
        print(text)
    if not args.no_figure:
        figure(model, args.figure)
        gain_out = osp.join(osp.dirname(osp.abspath(args.figure)), osp.basename(GAIN_FIGURE))
        gain_figure(model, gain_out)
        print(f'figures: {args.figure}, {gain_out}')
    return 0


def write_block(path, name, body):
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` of ``path`` (the
    blocks of docs/selective.md); appended at the end when missing."""
    import re
    begin, end = f'<!-- {name}:start -->', f'<!-- {name}:end -->'
    text = open(path).read() if osp.exists(path) else ''
    block = f'{begin}\n{body.strip()}\n{end}'
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip() + '\n\n' + block + '\n'
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    import os
    os.replace(tmp, path)


if __name__ == '__main__':
    main()
