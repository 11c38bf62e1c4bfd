"""clsr: context-aware localized super-resolution (the LocalSR paper's CLSR) as a BasicSR plugin.

Importing this package first applies :mod:`clsr_arch.compat` (fixes for basicsr 1.4.2 on
today's torch/torchvision and on CPU), then imports every ``*_arch.py``, ``*_dataset.py`` and
``*_model.py`` below so that they register into BasicSR's ARCH/DATASET/MODEL registries,
the way HAT and Real-ESRGAN ship.
"""
import sys


def _cli_help_only():
    """``clsr-infer --help`` (or ``python -m clsr_arch.infer --help``): the command only prints
    its help, which must not wait ~4 s for torch and BasicSR (issue 22)."""
    argv = getattr(sys, 'orig_argv', sys.argv)
    if not any(a in ('-h', '--help') for a in argv[1:]):
        return False
    if argv and argv[0].endswith('clsr-infer') or sys.argv[0].endswith('clsr-infer'):
        return True
    return any(a == '-m' and b == 'clsr_arch.infer' for a, b in zip(argv, argv[1:]))


if not _cli_help_only():
    from . import compat  # noqa: F401  (must run before anything imports basicsr)
    from . import archs, data, models  # noqa: F401,E402  (registration side effects)

__version__ = '0.1.0'
