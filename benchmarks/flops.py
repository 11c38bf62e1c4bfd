"""GFLOPs of pre-crop, post-crop and CLSR per ROI (LocalSR paper Table 1's GFLOPs columns, x4).

For every backbone and every paper context size (Table 2's average LR contexts: BSD100 144x216,
Urban100 384x480, Manga109 576x408, Test2K 528x816) and ROI size (24x24 as in Table 1, 48x48 as
in Fig. 6) it counts, with :func:`clsr_arch.utils.flops.localsr_flops` on ``meta`` tensors:

* ``pre_crop``: the plain backbone on the ROI alone;
* ``post_crop``: the plain backbone on the whole context (then cropped);
* ``clsr``: CLSR's shared context pass (PIM over the context, GCM windows through ``G``) plus the
  base branch on the padded ROI with the injections; the PIM's HR head (training only) excluded.

and puts the paper's Table 1 value and the ratio ours/paper beside each 24x24 cell. Targets:
CLSR <= the paper's "Ours"; pre-/post-crop within 2 % of the paper. The split of CLSR into the
shared context pass and the per-ROI decode is printed too, to explain any miss.

    .venv/bin/python benchmarks/flops.py            # all five backbones (+ CARN, SwinIR-light-psd)
    .venv/bin/python benchmarks/flops.py --quick    # tiny stand-ins (tests)
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from clsr_arch.utils.flops import count_flops, localsr_flops  # noqa: E402

SECTION = 'flops'
PRE_POST_TOL = 0.02


def clsr_split(name, context_hw, roi_hw, quick, device):
    """GFLOPs of CLSR's shared context pass (``encode_context``) and of one ROI's ``decode``."""
    net = common.build_clsr(name, quick, device)
    context = torch.zeros(1, 3, *context_hw, device=device)
    box = common.centre_box(context_hw, roi_hw)
    with torch.no_grad():
        enc = count_flops(net.encode_context, context)
        state = net.encode_context(context)
        dec = count_flops(net.decode, state, box)
    return enc / 1e9, dec / 1e9


def measure(names, contexts, rois, quick=False, device='meta', log=print):
    """``{name: {ctx: {roi: {'pre_crop', 'post_crop', 'clsr', 'encode', 'decode'}}}}`` in GFLOPs."""
    results = {}
    for name in names:
        opt = common.backbone_opt(name, quick)
        results[name] = {}
        for ctx, hw in contexts.items():
            results[name][ctx] = {}
            for roi in rois:
                t0 = time.perf_counter()
                cell = localsr_flops(opt, hw, (roi, roi), device=device)
                cell['encode'], cell['decode'] = clsr_split(name, hw, (roi, roi), quick, device)
                results[name][ctx][roi] = cell
                log(f'{name:16s} {ctx:9s} roi {roi:2d}: pre {cell["pre_crop"]:9.3f}  post {cell["post_crop"]:10.2f}  '
                    f'clsr {cell["clsr"]:7.3f} (context pass {cell["encode"]:.3f} + decode {cell["decode"]:.3f}) '
                    f'GFLOPs  [{time.perf_counter() - t0:.1f} s]')
    return results


def fmt(v):
    return f'{v:.2f}' if v >= 0.1 else f'{v:.4f}'


def check_targets(results, contexts):
    """Rows of (backbone, dataset, mode, ours, paper, ratio, met) for the paper's 24x24 cells."""
    rows = []
    for name, row in common.PAPER_ROW.items():
        if name not in results:
            continue
        for ctx in contexts:
            if ctx not in common.PAPER_TABLE1[row] or 24 not in results[name][ctx]:
                continue
            paper = dict(zip(common.MODES, common.PAPER_TABLE1[row][ctx]))
            for mode in common.MODES:
                ours = results[name][ctx][24][mode]
                ratio = ours / paper[mode]
                met = ratio <= 1.0 if mode == 'clsr' else abs(ratio - 1) <= PRE_POST_TOL
                rows.append((name, ctx, mode, ours, paper[mode], ratio, met))
    return rows


