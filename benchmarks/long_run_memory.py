"""Does CLSR training leak memory over a long CPU run? Peak/current RSS after every validation.

Runs the real training pipeline (``clsr_arch/train.py``'s ``main`` -> BasicSR's
``train_pipeline``: dataloader, LocalSR's ROI + lambda-weighted context loss of Sec. 3.5,
checkpoint saves, ROI-grid validation of Sec. 4.1) in this process for ``--iters`` iterations on
a tiny CLSR-SRResNet, and after each validation reads ``VmRSS`` (resident now) and ``VmHWM``
(peak resident) from ``/proc/self/status``. Memory is *flat* when RSS after the warm-up
validations stops growing: the script fits RSS against the iteration over the validations after
the first ``--warmup`` ones and reports the slope (MiB per 1000 iterations) and the growth from
the first post-warm-up validation to the last, and says whether they stay under
``--tolerance-mib``.

Data: Set5 from ``../shared/data`` turned into HR/LR x4 pairs (``data/prepare_benchmark.py``'s
function) in a temporary folder; training crops 24x24 LR contexts with 20x20 ROIs, validation is
the whole Set5 with 24x24 ROIs. Writes the table into ``docs/reliability.md`` (section "Long-run
memory") unless ``--no-doc``.

    nice -n 10 .venv/bin/python benchmarks/long_run_memory.py --iters 2000 --val-freq 100
"""
import argparse
import os
import os.path as osp
import platform
import shlex
import sys
import tempfile
import time

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
if REPO not in sys.path:  # run as `python benchmarks/long_run_memory.py` from anywhere
    sys.path.insert(0, REPO)

import clsr_arch  # noqa: E402,F401  (basicsr compat + registries)
import torch  # noqa: E402
import yaml  # noqa: E402

DOC = osp.join(REPO, 'docs', 'reliability.md')
TINY_YML = osp.join(REPO, 'options', 'train', 'CLSR_SRResNet_x4_cpu_tiny.yml')
SHARED_SET5 = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data', 'Set5', 'HR'))
BEGIN, END = '<!-- long_run_memory:begin -->', '<!-- long_run_memory:end -->'


def proc_status_mib():
    """``(VmRSS, VmHWM)`` of this process in MiB, from /proc/self/status."""
    values = {}
    with open('/proc/self/status') as f:
        for line in f:
            key, _, rest = line.partition(':')
            if key in ('VmRSS', 'VmHWM'):
                values[key] = int(rest.split()[0]) / 1024.  # kB
    return values['VmRSS'], values['VmHWM']


