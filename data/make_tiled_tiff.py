"""Write an image, or a folder of images stitched into a mosaic, as a tiled pyramidal TIFF: the
lazily read input of clsr (issue 17: ``LocalSR.open`` / ``clsr-infer`` / ``clsr-view`` read only
the tiles a box needs). Level 0 is full resolution; each further level halves it (area
averaging), stored as SubIFDs, until the longest side is at most ``--min-size``.

    python data/make_tiled_tiff.py photo.png photo.tif
    python data/make_tiled_tiff.py ../shared/data/DIV2K/HR mosaic.tif --grid 34x21 --cell 1200x1200 --repeat

A folder becomes a mosaic of its images in name order, left to right then top to bottom, on a
``--grid COLSxROWS`` (default: as square as the count allows). Every image must have the same size
(or ``--cell WxH``: each is centre-cropped to it, and must be at least that large), the same
channels and bit depth; ``--repeat`` cycles through the images to fill the grid (a large test
mosaic from few images). Pixels are written as they are (8/16-bit, 1-4 channels): the reader
applies the dataset's conversion rules.

Nothing half-written is left: the TIFF is written under a temporary name and renamed at the end;
bad input (a non-image in the folder, mixed sizes, an image smaller than the cell) is refused
before anything is written, naming the file.
"""
import argparse
import math
import os
import os.path as osp
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), os.pardir)))
from clsr_arch.data.image_io import DataError, check_complete, read_bytes, tmp_name  # noqa: E402


class MosaicError(DataError):
    pass


def _pair(text, what):
    try:
        a, b = (int(v) for v in text.lower().split('x'))
        if a < 1 or b < 1:
            raise ValueError
        return a, b
    except ValueError:
        raise MosaicError(f'{what} {text!r}: expected AxB with positive integers, e.g. 34x21') from None


def read_unchanged(path):
    """An image file as stored (8/16-bit, 1-4 channels), RGB(A) order; MosaicError naming it."""
    content = read_bytes(path)
    check_complete(content, path)
    img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MosaicError(f'{path}: not an image (cannot decode it)')
    if img.dtype not in (np.uint8, np.uint16):
        raise MosaicError(f'{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)')
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return img


def centre_crop(img, cell, path):
    cw, ch = cell
    h, w = img.shape[:2]
    if h < ch or w < cw:
        raise MosaicError(f'{path}: {w}x{h} is smaller than the --cell {cw}x{ch}')
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[y:y + ch, x:x + cw]


class Mosaic:
    """Cells on a grid; ``band(level, y0, y1)`` gives rows of a pyramid level.

    Level k is level 0 halved k times, exactly (``H >> k`` x ``W >> k``: what TIFF readers take
    for a pyramid level; tifffile drops a SubIFD of another size). Cell ``c`` of level k spans
    ``[(c * cell) >> k, ((c + 1) * cell) >> k)``, so its cells may differ by a pixel; each is its
    image area-averaged to that size.
    """

    def __init__(self, images, names, grid):
        self.images, self.names = images, names
        self.cols, self.rows = grid
        self.cell_hw = images[0].shape[:2]
        self.channels = 1 if images[0].ndim == 2 else images[0].shape[2]
        self.dtype = images[0].dtype
        self._resized = {}  # (image index, h, w) -> the image area-averaged to h x w

    def size(self, level):
        ch, cw = self.cell_hw
        return max(1, (ch * self.rows) >> level), max(1, (cw * self.cols) >> level)

    def _cell(self, i, h, w):
        img = self.images[i]
        if img.shape[:2] == (h, w):
            return img
        if (i, h, w) not in self._resized:
            self._resized[(i, h, w)] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        return self._resized[(i, h, w)]

    def band(self, level, y0, y1):
        ch, cw = self.cell_hw
        ys = [(r * ch) >> level for r in range(self.rows + 1)]
        xs = [(c * cw) >> level for c in range(self.cols + 1)]
        out = np.zeros((y1 - y0, self.size(level)[1]) + (() if self.channels == 1 else (self.channels, )), self.dtype)
        for r in range(self.rows):
            a, b = max(y0, ys[r]), min(y1, ys[r + 1])
            if a >= b:
                continue
            for c in range(self.cols):
                if xs[c + 1] > xs[c]:
                    img = self._cell((r * self.cols + c) % len(self.images), ys[r + 1] - ys[r], xs[c + 1] - xs[c])
                    out[a - y0:b - y0, xs[c]:xs[c + 1]] = img[a - ys[r]:b - ys[r]]
        return out