def report(results, contexts, rois, device_line, command, count_device='meta'):
    out = [f'Produced by `{command}` on {device_line}; counted on `{count_device}` tensors with '
           '`torch.utils.flop_counter` (FLOPs = 2 x MACs of convolutions and matmuls; element-wise ops, '
           'softmax and norms not counted). x4 SR, one ROI at the context centre, GFLOPs per ROI. '
           'Context sizes are the paper\'s Table 2 averages (about 1.8x per side the LR size of the '
           'standard x4 test sets). CLSR = shared context pass + decode (split in the last columns).', '']
    targets = check_targets(results, contexts)
    tmap = {(n, c, m): (p, r, ok) for n, c, m, _, p, r, ok in targets}
    for roi in rois:
        out.append(f'**ROI {roi}x{roi}**' + (' (paper Table 1: value in brackets, ratio ours/paper)'
                                              if roi == 24 else ' (paper Fig. 6 has no table values)'))
        out.append('')
        header = ['backbone', 'mode'] + [f'{c} {h}x{w}' for c, (h, w) in contexts.items()]
        rows = []
        for name in results:
            paper_row = common.PAPER_ROW.get(name)
            label = name + (f' (paper: {paper_row})' if paper_row and paper_row != name else '')
            for mode in common.MODES + ('encode', 'decode'):
                cells = []
                for ctx in contexts:
                    v = results[name][ctx][roi][mode]
                    cell = fmt(v)
                    if roi == 24 and (name, ctx, mode) in tmap:
                        p, r, ok = tmap[(name, ctx, mode)]
                        cell += f' [{fmt(p)}] {r:.3f}{"" if ok else " ✗"}'
                    cells.append(cell)
                mode_label = {'encode': '↳ context pass', 'decode': '↳ decode 1 ROI'}.get(mode, mode)
                rows.append([label, mode_label] + cells)
        out.append(common.markdown_table(header, rows))
        out.append('')
    if targets:
        clsr = [t for t in targets if t[2] == 'clsr']
        pp = [t for t in targets if t[2] != 'clsr']
        out.append(f'Targets (24x24 vs Table 1): CLSR <= paper "Ours" in {sum(t[6] for t in clsr)}/{len(clsr)} '
                   f'cells; pre-/post-crop within {PRE_POST_TOL:.0%} in {sum(t[6] for t in pp)}/{len(pp)} cells.')
        missed = [t for t in targets if not t[6]]
        for n, c, m, ours, p, r, _ in missed:
            out.append(f'- missed: {n} {c} {m}: {ours:.3f} vs paper {p:.2f} (ratio {r:.3f})')
    return '\n'.join(out)


def main(argv=None):
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.split('\n')[0]))
    parser.add_argument('--backbones', default='all+extra',
                        help='comma list, "all" (five paper backbones + CARN) or "all+extra" (+ SwinIR-light-psd)')
    parser.add_argument('--rois', default=None, help='ROI sizes (LR pixels, square); default 24,48 (--quick: 8,24)')
    parser.add_argument('--json', default=None, help='also write the raw numbers here')
    args = parser.parse_args(argv)
    common.check_device(args.device)
    if args.backbones == 'all+extra':
        names = list(common.ALL) + ([] if args.quick else list(common.EXTRA_BACKBONES))
    else:
        names = common.parse_backbones(args.backbones, args.quick)
    rois = [int(r) for r in (args.rois or ('8,24' if args.quick else '24,48')).split(',')]
    contexts = common.QUICK_CONTEXTS if args.quick else common.CONTEXTS
    # counting needs no compute: 'meta' unless the caller wants a real device exercised
    count_device = 'meta' if args.device == 'cpu' else args.device
    results = measure(names, contexts, rois, args.quick, count_device)
    text = report(results, contexts, rois, common.env_line(args.device), common.command_line(__file__, argv),
                  count_device)
    print(text)
    common.write_section(args.out, SECTION, text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({n: {c: {str(r): v for r, v in d.items()} for c, d in cs.items()} for n, cs in results.items()},
                      f, indent=1)
    return results


if __name__ == '__main__':
    main()
