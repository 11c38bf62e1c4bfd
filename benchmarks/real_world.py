"""Real-world LocalSR on degraded test sets (issue 21, items 4 and 6): every row over the same ROIs.

Suite ``real`` (default). Rows: bicubic; today's default (CLSR-IMDN, bicubic-trained); the real
base (IMDN fine-tuned on Real-ESRGAN degradations) pre-cropped with 0/2/4/12 LR pixels of real
context and post-cropped; CLSR-IMDN-real. Sets: Set5/Set14/BSD100 degraded four ways by
``data/make_degraded_sets.py`` (Real-ESRGAN second order, JPEG q30, noise sigma 10, blur sigma
1.6), 24x24 and 48x48 ROI grids, the whole LR image as context (the paper's protocol, Sec. 4.1).

Suite ``bicubic`` (item 6): the bicubic models retrained on the 497 images (shipped in weights/
since) against the ones they replaced (issue 13) and pre-crop of their official bases with 2 and
4 px of context, on the clean MATLAB-bicubic LR of the same test sets. "Today's default" of the
real suite is that issue-13 CLSR-IMDN too; both issue-13 checkpoints come out of git history
(``BEFORE_HOW`` below; a missing one is an error that prints the command).

Suite ``craft`` (issue 24, item 4): CLSR-CRAFT against its frozen base's (the official CRAFT's)
pre-crop with 4 and 12 px of context and post-crop, clean bicubic LR.

Each row runs through BasicSR's test runner (``clsr_arch/test.py`` on a generated YAML, kept
under ``results/real_world/opts/``), which writes every ROI's PSNR (RGB and Y) and SSIM (Y), no border
crop, to ``results/real_world_<row>/rois_<set>.csv``; rows already run are reused (``--force``
reruns). The tables compare rows over the ROIs they share (an infinite PSNR in any row drops
the ROI from all, counted), with per-ROI wins (PSNR-Y) of the suite's model and GFLOPs per ROI
from :func:`clsr_arch.utils.flops.localsr_flops`. They are written into ``docs/results.md``
in the suite's marked section (``common.write_section``) and printed.

    bash data/prepare_real_data.sh
    .venv/bin/python benchmarks/real_world.py                  # ~30 min on 2 CPU cores
    .venv/bin/python benchmarks/real_world.py --suite bicubic  # ~15 min
    .venv/bin/python benchmarks/real_world.py --suite craft --sets Set14,BSD100 --rois 24  # ~25 min, alone
"""
import argparse
import csv
import math
import os
import os.path as osp
import subprocess
import sys
import time

import numpy as np
import yaml

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from common import write_section  # noqa: E402  (benchmarks/common.py)

SETS = ('Set5', 'Set14', 'BSD100')
ROIS = (24, 48)
PADS = (0, 2, 4, 12)
METRICS = ('psnr', 'psnr_y', 'ssim_y')  # SSIM on Y only: RGB SSIM of every ROI doubles the run time
W = osp.join(REPO, 'weights')
CANDIDATES = osp.join(REPO, 'results', 'candidates')
# the bicubic models of issue 13 (4 training images) were replaced in weights/ by the 497-image
# retrains (issue 21, item 6); they stay in git history
BEFORE_HOW = ('mkdir -p results/candidates && for m in IMDN CARN_M; do git show '
              'a1b1075:weights/CLSR_${m}_x4.pth > results/candidates/CLSR_${m}_x4_issue13.pth; done')


def _net(yml):
    with open(osp.join(REPO, yml)) as f:
        net = yaml.safe_load(f)['network_g']
    return {k: v for k, v in net.items() if k != 'pretrain_backbone'}


