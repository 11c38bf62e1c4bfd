"""Wall-clock latency of pre-crop, post-crop and CLSR (LocalSR paper Fig. 1's cost argument and
Sec. 3.4's shared context pass, measured instead of counted), x4.

Two measurements, both with ``torch.set_num_threads`` fixed and printed, warm-up excluded, the
modes run interleaved (round-robin, the order rotated each round) so that the noise of a shared
machine hits all of them alike, and the median of the repeats reported:

* **per ROI** (one 24x24 ROI at the centre of a context of each paper size): CLSR (shared
  context pass + decode of that ROI) vs pre-crop (backbone on the ROI) vs post-crop (backbone on
  the whole context). Targets: CLSR <= 2x pre-crop at BSD100 size; >= 20x faster than post-crop
  at Test2K size.
* **whole ROI grid** (every non-overlapping 24x24 ROI of a context): CLSR with one shared context
  pass vs CLSR re-encoding the context for each ROI vs post-crop of the whole image once. Target:
  the shared pass cheaper than post-crop.

It also draws ``docs/cost_vs_context.png``: GFLOPs (from :func:`clsr_arch.utils.flops.localsr_flops`)
and per-ROI latency against context pixels for the three modes, log scale.

    .venv/bin/python benchmarks/latency.py                   # SRResNet, CARN_M, SwinIR-light
    .venv/bin/python benchmarks/latency.py --backbones all   # five backbones (+ CARN)
    .venv/bin/python benchmarks/latency.py --quick --out /tmp/x.md --plot /tmp/x.png
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from clsr_arch.utils.flops import localsr_flops  # noqa: E402

SECTION_ROI = 'latency-roi'
SECTION_GRID = 'latency-grid'
PLOT = os.path.join(common.REPO, 'docs', 'cost_vs_context.png')


def interleaved(fns, repeats, device, warmup=1, log=None):
    """Median seconds of each ``fns[name]()`` over ``repeats[name]`` timed calls.

    All functions are warmed up first (``warmup`` calls, or a dict per name; excluded), then run
    round-robin with the order rotated every round, so slow phases of a shared machine affect
    every mode alike.
    """
    names = list(fns)
    if isinstance(warmup, int):
        warmup = {n: warmup for n in names}
    for n in names:
        for _ in range(warmup.get(n, 0)):
            fns[n]()
    times = {n: [] for n in names}
    rnd = 0
    while any(len(times[n]) < repeats[n] for n in names):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            if len(times[n]) < repeats[n]:
                times[n].append(common.timed(fns[n], device))
        rnd += 1
    if log:
        log('    ' + '  '.join(f'{n} ' + '/'.join(f'{t * 1e3:.1f}' for t in times[n]) + ' ms' for n in names))
    return {n: statistics.median(times[n]) for n in names}, times


def roi_fns(net, context, box):
    """The three ways of getting one ROI's SR (no grad)."""
    adapter = net.adapter
    s = net.scale
    _, x, y, w, h = box[0].tolist()
    roi = context[:, :, y:y + h, x:x + w].contiguous()

    def pre():
        with torch.no_grad():
            return common.plain_run(adapter, roi)

    def post():
        with torch.no_grad():
            return common.plain_run(adapter, context)[:, :, s * y:s * (y + h), s * x:s * (x + w)]

    def clsr():
        with torch.no_grad():
            return net.decode(net.encode_context(context), box)

    return {'pre_crop': pre, 'clsr': clsr, 'post_crop': post}


def grid_fns(net, context, boxes, chunk):
    """The three ways of getting every ROI of a grid (no grad)."""
    adapter = net.adapter

    def shared():
        with torch.no_grad():
            state = net.encode_context(context)
            return [net.decode(state, b) for b in boxes.split(chunk)]

    def reencode():
        with torch.no_grad():
            return [net(context, b[None]) for b in boxes]

    def post():
        with torch.no_grad():
            return common.plain_run(adapter, context)

    return {'clsr_shared': shared, 'clsr_reencode': reencode, 'post_crop': post}


