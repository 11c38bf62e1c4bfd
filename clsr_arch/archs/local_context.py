"""ROI-local context (issue 17): CLSR's shared context pass (LocalSR paper Sec. 3.4) restricted
to what an ROI reads, so that an ROI of a gigapixel image costs about what it costs on a small one.

What a CLSR decode reads from the context pass (``CLSR.decode``):

* the padded ROI's pixels (the base branch);
* the PIM's per-stage features at the padded ROI (Sec. 3.3). The PIM is a stack of stride-1
  convolutions: its feature at a pixel depends on the input within ``pim_halo`` pixels
  (:func:`clsr_arch.archs.tiling.pim_halo`, checked against the gradient's support in the
  tests). :class:`PIMTiles` computes the features of a fixed grid of tiles on demand, each from
  its tile grown by that halo, exactly as the bounded-memory pass of issue 12 does, and keeps them
  in a byte-bounded LRU cache shared by every ROI of the image;
* the GCM's keys and values (Sec. 3.2): N windows of r x r pixels, chosen by
  :func:`clsr_arch.archs.roi.window_grid` from the image size alone, each encoded on its own by
  the backbone's first stages -- so only those N small regions are read.

The result equals the whole-context pass up to float summation order (tested on every backbone
for ROIs at corners, edges and inside). The image itself is anything with ``hw`` and
``read(y0, y1, x0, x1) -> uint8 [h, w, 3]`` (:class:`clsr_arch.data.lazy_image.LazyImage`).
"""
import time
from collections import OrderedDict

import torch

from . import roi as roi_ops
from .tiling import as_float_image, pim_halo

__all__ = ['LazyContext', 'PIMTiles', 'crop_context']


class LazyContext:
    """``state['context']`` of an ROI-local pass: a ``[1, 3, H, W]`` uint8 context that is never
    in memory; :meth:`crop` reads the regions asked for."""

    dtype = torch.uint8

    def __init__(self, image, device='cpu'):
        self.image = image
        self.shape = torch.Size([1, 3, *image.hw])
        self.device = torch.device(device)
        self.pixels_read = 0  # LR pixels read so far (what an ROI costs in I/O)
        self.read_seconds = 0.  # time spent reading them (file + decompression)

    def region(self, y0, y1, x0, x1):
        """uint8 ``[3, y1-y0, x1-x0]`` on the CPU."""
        t0 = time.perf_counter()
        pixels = self.image.read(y0, y1, x0, x1)
        self.read_seconds += time.perf_counter() - t0
        self.pixels_read += (y1 - y0) * (x1 - x0)
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def crop(self, boxes):
        """uint8 ``[R, 3, h, w]`` of ``boxes`` (``roi.crop`` semantics), on ``device``."""
        return roi_ops.slab_crop(self.region, self.image.hw, boxes.cpu()).to(self.device)


def crop_context(context, boxes):
    """Crops of ``boxes`` from a context tensor or a :class:`LazyContext`."""
    if isinstance(context, LazyContext):
        return context.crop(boxes)
    return roi_ops.crop(context, boxes)