def real_suite(args):
    """(kinds, rows, the suite's model row, reference rows of the summary)."""
    default = _net('options/train/CLSR_IMDN_x4_ship.yml')
    real = _net('options/train/CLSR_IMDN_real_x4.yml')
    base = real['backbone']
    rows = [('bicubic', 'bicubic (each ROI alone)', base, None, {'mode': 'bicubic'}),
            ('default', "today's default: CLSR-IMDN (bicubic-trained)", default, args.default_weights,
             {'mode': 'clsr'})]
    for p in PADS:
        rows.append((f'base_pad{p}', f'real base pre-crop, {p} px of context', base, args.base_weights,
                     {'mode': 'pre_crop', 'pre_crop_pad': p}))
    rows.append(('base_post', 'real base post-crop (whole image)', base, args.base_weights, {'mode': 'post_crop'}))
    rows.append(('clsr_real', '**CLSR-IMDN-real**', real, args.clsr_weights, {'mode': 'clsr'}))
    kinds = (('realesrgan', 'Real-ESRGAN 2nd order'), ('jpeg30', 'bicubic + JPEG q30'),
             ('noise10', 'bicubic + noise σ=10'), ('blur1.6', 'blur σ=1.6 + bicubic'))
    refs = (('default', "today's default"), ('base_pad4', 'real base pad 4'), ('base_post', 'real base post-crop'),
            ('bicubic', 'bicubic'))
    return kinds, rows, {'clsr_real': refs}


def bicubic_suite(args):
    """Per bicubic model: its official base padded 2/4 and post-crop (the shipped CLSR's frozen
    base is the official network bit for bit), the shipped CLSR and the one retrained on 497 images."""
    rows = [('bicubic', 'bicubic (each ROI alone)', _net('options/train/CLSR_IMDN_x4_ship.yml')['backbone'], None,
             {'mode': 'bicubic'})]
    targets = {}
    for model, label in (('IMDN', 'IMDN'), ('CARN_M', 'CARN-M')):
        ship, key = _net(f'options/train/CLSR_{model}_x4_ship.yml'), model.lower()
        shipped = getattr(args, f'{key}_before')  # the official base is frozen in it: the pad/post rows' base
        for p in (2, 4):
            rows.append((f'{key}_pad{p}', f'{label} pre-crop, {p} px of context', ship, shipped,
                         {'mode': 'pre_crop', 'pre_crop_pad': p}))
        rows.append((f'{key}_post', f'{label} post-crop (whole image)', ship, shipped, {'mode': 'post_crop'}))
        rows.append((f'{key}_ship', f'CLSR-{label} shipped before (4 images, issue 13)', ship, shipped,
                     {'mode': 'clsr'}))
        rows.append((f'{key}_497', f'**CLSR-{label} retrained (497 images)**', ship,
                     getattr(args, f'{key}_497'), {'mode': 'clsr'}))
        targets[f'{key}_497'] = ((f'{key}_pad2', f'{label} pad 2'), (f'{key}_pad4', f'{label} pad 4'),
                                 (f'{key}_post', f'{label} post-crop'), (f'{key}_ship', f'CLSR-{label} before'))
    return (('bicubic', 'clean bicubic'),), rows, targets


def craft_suite(args):
    """CLSR-CRAFT (issue 24, item 4) against pre-crop of its frozen base -- the official CRAFT, bit for
    bit -- with 4 px of context (the same input size as CLSR's base branch: 24 + 8 = 32, CRAFT's
    multiple of 16, so all real context; the nearest cost), 12 px (the next real-context size, 48,
    1.7x the cost) and post-crop, on clean MATLAB-bicubic LR."""
    net = _net('options/train/CLSR_CRAFT_x4_bicubic497.yml')
    rows = [('craft_pad4', 'CRAFT pre-crop, 4 px of context', net, args.craft_weights,
             {'mode': 'pre_crop', 'pre_crop_pad': 4}),
            ('craft_pad12', 'CRAFT pre-crop, 12 px of context', net, args.craft_weights,
             {'mode': 'pre_crop', 'pre_crop_pad': 12}),
            ('craft_post', 'CRAFT post-crop (whole image)', net, args.craft_weights, {'mode': 'post_crop'}),
            ('craft_clsr', '**CLSR-CRAFT (497 images)**', net, args.craft_weights, {'mode': 'clsr'})]
    refs = (('craft_post', 'CRAFT post-crop'), ('craft_pad4', 'CRAFT pad 4'), ('craft_pad12', 'CRAFT pad 12'))
    return (('bicubic', 'clean bicubic'),), rows, {'craft_clsr': refs}


SUITES = {'real': (real_suite, 'real-world', 'Real-world models on degraded test sets (issue 21)'),
          'craft': (craft_suite, 'craft-497', 'CLSR-CRAFT against padded pre-crop of CRAFT (issue 24, item 4)'),
          'bicubic': (bicubic_suite, 'bicubic-497',
                      'Bicubic models retrained on the 497 training images (issue 21, item 6)')}


