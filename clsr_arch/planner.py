"""Many ROIs, planned: the cheapest way, by FLOPs, to super-resolve a set of boxes of one image.

Not in the LocalSR paper, which decodes one ROI at a time (Sec. 3.4 shares the context pass
between them). A set of boxes can be served three ways, priced by
:class:`clsr_arch.utils.flops.CostModel`:

1. **singles**: one CLSR decode per box (plus the context pass, once, unless already done);
2. **pieces**: boxes that overlap or nearly touch are merged into their bounding rectangle
   when one decode of the union costs less than the decodes it replaces (greedy, pairwise,
   best saving first, repeated until no merge pays; a piece never exceeds ``max_pixels``);
3. **whole**: whole-image SR with the plain backbone (post-crop; tiled when the image does not
   fit the memory budget) when that costs less than the pieces -- the context pass is then
   not needed at all. When whole-image SR costs no more than a lower bound of any pieces (the
   context pass plus the cheapest decode FLOPs per pixel times the boxes' union area), the
   merging is skipped: a full ROI grid is planned in milliseconds.

Pieces are never dearer than singles (each merge lowers the sum), and the plan is the cheaper of
pieces and whole, so ``plan.flops <= min(whole, singles)`` for every box set (tests/test_planner.py
checks it against FLOPs counted by ``torch.utils.flop_counter``).

Overlapping boxes get consistent pixels (:func:`composite`): every HR pixel is taken from the
piece in which it lies deepest -- farthest from a piece side that is not the image border (the
sides where that piece's base branch saw the least context) -- ties to the lowest piece index.
The choice depends on the pixel and the pieces only, never on which box asks, so two boxes
agree wherever they overlap, and a box inside a merged piece is an exact crop of it.
"""
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Piece:
    """A rectangle ``(x, y, w, h)`` (LR pixels) decoded once, and the boxes it serves."""
    x: int
    y: int
    w: int
    h: int
    boxes: list = field(default_factory=list)

    def union(self, other):
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1, y1 = max(self.x + self.w, other.x + other.w), max(self.y + self.h, other.y + other.h)
        return Piece(x0, y0, x1 - x0, y1 - y0, self.boxes + other.boxes)

    def gap(self, other):
        """Chebyshev gap between the rectangles (0 when they touch or overlap)."""
        gx = max(self.x - (other.x + other.w), other.x - (self.x + self.w), 0)
        gy = max(self.y - (other.y + other.h), other.y - (self.y + self.h), 0)
        return max(gx, gy)


@dataclass
class Plan:
    """What :func:`plan_boxes` chose and the FLOPs of every alternative it weighed."""
    mode: str                 # 'pieces' (CLSR decodes) or 'whole' (whole-image SR, then crops)
    pieces: list              # the CLSR pieces (mode 'pieces'), or [] (mode 'whole')
    flops: float              # FLOPs of this plan (context pass included when it must still run)
    flops_singles: float      # one decode per box (+ context pass)
    flops_pieces: float       # merged pieces (+ context pass); a lower bound when merging was skipped
    flops_whole: float        # whole-image SR (inf when not allowed)
    context_flops: float      # the context pass's share of the CLSR alternatives (0 if done)

    def summary(self):
        return {'mode': self.mode, 'pieces': len(self.pieces), 'gflops': self.flops / 1e9,
                'gflops_singles': self.flops_singles / 1e9, 'gflops_pieces': self.flops_pieces / 1e9,
                'gflops_whole': self.flops_whole / 1e9}