class PIMTiles:
    """``state['pim']`` of an ROI-local pass: the PIM's per-stage features over a grid of
    ``tile x tile`` tiles, computed when an ROI first needs them and kept in an LRU cache of at
    most ``max_bytes`` (the least recently used tiles are dropped, and recomputed if needed again).

    ``crop(boxes)`` gives what ``roi.crop`` gives on the whole pass's per-stage tensors.
    ``computed`` / ``hits`` count tile computations and cache hits.
    """

    def __init__(self, pim, context, tile=128, max_bytes=256 * 2**20):
        if tile < 1:
            raise ValueError(f'PIM tile must be >= 1, got {tile}')
        self.pim, self.context, self.tile = pim, context, int(tile)
        self.hw = tuple(context.shape[-2:])
        self.halo = pim_halo(pim)
        self.channels = [pim.channels] * len(pim.blocks)
        self.tile_bytes = sum(self.channels) * self.tile * self.tile * 4
        # at least the tiles one ROI can span at once stay, whatever the budget says
        self.max_bytes = max(int(max_bytes), 4 * self.tile_bytes)
        self.cache = OrderedDict()  # (ty, tx) -> [sum(c'), th, tw] on the context's device
        self.computed = self.hits = 0
        self.pim_pixels = 0  # input pixels the PIM ran on (tile + halo), for FLOPs
        self.pim_seconds = 0.  # time in the PIM itself (reading its input not included)

    @property
    def cached_bytes(self):
        return sum(t.numel() * 4 for t in self.cache.values())

    def _spans(self, ty, tx):
        """The tile's core ``(y0, y1, x0, x1)`` and the PIM's input: the core grown by the halo,
        clipped at the image border."""
        h, w = self.hw
        t, halo = self.tile, self.halo
        y0, y1, x0, x1 = ty * t, min(h, ty * t + t), tx * t, min(w, tx * t + t)
        return (y0, y1, x0, x1), (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))

    def input_pixels(self, tiles):
        """PIM input pixels of computing ``tiles`` (for FLOPs)."""
        total = 0
        for ty, tx in tiles:
            _, (ya, yb, xa, xb) = self._spans(ty, tx)
            total += (yb - ya) * (xb - xa)
        return total

    def _tile(self, ty, tx):
        key = (ty, tx)
        if key in self.cache:
            self.cache.move_to_end(key)
            self.hits += 1
            return self.cache[key]
        (y0, y1, x0, x1), (ya, yb, xa, xb) = self._spans(ty, tx)
        x = self.context.region(ya, yb, xa, xb).unsqueeze(0).to(self.context.device)
        t0 = time.perf_counter()
        feats = self.pim.encode(as_float_image(x))  # clipped at the border: zero padding as on the whole image
        core = torch.cat([f[0, :, y0 - ya:y1 - ya, x0 - xa:x1 - xa] for f in feats], 0)
        self.pim_seconds += time.perf_counter() - t0
        self.computed += 1
        self.pim_pixels += (yb - ya) * (xb - xa)
        self.cache[key] = core
        while len(self.cache) > 1 and self.cached_bytes > self.max_bytes:
            self.cache.popitem(last=False)
        return core

    def region(self, y0, y1, x0, x1):
        """``[sum(c'), y1-y0, x1-x0]`` features, assembled from the tiles the region meets."""
        t = self.tile
        ty0, ty1, tx0, tx1 = y0 // t, (y1 - 1) // t, x0 // t, (x1 - 1) // t
        if ty0 == ty1 and tx0 == tx1:
            return self._tile(ty0, tx0)[:, y0 - ty0 * t:y1 - ty0 * t, x0 - tx0 * t:x1 - tx0 * t]
        out = None
        for ty in range(ty0, ty1 + 1):
            for tx in range(tx0, tx1 + 1):
                f = self._tile(ty, tx)
                if out is None:
                    out = f.new_empty((f.shape[0], y1 - y0, x1 - x0))
                ry0, ry1 = max(y0, ty * t), min(y1, ty * t + f.shape[1])
                rx0, rx1 = max(x0, tx * t), min(x1, tx * t + f.shape[2])
                out[:, ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0] = f[:, ry0 - ty * t:ry1 - ty * t, rx0 - tx * t:rx1 - tx * t]
        return out

    def crop(self, boxes):
        """Per-stage crops ``[R, c_i, h, w]`` of ``boxes`` (``LongTensor[R, 5]``, one size)."""
        crops = roi_ops.slab_crop(self.region, self.hw, boxes.cpu())
        return list(torch.split(crops, self.channels, dim=1))

    def tiles_for(self, boxes):
        """The (ty, tx) tiles a crop of ``boxes`` (``(x, y, w, h)`` inside the image) reads."""
        t = self.tile
        return sorted({(ty, tx) for x, y, w, h in boxes
                       for ty in range(y // t, (y + h - 1) // t + 1) for tx in range(x // t, (x + w - 1) // t + 1)})

    def clear(self):
        self.cache.clear()
