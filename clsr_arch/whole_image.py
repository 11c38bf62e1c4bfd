"""Whole-image SR (the LocalSR paper's *post-cropping* baseline, Sec. 1 / Table 1) for images of
any size: untiled when it fits the memory budget, else over tiles with an overlap, as BasicSR's
``tile`` test option and Real-ESRGAN's ``--tile`` do.

Tiles: the image is cut into ``tile x tile`` cores; each core is super-resolved from the core
grown by ``overlap`` LR pixels (clipped at the image border) and only the core's HR pixels are
kept. The cores partition the image, so every HR pixel has exactly one source and the result does
not depend on which boxes are asked for -- only tiles whose core meets a requested box are run
(the pixels are those of the full tiled run). Convolutional backbones whose receptive field is
wider than the overlap, and SwinIR (its windows align to the tile, not the image), differ from the
untiled run by a little: tests/test_whole_image.py measures it.
"""
import torch

from .archs.backbone_adapters import run_backbone
from .archs.tiling import as_float_image, spans


def tile_layout(hw, tile, overlap):
    """``[(core, grown), ...]``: ``(y0, y1, x0, x1)`` of each core and of the run input."""
    h, w = hw
    out = []
    for y0, y1 in spans(h, tile):
        for x0, x1 in spans(w, tile):
            out.append(((y0, y1, x0, x1),
                        (max(0, y0 - overlap), min(h, y1 + overlap), max(0, x0 - overlap), min(w, x1 + overlap))))
    return out


def touched_tiles(hw, tile, overlap, boxes):
    """The tiles of :func:`tile_layout` whose core meets one of ``boxes`` (``(x, y, w, h)``), in
    layout order. Cores sit on a grid of ``tile``, so each box names its tiles by index (a box
    costs the tiles it spans, not a scan of every tile: 10^5 tiles x 10^4 boxes stays fast)."""
    h, w = hw
    cols = -(-w // tile)
    hit = set()
    for x, y, bw, bh in boxes:
        for r in range(y // tile, (y + bh - 1) // tile + 1):
            hit.update(r * cols + c for c in range(x // tile, (x + bw - 1) // tile + 1))
    layout = tile_layout(hw, tile, overlap)
    return [layout[i] for i in sorted(hit)]


def whole_image_flops(cost_model, hw, boxes, tile=None, overlap=16):
    """FLOPs of :func:`whole_image_sr` for ``boxes`` (plain backbone, ``CostModel.base``)."""
    if not tile:
        return cost_model.base(*hw)
    return sum(cost_model.base(g[1] - g[0], g[3] - g[2]) for _, g in touched_tiles(hw, tile, overlap, boxes))


def whole_image_sr(run, image, scale, boxes, multiple=1, tile=None, overlap=16, progress=None):
    """HR crops ``[3, s*h, s*w]`` (float) of ``boxes`` from whole-image SR of ``image``
    (``[1, 3, H, W]``, uint8 or float, or a lazily read ``local_context.LazyContext``: only the
    tiles run are read) by the plain network ``run`` (a module or callable).

    ``tile``: None runs the whole image at once; else ``tile x tile`` cores with ``overlap``.
    ``progress``: called as ``progress(done, total)`` after each tile.
    """
    _, _, h, w = image.shape
    s = scale
    if not tile:
        with torch.no_grad():
            full = run_backbone(run, as_float_image(_region(image, 0, h, 0, w)), s, multiple)
        return [full[0, :, s * y:s * (y + bh), s * x:s * (x + bw)] for x, y, bw, bh in boxes]
    outs = [None] * len(boxes)
    tiles = touched_tiles((h, w), tile, overlap, boxes)
    for n, ((y0, y1, x0, x1), (ya, yb, xa, xb)) in enumerate(tiles):
        with torch.no_grad():
            sr = run_backbone(run, as_float_image(_region(image, ya, yb, xa, xb)), s, multiple)[0]
        for i, (x, y, bw, bh) in enumerate(boxes):
            ix0, ix1, iy0, iy1 = max(x, x0), min(x + bw, x1), max(y, y0), min(y + bh, y1)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            if outs[i] is None:
                outs[i] = sr.new_empty((sr.shape[0], s * bh, s * bw))
            outs[i][:, s * (iy0 - y):s * (iy1 - y), s * (ix0 - x):s * (ix1 - x)] = \
                sr[:, s * (iy0 - ya):s * (iy1 - ya), s * (ix0 - xa):s * (ix1 - xa)]
        if progress is not None:
            progress(n + 1, len(tiles))
    return outs


def _region(image, y0, y1, x0, x1):
    if torch.is_tensor(image):
        return image[:, :, y0:y1, x0:x1]
    return image.region(y0, y1, x0, x1).unsqueeze(0).to(image.device)
