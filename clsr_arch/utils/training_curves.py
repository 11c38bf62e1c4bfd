"""Training curves of a shipped model from its BasicSR log (docs/ship_*_curves.png): the CLSR loss
terms per iteration and the validation PSNR-Y per checkpoint, against the baselines measured on
the same validation ROIs (pre-crop with CLSR's padding = CLSR at initialisation, and post-crop).

    .venv/bin/python -m clsr_arch.utils.training_curves docs/ship_imdn_train.log docs/ship_imdn_curves.png \\
        --baseline pre-crop-pad2=40.7507 --baseline post-crop=40.7662 --chosen 3000
"""
import argparse
import re

ITER_RE = re.compile(r'iter:\s*([\d,]+).*?l_pix: ([\d.e+-]+)(?: l_context: ([\d.e+-]+))?')
VAL_ITER_RE = re.compile(r'Validation (\S+)')
PSNR_Y_RE = re.compile(r'# psnr_y: ([\d.]+)\s+Best: [\d.]+ @ (\d+) iter')
VAL_FREQ_RE = re.compile(r'^\s*val_freq: (\d+)')


def parse_log(path):
    """``(train, val)``: ``[(iter, l_pix, l_context or None)]`` and ``[(iter, psnr_y)]``."""
    train, val = [], []
    last_iter, val_freq = 0, 1
    with open(path) as f:
        for line in f:
            m = VAL_FREQ_RE.search(line)  # the options BasicSR prints at the start
            if m:
                val_freq = int(m.group(1))
                continue
            m = ITER_RE.search(line)
            if m and 'l_pix' in line:
                last_iter = int(m.group(1).replace(',', ''))
                train.append((last_iter, float(m.group(2)), float(m.group(3)) if m.group(3) else None))
                continue
            m = PSNR_Y_RE.search(line)
            if m:  # validation runs at multiples of val_freq, after the last printed iteration
                val.append((-(-last_iter // val_freq) * val_freq, float(m.group(1))))
    # BasicSR validates at every val_freq and once more at the end (same iteration twice): keep one
    seen, unique = set(), []
    for it, v in val:
        if it not in seen:
            seen.add(it)
            unique.append((it, v))
    return train, unique


def plot(log, out, baselines=(), chosen=None, title=None):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    train, val = parse_log(log)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    its = [t[0] for t in train]
    a.plot(its, [t[1] for t in train], lw=0.8, label='ROI loss |y^ - y|_1')
    if any(t[2] is not None for t in train):
        a.plot(its, [t[2] for t in train], lw=0.8, label='context loss |Y^_P - Y|_1')
    a.set_yscale('log')
    a.set_xlabel('iteration')
    a.set_title('training loss terms (printed batches)', fontsize=9)
    a.legend(fontsize=8)
    b.plot([v[0] for v in val], [v[1] for v in val], 'o-', label='CLSR (EMA)')
    for i, (name, value) in enumerate(baselines):
        b.axhline(value, ls='--', color=f'C{i + 1}', lw=1, label=name)
    if chosen is not None:
        pick = [v for v in val if v[0] == chosen]
        if pick:
            b.plot([chosen], [pick[0][1]], '*', ms=14, color='gold', mec='k', label=f'shipped (iter {chosen})')
    b.set_xlabel('iteration')
    b.set_ylabel('PSNR-Y (dB), mean over ROIs')
    b.set_title('validation split (held-out images, 1,333 ROIs)', fontsize=9)
    b.legend(fontsize=8, loc='best')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return train, val


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('log')
    p.add_argument('out')
    p.add_argument('--baseline', action='append', default=[], metavar='NAME=PSNR_Y')
    p.add_argument('--chosen', type=int)
    p.add_argument('--title')
    args = p.parse_args(argv)
    baselines = []
    for b in args.baseline:
        name, value = b.rsplit('=', 1)
        baselines.append((name, float(value)))
    _, val = plot(args.log, args.out, baselines, args.chosen, args.title)
    for it, v in val:
        print(f'iter {it}: PSNR-Y {v:.4f}')


if __name__ == '__main__':
    main()