def run(args, log=print):
    device = common.check_device(args.device)
    torch.set_num_threads(args.threads)
    names = common.parse_backbones(args.backbones, args.quick)
    contexts = common.QUICK_CONTEXTS if args.quick else common.CONTEXTS
    if args.contexts:
        contexts = {k: contexts[k] for k in _names(args.contexts, contexts, '--contexts')}
    if args.grid_contexts == 'none':
        grid_contexts = []
    elif args.grid_contexts:
        grid_contexts = _names(args.grid_contexts, contexts, '--grid-contexts')
    else:
        grid_contexts = [next(iter(contexts))]
    roi_hw = (args.roi, args.roi)
    gen = torch.Generator().manual_seed(0)
    res = {'roi': {}, 'grid': {}, 'flops': {}, 'threads': torch.get_num_threads()}
    log(f'threads: torch.set_num_threads({args.threads}) -> torch.get_num_threads() = {torch.get_num_threads()}')
    for name in names:
        net = common.build_clsr(name, args.quick, device)
        heavy = name in common.HEAVY and not args.quick
        res['roi'][name], res['grid'][name], res['flops'][name] = {}, {}, {}
        for ctx, hw in contexts.items():
            context = torch.rand(1, 3, *hw, generator=gen).to(device)
            box = common.centre_box(hw, roi_hw)
            reps = {'pre_crop': args.repeats, 'clsr': args.repeats,
                    'post_crop': args.heavy_post_repeats if heavy else args.post_repeats}
            t0 = time.perf_counter()
            # post-crop's warm-up only at the first (smallest) context: same kernels, and a
            # Test2K-size warm-up would cost as much as a timed run
            first = ctx == next(iter(contexts))
            warm = {'pre_crop': args.warmup, 'clsr': args.warmup, 'post_crop': args.warmup if first else 0}
            med, raw = interleaved(roi_fns(net, context, box), reps, device, warm, log)
            res['roi'][name][ctx] = {'median': med, 'raw': raw}
            log(f'{name:12s} {ctx:9s} per ROI: pre {med["pre_crop"] * 1e3:8.1f} ms  clsr {med["clsr"] * 1e3:8.1f} ms  '
                f'post {med["post_crop"] * 1e3:9.1f} ms  clsr/pre {med["clsr"] / med["pre_crop"]:.2f}  '
                f'post/clsr {med["post_crop"] / med["clsr"]:.1f}  [{time.perf_counter() - t0:.0f} s]')
            res['flops'][name][ctx] = localsr_flops(common.backbone_opt(name, args.quick), hw, roi_hw)
            if ctx in grid_contexts:
                boxes = common.roi_grid(hw, roi_hw)
                reps = {'clsr_shared': args.grid_repeats, 'clsr_reencode': args.grid_repeats,
                        'post_crop': args.grid_repeats}
                t0 = time.perf_counter()
                # the per-ROI runs just warmed every kernel on this context; only the batched
                # decode (chunk of ROIs) has new shapes
                warm = {'clsr_shared': args.warmup}
                med, raw = interleaved(grid_fns(net, context, boxes, args.chunk), reps, device, warm, log)
                res['grid'][name][ctx] = {'median': med, 'raw': raw, 'rois': int(boxes.shape[0])}
                log(f'{name:12s} {ctx:9s} grid of {boxes.shape[0]} ROIs: shared {med["clsr_shared"]:.2f} s  '
                    f're-encode {med["clsr_reencode"]:.2f} s  post {med["post_crop"]:.2f} s  '
                    f'[{time.perf_counter() - t0:.0f} s]')
        del net
    return res


def _names(value, table, option):
    names = [v.strip() for v in value.split(',') if v.strip()]
    for n in names:
        if n not in table:
            raise ValueError(f'{option}: unknown context {n!r}; choose from {sorted(table)}')
    return names


