"""One image opened by :meth:`LocalSR.open <clsr_arch.api.LocalSR.open>`: its pixels, its context
pass once run, and local SR of any boxes of it by every method (``METHODS``).

The context pass of a plan (``plan=True``) is priced two ways (:mod:`.roi_context`): the
whole-frame pass, or the ROI-local one of the gigapixel path (GCM windows + the PIM tiles around
the boxes, :mod:`clsr_arch.archs.local_context`), and the cheaper runs: a few plates on a 2K frame
do not pay for the frame. Both give the same pixels (float summation order).
"""
import time

import numpy as np
import torch
from tqdm import tqdm

from basicsr.utils.matlab_functions import imresize

from ..archs import roi as roi_ops
from ..archs.backbone_adapters import run_backbone
from ..archs.tiling import DiskFeatures
from ..planner import Piece, composite, plan_boxes
from ..proposals import DEFAULT_ESTIMATOR, propose as propose_boxes
from ..utils.memory import format_bytes
from ..whole_image import tile_layout, touched_tiles, whole_image_flops, whole_image_sr
from .budget import MAX_BATCH, SAFETY
from .errors import LocalSRError, MemoryBudgetError
from .inputs import normalise_boxes, to_uint8
from .methods import METHODS, bicubic_flops
from .roi_context import ArrayRegions, local_context_flops