def _neighbours(pieces, reach):
    """Index pairs ``(i, j)``, ``i < j``, of pieces within ``reach`` LR pixels of each other."""
    cell = max(16, reach + max(max(p.w, p.h) for p in pieces))
    grid = {}
    for i, p in enumerate(pieces):
        for cy in range(p.y // cell, (p.y + p.h) // cell + 1):
            for cx in range(p.x // cell, (p.x + p.w) // cell + 1):
                grid.setdefault((cx, cy), []).append(i)
    pairs = set()
    for i, p in enumerate(pieces):
        for cy in range((p.y - reach) // cell, (p.y + p.h + reach) // cell + 1):
            for cx in range((p.x - reach) // cell, (p.x + p.w + reach) // cell + 1):
                for j in grid.get((cx, cy), ()):
                    if j > i and p.gap(pieces[j]) <= reach:
                        pairs.add((i, j))
    return sorted(pairs)


def merge_pieces(boxes, price, reach, max_pixels):
    """Greedy merging of ``boxes`` (``[(x, y, w, h)]``) into pieces whose summed ``price`` (a
    function of a Piece) is lower; identical boxes share one piece from the start."""
    by_box = {}
    for i, b in enumerate(boxes):
        by_box.setdefault(tuple(b), []).append(i)
    pieces = [Piece(*b, boxes=idx) for b, idx in by_box.items()]
    cost = [price(p) for p in pieces]
    while len(pieces) > 1:
        moves = []
        for i, j in _neighbours(pieces, reach):
            u = pieces[i].union(pieces[j])
            if u.w * u.h > max_pixels:
                continue
            saving = cost[i] + cost[j] - price(u)
            if saving > 0:
                moves.append((saving, i, j, u))
        if not moves:
            break
        moves.sort(key=lambda m: (-m[0], m[1], m[2]))
        used, merged = set(), []
        for saving, i, j, u in moves:
            if i not in used and j not in used:
                used.update((i, j))
                merged.append(u)
        keep = [k for k in range(len(pieces)) if k not in used]
        pieces = [pieces[k] for k in keep] + merged
        cost = [cost[k] for k in keep] + [price(u) for u in merged]
    return pieces, cost


def plan_boxes(cost_model, boxes, context_hw, context_done=False, whole_flops=None, max_pixels=None,
               context_flops=None):
    """The plan for ``boxes`` (``[(x, y, w, h)]`` LR pixels, any sizes) of one context.

    Args:
        cost_model: :class:`clsr_arch.utils.flops.CostModel` of the CLSR.
        context_hw: ``(H, W)`` of the LR context.
        context_done: the context pass has already run (its cost is sunk).
        whole_flops: FLOPs of whole-image SR as it would run (untiled or tiled); None: never.
        max_pixels: largest LR area of one merged piece (its decode must fit in memory).
        context_flops: what the context pass still costs when not the whole-frame pass (the
            ROI-local one around these boxes, :mod:`clsr_arch.api.roi_context`).
    """
    if not boxes:
        raise ValueError('plan_boxes: no boxes')
    if context_done:
        context = 0.
    else:
        context = cost_model.context(*context_hw) if context_flops is None else float(context_flops)

    def price(p):
        return cost_model.decode(p.h, p.w, context_hw)

    singles = context + sum(price(Piece(*b)) for b in boxes)
    whole = float('inf') if whole_flops is None else float(whole_flops)
    bound = context + cost_model.per_pixel(context_hw) * union_area(boxes)
    if whole <= bound:  # no set of pieces can cover the boxes for less: skip the merging
        return Plan('whole', [], whole, singles, bound, whole, context)
    reach = 2 * cost_model.roi_pad + cost_model.multiple + 4  # a wider gap never pays (area-priced decodes)
    pieces, costs = merge_pieces(boxes, price, reach, max_pixels or context_hw[0] * context_hw[1])
    merged = context + sum(costs)
    if whole < merged:
        return Plan('whole', [], whole, singles, merged, whole, context)
    return Plan('pieces', pieces, merged, singles, merged, whole, context)


def union_area(boxes):
    """LR pixels covered by at least one of ``boxes`` (``(x, y, w, h)``)."""
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for x, y, w, h in boxes:
        mask[y - y0:y - y0 + h, x - x0:x - x0 + w] = True
    return int(mask.sum())


def depth_map(piece_hr, region_hr, image_hr):
    """Depth (HR pixels) of every pixel of ``region_hr`` inside ``piece_hr`` (both ``(x, y, w,
    h)``): distance to the nearest piece side that is not on the image border; -1 outside."""
    px, py, pw, ph = piece_hr
    rx, ry, rw, rh = region_hr
    img_w, img_h = image_hr
    big = float(max(img_w, img_h) + 1)
    xs = torch.arange(rx, rx + rw, dtype=torch.float32)
    ys = torch.arange(ry, ry + rh, dtype=torch.float32)
    left = xs - px if px > 0 else torch.full_like(xs, big)
    right = px + pw - 1 - xs if px + pw < img_w else torch.full_like(xs, big)
    top = ys - py if py > 0 else torch.full_like(ys, big)
    bottom = py + ph - 1 - ys if py + ph < img_h else torch.full_like(ys, big)
    dx, dy = torch.minimum(left, right), torch.minimum(top, bottom)
    depth = torch.minimum(dy[:, None], dx[None, :])
    inside = ((xs >= px) & (xs < px + pw))[None, :] & ((ys >= py) & (ys < py + ph))[:, None]
    return torch.where(inside, depth, torch.full_like(depth, -1.))


def composite(box, pieces, outputs, scale, image_hw):
    """The HR pixels ``[C, s*h, s*w]`` of ``box`` (LR ``(x, y, w, h)``) from decoded ``pieces``
    (:class:`Piece`) and their outputs ``[C, s*ph, s*pw]``, by the deepest-piece rule."""
    x, y, w, h = box
    s = scale
    region = (s * x, s * y, s * w, s * h)
    image = (s * image_hw[1], s * image_hw[0])
    cover = [k for k, p in enumerate(pieces)
             if p.x < x + w and x < p.x + p.w and p.y < y + h and y < p.y + p.h]
    if not cover:
        raise ValueError(f'composite: box {box} is covered by no piece')

    def cut(k):
        p = pieces[k]
        return outputs[k][:, s * (y - p.y):s * (y - p.y + h), s * (x - p.x):s * (x - p.x + w)]

    depths = torch.stack([depth_map((s * pieces[k].x, s * pieces[k].y, s * pieces[k].w, s * pieces[k].h),
                                    region, image) for k in cover])
    best, owner = depths.max(dim=0)  # first maximum: the lowest piece index wins ties
    if (best < 0).any():
        raise ValueError(f'composite: part of box {box} is covered by no piece')
    if len(cover) == 1:
        return cut(cover[0])
    c = outputs[cover[0]].shape[0]
    out = outputs[cover[0]].new_empty((c, s * h, s * w))
    for n, k in enumerate(cover):
        p = pieces[k]
        mask = owner == n
        if not mask.any():
            continue
        # the part of the box this piece covers (its pixels outside the piece never own)
        x0, y0 = max(x, p.x), max(y, p.y)
        x1, y1 = min(x + w, p.x + p.w), min(y + h, p.y + p.h)
        sub = outputs[k][:, s * (y0 - p.y):s * (y1 - p.y), s * (x0 - p.x):s * (x1 - p.x)]
        m = mask[s * (y0 - y):s * (y1 - y), s * (x0 - x):s * (x1 - x)]
        view = out[:, s * (y0 - y):s * (y1 - y), s * (x0 - x):s * (x1 - x)]
        view[:, m] = sub[:, m]
    return out
