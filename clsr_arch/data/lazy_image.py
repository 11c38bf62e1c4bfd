"""Lazily read LR images (issue 17): an image is opened without reading its pixels, and any
region of it is read on demand -- what lets an ROI of a gigapixel image cost only the region
(:mod:`clsr_arch.archs.local_context`).

Formats:

* **tiled TIFF** (and pyramidal: reduced-resolution levels as SubIFDs or series levels, as
  ``data/make_tiled_tiff.py`` writes them), through tifffile's zarr store: a region read decodes
  only the TIFF tiles it meets;
* **striped TIFF** (not tiled) is read the same way (strips are rows of the full width) when it is
  small enough; one whose decoded pixels exceed ``max_bytes`` is **refused** (a region read of a
  huge striped file would decode whole rows of it at a time, so it is not lazy in any useful way:
  convert it with ``data/make_tiled_tiff.py``);
* **.npy**, memory-mapped (``numpy.load(mmap_mode='r')``);
* everything else (PNG, JPEG, ...) is not lazy: the API reads it whole, as before.

Pixels follow the dataset's conversion rules (:func:`clsr_arch.data.image_io.to_bgr8`): 16-bit
scaled to 8-bit, single-channel replicated to RGB, opaque alpha dropped; a transparent alpha pixel
is refused when a read meets it (a lazy image cannot check every pixel up front). Regions are
returned as RGB ``uint8 [h, w, 3]``.

Every bad input raises :class:`LazyImageError` (a ``ValueError``) naming the file: unreadable or
truncated files (also found on the first read of a damaged tile), unsupported pixel types or
layouts, reads outside the image.
"""
import os
import threading

import numpy as np

from ..utils.memory import format_bytes
from .image_io import DataError, to_bgr8

__all__ = ['LAZY_EXTENSIONS', 'LazyImageError', 'LazyImage', 'is_lazy_path', 'open_lazy']

LAZY_EXTENSIONS = ('.tif', '.tiff', '.npy')


class LazyImageError(DataError):
    """A lazy image that cannot be opened or read; the message names the file."""


def is_lazy_path(path):
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(LAZY_EXTENSIONS)


class LazyImage:
    """An LR image read region by region.

    ``hw``: (H, W) of level 0 (full resolution); ``levels``: (H, W) of every level, level 0 first
    (one level unless the file is pyramidal); ``read(y0, y1, x0, x1, level=0)`` -> RGB uint8;
    ``random_access``: False for a striped TIFF (a region read decodes whole rows).
    """

    def __init__(self, path, arrays, closer=None, random_access=True):
        self.path = path
        self._arrays = arrays  # per level: an object sliced as [y0:y1, x0:x1] -> ndarray
        self.levels = [tuple(int(v) for v in a.shape[:2]) for a in arrays]
        self.hw = self.levels[0]
        self.channels = 1 if len(arrays[0].shape) == 2 else int(arrays[0].shape[2])
        self.dtype = np.dtype(arrays[0].dtype)
        # tiled TIFF / memory map: any region is cheap to read; a striped TIFF decodes whole rows
        self.random_access = random_access
        self._closer = closer
        self._lock = threading.Lock()  # one file handle: reads from several threads take turns

    def __repr__(self):
        return f'LazyImage({self.path!r}, {self.hw[1]}x{self.hw[0]}, levels={len(self.levels)})'

    def read(self, y0, y1, x0, x1, level=0):
        """RGB uint8 ``[y1 - y0, x1 - x0, 3]`` of level ``level`` (coordinates of that level)."""
        if not 0 <= level < len(self.levels):
            raise LazyImageError(f'{self.path}: level {level} does not exist (the file has {len(self.levels)})')
        h, w = self.levels[level]
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise LazyImageError(f'{self.path}: region rows {y0}:{y1}, columns {x0}:{x1} is outside the '
                                 f'{w}x{h} (WxH) image (level {level})')
        try:
            with self._lock:
                if self._arrays is None:
                    raise LazyImageError(f'{self.path}: the image was closed')
                region = np.asarray(self._arrays[level][y0:y1, x0:x1])
        except LazyImageError:
            raise
        except Exception as err:  # tifffile/zarr/imagecodecs errors on damaged or cut files
            raise LazyImageError(f'{self.path}: cannot read rows {y0}:{y1}, columns {x0}:{x1} '
                                 f'(damaged or truncated file?): {type(err).__name__}: {err}') from None
        if region.shape[:2] != (y1 - y0, x1 - x0):
            raise LazyImageError(f'{self.path}: read {region.shape[:2]} pixels for rows {y0}:{y1}, columns '
                                 f'{x0}:{x1} (truncated file?)')
        try:
            return to_bgr8(region, f'{self.path} (rows {y0}:{y1}, columns {x0}:{x1})')  # rules keep channel order
        except DataError as err:
            raise LazyImageError(str(err)) from None

    def read_all(self, level=0):
        h, w = self.levels[level]
        return self.read(0, h, 0, w, level)

    def close(self):
        with self._lock:
            if self._closer is not None:
                self._closer()
                self._closer = None
            self._arrays = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_layout(path, shape, dtype):
    if dtype not in (np.uint8, np.uint16):
        raise LazyImageError(f'{path}: unsupported pixel type {dtype} (expected 8- or 16-bit)')
    if len(shape) == 3 and shape[2] in (1, 2, 3, 4):
        return
    if len(shape) == 2:
        return
    raise LazyImageError(f'{path}: expected an H x W or H x W x C image (C = 1..4), got shape {tuple(shape)}')