class Image:
    """One image opened by :meth:`LocalSR.open`: its pixels, and its context pass once run."""

    def __init__(self, model, rgb, name):
        self.model, self.rgb, self.name = model, rgb, name
        self.hw = rgb.shape[:2]
        # uint8 [1, 3, H, W] view of the HWC array: a quarter of a float copy; crops convert
        self.tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(model.device)
        self.state = None
        self.context_info = None
        self.last_run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def _check_open(self):
        if self.tensor is None:
            raise LocalSRError(f'{self.name}: this image was released; open it again')

    @property
    def encoded(self):
        """Whether the whole-frame context pass has run (an ROI-local one does not count)."""
        return self.state is not None and not self._local

    @property
    def _local(self):
        return bool(self.context_info) and self.context_info.get('mode') == 'roi-local'

    def encode(self):
        """Run the whole-frame context pass now (untiled, or tiled under the memory budget);
        returns self. An ROI-local context made by a plan before is replaced."""
        self._check_open()
        if self.state is not None and not self._local:
            return self
        self.forget_context()
        m, hw = self.model, self.hw
        t0 = time.perf_counter()
        tile, store = m.context_tiling(hw, self.name)
        need, features = m._estimates.get(('context', tuple(hw))), m.feature_bytes(hw)  # None: under the bound
        bar = None
        if tile and m.progress:
            bar = tqdm(total=-(-hw[0] // tile) * -(-hw[1] // tile), desc='context tiles', unit='tile')

        def progress(done, total):
            bar.update(done - bar.n)
        with torch.no_grad():
            self.state = m.net.encode_context(self.tensor, tile=tile, store=store, folder=m.cache_dir,
                                              progress=progress if bar is not None else None)
        if bar is not None:
            bar.close()
        if m.device.type == 'cuda':
            torch.cuda.synchronize(m.device)
        self.context_info = {'seconds': time.perf_counter() - t0, 'mode': 'whole', 'tile': tile, 'store': store,
                             'estimated_bytes': need, 'feature_bytes': features,
                             'gflops': m.cost.context(*hw) / 1e9}
        return self

    def _encode_local(self):
        """The ROI-local context (:mod:`.roi_context`): the GCM's windows now, PIM tiles on demand."""
        m = self.model
        t0 = time.perf_counter()
        with torch.no_grad():
            self.state = m.net.encode_local(ArrayRegions(self.rgb), m.pim_tile, m.pim_cache, m.device)
        self.context_info = {'seconds': time.perf_counter() - t0, 'mode': 'roi-local', 'pim_tile': m.pim_tile,
                             'pim_cache_bytes': m.pim_cache, 'gflops': m.cost.gcm(self.hw) / 1e9}

    def context_choice(self, boxes):
        """``(mode, flops)``: how a plan for ``boxes`` gets its context -- ``'done'`` (the
        whole-frame pass ran), ``'roi-local'`` (GCM windows + the PIM tiles the boxes meet that are
        not cached) or ``'whole'`` (the whole-frame pass) -- whichever costs fewer FLOPs."""
        if self.encoded:
            return 'done', 0.
        m = self.model
        whole = m.cost.context(*self.hw)
        local = local_context_flops(m, self.hw, boxes, self.state if self._local else None)
        return ('roi-local', local) if local < whole else ('whole', whole)

    def forget_context(self):
        """Free the context pass (and its feature file) but keep the pixels: the next CLSR box
        runs it again (a cache evicting contexts, e.g. the viewer's)."""
        if self.state is not None and isinstance(self.state.get('pim'), DiskFeatures):
            self.state['pim'].close()
        self.state = None
        self.context_info = None

    def release(self):
        """Free the context pass (and its feature file) and the pixels; the image is unusable."""
        self.forget_context()
        self.tensor = self.rgb = None

    def propose(self, n, size=48, estimator=DEFAULT_ESTIMATOR, max_overlap=0.):
        """Where to look: the ``n`` boxes of ``size`` (or ``(w, h)``) LR pixels with the highest
        estimated SR gain, near-duplicates suppressed (:func:`clsr_arch.proposals.propose`;
        ``estimator``: ``'map'`` -- the gain map, default -- ``'cnn'`` the gain CNN,
        ``'pim-detail'`` from the context pass, or the pre-issue-23 ``'gradient'``, ``'pim'``,
        ``'learned'``; ``max_overlap``: largest IoU of two proposals, 0 = disjoint). Returns ``(boxes, scores)``, best first."""
        self._check_open()
        return propose_boxes(self, n, size, estimator, max_overlap=max_overlap)

    # --- how this image's pixels are read (TiledImage reads them region by region)
    def _source(self):
        """The context as whole-image SR and the context pass take it."""
        return self.tensor

    def _crop(self, boxes):
        """uint8 ``[R, 3, h, w]`` crops of ``LongTensor[R, 5]`` boxes (``roi.crop`` semantics)."""
        return roi_ops.crop(self.tensor, boxes)

    def _pixels(self, x, y, w, h):
        """RGB uint8 ``[h, w, 3]`` of a box inside the image."""
        return self.rgb[y:y + h, x:x + w]

    def _context_paid(self):
        """Whether a CLSR plan can count the context pass as done (no FLOPs left to pay)."""
        return self.encoded

    def _whole_option(self):
        """``(tile, flops)`` of whole-image SR for the planner (flops None: not an option).
        Whole-image SR is priced as a whole image (every tile): it is chosen only when the boxes
        want about as much as the image; running just the touched tiles then saves more."""
        m = self.model
        try:
            tile = m.whole_tile(self.hw)
            return tile, whole_image_flops(m.cost, self.hw, [(0, 0, self.hw[1], self.hw[0])], tile, m.tile_overlap)
        except MemoryBudgetError:
            return None, None

    # --- local SR
    def super_resolve(self, boxes, method='clsr', output='uint8', plan=True, pad=None, only=None):
        """SR of ``boxes`` (``[(x, y, w, h), ...]`` LR pixels, any sizes, may overlap).

        Args:
            method: ``'clsr'``, ``'pre_crop'``, ``'post_crop'`` or ``'bicubic'``.
            output: ``'uint8'`` (``[s*h, s*w, 3]`` RGB arrays) or ``'tensor'`` (float ``[3, s*h,
                s*w]`` RGB on the CPU, not clamped).
            plan: CLSR only: plan the boxes (merge, or whole-image SR when cheaper; overlapping
                boxes agree pixel for pixel); False decodes every box on its own, exactly as a
                one-box call would (overlapping boxes may then differ slightly where they meet).
            pad: pre-crop only: LR pixels of real context (default: CLSR's ``roi_pad``).
            only: indices of the boxes to run (default all); the others come back as None. A CLSR
                plan is still made for all ``boxes``, so a box gets the pixels it gets in a run
                of all of them (a resumed batch writes what an uninterrupted one writes).
        Returns the list of outputs, in the order of ``boxes``; ``self.last_run`` tells how.
        """
        self._check_open()
        if method not in METHODS:
            raise LocalSRError(f'method {method!r}: expected one of {", ".join(METHODS)}')
        if output not in ('uint8', 'tensor'):
            raise LocalSRError(f"output {output!r}: expected 'uint8' or 'tensor'")
        boxes = normalise_boxes(boxes, self.hw)
        n = len(boxes)
        want = list(range(n)) if only is None else sorted({int(i) for i in only})
        if any(i < 0 or i >= n for i in want):
            raise LocalSRError(f'only: box indices must be in 0..{n - 1}, got {only!r}')
        self.model.cost  # built once per model (~0.5 s), not charged to the first call's time
        t0 = time.perf_counter()
        info = {'method': method, 'boxes': len(want)}
        sub = [boxes[i] for i in want]
        with torch.no_grad():
            if method == 'clsr' and plan:
                outs = self._clsr(boxes, plan, info, want)  # planned with every box
            elif method == 'clsr':
                outs = self._clsr(sub, plan, info)  # each box on its own
            elif method == 'pre_crop':
                outs = self._pre_crop(sub, self.model.net.roi_pad if pad is None else int(pad), info)
            elif method == 'post_crop':
                outs = self._post_crop(sub, info)
            else:
                outs = self._bicubic(sub, info)
        if self.model.device.type == 'cuda':
            torch.cuda.synchronize(self.model.device)
        info['seconds'] = time.perf_counter() - t0
        if 'box_seconds' not in info:  # whole-image SR: every box needed the whole run
            info['box_seconds'] = [info['seconds']] * len(sub)
        if len(outs) != n:  # back to the positions of boxes
            full, secs = [None] * n, [0.] * n
            for i, o, sec in zip(want, outs, info['box_seconds']):
                full[i], secs[i] = o, sec
            outs, info['box_seconds'] = full, secs
        self.last_run = info
        if output == 'tensor':
            return [None if o is None else o.float().cpu() for o in outs]
        return [None if o is None else to_uint8(o) for o in outs]

    def box_gflops(self, boxes, run=None):
        """GFLOPs of each box in a run of :meth:`super_resolve` (default: the last), each its own:
        CLSR -- its decode plus an equal share of what the boxes shared (the context pass, or the
        ROI-local windows and tiles); whole-image SR planned for CLSR -- an equal share;
        post-crop -- the whole image (it runs for any box); pre-crop and bicubic -- the box's own."""
        run = run or self.last_run
        boxes = normalise_boxes(boxes, self.hw)
        cost, n = self.model.cost, len(boxes)
        if run['method'] == 'post_crop':
            return [run['gflops']] * n
        if run['method'] == 'bicubic':
            return [bicubic_flops(h, w, self.model.scale) / 1e9 for _, _, w, h in boxes]
        if run['method'] == 'pre_crop':
            return [cost.base(*roi_ops_padded(h, w, run['pad'], self.model.multiple)) / 1e9 for _, _, w, h in boxes]
        if run.get('route') != 'clsr':
            return [run['gflops'] / n] * n
        own = [cost.decode(h, w, self.hw) / 1e9 for _, _, w, h in boxes]
        shared = max(0., run['gflops'] - sum(own)) / n
        return [o + shared for o in own]

    def _whole(self, run, boxes, info, tile):
        """Whole-image SR of ``run`` (untiled, or only the tiles the boxes touch), into ``info``:
        the tile, the tiles run, and their FLOPs (``gflops``); ``gflops_full`` is every tile."""
        m = self.model
        info['tile'] = tile
        info['gflops'] = whole_image_flops(m.cost, self.hw, boxes, tile, m.tile_overlap) / 1e9
        info['gflops_full'] = whole_image_flops(m.cost, self.hw, [(0, 0, self.hw[1], self.hw[0])], tile,
                                                m.tile_overlap) / 1e9
        if tile:
            info['tiles'] = (len(touched_tiles(self.hw, tile, m.tile_overlap, boxes)),
                             len(tile_layout(self.hw, tile, m.tile_overlap)))
        bar = None
        if tile and m.progress:
            bar = tqdm(desc='whole-image tiles', unit='tile')

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)
        outs = whole_image_sr(run, self._source(), m.scale, boxes, m.multiple, tile, m.tile_overlap,
                              progress if bar is not None else None)
        if bar is not None:
            bar.close()
        return outs

    def _post_crop(self, boxes, info):
        return self._whole(self.model.base, boxes, info, self.model.whole_tile(self.hw, boxes))

    def _bicubic(self, boxes, info):
        s = self.model.scale
        info['gflops'] = sum(bicubic_flops(h, w, s) for _, _, w, h in boxes) / 1e9
        outs, info['box_seconds'] = [], []
        for x, y, w, h in boxes:
            t0 = time.perf_counter()
            up = imresize(self._pixels(x, y, w, h).astype(np.float32) / 255., s)  # of the box alone
            outs.append(torch.from_numpy(np.ascontiguousarray(up.transpose(2, 0, 1))))
            info['box_seconds'].append(time.perf_counter() - t0)
        return outs

    def _pre_crop(self, boxes, pad, info):
        m = self.model
        if pad < 0:
            raise LocalSRError(f'pad must be >= 0, got {pad}')
        outs = [None] * len(boxes)
        info['box_seconds'] = [0.] * len(boxes)
        gflops = 0.
        for (w, h), idx in _by_size(boxes).items():
            pads = roi_ops.padding_for(h, w, pad, m.multiple)
            for chunk in _chunks(idx, m, (h + pads[1] + pads[3]) * (w + pads[0] + pads[2])):
                t0 = time.perf_counter()
                b = torch.tensor([[0, *boxes[i]] for i in chunk])
                # the same padded window as CLSR's base branch (real context, shifted inward at borders)
                pb, offsets = roi_ops.place_inside(roi_ops.pad_boxes(b, pads), b, self.hw, m.multiple)
                crops = self._crop(pb).float().div_(255.)
                sr = roi_ops.crop_outputs(run_backbone(m.base, crops, m.scale), offsets, h, w, m.scale)
                gflops += len(chunk) * m.cost.base(int(pb[0, 4]), int(pb[0, 3])) / 1e9
                for i, o in zip(chunk, sr):
                    outs[i] = o
                    info['box_seconds'][i] = (time.perf_counter() - t0) / len(chunk)  # a batch: equal shares
        info['gflops'] = gflops
        info['pad'] = pad
        return outs

    def plan(self, boxes):
        """The :class:`~clsr_arch.planner.Plan` CLSR would run for ``boxes`` now (nothing runs):
        ``mode`` ``'whole'`` means whole-image SR with the plain backbone (``flops`` tells its
        cost); ``context`` on the plan says how the context pass would be paid."""
        self._check_open()
        boxes = normalise_boxes(boxes, self.hw)
        m = self.model
        mode, context = self.context_choice(boxes)
        _, whole = self._whole_option()
        p = plan_boxes(m.cost, boxes, self.hw, context_done=mode == 'done', whole_flops=whole,
                       max_pixels=max(1, m.decode_capacity()), context_flops=context)
        p.context = mode
        return p

    def _clsr(self, boxes, plan, info, want=None):
        """CLSR of ``boxes``; with ``plan``, only the pieces the boxes ``want`` (indices; default
        all) need are decoded, and the outputs are those of ``want``, in its order."""
        m = self.model
        want = list(range(len(boxes))) if want is None else want
        if plan:
            mode, context = self.context_choice(boxes)
            tile, whole = self._whole_option()
            p = plan_boxes(m.cost, boxes, self.hw, context_done=mode == 'done', whole_flops=whole,
                           max_pixels=max(1, m.decode_capacity()), context_flops=context)
            info['plan'] = p.summary()
            info['gflops'] = p.flops / 1e9
            if p.mode == 'whole':
                info['route'] = 'whole-image SR (plain backbone: cheaper than CLSR for these boxes)'
                return self._whole(m.net.base, [boxes[i] for i in want], info, tile)
            pieces = p.pieces
            info['context'] = mode
            if mode == 'whole':
                self.encode()
            elif mode == 'roi-local' and not self._local:
                self._encode_local()
        else:
            pieces = [Piece(*b, boxes=[i]) for i, b in enumerate(boxes)]
            info['gflops'] = ((0 if self._context_paid() else m.cost.context(*self.hw))
                              + sum(m.cost.decode(h, w, self.hw) for _, _, w, h in boxes)) / 1e9
            if self.state is None:
                self.encode()
            info['context'] = 'roi-local' if self._local else 'whole'
        info['route'] = 'clsr'
        piece_boxes = [(p.x, p.y, p.w, p.h) for p in pieces]
        outputs, seconds = [None] * len(pieces), [0.] * len(pieces)
        # the pieces that cover a wanted box (compositing reads every piece over it)
        needed = [k for k, (x, y, w, h) in enumerate(piece_boxes)
                  if any(x < bx + bw and bx < x + w and y < by + bh and by < y + h
                         for bx, by, bw, bh in (boxes[i] for i in want))]
        groups = _by_size([piece_boxes[k] for k in needed])
        groups = {size: [needed[j] for j in idx] for size, idx in groups.items()}
        bar = tqdm(total=len(pieces), desc='CLSR decodes', unit='roi', disable=not m.progress or len(pieces) < 8)
        for (w, h), idx in groups.items():
            ph, pw = m.cost.padded_size(h, w, self.hw)
            if ph * pw > m.decode_capacity():  # one box too large to decode at once: say so, not run out of memory
                need = m.decode_bytes(ph * pw)
                raise MemoryBudgetError(
                    f'box {piece_boxes[idx[0]]}: one CLSR decode of {w}x{h} LR pixels needs ~{format_bytes(need * SAFETY)} '
                    f'(estimate x{SAFETY}), over the memory budget of {format_bytes(m.max_memory)}: use smaller boxes, '
                    'or plan=True (a box this large goes to tiled whole-image SR)')
            for chunk in _chunks(idx, m, ph * pw):
                t0 = time.perf_counter()
                b = torch.tensor([[0, *piece_boxes[i]] for i in chunk])
                sr = m.net.decode(self.state, b.to(m.device)).cpu()
                for i, o in zip(chunk, sr):
                    outputs[i] = o
                    seconds[i] = (time.perf_counter() - t0) / len(chunk)  # one batched call: equal shares
                bar.update(len(chunk))
        bar.close()
        info['pieces'] = len(pieces)
        # each box: its share of the pieces serving it (ROI-local PIM tiles are computed inside)
        box_seconds = [0.] * len(boxes)
        for p, sec in zip(pieces, seconds):
            for i in p.boxes:
                box_seconds[i] += sec / len(p.boxes)
        info['box_seconds'] = [box_seconds[i] for i in want]
        if not plan or (len(pieces) == len(boxes) and not _overlapping(boxes)):
            return [outputs[i] for i in want]  # one piece per box, in box order (no merging, no compositing)
        return [composite(boxes[i], pieces, outputs, m.scale, self.hw) for i in want]

def roi_ops_padded(h, w, pad, multiple):
    """``(h', w')`` of a box padded by ``pad`` and to the size multiple (pre-crop's input)."""
    left, top, right, bottom = roi_ops.padding_for(h, w, pad, multiple)
    return h + top + bottom, w + left + right


def _by_size(boxes):
    groups = {}
    for i, (_, _, w, h) in enumerate(boxes):
        groups.setdefault((w, h), []).append(i)
    return groups


def _chunks(idx, model, pixels_each):
    """Batches of ``idx`` whose decode fits the memory budget (at most MAX_BATCH)."""
    n = max(1, min(MAX_BATCH, model.decode_capacity() // max(pixels_each, 1)))
    return [idx[i:i + n] for i in range(0, len(idx), n)]


def _overlapping(boxes):
    s = sorted(boxes)
    for i, (x, y, w, h) in enumerate(s):
        for x2, y2, w2, h2 in s[i + 1:]:
            if x2 >= x + w:
                break
            if y2 < y + h and y < y2 + h2:
                return True
    return False
