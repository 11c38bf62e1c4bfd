"""Memory budgets: how much a network pass needs, how much the machine has, how much we used.

Not from the paper: what makes LocalSR usable on images whose whole-image SR does not fit in
memory (a 3000x4000 LR image needs ~24 GB for CARN-M post-crop on the CPU).

* :func:`peak_bytes` -- peak bytes of the tensors alive during a call, counted on the ``meta``
  device (nothing is computed or allocated): every op's fresh output is added when created and
  removed when Python frees it. Allocator slack, oneDNN scratch and the interpreter are not
  in it; benchmarks/large_images.py compares it with measured RSS.
* :func:`linear_peak` -- the same for an input of any size, from two counted sizes (a
  convolutional pass is affine in the pixel count; fitting keeps huge sizes cheap to estimate).
* :func:`available_bytes`, :func:`parse_bytes`, :func:`peak_rss_bytes`, :func:`format_bytes`.
"""
import re
import resource
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of fresh (non-view, non-in-place) op outputs while they are alive."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in inputs and not t._is_view():
                nbytes = t.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, nbytes)
        return out


def peak_bytes(fn, *args, **kwargs):
    """Peak bytes of tensors created (and alive at once) during ``fn(*args, **kwargs)`` under
    ``torch.no_grad()``; run it on meta tensors and modules to count without computing."""
    mode = _LiveBytes()
    with torch.no_grad(), mode:
        out = fn(*args, **kwargs)
    del out
    return mode.peak


def linear_peak(fn_of_hw, hw, probes=((512, 512), (1024, 768))):
    """Peak bytes of ``fn_of_hw(h, w)`` at ``hw`` (``fn_of_hw`` builds its own meta inputs and
    returns :func:`peak_bytes`): counted at ``hw`` itself up to the larger probe's area, beyond
    it from an affine fit ``a * h * w + b`` over the two probes. (Counting on meta costs the
    same at any size, except SwinIR, whose attention masks are built on the CPU at full size;
    small sizes are not affine: there the GCM's fixed windows, not the pixels, set the peak.)"""
    (h0, w0), (h1, w1) = probes
    if hw[0] * hw[1] <= h1 * w1:
        return fn_of_hw(*hw)
    p0, p1 = fn_of_hw(h0, w0), fn_of_hw(h1, w1)
    a = (p1 - p0) / (h1 * w1 - h0 * w0)
    b = p0 - a * h0 * w0
    return int(a * hw[0] * hw[1] + max(b, 0))


def available_bytes():
    """The machine's available memory (``MemAvailable`` of /proc/meminfo; elsewhere physical
    memory via ``os.sysconf``)."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


_UNITS = {'': 1, 'b': 1, 'k': 2 ** 10, 'm': 2 ** 20, 'g': 2 ** 30, 't': 2 ** 40}


def parse_bytes(text):
    """``'4G'``, ``'512M'``, ``'1.5GiB'``, ``'2000000'`` -> bytes (binary units)."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        m = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(i?[bB])?\s*', str(text))
        if not m:
            raise ValueError(f'memory size {text!r}: expected a number with an optional unit K, M, G or T '
                             '(binary), e.g. 4G or 512M')
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f'memory size {text!r} must be > 0')
    return value


def format_bytes(n):
    for unit, size in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
        if abs(n) >= size:
            return f'{n / size:.2f} {unit}'
    return f'{int(n)} B'


def peak_rss_bytes():
    """This process's peak resident set size so far (``ru_maxrss``, Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