def _open_npy(path):
    try:
        arr = np.load(path, mmap_mode='r', allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise LazyImageError(f'{path}: cannot open as a .npy array (damaged or truncated file?): {err}') from None
    _check_layout(path, arr.shape, arr.dtype)
    return LazyImage(path, [arr], closer=None, random_access=True)


def _open_tiff(path, max_bytes):
    import tifffile
    import zarr
    try:
        tf = tifffile.TiffFile(path)
    except Exception as err:
        raise LazyImageError(f'{path}: cannot open as a TIFF (damaged or truncated file?): '
                             f'{type(err).__name__}: {err}') from None
    try:
        if not tf.series:
            raise LazyImageError(f'{path}: the TIFF holds no image')
        series = tf.series[0]
        page = series.pages[0] if series.pages else tf.pages[0]
        levels = series.levels
        shape = tuple(levels[0].shape)
        _check_layout(path, shape, np.dtype(levels[0].dtype))
        tiled = bool(page.is_tiled)
        nbytes = int(np.prod(shape)) * np.dtype(levels[0].dtype).itemsize
        if not tiled and max_bytes is not None and nbytes > max_bytes:
            raise LazyImageError(
                f'{path}: a TIFF that is not tiled (stored in strips), {shape[1]}x{shape[0]} pixels = '
                f'{format_bytes(nbytes)} decoded, over the memory budget of {format_bytes(max_bytes)}; '
                'clsr reads untiled TIFFs whole only under the budget: convert it with '
                'data/make_tiled_tiff.py (tiled, pyramidal) or raise max_memory')
        arrays = []
        for k, lv in enumerate(levels):
            if tuple(lv.shape[2:]) != shape[2:]:
                raise LazyImageError(f'{path}: level {k} has shape {tuple(lv.shape)}, level 0 {shape}')
            arrays.append(zarr.open(series.aszarr(level=k), mode='r'))
    except LazyImageError:
        tf.close()
        raise
    except Exception as err:
        tf.close()
        raise LazyImageError(f'{path}: cannot read the TIFF layout (damaged or unsupported file?): '
                             f'{type(err).__name__}: {err}') from None
    return LazyImage(path, arrays, closer=tf.close, random_access=tiled)


def open_lazy(path, max_bytes=None):
    """Open a ``.tif``/``.tiff`` or ``.npy`` file as a :class:`LazyImage` without reading its
    pixels. ``max_bytes``: the memory budget an untiled TIFF must fit to be read (None: any)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise LazyImageError(f'{path}: no such file')
    if path.lower().endswith('.npy'):
        return _open_npy(path)
    if path.lower().endswith(('.tif', '.tiff')):
        return _open_tiff(path, max_bytes)
    raise LazyImageError(f'{path}: not a lazily readable image (expected {", ".join(LAZY_EXTENSIONS)})')
