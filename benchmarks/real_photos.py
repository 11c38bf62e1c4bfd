"""Real low-resolution photos without ground truth (issue 21, item 5): NIQE of boxes, and a figure.

For every photo of ``../shared/data/real`` (RealSRSet and Real-ESRGAN's inputs) that the API
opens, three 64x64 LR boxes (near the top-left third, the centre and the bottom-right third,
clipped to the image) are super-resolved x4 through the public API (``clsr_arch.api.LocalSR``)
by bicubic, today's default (CLSR-IMDN, bicubic-trained) and CLSR-IMDN-real; each output
(256x256) is scored by BasicSR's NIQE (``basicsr.metrics.calculate_niqe``, Y channel, its
shipped pristine parameters; lower is better). A photo the API refuses (transparent alpha) is
listed with the reason. Writes ``docs/real_photos.md`` (table) and ``docs/real_photos.png``
(several boxes side by side: the LR box, each method).

    .venv/bin/python benchmarks/real_photos.py          # ~3 min on 2 CPU cores
"""
import argparse
import os
import os.path as osp
import sys

import numpy as np

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)
REAL = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data', 'real'))
BOX = 64
FIGURE_BOXES = (('RealSRSet', 'oldphoto2.png', 1), ('RealSRSet', 'dped_crop00061.png', 1),
                ('RealSRSet', 'building.png', 1), ('RealSRSet', 'foreman.png', 1), ('RealESRGAN_inputs', '0014.jpg', 1),
                ('RealSRSet', 'comic3.png', 1))


def boxes_of(h, w, size=BOX):
    """Three boxes (top-left third, centre, bottom-right third), clipped inside the image."""
    size = min(size, h, w)
    out = []
    for fy, fx in ((1 / 3, 1 / 3), (1 / 2, 1 / 2), (2 / 3, 2 / 3)):
        x = int(round(fx * w - size / 2))
        y = int(round(fy * h - size / 2))
        out.append((min(max(0, x), w - size), min(max(0, y), h - size), size, size))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--real', default=REAL)
    p.add_argument('--out-md', default=osp.join(REPO, 'docs', 'real_photos.md'))
    p.add_argument('--out-png', default=osp.join(REPO, 'docs', 'real_photos.png'))
    args = p.parse_args(argv)
    import clsr_arch  # noqa: F401
    from basicsr.metrics import calculate_niqe
    from clsr_arch.api import LocalSR, LocalSRError
    from clsr_arch.data.image_io import is_image_file

    models = {'default': LocalSR('clsr-imdn', device='cpu'), 'real': LocalSR('clsr-imdn-real', device='cpu')}
    methods = (('bicubic', 'bicubic', 'default', 'bicubic'),
               ('default', "today's default (CLSR-IMDN)", 'default', 'clsr'),
               ('real', 'CLSR-IMDN-real', 'real', 'clsr'))
    niqe = {m[0]: [] for m in methods}
    per_photo, skipped, crops = [], [], {}
    for folder in sorted(os.listdir(args.real)):
        d = osp.join(args.real, folder)
        if not osp.isdir(d):
            continue
        for name in sorted(f for f in os.listdir(d) if is_image_file(f)):
            path = osp.join(d, name)
            try:
                images = {k: m.open(path) for k, m in models.items()}
            except LocalSRError as err:
                skipped.append((f'{folder}/{name}', str(err).split(': ')[-1]))
                continue
            h, w = images['default'].hw
            boxes = boxes_of(h, w)
            scores = {}
            for key, _, model, method in methods:
                outs = images[model].super_resolve(boxes, method=method)
                vals = [float(calculate_niqe(o[:, :, ::-1].astype(np.float64), 0)) for o in outs]
                niqe[key] += vals
                scores[key] = float(np.mean(vals))
                crops[(folder, name, key)] = list(zip(outs, vals))
            crops[(folder, name, 'lr')] = [images['default'].rgb[y:y + bh, x:x + bw] for x, y, bw, bh in boxes]
            crops[(folder, name, 'boxes')] = boxes
            per_photo.append((f'{folder}/{name}', f'{w}x{h}', scores))
            for im in images.values():
                im.release()
            print(f'{folder}/{name}: ' + ', '.join(f'{k} {v:.3f}' for k, v in scores.items()), flush=True)

    n = len(niqe['bicubic'])
    lines = ['# Real photos without ground truth: NIQE of boxes (issue 21)\n',
             f'Made by `benchmarks/real_photos.py`: {len(per_photo)} photos of `../shared/data/real`, three '
             f'{BOX}x{BOX} LR boxes each ({n} boxes), x4 through `LocalSR`; NIQE (BasicSR, Y, lower is '
             'better) of each 256x256 output. NIQE judges naturalness, not fidelity: it rewards crisp texture '
             'and punishes blur, blocks and noise alike, so read it beside the figure.\n',
             '| method | mean NIQE | median NIQE | boxes where it is lowest of the three |', '|---|---:|---:|---:|']
    arr = np.array([niqe[m[0]] for m in methods])
    best = arr.argmin(0)
    for i, (key, label, _, _) in enumerate(methods):
        lines.append(f'| {label} | {np.mean(niqe[key]):.3f} | {np.median(niqe[key]):.3f} | {int((best == i).sum())} / {n} |')
    lines += ['\n![real photos](real_photos.png)\n', '## Per photo (mean over its three boxes)\n',
              '| photo | size | ' + ' | '.join(m[1] for m in methods) + ' |', '|---|---|' + '---:|' * len(methods)]
    for photo, size, scores in per_photo:
        lines.append(f'| {photo} | {size} | ' + ' | '.join(f'{scores[m[0]]:.3f}' for m in methods) + ' |')
    if skipped:
        lines += ['\nNot opened by the API (by its image rules):\n'] + [f'- `{p}`: {why}' for p, why in skipped]
    with open(args.out_md, 'w') as f:
        f.write('\n'.join(lines) + '\n')

    # the figure: one row per chosen box: LR (nearest x4), bicubic, default, CLSR-IMDN-real
    rows = []
    for folder, name, k in FIGURE_BOXES:
        if (folder, name, 'lr') not in crops:
            continue
        lr = crops[(folder, name, 'lr')][k]
        tiles = [(np.kron(lr, np.ones((4, 4, 1), dtype=np.uint8)), f'{name}\nLR box (nearest x4)')]
        for key, label, _, _ in methods:
            out, value = crops[(folder, name, key)][k]
            tiles.append((out, f'{label}\nNIQE {value:.2f}'))
        rows.append(tiles)
    if rows:
        _figure(rows, args.out_png)
    print('\n'.join(lines))


def _figure(rows, path):
    """A grid of tiles (rows = boxes, columns = methods), each at 1:1 pixels of the 4x output."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.9 * n_cols, 3.2 * n_rows), squeeze=False)
    for r, tiles in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis('off')
            if c < len(tiles):
                img, label = tiles[c]
                ax.imshow(img, interpolation='nearest')
                ax.set_title(label, fontsize=8)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == '__main__':
    main()
