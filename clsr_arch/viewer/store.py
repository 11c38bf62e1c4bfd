"""The images a viewer serves, by id, with their context passes cached under a memory bound.

Not from the paper: the paper's Sec. 3.4 shared context pass is what makes an interactive
viewer possible -- encode an image once, then every box only decodes. This store keeps the
encoded contexts of the most recently used images within ``cache_bytes`` (their PIM features
and GCM keys; least recently used evicted first, its pixels kept so it re-encodes on the next
box) and post-crop's whole HR output once a box asked for it (when it runs untiled).
"""
import itertools
import os.path as osp
import threading
import time
from collections import OrderedDict

from ..api import Image, LocalSRError, TiledImage, load_image
from ..data.lazy_image import is_lazy_path
from ..data.prep import bicubic_lr, mod_crop

TILE = 256  # LR pixels of a pyramid tile the page asks for (images read region by region)


class ViewerImage:
    """One served image: id, name, LR (RGB uint8), HR ground truth (``--degrade``) or None."""

    def __init__(self, image_id, name, image, hr):
        self.id, self.name, self.image, self.hr = image_id, name, image, hr
        self.lock = threading.Lock()  # one computation at a time per image (two tabs, one context)
        self.post_crop = None         # uint8 [sH, sW, 3] whole-image SR (app.py: when it runs untiled)

    @property
    def hw(self):
        return self.image.hw

    @property
    def tiled(self):
        return isinstance(self.image, TiledImage)

    def cached_bytes(self, model):
        """What keeping this image's context costs: its PIM features and pixels, or for an image
        read region by region its PIM tile cache (bounded by ``model.pim_cache``)."""
        if self.tiled:
            pim = self.image.state.get('pim') if self.image.state else None
            return pim.cached_bytes if pim is not None else 0
        return model.feature_bytes(self.hw) + self.image.rgb.nbytes

    def summary(self):
        h, w = self.hw
        out = {'id': self.id, 'name': self.name, 'width': w, 'height': h, 'ground_truth': self.hr is not None,
               'encoded': self.image.encoded, 'tiled': self.tiled}
        if self.tiled:  # the page draws the pyramid's tiles: (width, height) of every level
            out['levels'] = [[lw, lh] for lh, lw in self.image.levels]
            out['tile'] = TILE
        return out


class ImageStore:
    """Images by id (ids are issued here: requests never name files) with an LRU of contexts.

    Args:
        model: a :class:`clsr_arch.api.LocalSR`.
        cache_bytes: bound on the context passes kept (estimated by ``model.feature_bytes``).
        max_pixels: largest LR image accepted (pixels).
    """

    def __init__(self, model, cache_bytes, max_pixels):
        self.model, self.cache_bytes, self.max_pixels = model, int(cache_bytes), int(max_pixels)
        self.images = OrderedDict()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.evictions = 0

    def add(self, source, name=None, degrade=False):
        """Open ``source`` (path or RGB array) as LR, or with ``degrade`` as HR made LR the
        paper's way (MATLAB bicubic x1/scale, so PSNR against the HR can be shown)."""
        s = self.model.scale
        if is_lazy_path(source):  # a tiled TIFF / .npy: served by pyramid tiles, never read whole
            if degrade:
                raise LocalSRError(f'{source}: --degrade needs the HR read whole; a lazily read image is '
                                   'taken as LR as it is')
            image = self.model.open(source, name)
            if isinstance(image, TiledImage):
                return self._insert(osp.basename(name or source), image, None)
            rgb, name = image.rgb, name or source  # an untiled TIFF read whole: as any image
        else:
            rgb, name = load_image(source, name)
        name = osp.basename(name)  # shown in the page: no server paths
        hr = None
        if degrade:
            hr = mod_crop(rgb, s)
            if min(hr.shape[:2]) < s:
                raise LocalSRError(f'{name}: {rgb.shape[1]}x{rgb.shape[0]} is too small for x{s}')
            rgb = bicubic_lr(hr, s)
        if rgb.shape[0] * rgb.shape[1] > self.max_pixels:
            raise LocalSRError(f'{name}: {rgb.shape[1]}x{rgb.shape[0]} LR pixels is over the viewer\'s limit of '
                               f'{self.max_pixels / 1e6:.0f} megapixels')
        return self._insert(name, Image(self.model, rgb, name), hr)  # rgb already converted

    def _insert(self, name, image, hr):
        with self._lock:
            image_id = f'img{next(self._ids)}'
            entry = ViewerImage(image_id, name or image_id, image, hr)
            self.images[image_id] = entry
        return entry

    def get(self, image_id):
        with self._lock:
            if image_id not in self.images:
                raise KeyError(image_id)
            return self.images[image_id]

    def list(self):
        with self._lock:
            return [e.summary() for e in self.images.values()]

    def touch_encoded(self, entry):
        """Encode ``entry``'s context if needed (returns seconds spent, 0 when cached) and evict
        the least recently used other contexts beyond ``cache_bytes``."""
        seconds = 0.
        if not entry.image.encoded:
            t0 = time.perf_counter()
            entry.image.encode()
            seconds = time.perf_counter() - t0
        with self._lock:
            self.images.move_to_end(entry.id)
            kept = 0
            for other in reversed(list(self.images.values())):  # most recent first
                if not other.image.encoded:
                    continue
                size = other.cached_bytes(self.model)
                if other is not entry and kept + size > self.cache_bytes:
                    if other.lock.acquire(blocking=False):  # never under a running request
                        other.image.forget_context()
                        other.post_crop = None
                        other.lock.release()
                        self.evictions += 1
                        continue
                kept += size
        return seconds
