"""Peak memory of CLSR inference against the context size (LocalSR paper Sec. 3.4: the context is
encoded once -- PIM features over the whole context, GCM keys of N windows -- and shared by the
ROIs; this checks that the shared pass stays affordable up to an 8K image).

Each (backbone, context size) runs in a fresh subprocess: build the network, record the baseline,
then one shared context pass (``encode_context``) and the decode of one 24x24 ROI under
``torch.no_grad()``. On CPU the peak is the kernel's peak-RSS counter (``VmHWM``, the number
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` reports) after resetting it (``/proc/self/clear_refs``)
once imports, network construction and a warm-up on a context of twice the ROI are done, minus
the resident size at that point: without the reset the counter still holds import transients and,
in a subprocess, the parent's RSS inherited through fork + exec. On CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated before the pass. The context
tensor itself (12 bytes per LR pixel) is included in the peak. Targets: within 4 GiB on CPU up
to a 2048x2048 LR context, and growing no faster than linearly in context pixels (bytes per
context pixel printed for each size, the local growth exponent d log(peak) / d log(pixels)
between consecutive sizes, and a least-squares line peak = a + b * pixels).

    .venv/bin/python benchmarks/memory.py                     # SRResNet, CARN_M, SwinIR-light
    .venv/bin/python benchmarks/memory.py --backbones all
    .venv/bin/python benchmarks/memory.py --quick --out /tmp/x.md
"""
import argparse
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SECTION = 'memory'
GIB = 1024 ** 3
BUDGET = 4 * GIB
SIZES = [('BSD100', (144, 216)), ('Test2K', (528, 816)), ('1024^2', (1024, 1024)), ('1536^2', (1536, 1536)),
         ('2048^2 (8K HR)', (2048, 2048))]
QUICK_SIZES = [('tiny-a', (32, 40)), ('tiny-b', (64, 80)), ('tiny-c', (128, 160))]


def child(args):
    """Runs in the fresh subprocess: one measurement, printed as a JSON line."""
    import resource

    sys.path.insert(0, HERE)
    import torch

    import common

    torch.set_num_threads(args.threads)
    device = common.check_device(args.device)
    h, w = (int(v) for v in args.hw.split('x'))
    net = common.build_clsr(args.backbone, args.quick, device)
    box = common.centre_box((h, w), (args.roi, args.roi))
    # warm-up on a context of twice the ROI: one-time library buffers (thread pools, kernels)
    # are not context memory; its own working set is tiny and freed before the baseline
    side = 2 * args.roi
    with torch.no_grad():
        net.decode(net.encode_context(torch.rand(1, 3, side, side, device=device)),
                   common.centre_box((side, side), (args.roi, args.roi)))
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # reset the peak-RSS high-water mark to the current RSS: otherwise it still holds import
        # transients and, after fork + exec, the parent's RSS (ru_maxrss keeps those too)
        _reset_peak_rss()
        base = _status_kib('VmRSS')
    with torch.no_grad():
        context = torch.rand(1, 3, h, w, device=device)
        state = net.encode_context(context)
        sr = net.decode(state, box)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = max(_status_kib('VmHWM'), _status_kib('VmRSS')) - base
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    state_bytes = sum(t.numel() * t.element_size() for t in _tensors(state))
    print(json.dumps({'peak': peak, 'state': state_bytes, 'out': list(sr.shape),
                      'ru_maxrss_minus_base': None if device.type == 'cuda' else maxrss}))


def _status_kib(key):
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'memory benchmark: no {key} in /proc/self/status (CPU mode needs Linux)')


def _reset_peak_rss():
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM (what ru_maxrss reports) to VmRSS."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError as e:
        raise RuntimeError(f'memory benchmark: cannot reset the peak RSS via /proc/self/clear_refs ({e})') from e


