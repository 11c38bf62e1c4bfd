"""The context pass of a plan, priced two ways: the whole frame (``CLSR.encode_context``), or only
what the boxes read -- the GCM's N windows and the PIM tiles (+ receptive-field halo) around the
padded boxes, the ROI-local pass of the gigapixel path (:mod:`clsr_arch.archs.local_context`),
here over an in-memory image. Both give the decode the same features (float summation order), so
the cheaper by FLOPs runs: five plates on a 2K frame pay for a few tiles, a full grid for the frame.
"""
import torch

from ..archs import roi as roi_ops
from ..archs.local_context import LazyContext, PIMTiles


class ArrayRegions:
    """An RGB uint8 ``[H, W, 3]`` array read region by region, as the ROI-local pass reads a
    lazily read image (``hw``, ``read``): views, no copies."""

    def __init__(self, rgb):
        self.rgb = rgb
        self.hw = tuple(rgb.shape[:2])

    def read(self, y0, y1, x0, x1, level=0):
        return self.rgb[y0:y1, x0:x1]


def padded_boxes(net, boxes, hw):
    """The ``(x, y, w, h)`` crops CLSR's decode reads for ``boxes`` (``roi_pad``, the size
    multiple, shifted inside the image at its border: ``roi.place_inside``)."""
    out = []
    for x, y, w, h in boxes:
        b = torch.tensor([[0, x, y, w, h]])
        pads = roi_ops.padding_for(h, w, net.roi_pad, net.adapter.multiple)
        pb, _ = roi_ops.place_inside(roi_ops.pad_boxes(b, pads), b, hw, net.adapter.multiple)
        out.append(tuple(pb[0, 1:].tolist()))
    return out


def local_context_flops(model, hw, boxes, state=None):
    """FLOPs of the ROI-local context for ``boxes`` of an ``hw`` image: the GCM's windows (unless
    ``state``, an ROI-local state already made, has them) and the PIM tiles the padded boxes meet
    that are not cached yet."""
    net, cost = model.net, model.cost
    flops = 0. if state is not None else cost.gcm(hw)
    if net.pim is None:
        return flops
    tiles = state['pim'] if state is not None else PIMTiles(net.pim, LazyContext(_Shape(hw)), model.pim_tile)
    need = [t for t in tiles.tiles_for(padded_boxes(net, boxes, hw)) if t not in tiles.cache]
    return flops + cost.pim(tiles.input_pixels(need))


class _Shape:
    """Just a size, to price tiles before any pixel is read."""

    def __init__(self, hw):
        self.hw = tuple(hw)
