"""The context pass in bounded memory (LocalSR paper Sec. 3.4's shared context pass, run over
tiles): the PIM branch over a large LR context, tile by tile, into a feature store.

The PIM (:mod:`.pim`) is a stack of stride-1 convolutions, so its feature at a pixel depends on
the input within :func:`pim_halo` pixels of it. Each tile is run on the tile grown by that halo
(clipped at the image border, where the convolutions zero-pad exactly as on the whole image), and
only the tile's own pixels are kept: the features equal the untiled pass up to float summation
order (tested on every backbone, max abs difference <= 1e-5).

Stores (what ``state['pim']`` holds after a tiled pass):

* a list of ``[1, c', H, W]`` tensors (:class:`MemoryFeatures` fills them), the same object the
  untiled pass returns;
* :class:`DiskFeatures`: one float32 file laid out ``[H, W, S * c']`` in a temporary folder,
  written one band of tile rows at a time with plain ``write`` (the page cache, not the process,
  holds it) and read back per ROI through a read-only memory map (only the pages a ROI's
  crop touches are read). For contexts whose features do
  not fit the memory budget (a 100-megapixel CARN-M context has 9.6 GB of them).

The GCM needs no tiling: it encodes N fixed-size windows drawn from the whole image.
"""
import os
import shutil
import tempfile

import numpy as np
import torch

from . import roi as roi_ops


def as_float_image(x):
    """An image tensor in [0, 1]: uint8 tensors are divided by 255 (the same float32 values as
    ``img.astype(np.float32) / 255.``), float tensors pass through."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.)
    return x


def pim_halo(pim):
    """LR pixels of context a PIM feature depends on, on each side: the sum of the
    convolutions' reach (``dilation * (kernel - 1) / 2``) along the branch (head + two convs per
    slim block). Checked against the gradient's support in tests/test_tiling.py."""
    convs = [pim.head] + [conv for block in pim.blocks for conv in (block.conv1, block.conv2)]
    reach = 0
    for conv in convs:
        if conv.stride != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError(f'pim_halo: expected square stride-1 convolutions, got {conv}')
        reach += conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
    return reach


def spans(size, tile):
    """``[(start, stop), ...]`` covering ``range(size)`` with pieces of at most ``tile``."""
    if tile < 1:
        raise ValueError(f'tile must be >= 1, got {tile}')
    return [(s, min(size, s + tile)) for s in range(0, size, tile)]


class MemoryFeatures:
    """Tile writer into per-stage ``[1, c', H, W]`` tensors (the untiled pass's layout)."""

    def __init__(self, h, w, channels, device='cpu'):
        self.tensors = [torch.empty(1, c, h, w, device=device) for c in channels]

    def write(self, y0, x0, feats):
        for t, f in zip(self.tensors, feats):
            t[:, :, y0:y0 + f.shape[2], x0:x0 + f.shape[3]] = f

    def end_band(self):
        pass

    def result(self):
        return self.tensors


class DiskFeatures:
    """PIM features of one context in a temporary float32 file ``[H, W, sum(c')]``.

    Tiles are gathered into a band buffer (one row of tiles, the full width) that is written as
    one contiguous block; ``crop(boxes)`` gives what ``roi.crop`` gives on the in-memory tensors
    (reflection past the border included); ``close()`` deletes the file (also done when the
    object is collected).
    """

    def __init__(self, h, w, channels, folder=None):
        self.h, self.w, self.channels = int(h), int(w), list(channels)
        self.total = sum(self.channels)
        self.dir = tempfile.mkdtemp(prefix='clsr-features-', dir=folder)
        self.path = os.path.join(self.dir, 'pim.f32')
        self.nbytes = self.h * self.w * self.total * 4
        with open(self.path, 'wb') as f:
            f.truncate(self.nbytes)
        self._map = None
        self._band, self._band_y0 = None, 0

    def write(self, y0, x0, feats):
        bh = feats[0].shape[2]
        if self._band is None:
            self._band, self._band_y0 = np.empty((bh, self.w, self.total), np.float32), y0
        c0 = 0
        for f in feats:
            c = f.shape[1]
            self._band[:, x0:x0 + f.shape[3], c0:c0 + c] = f[0].permute(1, 2, 0).cpu().numpy()
            c0 += c

    def end_band(self):
        if self._band is None:
            return
        with open(self.path, 'r+b') as f:
            f.seek(self._band_y0 * self.w * self.total * 4)
            f.write(self._band.tobytes())
        self._band = None

    def result(self):
        return self

    def _mapped(self):
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.float32, mode='r', shape=(self.h, self.w, self.total))
        return self._map

    def crop(self, boxes):
        """Per-stage crops ``[R, c_i, h, w]`` of ``boxes`` (``LongTensor[R, 5]``, one size)."""
        fmap = self._mapped()

        def read(r0, r1, c0, c1):  # copy: the map stays read-only
            return torch.from_numpy(np.array(fmap[r0:r1, c0:c1])).permute(2, 0, 1)
        crops = roi_ops.slab_crop(read, (self.h, self.w), boxes)
        return list(torch.split(crops, self.channels, dim=1))

    def close(self):
        self._map = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass


def crop_features(feats, boxes, device):
    """Per-stage PIM crops of ``boxes`` from a list of tensors, or from a store with a ``crop``
    method (:class:`DiskFeatures`, ``local_context.PIMTiles``: read on the CPU, then moved to
    ``device``, where the decode runs)."""
    if not isinstance(feats, list):
        return [c.to(device) for c in feats.crop(boxes.cpu())]
    return [roi_ops.crop(f, boxes) for f in feats]


def encode_pim_tiled(pim, context, tile, store='memory', folder=None, progress=None):
    """The PIM's per-stage features of ``context`` (``[1, 3, H, W]``, uint8 or float in [0, 1])
    computed over ``tile x tile`` tiles with a :func:`pim_halo` halo.

    ``store``: ``'memory'`` (a list of tensors, as ``pim.encode``) or ``'disk'``
    (:class:`DiskFeatures` in ``folder``, default the system temp folder). ``progress``: a
    callable ``progress(done_tiles, total_tiles)``.
    """
    if context.dim() != 4 or context.shape[0] != 1:
        raise ValueError(f'tiled context pass: one context at a time ([1, 3, H, W]), got {tuple(context.shape)}')
    _, _, h, w = context.shape
    halo = pim_halo(pim)
    channels = [pim.channels] * len(pim.blocks)
    if store == 'memory':
        out = MemoryFeatures(h, w, channels, context.device)
    elif store == 'disk':
        out = DiskFeatures(h, w, channels, folder)
    else:
        raise ValueError(f"store must be 'memory' or 'disk', got {store!r}")
    rows, cols = spans(h, tile), spans(w, tile)
    done = 0
    for y0, y1 in rows:
        ya, yb = max(0, y0 - halo), min(h, y1 + halo)
        for x0, x1 in cols:
            xa, xb = max(0, x0 - halo), min(w, x1 + halo)
            feats = pim.encode(as_float_image(context[:, :, ya:yb, xa:xb]))
            out.write(y0, x0, [f[:, :, y0 - ya:y1 - ya, x0 - xa:x1 - xa] for f in feats])
            done += 1
            if progress is not None:
                progress(done, len(rows) * len(cols))
        out.end_band()
    return out.result()