def build_mosaic(src, grid=None, cell=None, repeat=False):
    """A :class:`Mosaic` of one image file or of a folder's images (checked before writing)."""
    if osp.isdir(src):
        names = sorted(n for n in os.listdir(src) if not n.startswith('.') and osp.isfile(osp.join(src, n)))
        if not names:
            raise MosaicError(f'{src}: the folder holds no files')
        paths = [osp.join(src, n) for n in names]
    elif osp.isfile(src):
        paths = [src]
    else:
        raise MosaicError(f'{src}: no such file or folder')
    images = []
    for p in paths:
        img = read_unchanged(p)
        images.append(centre_crop(img, cell, p) if cell else img)
    first = images[0]
    for p, img in zip(paths, images):
        if img.shape != first.shape or img.dtype != first.dtype:
            def desc(a):
                return f'{a.shape[1]}x{a.shape[0]}, {1 if a.ndim == 2 else a.shape[2]} channels, {a.dtype}'
            raise MosaicError(f'{src}: mixed images: {p} is {desc(img)}, {paths[0]} is {desc(first)} '
                              '(a mosaic needs one size, channel count and bit depth; --cell WxH crops to one size)')
    if grid is None:
        cols = math.ceil(math.sqrt(len(images)))
        grid = (cols, math.ceil(len(images) / cols))
    if grid[0] * grid[1] < len(images) and not repeat:
        raise MosaicError(f'--grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} cells for {len(images)} images')
    if grid[0] * grid[1] > len(images) and not repeat:
        raise MosaicError(f'--grid {grid[0]}x{grid[1]} has {grid[0] * grid[1]} cells for {len(images)} images: '
                          'pass --repeat to cycle through them')
    return Mosaic(images, [osp.basename(p) for p in paths], grid)


def level_count(hw, min_size):
    """Levels 0..n-1: halve while the next level's longest side stays >= ``min_size``."""
    n = 1
    while max(hw) >> n >= min_size:
        n += 1
    return n


def write_tiff(mosaic, out, tile=256, compression='zlib', min_size=1024, progress=True):
    """Write ``mosaic`` as a tiled pyramidal TIFF at ``out`` (atomically). Returns a summary."""
    import tifffile
    from tqdm import tqdm
    levels = level_count(mosaic.size(0), min_size)
    total = sum(math.ceil(mosaic.size(k)[0] / tile) * math.ceil(mosaic.size(k)[1] / tile) for k in range(levels))
    bar = tqdm(total=total, unit='tile', desc=osp.basename(out), disable=not progress)
    shape_tail = () if mosaic.channels == 1 else (mosaic.channels, )

    def tiles(level):
        h, w = mosaic.size(level)
        for y0 in range(0, h, tile):
            band = mosaic.band(level, y0, min(h, y0 + tile))
            for x0 in range(0, w, tile):
                t = np.zeros((tile, tile) + shape_tail, mosaic.dtype)
                piece = band[:, x0:x0 + tile]
                t[:piece.shape[0], :piece.shape[1]] = piece
                bar.update(1)
                yield t

    photometric = 'minisblack' if mosaic.channels in (1, 2) else 'rgb'
    extra = 'unassalpha' if mosaic.channels in (2, 4) else None
    kw = dict(tile=(tile, tile), photometric=photometric, compression=None if compression == 'none' else compression,
              extrasamples=(extra, ) if extra else None, maxworkers=2)
    tmp = tmp_name(out)
    t0 = time.perf_counter()
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k in range(levels):
                h, w = mosaic.size(k)
                tw.write(tiles(k), shape=(h, w) + shape_tail, dtype=mosaic.dtype,
                         subifds=levels - 1 if k == 0 else None, subfiletype=1 if k else 0, **kw)
        os.replace(tmp, out)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        bar.close()
    h, w = mosaic.size(0)
    return {'path': out, 'width': w, 'height': h, 'levels': levels, 'tiles': total,
            'seconds': time.perf_counter() - t0, 'bytes': osp.getsize(out)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('input', help='an image file, or a folder of images for a mosaic')
    parser.add_argument('output', help='the .tif to write')
    parser.add_argument('--grid', help='mosaic COLSxROWS (default: as square as the image count allows)')
    parser.add_argument('--cell', help='centre-crop every image to WxH first')
    parser.add_argument('--repeat', action='store_true', help='cycle through the images to fill the grid')
    parser.add_argument('--tile', type=int, default=256, help='TIFF tile size (a multiple of 16)')
    parser.add_argument('--compression', default='zlib', choices=('zlib', 'none', 'lzw', 'zstd'))
    parser.add_argument('--min-size', type=int, default=1024, help='stop adding levels at this longest side')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)
    try:
        if not args.output.lower().endswith(('.tif', '.tiff')):
            raise MosaicError(f'{args.output}: the output must end in .tif or .tiff')
        if args.tile < 16 or args.tile % 16:
            raise MosaicError(f'--tile {args.tile}: TIFF tiles are multiples of 16')
        grid = _pair(args.grid, '--grid') if args.grid else None
        cell = _pair(args.cell, '--cell') if args.cell else None
        mosaic = build_mosaic(args.input, grid, cell, args.repeat)
        s = write_tiff(mosaic, args.output, args.tile, args.compression, args.min_size, not args.no_progress)
    except DataError as err:
        print(f'make_tiled_tiff: {err}', file=sys.stderr)
        return 2
    print(f"{s['path']}: {s['width']}x{s['height']}, {s['levels']} levels, {s['tiles']} tiles, "
          f"{s['bytes'] / 2**30:.2f} GiB, written in {s['seconds']:.1f} s")
    return 0


if __name__ == '__main__':
    sys.exit(main())