def dataset_name(set_name, kind, roi):
    return f'{set_name}_{kind}_roi{roi}'


def test_options(row, net, weights, val, data_root, kinds):
    """BasicSR test options of one row: a dataset per set x kind x ROI size."""
    datasets = {}
    for i, (s, (kind, _), roi) in enumerate((s, k, r) for s in SETS for k in kinds for r in ROIS):
        datasets[f'test_{i}'] = {
            'name': dataset_name(s, kind, roi), 'type': 'ContextROIDataset',
            'dataroot_gt': osp.join(data_root, s, 'HR'), 'dataroot_lq': osp.join(data_root, s, kind, 'X4'),
            'io_backend': {'type': 'disk'}, 'roi_size': roi}
    metrics = {m: {'type': 'calculate_' + m.split('_')[0], 'crop_border': 0, 'test_y_channel': m.endswith('_y')}
               for m in METRICS}
    name = f'real_world_{row}' + ('_val' if SETS == ('val',) else '')
    return {'name': name, 'model_type': 'CLSRModel', 'scale': 4, 'num_gpu': 'auto',
            'manual_seed': 0, 'datasets': datasets, 'network_g': net,
            'path': {'pretrain_network_g': weights, 'strict_load_g': True},
            'val': dict(val, save_img=False, suffix=None, pbar=False, metrics=metrics)}


