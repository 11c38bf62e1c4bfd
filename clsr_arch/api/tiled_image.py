"""An image read region by region (tiled TIFF / ``.npy``): :class:`TiledImage`, never whole in
memory; CLSR on the ROI-local context (issue 17)."""
import time

import numpy as np
import torch

from ..archs import roi as roi_ops
from ..archs.local_context import LazyContext
from ..data.image_io import DataError
from .budget import WHOLE_TILES
from .errors import LocalSRError
from .image import Image
from ..proposals import DEFAULT_ESTIMATOR, propose_tiled


class TiledImage(Image):
    """An image read region by region (a tiled, possibly pyramidal TIFF or a ``.npy``:
    :mod:`clsr_arch.data.lazy_image`), never whole in memory; opened by :meth:`LocalSR.open`.

    CLSR runs on the ROI-local context (issue 17, :mod:`clsr_arch.archs.local_context`): opening
    reads nothing; the first CLSR box reads and encodes the GCM's N windows; every box then reads
    its padded region and the PIM tiles its crop meets (``pim_tile`` LR pixels, computed with the
    PIM's receptive-field halo and kept in an LRU cache of ``pim_cache`` bytes shared by every
    box). The pixels equal those of the whole-context pass. ``pre_crop`` and ``bicubic`` read their
    boxes; ``post_crop`` runs the plain backbone over the whole-image SR tiles the boxes touch.
    """

    def __init__(self, model, lazy, name):
        self.model, self.lazy, self.name = model, lazy, name
        self.hw = lazy.hw
        self.levels = lazy.levels
        self.rgb = self.tensor = None
        self.state = None
        self.context_info = None
        self.last_run = None

    @property
    def encoded(self):
        return self.state is not None

    def context_choice(self, boxes):
        return 'done', 0.  # charged per box, inside its decode (the PIM tiles it computed: _clsr)

    def _check_open(self):
        if self.lazy is None:
            raise LocalSRError(f'{self.name}: this image was released; open it again')

    def encode(self):
        """Read and encode the GCM's windows now (the PIM's tiles follow the boxes); returns self."""
        self._check_open()
        if self.state is not None:
            return self
        m = self.model
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                self.state = m.net.encode_local(self.lazy, m.pim_tile, m.pim_cache, m.device)
        except DataError as err:
            raise LocalSRError(str(err)) from None
        self.context_info = {'seconds': time.perf_counter() - t0, 'mode': 'roi-local', 'pim_tile': m.pim_tile,
                             'pim_cache_bytes': m.pim_cache, 'gflops': m.cost.gcm(self.hw) / 1e9}
        return self

    def forget_context(self):
        self.state = None

    def release(self):
        self.forget_context()
        if self.lazy is not None:
            self.lazy.close()
        self.lazy = None

    def propose(self, n, size=48, estimator=DEFAULT_ESTIMATOR, max_overlap=0.):
        """Proposals computed on a pyramid level and refined on the full-resolution tiles only
        where they land (:func:`clsr_arch.proposals.propose_tiled`, issue 23); level-0 boxes."""
        self._check_open()
        try:
            return propose_tiled(self, n, size, estimator, max_overlap=max_overlap)
        except DataError as err:
            raise LocalSRError(str(err)) from None

    def read(self, y0, y1, x0, x1, level=0):
        """RGB uint8 pixels of a region of a level (the viewer's pyramid tiles)."""
        self._check_open()
        try:
            return self.lazy.read(y0, y1, x0, x1, level)
        except DataError as err:
            raise LocalSRError(str(err)) from None

    def roi_context_pixels(self, box):
        """PIM input pixels (its tiles grown by the halo) that one CLSR box needs on its own."""
        m = self.model
        if m.net.pim is None:
            return 0
        self.encode()
        x, y, w, h = box
        b = torch.tensor([[0, x, y, w, h]])
        pb, _ = roi_ops.place_inside(roi_ops.pad_boxes(b, roi_ops.padding_for(h, w, m.net.roi_pad, m.multiple)), b,
                                     self.hw, m.multiple)
        pim = self.state['pim']
        _, px, py, pw, ph = pb[0].tolist()
        return pim.input_pixels(pim.tiles_for([(px, py, pw, ph)]))

    def overview(self, boxes, max_side=1200):
        """``(rgb, scale, origin)`` for a picture of the image with ``boxes`` on it, read without
        reading the image: the smallest pyramid level whose longest side is at least
        ``max_side`` (``scale`` = level-0 pixels per pixel), or, when no level is that small,
        the level-0 region around the boxes (``origin`` = its top-left)."""
        self._check_open()
        for k in reversed(range(len(self.levels))):
            lh, lw = self.levels[k]
            if max(lh, lw) >= max_side or k == 0:
                if max(lh, lw) <= 4 * max_side:
                    return self.read(0, lh, 0, lw, k), self.hw[1] / lw, (0, 0)
                break
        H, W = self.hw
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        m = max(64, (x1 - x0) // 2, (y1 - y0) // 2)
        x0, y0, x1, y1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
        if max(x1 - x0, y1 - y0) > 4 * max_side:  # boxes far apart: one crop would be huge
            return np.full((max_side, max_side * W // max(H, 1) or 1, 3), 128, np.uint8), max(H, W) / max_side, (0, 0)
        return self.read(y0, y1, x0, x1), 1.0, (x0, y0)

    def _source(self):
        return LazyContext(self.lazy, self.model.device)

    def _crop(self, boxes):
        return self._source().crop(boxes)

    def _pixels(self, x, y, w, h):
        return self.read(y, y + h, x, x + w)

    def _context_paid(self):
        return True  # the context is paid per box, inside its decode (PIM tiles below)

    def _whole_option(self):
        return None, None  # never whole-image SR of an image opened not to be read whole

    def _post_crop(self, boxes, info):
        m = self.model
        tile = m.whole_tile(self.hw, boxes) or max(WHOLE_TILES[-1], min(WHOLE_TILES[0], max(self.hw)))
        return self._whole(m.base, boxes, info, tile)

    def super_resolve(self, boxes, method='clsr', output='uint8', plan=True, pad=None, only=None):
        try:
            return super().super_resolve(boxes, method, output, plan, pad, only)
        except DataError as err:  # a damaged tile found while reading
            raise LocalSRError(str(err)) from None

    def _clsr(self, boxes, plan, info, want=None):
        self.encode()
        pim = self.state.get('pim')
        before = (pim.computed, pim.pim_pixels) if pim is not None else (0, 0)
        outs = super()._clsr(boxes, plan, info, want)
        if pim is not None:  # the PIM tiles this call computed are its share of the context pass
            info['pim_tiles'] = pim.computed - before[0]
            info['gflops'] += self.model.cost.pim(pim.pim_pixels - before[1]) / 1e9
        return outs

