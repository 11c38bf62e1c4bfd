"""Comparison figure of local SR strategies (the LocalSR paper's Fig. 1 / Fig. 7 style).

Left: the LR context with every ROI box drawn and numbered. Right: one row per ROI, one column
per method (bicubic, pre-crop, CLSR, post-crop, ground truth), each tile labelled with its
time, GFLOPs and (with ground truth) PSNR. Used by ``clsr-infer`` (:mod:`clsr_arch.infer`).
"""
import matplotlib

matplotlib.use('Agg')  # files only, no display (servers, tests)
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

BOX_COLOURS = ('#ff3b30', '#34c759', '#0a84ff', '#ffcc00', '#af52de', '#ff9500', '#5ac8fa', '#ff2d55')


def box_colour(i):
    return BOX_COLOURS[i % len(BOX_COLOURS)]


def comparison_figure(lr_rgb, boxes, tiles, path, title=None, tile_inches=2.1, max_context_side=1200,
                      context_scale=1.0, context_origin=(0, 0), full_size=None):
    """Write the figure to ``path`` (PNG).

    Args:
        lr_rgb: uint8 [H, W, 3] RGB LR context.
        boxes: list of ``(x, y, w, h)`` in LR pixels (one row of tiles each).
        tiles: list (one per box) of lists of ``(image_rgb_uint8, label)``; the label may hold
            several lines (method, time, GFLOPs, PSNR).
        title: optional figure title.
        max_context_side: a context with a longer side is drawn subsampled to about this.
        context_scale, context_origin, full_size: ``lr_rgb`` is a view of a larger image (a
            pyramid level, or a region): LR pixel ``(x, y)`` of the image is pixel
            ``((x - ox) / scale, (y - oy) / scale)`` of the view; ``full_size`` (W, H) of the image.
    """
    if len(tiles) != len(boxes):
        raise ValueError(f'comparison_figure: {len(boxes)} boxes but {len(tiles)} rows of tiles')
    n_rows = len(boxes)
    n_cols = max(len(row) for row in tiles)
    h, w = lr_rgb.shape[:2]
    full_w, full_h = full_size or (w, h)
    if context_scale != 1.0 or tuple(context_origin) != (0, 0):
        (ox, oy), f = context_origin, context_scale
        boxes = [((x - ox) / f, (y - oy) / f, max(bw / f, 1.), max(bh / f, 1.)) for x, y, bw, bh in boxes]
    step = -(-max(h, w) // max_context_side)  # a large context is shown subsampled (boxes too)
    if step > 1:
        lr_rgb = lr_rgb[::step, ::step]
        boxes = [(x / step, y / step, max(bw / step, 1.), max(bh / step, 1.)) for x, y, bw, bh in boxes]
        h, w = lr_rgb.shape[:2]
    ctx_w = max(3.0, min(6.0, tile_inches * n_rows * w / h))  # context column, about the rows' height
    fig_w = ctx_w + tile_inches * n_cols
    label_in = 0.5  # three label lines above every tile
    title_in = 0.35 if title else 0.0
    fig_h = max((tile_inches + label_in) * n_rows, ctx_w * h / w + 0.3) + title_in + 0.1
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    grid = fig.add_gridspec(n_rows, n_cols + 1, width_ratios=[ctx_w] + [tile_inches] * n_cols,
                            left=0.01, right=0.99, bottom=0.01, top=1 - (title_in + label_in) / fig_h,
                            wspace=0.05, hspace=label_in / tile_inches + 0.02)

    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(lr_rgb, interpolation='nearest')
    for i, (x, y, bw, bh) in enumerate(boxes):
        c = box_colour(i)
        # pixel (x, y) covers [x - 0.5, x + 0.5] in imshow coordinates
        ax.add_patch(patches.Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, edgecolor=c, linewidth=1.8))
        ax.text(x + 0.5, y + 0.5, str(i), color='white', fontsize=9, fontweight='bold', va='top',
                bbox=dict(facecolor=c, edgecolor='none', pad=1.0))
    f = step * context_scale
    shown = f', shown 1:{f:.3g}' if f > 1 else ''
    view_w = lr_rgb.shape[1] * step * context_scale
    if tuple(context_origin) != (0, 0) or view_w < 0.99 * full_w:
        shown += ', the region around them'
    ax.set_title(f'LR context {full_w}x{full_h} ({len(boxes)} ROIs{shown})', fontsize=9)
    ax.axis('off')

    for r, row in enumerate(tiles):
        for c, (img, label) in enumerate(row):
            t = fig.add_subplot(grid[r, c + 1])
            t.imshow(img, interpolation='nearest')
            t.set_title(f'ROI {r}: {label}' if c == 0 else label, fontsize=7, linespacing=1.15)
            t.set_xticks([])
            t.set_yticks([])
            for spine in t.spines.values():
                spine.set_edgecolor(box_colour(r))
                spine.set_linewidth(1.5)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig_h, va='top')
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------- training curves
_ITER_RE = r'iter:\s*([\d,]+).*\]\s+(.*)$'  # greedy: the values follow the last ']'
_VAL_RE = r'#\s*(\w+):\s*([-\d.eE+]+)\s+Best'


def parse_train_log(path):
    """BasicSR train log -> (``{name: [(iter, value)]}`` of the logged losses/lambda,
    ``{metric: [(iter, value)]}`` of the validations)."""
    import re

    losses, vals = {}, {}
    last_iter = 0
    with open(path) as f:
        for line in f:
            m = re.search(_ITER_RE, line)
            if m and 'lr:(' in line:
                last_iter = int(m.group(1).replace(',', ''))
                for name, value in re.findall(r'(\w+): ([-\d.eE+]+)', m.group(2)):
                    losses.setdefault(name, []).append((last_iter, float(value)))
                continue
            v = re.search(_VAL_RE, line)
            if v:  # "Best: x @ n iter" names the best iteration, not this one: use the last train iter
                vals.setdefault(v.group(1), []).append((last_iter, float(v.group(2))))
    return losses, vals


def training_curves(log_path, png_path, baselines=None):
    """PNG of the losses (log scale), lambda, and one panel per validation metric of a BasicSR
    train log; ``baselines``: ``{metric: {label: value}}`` dashed lines on that metric's panel."""
    losses, vals = parse_train_log(log_path)
    if not losses:
        raise ValueError(f'{log_path}: no training iterations logged')
    fig, axes = plt.subplots(1, 2 + len(vals), figsize=(4.6 * (2 + len(vals)), 3.8), dpi=100)
    for name, pts in losses.items():
        (axes[1] if name == 'lambda' else axes[0]).plot(*zip(*pts), label=name)
    axes[0].set_yscale('log')
    axes[0].set_title('training losses (L1)')
    axes[1].set_title('context loss weight lambda')
    for ax, (name, pts) in zip(axes[2:], vals.items()):
        ax.plot(*zip(*pts), marker='o', label=f'CLSR (EMA) {name}')
        for i, (label, value) in enumerate(((baselines or {}).get(name) or {}).items()):
            ax.axhline(value, linestyle='--', linewidth=1, color=f'C{i + 1}', label=label)
        ax.set_title(f'validation {name} (Set5, 24x24 ROI grid, dB)', fontsize=9)
    for ax in axes:
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
