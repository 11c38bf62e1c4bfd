"""The errors a user of the API can cause; a leaf module (imports nothing of clsr), so any module
may raise them without importing the API itself (no import cycle, e.g. with :mod:`clsr_arch.selective`)."""


class LocalSRError(ValueError):
    """A user error (bad input, options, weights, memory budget); the message names the thing."""


class MemoryBudgetError(LocalSRError):
    """A pass does not fit the memory budget and tiling is disabled (or cannot help)."""
