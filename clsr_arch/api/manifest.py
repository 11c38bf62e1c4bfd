"""What a batch run has written, so that a rerun skips it: one JSON-lines manifest per rank
(``manifest.rank<R>.jsonl``: image, box, label, output file, method, seconds, GFLOPs, ...), and
output images written atomically.

Order of a box's writes: the image goes to a hidden temporary file beside its final name, is
flushed to disk and renamed over the final name (``os.replace``: atomic), *then* its manifest
line is appended with one ``write`` and flushed. A SIGKILL at any moment leaves either no final
file, or a complete one without its line (the rerun writes it again, to the same name, through
the same temporary file), or both; a line cut by the kill is dropped when the manifest is
reopened. A box counts as done when it has a line and its file exists.
"""
import glob
import json
import os
import os.path as osp

import cv2

MANIFEST = 'manifest.rank{rank}.jsonl'


def read_records(folder):
    """Every complete record of every rank's manifest in ``folder`` (a cut last line is skipped)."""
    records = []
    for path in sorted(glob.glob(osp.join(folder, MANIFEST.format(rank='*')))):
        with open(path, 'rb') as f:
            for line in f.read().split(b'\n'):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # empty, or cut by a kill
                if isinstance(rec, dict) and 'file' in rec:
                    records.append(rec)
    return records


class Manifest:
    """This rank's manifest in ``folder``, opened for appending (a line cut by a kill is removed),
    and what every rank's manifests say is done."""

    def __init__(self, folder, rank=0):
        os.makedirs(folder, exist_ok=True)
        self.path = osp.join(folder, MANIFEST.format(rank=rank))
        self._drop_cut_line()
        self.done = {r['file']: r for r in read_records(folder)}  # by output file: one per box and method
        self._f = open(self.path, 'ab')

    def _drop_cut_line(self):
        if not osp.exists(self.path):
            return
        with open(self.path, 'rb+') as f:
            data = f.read()
            keep = data.rfind(b'\n') + 1
            if keep != len(data):
                f.truncate(keep)

    def is_done(self, file):
        return file in self.done and osp.isfile(file)

    def add(self, record):
        """Append one record (after its file was written), durably, in one write."""
        line = (json.dumps(record, sort_keys=True) + '\n').encode()
        os.write(self._f.fileno(), line)
        os.fsync(self._f.fileno())
        self.done[record['file']] = record

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def atomic_write_image(path, rgb, params=()):
    """Write RGB uint8 ``rgb`` to ``path`` (format from its extension) so that ``path`` is
    never a partial file: encode, write a hidden temporary file beside it, fsync, rename."""
    ok, data = cv2.imencode(osp.splitext(path)[1], rgb[:, :, ::-1], list(params))
    if not ok:
        raise OSError(f'{path}: OpenCV cannot encode this format')
    tmp = osp.join(osp.dirname(path), f'.{osp.basename(path)}.tmp')  # one writer per output name
    with open(tmp, 'wb') as f:
        f.write(data.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
