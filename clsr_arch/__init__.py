"""clsr: context-aware localized super-resolution (the LocalSR paper's CLSR) as a BasicSR plugin.

Importing this package first applies :mod:`clsr_arch.compat` (fixes for basicsr 1.4.2 on
today's torch/torchvision and on CPU), then imports every ``*_arch.py``, ``*_dataset.py`` and
``*_model.py`` below so that they register into BasicSR's ARCH/DATASET/MODEL registries,
the way HAT and Real-ESRGAN ship.
"""
from . import compat  # noqa: F401  (must run before anything imports basicsr)
from . import archs, data, models  # noqa: F401,E402  (registration side effects)

__version__ = '0.1.0'
