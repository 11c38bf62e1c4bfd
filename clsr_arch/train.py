"""Train with BasicSR's own pipeline: ``python clsr_arch/train.py -opt options/train/<yml>``.

Every BasicSR flag works (``--auto_resume``, ``--launcher pytorch``, ``--force_yml``, ``--debug``).

A run that fails to *start* (bad dataset/network option, unreadable checkpoint: anything before
the first iteration) leaves no half-made experiment: the folders it had just made under
``experiments/`` and ``tb_logger/`` are removed and a previous run that BasicSR had renamed to
``*_archived_<time>`` is put back (docs/reliability.md).
"""
import glob
import os
import os.path as osp
import shutil
import sys

if __package__ in (None, ''):  # run as a script: make the repo importable
    sys.path.insert(0, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))

import clsr_arch  # noqa: E402,F401  (compat fixes + registrations, before basicsr runs)
import basicsr.train as _bsr_train  # noqa: E402
import basicsr.utils.misc as _bsr_misc  # noqa: E402
from basicsr.train import train_pipeline  # noqa: E402

_MKDIR_AND_RENAME, _MESSAGE_LOGGER = _bsr_misc.mkdir_and_rename, _bsr_train.MessageLogger  # originals


class StartGuard:
    """Records the folders ``train_pipeline`` makes until training starts, to undo them if the
    start fails (BasicSR makes them before building datasets and model)."""

    def __init__(self):
        self.made = []  # (path, archived previous folder or None)
        self.started = False

    def install(self):
        def mkdir_and_rename(path):
            before = set(glob.glob(glob.escape(path) + '_archived_*'))
            _MKDIR_AND_RENAME(path)
            archived = sorted(set(glob.glob(glob.escape(path) + '_archived_*')) - before)
            self.made.append((path, archived[-1] if archived else None))

        def message_logger(*args, **kwargs):  # created right after datasets and model: started
            self.started = True
            return _MESSAGE_LOGGER(*args, **kwargs)

        _bsr_misc.mkdir_and_rename = _bsr_train.mkdir_and_rename = mkdir_and_rename
        _bsr_train.MessageLogger = message_logger

    def undo(self):
        """Remove what a failed start made; returns a note for the user (empty if nothing)."""
        notes = []
        for path, archived in reversed(self.made):
            if osp.isdir(path):
                shutil.rmtree(path)
                notes.append(f'removed {path}')
            if archived and not osp.exists(path):
                os.rename(archived, path)
                notes.append(f'restored {path} from {archived}')
        return '; '.join(notes)


def main():
    # experiments/, tb_logger/ and results/ go under the repo root, as in BasicSR and HAT;
    # CLSR_ROOT moves them elsewhere (the tests use it to keep the checkout clean).
    root_path = os.environ.get('CLSR_ROOT') or osp.abspath(osp.join(__file__, osp.pardir, osp.pardir))
    guard = StartGuard()
    guard.install()
    try:
        train_pipeline(root_path)
    except BaseException:
        if not guard.started:
            note = guard.undo()
            if note:
                print(f'clsr: training failed before it started; {note}', file=sys.stderr, flush=True)
        raise


if __name__ == '__main__':
    main()
