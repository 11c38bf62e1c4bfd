"""Export a shipped model from a training checkpoint (weights/README.md): the GCM/PIM from the EMA
weights (``params_ema``, what the validation scored) and the base from ``params`` (frozen by
``train.fix_base``: the official weights bit for bit; the EMA of a constant drifts by float
rounding, ~1e-6), saved as ``{'params': state_dict}`` atomically. ``--trained-base``: the base
was trained too (``train.fix_base: false``, the real-world models of issue 21): every weight from
the EMA. A plain backbone's checkpoint (no ``base.`` keys) is exported from the EMA as is.

    .venv/bin/python -m clsr_arch.utils.export_weights experiments/CLSR_IMDN_x4_ship/models/net_g_3000.pth \\
        weights/CLSR_IMDN_x4.pth
"""
import argparse

from .checkpoint import atomic_save, safe_load


def export(src, dst, trained_base=False):
    ckpt = safe_load(src)
    if 'params_ema' not in ckpt or 'params' not in ckpt:
        raise SystemExit(f'export_weights: {src} has no params_ema + params (train with ema_decay > 0)')
    ema, raw = ckpt['params_ema'], ckpt['params']
    sd = {k: (raw if k.startswith('base.') and not trained_base else ema)[k] for k in ema}
    atomic_save({'params': sd}, dst)
    return sd


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('checkpoint')
    p.add_argument('out')
    p.add_argument('--trained-base', action='store_true', help='the base was trained too: all weights from the EMA')
    args = p.parse_args(argv)
    sd = export(args.checkpoint, args.out, args.trained_base)
    print(f'{args.out}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()):,} parameters')


if __name__ == '__main__':
    main()