def build_opt(data, iters, val_freq, num_feat):
    with open(TINY_YML) as f:
        opt = yaml.safe_load(f)
    opt['name'] = 'long_run_memory'
    for phase, ds in opt['datasets'].items():
        ds.update(dataroot_gt=osp.join(data, 'HR'), dataroot_lq=osp.join(data, 'LR'))
        if phase == 'train':
            ds.update(context_size=24, roi_size=20, batch_size_per_gpu=4, num_worker_per_gpu=0,
                      dataset_enlarge_ratio=100)
        else:
            ds.update(roi_size=24)
    opt['network_g']['backbone'].update(num_feat=num_feat, num_block=2)
    opt['train'].update(total_iter=iters)
    opt['train']['scheduler']['periods'] = [iters]
    opt['train']['lambda_schedule']['periods'] = max(1, iters * 3 // 4)
    opt['val'].update(val_freq=val_freq, pbar=False, save_img=False)
    opt['logger'].update(print_freq=val_freq, save_checkpoint_freq=val_freq, use_tb_logger=False)
    return opt


def fit_slope(xs, ys):
    """Least-squares slope of ys over xs (0 for fewer than 2 points)."""
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def analyse(samples, warmup, tolerance):
    steady = [s for s in samples if not s['final']][warmup:]
    if len(steady) < 2:
        raise SystemExit(f'need at least {warmup + 2} validations to judge (got {len(samples)}): '
                         'raise --iters or lower --val-freq')
    xs, ys = [s['iter'] for s in steady], [s['rss'] for s in steady]
    slope = fit_slope(xs, ys) * 1000
    growth = ys[-1] - ys[0]
    span = xs[-1] - xs[0]
    flat = abs(growth) <= tolerance and abs(slope) * span / 1000 <= tolerance
    return {'slope': slope, 'growth': growth, 'from': xs[0], 'to': xs[-1], 'flat': flat}


def render(samples, verdict, args, seconds):
    lines = ['| validation at iter | VmRSS (MiB) | VmHWM peak (MiB) | val PSNR (dB) | val time (s) |',
             '|---:|---:|---:|---:|---:|']
    for s in samples:
        it = f'{s["iter"]} (final)' if s['final'] else str(s['iter'])
        lines.append(f'| {it} | {s["rss"]:.1f} | {s["hwm"]:.1f} | {s["psnr"]:.3f} | {s["val_s"]:.2f} |')
    word = 'flat' if verdict['flat'] else 'NOT flat'
    lines += [
        '',
        f'Memory is **{word}**: from the validation at iter {verdict["from"]} to the one at iter '
        f'{verdict["to"]} VmRSS changed by {verdict["growth"]:+.1f} MiB; least-squares slope '
        f'{verdict["slope"]:+.2f} MiB per 1000 iterations (tolerance {args.tolerance_mib} MiB over the run, '
        f'first {args.warmup} validations = warm-up).',
        '',
        f'Measured with `{args.command}` ({args.iters} iterations, validation + checkpoint every '
        f'{args.val_freq}, CLSR-SRResNet num_feat {args.num_feat}, {seconds:.0f} s wall) on '
        f'{platform.machine()} / {os.cpu_count()} cores shared with other jobs, torch {torch.__version__}, '
        f'{torch.get_num_threads()} threads.',
    ]
    return '\n'.join(lines)


def write_doc(section):
    text = open(DOC).read() if osp.isfile(DOC) else '# Reliability\n'
    block = f'{BEGIN}\n{section}\n{END}'
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip('\n') + '\n\n## Long-run memory\n\n' + block + '\n'
    tmp = DOC + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, DOC)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--iters', type=int, default=2000, help='training iterations (default 2000)')
    parser.add_argument('--val-freq', type=int, default=100, help='validate (and checkpoint) every N iterations')
    parser.add_argument('--num-feat', type=int, default=16, help='backbone width of the tiny CLSR-SRResNet')
    parser.add_argument('--warmup', type=int, default=2, help='validations excluded from the leak judgement')
    parser.add_argument('--tolerance-mib', type=float, default=8.0, help='RSS growth still called flat')
    parser.add_argument('--no-doc', action='store_true', help='print only, do not write docs/reliability.md')
    args = parser.parse_args(argv)
    args.command = 'python benchmarks/long_run_memory.py ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.iters < 1 or args.val_freq < 1:
        parser.error('--iters and --val-freq must be >= 1')
    if not osp.isdir(SHARED_SET5):
        raise SystemExit(f'{SHARED_SET5} missing: ../shared/data must sit beside the repository')

    from clsr_arch.data.prep import prepare_benchmark
    from clsr_arch.models.clsr_model import CLSRModel
    import clsr_arch.train as train_script

    samples = []
    original = CLSRModel.validation

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        t0 = time.perf_counter()
        original(self, dataloader, current_iter, tb_logger, save_img)
        rss, hwm = proc_status_mib()
        total = self.opt['train']['total_iter']
        final = current_iter > total  # BasicSR's validation after the loop (its counter ran past)
        samples.append({'iter': min(current_iter, total), 'rss': rss, 'hwm': hwm, 'final': final,
                        'psnr': float(self.metric_results.get('psnr', float('nan'))),
                        'val_s': time.perf_counter() - t0})
        print(f'[long_run_memory] iter {current_iter}: VmRSS {rss:.1f} MiB, VmHWM {hwm:.1f} MiB', flush=True)

    CLSRModel.validation = validation
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='clsr_long_run_') as tmp:
        data = osp.join(tmp, 'Set5_x4')
        prepare_benchmark(SHARED_SET5, osp.join(data, 'HR'), osp.join(data, 'LR'), 4)
        opt_path = osp.join(tmp, 'long_run_memory.yml')
        with open(opt_path, 'w') as f:
            yaml.safe_dump(build_opt(data, args.iters, args.val_freq, args.num_feat), f)
        os.environ['CLSR_ROOT'] = tmp  # experiments/ go to the temporary folder
        saved_argv = sys.argv
        sys.argv = ['train.py', '-opt', opt_path]
        try:
            train_script.main()
        finally:
            sys.argv = saved_argv
            CLSRModel.validation = original
    seconds = time.perf_counter() - start

    verdict = analyse(samples, args.warmup, args.tolerance_mib)
    section = render(samples, verdict, args, seconds)
    print(section)
    if not args.no_doc:
        write_doc(section)
        print(f'wrote {DOC}')
    return verdict


if __name__ == '__main__':
    main()