def _tensors(obj):
    import torch
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def measure(name, hw, args):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', '--backbone', name, '--hw', f'{hw[0]}x{hw[1]}',
           '--device', args.device, '--threads', str(args.threads), '--roi', str(args.roi)]
    if args.quick:
        cmd.append('--quick')
    env = {**os.environ, 'OMP_NUM_THREADS': str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f'memory child for {name} {hw[0]}x{hw[1]} failed (rc {proc.returncode}):\n'
                           f'{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fit(points):
    """Least squares ``peak = a + b * pixels`` over (pixels, peak) points."""
    n = len(points)
    mx = sum(p for p, _ in points) / n
    my = sum(m for _, m in points) / n
    sxx = sum((p - mx) ** 2 for p, _ in points)
    b = sum((p - mx) * (m - my) for p, m in points) / sxx if sxx else 0.0
    return my - b * mx, b


def growth_exponents(points):
    """d log(peak) / d log(pixels) between consecutive sizes (1 = linear)."""
    out = [None]
    for (p0, m0), (p1, m1) in zip(points, points[1:]):
        out.append(math.log(m1 / m0) / math.log(p1 / p0) if m0 > 0 and m1 > 0 else float('nan'))
    return out


def main(argv=None):
    sys.path.insert(0, HERE)
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--quick', action='store_true', help='tiny backbones and contexts (tests)')
    parser.add_argument('--out', default=None, help='markdown file whose marked section is (re)written')
    parser.add_argument('--backbones', default='default', help='comma list, "default" or "all"')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--roi', type=int, default=None, help='ROI side (default 24; --quick: 8)')
    parser.add_argument('--sizes', default=None,
                        help='comma list of HxW LR context sizes (default: BSD100 .. 2048x2048)')
    parser.add_argument('--json', default=None)
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--backbone', help=argparse.SUPPRESS)
    parser.add_argument('--hw', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.roi = args.roi or (8 if args.quick else 24)
    if args.child:
        return child(args)

    import common
    common.check_device(args.device)
    out = args.out or common.DOC
    names = common.parse_backbones(args.backbones, args.quick)
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = []
        for s in args.sizes.split(','):
            try:
                h, w = (int(v) for v in s.lower().split('x'))
            except ValueError:
                raise ValueError(f'--sizes: {s!r} is not HxW (e.g. 1024x1024)') from None
            sizes.append((f'{h}x{w}', (h, w)))
    results = {}
    for name in names:
        results[name] = []
        for label, hw in sizes:
            r = measure(name, hw, args)
            r.update(label=label, hw=hw, pixels=hw[0] * hw[1])
            results[name].append(r)
            print(f'{name:12s} {label:15s} {hw[0]}x{hw[1]}: peak {r["peak"] / 2**20:8.1f} MiB  '
                  f'({r["peak"] / r["pixels"]:.0f} B/px; shared state {r["state"] / 2**20:.1f} MiB)', flush=True)

    what = ('torch.cuda.max_memory_allocated' if args.device == 'cuda'
            else 'peak RSS = VmHWM after a reset, i.e. ru_maxrss')
    text = [f'Produced by `{common.command_line(__file__, argv)}` on {common.env_line(args.device, args.threads)}. '
            f'Peak memory ({what}, minus the resident size after imports, building the network and a '
            f'warm-up on a 2x-ROI context) of one CLSR '
            f'inference: shared context pass + decode of one {args.roi}x{args.roi} ROI, x4, '
            f'`torch.no_grad()`, every size in a fresh subprocess. "state" = the tensors the shared pass '
            'keeps for all ROIs (context, PIM stage features, GCM keys/values). Growth exponent: '
            'd log(peak) / d log(pixels) from the previous size (1 = linear).', '']
    header = ['backbone', 'context (LR)', 'pixels', 'peak MiB', 'bytes / context px', 'growth exponent',
              'state MiB', f'within {BUDGET // GIB} GiB']
    rows, summary = [], []
    for name, rs in results.items():
        pts = [(r['pixels'], r['peak']) for r in rs]
        exps = growth_exponents(pts)
        a, b = fit(pts)
        for r, e in zip(rs, exps):
            rows.append([name, f'{r["label"]} {r["hw"][0]}x{r["hw"][1]}', r['pixels'], f'{r["peak"] / 2**20:.1f}',
                         f'{r["peak"] / r["pixels"]:.0f}', '-' if e is None else f'{e:.2f}',
                         f'{r["state"] / 2**20:.1f}', 'yes' if r['peak'] <= BUDGET else 'NO'])
        worst = max(e for e in exps[1:] if e is not None) if len(exps) > 1 else float('nan')
        ok_budget = all(r['peak'] <= BUDGET for r in rs)
        summary.append(f'- {name}: fit peak = {a / 2**20:.1f} MiB + {b:.0f} B x pixels; largest size '
                       f'{rs[-1]["peak"] / 2**30:.2f} GiB ({"within" if ok_budget else "OVER"} {BUDGET // GIB} GiB); '
                       f'largest growth exponent {worst:.2f} '
                       f'({"no faster than linear" if worst <= 1.1 else "FASTER than linear"})')
    body = '\n'.join(text + [common.markdown_table(header, rows), ''] + summary)
    print(body)
    common.write_section(out, SECTION, body)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == '__main__':
    main()
