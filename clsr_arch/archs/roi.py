"""ROI box helpers for CLSR (LocalSR paper Sec. 3.1 "pad the ROI before inputting it to the
base branch", Sec. 3.2 / Fig. 4b "partition the context into r x r windows, subsample N").

Boxes follow ``docs/design.md``: ``(x, y, w, h)`` in LR pixels of the context (x = column of
the left edge); batched boxes are a ``LongTensor[R, 5]`` with rows ``(batch_index, x, y, w, h)``.

* :func:`validate_boxes` -- the contract's checks, ``ValueError`` naming the box and context.
* :func:`pad_boxes` -- grow boxes by ``roi_pad`` on every side and then on the right/bottom up to
  a multiple of the backbone's spatial constraint (SwinIR's window), so the extra pixels are
  real context wherever it exists.
* :func:`crop` -- crop boxes (which may stick out of the context) from an image or a feature
  map; pixels past the context border are mirrored (reflect) about the border, so crops of
  the context and of a whole-context feature map line up exactly.
* :func:`window_grid` -- the GCM's uniformly subsampled non-overlapping r x r windows.
"""
import math

import torch


def as_boxes(boxes):
    """``boxes`` as a ``LongTensor[R, 5]``; accepts a tensor or a nested sequence."""
    if not torch.is_tensor(boxes):
        boxes = torch.as_tensor(boxes)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f'boxes must be a LongTensor[R, 5] of rows (batch_index, x, y, w, h); '
                         f'got shape {tuple(boxes.shape)}')
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise ValueError(f'boxes must be integer LR pixel coordinates, got dtype {boxes.dtype}')
    return boxes.long()


def validate_boxes(boxes, context_shape):
    """Check ``boxes`` against a context of shape ``[B, C, H, W]`` (or ``(B, H, W)``).

    Returns the boxes as a CPU ``LongTensor[R, 5]``. Raises ``ValueError`` naming the first
    offending box and the context size when a box has ``w`` or ``h`` < 1, lies (partly)
    outside its context, or names a batch index the context does not have.
    """
    boxes = as_boxes(boxes).cpu()
    if len(context_shape) == 4:
        b, _, hc, wc = context_shape
    else:
        b, hc, wc = context_shape
    if boxes.shape[0] == 0:
        raise ValueError('boxes is empty: give at least one ROI (batch_index, x, y, w, h)')
    for i, (bi, x, y, w, h) in enumerate(boxes.tolist()):
        where = f'box {i} (batch_index={bi}, x={x}, y={y}, w={w}, h={h})'
        ctx = f'context of {b} image(s) of H x W = {hc} x {wc} LR pixels'
        if not 0 <= bi < b:
            raise ValueError(f'{where}: batch_index out of range for a {ctx}')
        if w < 1 or h < 1:
            raise ValueError(f'{where}: w and h must be >= 1 ({ctx})')
        if x < 0 or y < 0 or x + w > wc or y + h > hc:
            raise ValueError(f'{where} is not inside its {ctx}: need 0 <= x, x + w <= {wc}, '
                             f'0 <= y, y + h <= {hc}')
    return boxes


def box_size(boxes):
    """The common ``(h, w)`` of ``boxes``; ``ValueError`` if they differ (decode one size at a time)."""
    sizes = {(int(h), int(w)) for h, w in zip(boxes[:, 4].tolist(), boxes[:, 3].tolist())}
    if len(sizes) != 1:
        raise ValueError(f'all boxes of one decode call must share one (h, w); got {sorted(sizes)}. '
                         f'Call decode once per size with the same context state.')
    return sizes.pop()


def padding_for(h, w, roi_pad, multiple=1):
    """``(left, top, right, bottom)`` LR pixels added around an ``h x w`` ROI: ``roi_pad`` on
    every side, plus on the right/bottom whatever makes the padded size a multiple of
    ``multiple`` (SwinIR's window size; 1 for convolutional backbones)."""
    if roi_pad < 0:
        raise ValueError(f'roi_pad must be >= 0, got {roi_pad}')
    hp, wp = h + 2 * roi_pad, w + 2 * roi_pad
    extra_h = (-hp) % multiple
    extra_w = (-wp) % multiple
    return roi_pad, roi_pad, roi_pad + extra_w, roi_pad + extra_h


def pad_boxes(boxes, pads):
    """Boxes grown by ``pads = (left, top, right, bottom)``; they may leave the context."""
    left, top, right, bottom = pads
    out = boxes.clone()
    out[:, 1] -= left
    out[:, 2] -= top
    out[:, 3] += left + right
    out[:, 4] += top + bottom
    return out


def place_inside(pboxes, boxes, context_hw, multiple=1):
    """Shift padded boxes ``pboxes`` (``pad_boxes(boxes, pads)``) to lie inside the context
    where they fit, so the padding is real context on every side it can be: a ROI at the
    image border gets its context pixels from the inner side instead of mirrored ones. A
    padded side longer than the context is cut to the context (the whole context side) when
    ``multiple`` is 1; with a size multiple (SwinIR) it is left in place and ``crop`` mirrors.
    All boxes of one call share one size and one context size, so the result does too.

    Why: a backbone trained with zero-padded convolutions restores pixels at a border best
    from the border itself (as post-cropping does); mirrored pixels past the image border cost
    CARN-M about 0.2 dB on Set5's border ROIs (docs/results.md).

    Returns ``(shifted LongTensor[R, 5], offsets LongTensor[R, 2])``, ``offsets`` = ``(x, y)``
    of each ROI inside its padded crop (LR pixels).
    """
    hc, wc = int(context_hw[0]), int(context_hw[1])
    out = pboxes.clone()
    for axis, size in ((1, wc), (2, hc)):  # x with width (col 3), y with height (col 4)
        if multiple == 1:
            out[:, axis + 2] = torch.clamp(out[:, axis + 2], max=size)
        length = out[:, axis + 2]
        fits = length <= size
        moved = torch.minimum(torch.clamp(out[:, axis], min=0), size - length)
        out[:, axis] = torch.where(fits, moved, out[:, axis])
    return out, boxes[:, 1:3] - out[:, 1:3]