def report(res, args, contexts, device_line, command):
    n_rep = f'median of {args.repeats} (post-crop: {args.post_repeats}'
    n_rep += f', {args.heavy_post_repeats} for {"/".join(common.HEAVY)})' if not args.quick else ')'
    roi = args.roi
    out = [f'Produced by `{command}` on {device_line}. Random weights and inputs (cost does not depend on '
           f'them), inference, `torch.no_grad()`, batch 1, x4, {roi}x{roi} ROI at the context centre; '
           f'{n_rep} interleaved timed runs after {args.warmup} warm-up run(s) of every mode (post-crop: at the '
           'first context only, then the same kernels are warm). '
           'The machine is shared (other jobs run at the same time): read the ratios, not the absolute times.',
           '', f'**Per ROI** (CLSR = shared context pass + decode of this one ROI)', '']
    header = ['backbone', 'context (LR)', 'pre-crop ms', 'CLSR ms', 'post-crop ms', 'CLSR / pre-crop',
              'post-crop / CLSR', 'GFLOPs pre / CLSR / post']
    rows, checks = [], []
    for name, per in res['roi'].items():
        for ctx, cell in per.items():
            m = cell['median']
            f = res['flops'][name][ctx]
            hw = contexts[ctx]
            cp, pc = m['clsr'] / m['pre_crop'], m['post_crop'] / m['clsr']
            rows.append([name, f'{ctx} {hw[0]}x{hw[1]}', f'{m["pre_crop"] * 1e3:.1f}', f'{m["clsr"] * 1e3:.1f}',
                         f'{m["post_crop"] * 1e3:.1f}', f'{cp:.2f}', f'{pc:.1f}',
                         f'{f["pre_crop"]:.2f} / {f["clsr"]:.2f} / {f["post_crop"]:.1f}'])
            if ctx == 'BSD100':
                checks.append(f'- {name}: CLSR / pre-crop at BSD100 = {cp:.2f} (target <= 2: '
                              f'{"met" if cp <= 2 else "missed"})')
            if ctx == 'Test2K':
                checks.append(f'- {name}: post-crop / CLSR at Test2K = {pc:.1f} (target >= 20: '
                              f'{"met" if pc >= 20 else "missed"})')
    out += [common.markdown_table(header, rows), ''] + checks
    grid = ['**Whole ROI grid** (every non-overlapping ROI of the context)', '']
    header = ['backbone', 'context (LR)', 'ROIs', 'CLSR shared pass s', 'CLSR re-encode per ROI s',
              'post-crop (whole image) s', 'shared / post-crop', 're-encode / shared']
    rows, gchecks = [], []
    for name, per in res['grid'].items():
        for ctx, cell in per.items():
            m = cell['median']
            hw = contexts[ctx]
            sp = m['clsr_shared'] / m['post_crop']
            rows.append([name, f'{ctx} {hw[0]}x{hw[1]}', cell['rois'], f'{m["clsr_shared"]:.3f}',
                         f'{m["clsr_reencode"]:.3f}', f'{m["post_crop"]:.3f}', f'{sp:.2f}',
                         f'{m["clsr_reencode"] / m["clsr_shared"]:.1f}'])
            gchecks.append(f'- {name} {ctx}: shared-pass grid / post-crop = {sp:.2f} (target < 1: '
                           f'{"met" if sp < 1 else "missed"})')
    grid_text = '\n'.join(grid + [common.markdown_table(header, rows), ''] + gchecks)
    return '\n'.join(out), f'Produced by the same run as the per-ROI table (`{command}`, {device_line}); ' \
        f'median of {args.grid_repeats} interleaved runs (kernels warm from the per-ROI runs); ' \
        f'CLSR decodes the grid in chunks of {args.chunk} ROIs.' \
        f'\n\n' + grid_text