def run_row(row, opt, results_root, force):
    folder = osp.join(results_root, opt['name'])
    expected = [osp.join(folder, f'rois_{d["name"]}.csv') for d in opt['datasets'].values()]
    if not force and all(osp.isfile(p) for p in expected):
        return 'reused'
    opt_dir = osp.join(results_root, 'real_world', 'opts')
    os.makedirs(opt_dir, exist_ok=True)
    path = osp.join(opt_dir, f'{opt["name"]}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    t0 = time.time()
    env = dict(os.environ, CLSR_ROOT=osp.dirname(results_root))
    log = osp.join(opt_dir, f'{opt["name"]}.log')
    with open(log, 'w') as f:  # BasicSR's runner logs every dataset and the network: keep it out of the table
        r = subprocess.run([sys.executable, osp.join(REPO, 'clsr_arch', 'test.py'), '-opt', path], env=env,
                           stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f'real_world: row {row} failed (exit {r.returncode}); its log: {log}')
    return f'{time.time() - t0:.0f} s'


def load_rois(results_root, row, dataset):
    path = osp.join(results_root, f'real_world_{row}' + ('_val' if SETS == ('val',) else ''), f'rois_{dataset}.csv')
    with open(path, newline='') as f:
        return {(r['image'], int(r['roi'])): {m: float(r[m]) for m in METRICS} for r in csv.DictReader(f)}


def gflops_per_roi(data_root, set_name, kind, roi, rows):
    """Mean GFLOPs to restore one ROI alone, over the set's grid-cropped LR sizes."""
    from clsr_arch.api import bicubic_flops
    from clsr_arch.data.image_io import image_size, list_images
    from clsr_arch.archs.backbone_adapters import import_adapter_modules
    from clsr_arch.utils.flops import localsr_flops
    for _, _, net, _, _ in rows:  # a plain backbone row of an adapter's arch (CRAFT) needs it registered
        import_adapter_modules(net.get('adapter_modules'), 'network_g.adapter_modules')
    lr = osp.join(data_root, set_name, kind, 'X4')
    sizes = []
    for n in list_images(lr):
        h, w = image_size(osp.join(lr, n))
        sizes.append(((h - roi) // roi * roi + roi, (w - roi) // roi * roi + roi))
    out = {}
    for row, _, net, _, val in rows:
        mode = val['mode']
        plain = net['backbone'] if net.get('type') == 'CLSR' else net
        if mode == 'bicubic':
            out[row] = bicubic_flops(roi, roi, 4) / 1e9
        elif mode == 'pre_crop':
            side = roi + 2 * val['pre_crop_pad']
            out[row] = localsr_flops(plain, (side, side), (side, side), strategies=('pre_crop',))['pre_crop']
        else:  # per distinct LR size (BSD100's 100 images have two): counted once each
            model, key = (plain, 'post_crop') if mode == 'post_crop' else (net, 'clsr')
            per_size = {hw: localsr_flops(model, hw, (roi, roi), strategies=(key,))[key] for hw in set(sizes)}
            out[row] = float(np.mean([per_size[hw] for hw in sizes]))
    return out


def tables(results_root, data_root, kinds, rows, targets):
    """Markdown: per target model a summary of its margins, then one table per set / kind / ROI."""
    labels = {r: label for r, label, *_ in rows}
    margins = {t: [] for t in targets}  # (set, kind label, roi, {ref: delta}, {ref: wins}, n, flops)
    parts = []
    for s in SETS:
        for kind, kind_label in kinds:
            for roi in ROIS:
                d = dataset_name(s, kind, roi)
                data = {r: load_rois(results_root, r, d) for r, *_ in rows}
                keys = set.intersection(*(set(v) for v in data.values()))
                finite = sorted(k for k in keys if all(math.isfinite(v[k][m]) for v in data.values()
                                                        for m in ('psnr', 'psnr_y')))
                dropped = len(keys) - len(finite)
                means = {r: {m: float(np.mean([data[r][k][m] for k in finite])) for m in METRICS} for r in data}
                flops = gflops_per_roi(data_root, s, kind, roi, rows)
                wins = {t: {r: sum(data[t][k]['psnr_y'] > data[r][k]['psnr_y'] for k in finite) for r in data}
                        for t in targets}
                win_cols = ' | '.join(f'{labels[t]} better' for t in targets)
                parts.append(f'\n#### {s}, {kind_label}, {roi}x{roi} ROIs — {len(finite)} ROIs'
                             + (f' ({dropped} dropped: infinite PSNR in some row)' if dropped else '') + '\n')
                parts.append(f'| method | PSNR-Y | SSIM-Y | PSNR RGB | GFLOPs / ROI | {win_cols} |')
                parts.append('|---|---:|---:|---:|---:|' + '---:|' * len(targets))
                for r, label, *_ in rows:
                    m = means[r]
                    w = ' | '.join('' if r == t else f'{wins[t][r]} / {len(finite)}' for t in targets)
                    parts.append(f'| {label} | {m["psnr_y"]:.3f} | {m["ssim_y"]:.4f} | {m["psnr"]:.3f} | '
                                 f'{flops[r]:.3g} | {w} |')
                for t, refs in targets.items():
                    margins[t].append((s, kind_label, roi,
                                       {r: means[t]['psnr_y'] - means[r]['psnr_y'] for r, _ in refs},
                                       {r: wins[t][r] for r, _ in refs}, len(finite),
                                       {r: flops[r] for r in [t] + [x for x, _ in refs]}))
    head = []
    for t, refs in targets.items():
        head += [f'\n### {labels[t]} minus each row (PSNR-Y, dB, over the same ROIs; positive = better)\n',
                 '| set | LR | ROI | ' + ' | '.join(f'vs {lab}' for _, lab in refs)
                 + ' | GFLOPs / ROI: it / ' + ' / '.join(lab for _, lab in refs) + ' | ROIs it wins vs '
                 + refs[1][1] + ' |',
                 '|---|---|---:|' + '---:|' * len(refs) + '---|---:|']
        for s, kl, roi, dl, wn, n, fl in margins[t]:
            head.append(f'| {s} | {kl} | {roi} | ' + ' | '.join(f'{dl[r]:+.3f}' for r, _ in refs) + ' | '
                        + ' / '.join(f'{fl[x]:.3g}' for x in [t] + [r for r, _ in refs])
                        + f' | {wn[refs[1][0]]} / {n} |')
        head += ['\nAveraged over sets and ROI sizes (each set / ROI-size cell weighted equally):\n',
                 '| LR | ' + ' | '.join(f'vs {lab}' for _, lab in refs) + ' |', '|---|' + '---:|' * len(refs)]
        for _, kl in kinds:
            sel = [x for x in margins[t] if x[1] == kl]
            head.append(f'| {kl} | ' + ' | '.join(f'{np.mean([x[3][r] for x in sel]):+.3f}' for r, _ in refs) + ' |')
        if len(kinds) > 1:
            head.append('| **all** | ' + ' | '.join(f'{np.mean([x[3][r] for x in margins[t]]):+.3f}' for r, _ in refs)
                        + ' |')
    return '\n'.join(head) + '\n' + '\n'.join(parts) + '\n'


def main(argv=None):
    global SETS, ROIS
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--suite', choices=sorted(SUITES), default='real')
    p.add_argument('--data', default=osp.join(REPO, 'datasets', 'real'))
    p.add_argument('--results', default=osp.join(REPO, 'results'))
    p.add_argument('--default-weights', default=osp.join(CANDIDATES, 'CLSR_IMDN_x4_issue13.pth'),
                   help="today's default of issue 21: the bicubic CLSR-IMDN of issue 13 (" + BEFORE_HOW + ')')
    p.add_argument('--base-weights', default=osp.join(W, 'IMDN_real_x4.pth'))
    p.add_argument('--clsr-weights', default=osp.join(W, 'CLSR_IMDN_real_x4.pth'))
    p.add_argument('--imdn-497', default=osp.join(W, 'CLSR_IMDN_x4.pth'),
                   help='the retrained CLSR-IMDN (bicubic suite; shipped since issue 21)')
    p.add_argument('--carn_m-497', dest='carn_m_497', default=osp.join(W, 'CLSR_CARN_M_x4.pth'))
    p.add_argument('--imdn-before', dest='imdn_before', default=osp.join(CANDIDATES, 'CLSR_IMDN_x4_issue13.pth'),
                   help='the bicubic CLSR-IMDN shipped before (issue 13; ' + BEFORE_HOW + ')')
    p.add_argument('--carn_m-before', dest='carn_m_before',
                   default=osp.join(CANDIDATES, 'CLSR_CARN_M_x4_issue13.pth'))
    p.add_argument('--craft-weights', default=osp.join(W, 'CLSR_CRAFT_x4.pth'),
                   help='CLSR-CRAFT (craft suite; shipped since issue 24; its frozen base is the official CRAFT)')
    p.add_argument('--doc', default=osp.join(REPO, 'docs', 'results.md'))
    p.add_argument('--force', action='store_true', help='rerun rows whose CSVs exist')
    p.add_argument('--rows', help='comma-separated row ids: run only these, write no table')
    p.add_argument('--sets', default=','.join(SETS),
                   help="test sets under --data (default Set5,Set14,BSD100); 'val' is the validation split, "
                        'which chooses checkpoints (its table goes to stdout only)')
    p.add_argument('--rois', default=','.join(map(str, ROIS)), help='ROI sizes (LR px), default 24,48')
    args = p.parse_args(argv)
    SETS = tuple(args.sets.split(','))
    try:
        ROIS = tuple(int(r) for r in args.rois.split(','))
    except ValueError:
        raise SystemExit(f'real_world: --rois {args.rois!r}: expected comma-separated sizes, e.g. 24,48') from None
    validation = 'val' in SETS
    if validation:  # the validation split's 24x24 ROIs, as training validated (some T91 images are < 48 LR px)
        ROIS = (24,)
    make_suite, marker, title = SUITES[args.suite]
    kinds, rows, targets = make_suite(args)
    if args.rows:
        wanted = args.rows.split(',')
        unknown = sorted(set(wanted) - {r[0] for r in rows})
        if unknown:
            raise SystemExit(f'real_world: unknown row(s) {unknown}; rows: {", ".join(r[0] for r in rows)}')
        rows = [r for r in rows if r[0] in wanted]
    for s in SETS:
        for kind, _ in kinds:
            if not osp.isdir(osp.join(args.data, s, kind)):
                raise SystemExit(f'real_world: {osp.join(args.data, s, kind)} missing: run bash data/prepare_real_data.sh')
    for _, _, _, weights, _ in rows:
        if weights and not osp.isfile(weights):
            raise SystemExit(f'real_world: weights {weights} missing'
                             + (f' ({BEFORE_HOW})' if weights.endswith('_issue13.pth') else ''))
    for row, label, net, weights, val in rows:
        status = run_row(row, test_options(row, net, weights, val, args.data, kinds), args.results, args.force)
        print(f'{row:12s} {status}', flush=True)
    if args.rows:
        return
    import clsr_arch  # noqa: F401  (compat + registries for the FLOPs model)
    block = (f'## {title}\n\nMade by `benchmarks/real_world.py --suite {args.suite}` (its docstring has the '
             'protocol; data: `bash data/prepare_real_data.sh`, seed 0).\n'
             + tables(args.results, args.data, kinds, rows, targets))
    if not validation:  # a validation table chooses checkpoints; it is not a result
        write_section(args.doc, marker, block)
    print(block)


if __name__ == '__main__':
    main()