def crop_outputs(out, offsets, h, w, scale):
    """``[R, C, s*h, s*w]``: each output of a padded crop cut back to its ROI (``offsets``
    from :func:`place_inside`, LR pixels)."""
    offs = offsets.tolist()
    if all(o == offs[0] for o in offs):  # one slice for the whole batch (interior ROIs)
        x, y = offs[0]
        return out[:, :, scale * y:scale * (y + h), scale * x:scale * (x + w)]
    return torch.stack([out[i, :, scale * y:scale * (y + h), scale * x:scale * (x + w)]
                        for i, (x, y) in enumerate(offs)])


def reflect_index(idx, size):
    """Map integer coordinates onto ``[0, size)`` by mirroring about the border pixels
    (``torch.nn.functional.pad(mode='reflect')`` semantics, repeated for any distance)."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


def crop(tensor, boxes):
    """Crop ``boxes`` (``LongTensor[R, 5]``, all one size, may stick out of the map) from
    ``tensor`` ``[B, C, H, W]``; returns ``[R, C, h, w]``. Outside pixels are reflected about
    the border, so cropping a feature map computed on the whole context gives the same
    pixels as the context crop would (no zero seams)."""
    h, w = box_size(boxes)  # before moving: .tolist() does not work on meta tensors
    boxes = boxes.to(tensor.device)
    _, _, hc, wc = tensor.shape
    ar_h = torch.arange(h, device=tensor.device)
    ar_w = torch.arange(w, device=tensor.device)
    rows = reflect_index(boxes[:, 2:3] + ar_h, hc)  # [R, h]
    cols = reflect_index(boxes[:, 1:2] + ar_w, wc)  # [R, w]
    bidx = boxes[:, 0]
    # advanced indexing gives [R, h, w, C]; move channels back
    out = tensor.permute(0, 2, 3, 1)[bidx[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def slab_crop(read, hw, boxes):
    """``roi.crop`` for a map read by regions: ``read(y0, y1, x0, x1) -> [C, y1-y0, x1-x0]``
    tensor, ``hw`` its (H, W), ``boxes`` ``LongTensor[R, 5]`` of one size (may stick out: outside
    pixels are reflected about the border, as ``roi.crop`` does). Returns ``[R, C, h, w]``."""
    h, w = box_size(boxes)
    out = []
    for _, x, y, _, _ in boxes.tolist():
        rows = reflect_index(torch.arange(y, y + h), hw[0])
        cols = reflect_index(torch.arange(x, x + w), hw[1])
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        slab = read(r0, r1, c0, c1)
        if r1 - r0 == h and c1 - c0 == w:  # inside the map: the slab is the crop
            out.append(slab)
        else:
            out.append(slab[:, (rows - r0)[:, None], (cols - c0)[None, :]])
    return torch.stack(out)


def grid_counts(gh, gw, num_windows):
    """Rows x columns of windows to keep out of a ``gh x gw`` grid: about ``num_windows`` in
    all, in the grid's aspect ratio, never more than the grid has."""
    if num_windows >= gh * gw:
        return gh, gw
    nh = min(gh, max(1, round(math.sqrt(num_windows * gh / gw))))
    nw = min(gw, max(1, num_windows // nh))
    nh = min(gh, max(1, num_windows // nw))
    return nh, nw


def window_grid(h, w, window, num_windows):
    """Top-left corners ``LongTensor[N, 2]`` (x, y) of the GCM's windows (paper Fig. 4b).

    The context is partitioned into non-overlapping ``window x window`` windows (a context
    smaller than one window yields one window, filled by reflection when cropped); ``N <=
    num_windows`` of them are kept by sampling uniformly along both spatial axes (the paper's
    subsampling: the centre of each of ``nh x nw`` equal strips of the grid).
    """
    if window < 1 or num_windows < 1:
        raise ValueError(f'gcm window ({window}) and num_windows ({num_windows}) must be >= 1')
    gh, gw = max(1, h // window), max(1, w // window)
    nh, nw = grid_counts(gh, gw, num_windows)
    iy = ((torch.arange(nh, dtype=torch.float64) + 0.5) * gh / nh).floor().long()
    ix = ((torch.arange(nw, dtype=torch.float64) + 0.5) * gw / nw).floor().long()
    yy, xx = torch.meshgrid(iy * window, ix * window, indexing='ij')
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def token_positions(x0, y0, hq, wq, stride=2):
    """LR-pixel coordinates ``[..., hq*wq, 2]`` (x, y) of the tokens of a map downsampled by
    ``stride`` whose top-left input pixel is at ``(x0, y0)`` (tensors of any equal shape).
    A token covering input pixels ``stride*t .. stride*t+stride-1`` sits at their centre."""
    ty = torch.arange(hq, dtype=torch.float32) * stride + stride / 2.
    tx = torch.arange(wq, dtype=torch.float32) * stride + stride / 2.
    gy, gx = torch.meshgrid(ty, tx, indexing='ij')
    px = x0.float().unsqueeze(-1) + gx.reshape(-1).to(x0.device)
    py = y0.float().unsqueeze(-1) + gy.reshape(-1).to(y0.device)
    return torch.stack([px, py], dim=-1)