def plot(res, contexts, path, title):
    """GFLOPs and per-ROI latency vs context pixels, three modes, log-log (paper Fig. 1's point)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.ticker  # noqa: F401
    from matplotlib import pyplot as plt

    colors = {'pre_crop': '#1f77b4', 'clsr': '#d62728', 'post_crop': '#7f7f7f'}
    labels = {'pre_crop': 'pre-crop', 'clsr': 'CLSR', 'post_crop': 'post-crop'}
    markers = ['o', 's', '^', 'D', 'v', 'P']
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = ['-', '--', ':', '-.']
    for bi, name in enumerate(res['roi']):
        ctxs = sorted(res['roi'][name], key=lambda c: contexts[c][0] * contexts[c][1])
        px = [contexts[c][0] * contexts[c][1] for c in ctxs]
        for mode in ('post_crop', 'clsr', 'pre_crop'):
            fl = [res['flops'][name][c][mode] for c in ctxs]
            ms = [res['roi'][name][c]['median'][mode] * 1e3 for c in ctxs]
            kw = dict(color=colors[mode], marker=markers[bi % len(markers)], linestyle=styles[bi % len(styles)],
                      linewidth=1.5, markersize=6,
                      label=f'{labels[mode]} ({name})')
            axes[0].plot(px, fl, **kw)
            axes[1].plot(px, ms, **kw)
    for ax, ylab in zip(axes, ('GFLOPs per ROI', 'CPU latency per ROI (ms, median)')):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded 3x10^4 4x10^4 labels
        ax.set_xlabel('LR context pixels (H x W)')
        ax.set_ylabel(ylab)
        ax.grid(True, which='both', alpha=0.3)
    # dataset names at their context sizes
    for ax in axes:
        for c, (h, w) in contexts.items():
            ax.axvline(h * w, color='#bbbbbb', linewidth=0.8, zorder=0)
            ax.annotate(c, (h * w, 1.0), xycoords=('data', 'axes fraction'), textcoords='offset points',
                        xytext=(0, 3), fontsize=8, color='#555555', ha='center', va='bottom')
    handles, labs = axes[0].get_legend_handles_labels()
    fig.legend(handles, labs, loc='center left', bbox_to_anchor=(0.845, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.84, 0.93))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.split('\n')[0]))
    parser.add_argument('--backbones', default='default',
                        help='comma list, "default" (SRResNet,CARN_M,SwinIR-light) or "all"')
    parser.add_argument('--contexts', default=None, help='comma list of context names (default: all four)')
    parser.add_argument('--grid-contexts', default=None,
                        help='contexts of the whole-grid test (default: the first; "none" skips it)')
    parser.add_argument('--tag', default='', help='suffix of the doc sections (a second run beside the default one)')
    parser.add_argument('--roi', type=int, default=None, help='ROI side in LR pixels (default 24; --quick: 8)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=None, help='pre-crop / CLSR repeats (default 9; quick 3)')
    parser.add_argument('--post-repeats', type=int, default=None, help='post-crop repeats (default 3; quick 3)')
    parser.add_argument('--heavy-post-repeats', type=int, default=1, help='post-crop repeats for RCAN/SwinIR')
    parser.add_argument('--grid-repeats', type=int, default=None, help='whole-grid repeats (default 3; quick 2)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--chunk', type=int, default=16, help='ROIs per decode call in the grid test')
    parser.add_argument('--plot', default=PLOT, help='PNG of cost vs context size ("" to skip)')
    parser.add_argument('--json', default=None, help='also write the raw timings here')
    parser.add_argument('--replot', default=None, metavar='JSON',
                        help='only redraw --plot from a previous run\'s --json (no measuring)')
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            res = json.load(f)
        contexts = common.QUICK_CONTEXTS if args.quick else common.CONTEXTS
        plot(res, {c: contexts[c] for c in next(iter(res['roi'].values()))}, args.plot or PLOT,
             f'x4, 24x24 ROI: cost vs context size ({res.get("env", "timings: docs/benchmarks.md, latency-roi")})')
        return res
    args.roi = args.roi or (8 if args.quick else 24)
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.post_repeats = args.post_repeats or 3
    args.grid_repeats = args.grid_repeats or (2 if args.quick else 3)
    if args.warmup < 0:
        raise ValueError(f'--warmup must be >= 0, got {args.warmup}')
    for opt in ('threads', 'repeats', 'post_repeats', 'heavy_post_repeats', 'grid_repeats', 'chunk', 'roi'):
        if getattr(args, opt) < 1:
            raise ValueError(f'--{opt.replace("_", "-")} must be >= 1, got {getattr(args, opt)}')
    res = run(args)
    contexts = common.QUICK_CONTEXTS if args.quick else common.CONTEXTS
    line = res['env'] = common.env_line(args.device, res['threads'])
    roi_text, grid_text = report(res, args, contexts, line, common.command_line(__file__, argv))
    print(roi_text + '\n\n' + grid_text)
    suffix = f'-{args.tag}' if args.tag else ''
    common.write_section(args.out, SECTION_ROI + suffix, roi_text)
    if res['grid'] and any(res['grid'].values()):
        common.write_section(args.out, SECTION_GRID + suffix, grid_text)
    if args.plot:
        plot(res, {c: contexts[c] for c in next(iter(res['roi'].values()))}, args.plot,
             f'x4, {args.roi}x{args.roi} ROI: cost vs context size ({line})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    main()
