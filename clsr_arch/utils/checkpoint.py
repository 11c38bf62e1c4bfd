"""Checkpoint files that survive a kill, and loading that never unpickles arbitrary code.

* :func:`atomic_save` writes to a temporary file in the same folder, fsyncs it and renames it
  over the target, so a kill during a save leaves either the old file or the new one, never a
  truncated one (auto-resume would otherwise pick a half-written ``.state``).
* :func:`safe_load` always uses ``torch.load(weights_only=True)`` with an allow-list of exactly
  the non-tensor types that BasicSR's training states hold, and says which file failed and why.
"""
import collections
import os
import tempfile

import torch

# Types found in BasicSR 1.4.2 training states besides tensors and builtins:
# MultiStepRestartLR keeps its milestones in a collections.Counter.
SAFE_GLOBALS = [collections.Counter, collections.OrderedDict, collections.defaultdict]
torch.serialization.add_safe_globals(SAFE_GLOBALS)

TMP_PREFIX = '.tmp-'


class CheckpointError(RuntimeError):
    """A checkpoint could not be read; the message names the file and the cause."""


def atomic_save(obj, path):
    """``torch.save(obj, path)`` that is all-or-nothing: temp file, fsync, rename."""
    folder = os.path.dirname(os.path.abspath(path))
    # The temporary name does not end in .pth/.state, so scandir(suffix=...) never lists it.
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + '.', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def safe_load(path, map_location='cpu'):
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle of a disallowed type, ...
        raise CheckpointError(f'cannot load checkpoint {path!r}: {type(err).__name__}: {err}') from err


def is_loadable(path):
    """True if ``path`` is a complete checkpoint (used to skip damaged files on auto-resume)."""
    try:
        safe_load(path)
    except CheckpointError:
        return False
    return True
