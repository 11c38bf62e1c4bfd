"""Memory budgets: every pass of a :class:`~clsr_arch.api.LocalSR` priced in bytes before it runs
(:mod:`clsr_arch.utils.memory`: tensors counted on the meta device, times ``SAFETY``), and the
tilings that make a pass fit (docs/design.md, "Memory budgets and the tiled context pass").

:class:`MemoryBudgets` is a mixin of :class:`~clsr_arch.api.LocalSR`: it needs ``net``,
``base``, ``scale``, ``multiple``, ``tile``, ``tile_overlap`` and ``max_memory``.
"""
import copy

import numpy as np
import torch

from ..archs.backbone_adapters import run_backbone
from ..archs.tiling import pim_halo
from ..utils.flops import CostModel
from ..utils.memory import format_bytes, linear_peak, peak_bytes
from ..whole_image import whole_image_flops
from .errors import MemoryBudgetError

SAFETY = 1.5          # estimated tensor bytes x this <= budget (allocator slack, kernel scratch)
CONTEXT_TILES = (1024, 512, 256, 128, 64)  # tried largest first for the tiled context pass
WHOLE_TILES = (2048, 1024, 512, 256, 128, 64, 32)  # tried largest first for tiled whole-image SR
MAX_BATCH = 64        # ROIs per decode call
BOUND_SIDE = 1024     # every image up to this side is priced by this square (an upper bound), once


class MemoryBudgets:
    """Byte estimates of every pass and the tilings under ``max_memory`` (and the FLOPs model)."""

    @property
    def cost(self):
        """The FLOPs model (:class:`clsr_arch.utils.flops.CostModel`), built on first use."""
        if self._cost is None:
            self._cost = CostModel(self.net)
        return self._cost

    def _meta_nets(self):
        if self._meta is None:
            self._meta = copy.deepcopy(self.net).to('meta'), copy.deepcopy(self.base).to('meta')
        return self._meta

    def _memo(self, key, fn):
        if key not in self._estimates:
            self._estimates[key] = fn()
        return self._estimates[key]

    def context_bytes(self, hw):
        """Estimated peak bytes of the untiled context pass over an ``hw`` LR image."""
        net = self._meta_nets()[0]

        def count(h, w):  # each size counted once (the fit's probes serve every large image)
            return self._memo(('context-at', h, w), lambda: peak_bytes(
                net.encode_context, torch.zeros(1, 3, h, w, dtype=torch.uint8, device='meta')))
        return self._memo(('context', tuple(hw)), lambda: linear_peak(count, hw))

    def _fits_bounded(self, kind, hw):
        """Whether an untiled pass (``kind`` 'context' or 'whole') surely fits: ``hw`` within the
        ``BOUND_SIDE`` square, whose pass (counted once) fits. Spares a count on the meta device
        per image size when a batch meets hundreds of sizes, all far under the budget."""
        if max(hw) > BOUND_SIDE:
            return False
        side = (BOUND_SIDE, BOUND_SIDE)
        return self.fits(self.context_bytes(side) if kind == 'context' else self.whole_bytes(side))

    def feature_bytes(self, hw):
        """Bytes of the PIM features the context pass keeps for an ``hw`` LR image."""
        if self.net.pim is None:
            return 0
        return hw[0] * hw[1] * self.net.pim.channels * len(self.net.pim.blocks) * 4

    def whole_bytes(self, hw):
        """Estimated peak bytes of whole-image SR with the plain backbone on ``hw`` LR pixels."""
        base = self._meta_nets()[1]

        def run(h, w):
            return self._memo(('whole-at', h, w), lambda: peak_bytes(
                lambda x: run_backbone(base, x.float().div(255.), self.scale, self.multiple),
                torch.zeros(1, 3, h, w, dtype=torch.uint8, device='meta')))
        return self._memo(('whole', tuple(hw)), lambda: linear_peak(run, hw))

    def decode_bytes(self, pixels):
        """Estimated peak bytes of decoding ROIs of ``pixels`` LR pixels in all (padded)."""
        if not hasattr(self, '_decode_fit'):
            net = self._meta_nets()[0]
            state = net.encode_context(torch.zeros(1, 3, 96, 96, dtype=torch.uint8, device='meta'))
            p = [peak_bytes(net.decode, state, torch.tensor([[0, 8, 8, s, s]])) for s in (16, 48)]
            a = (p[1] - p[0]) / ((48 + 2 * self.net.roi_pad) ** 2 - (16 + 2 * self.net.roi_pad) ** 2)
            self._decode_fit = (a, max(0., p[0] - a * (16 + 2 * self.net.roi_pad) ** 2))
        a, b = self._decode_fit
        return int(a * pixels + b)

    def fits(self, nbytes):
        return nbytes * SAFETY <= self.max_memory

    def decode_capacity(self):
        """LR pixels (padded, all ROIs together) one decode call may hold within the budget:
        the bound on a batch, on a merged piece and on a single box."""
        a = max(self.decode_bytes(1) - self.decode_bytes(0), 1)
        return int((self.max_memory / SAFETY - self.decode_bytes(0)) // a)

    def context_tile_bytes(self, hw, tile, store):
        """Estimated peak bytes of the tiled context pass: one tile grown by the PIM's halo (and
        for the disk store the band of tile rows waiting to be written)."""
        halo = pim_halo(self.net.pim) if self.net.pim is not None else 0
        grown = (min(hw[0], tile + 2 * halo), min(hw[1], tile + 2 * halo))
        band = self.feature_bytes((min(hw[0], tile), hw[1])) if store == 'disk' else 0
        return self.context_bytes(grown) + band

    def context_tiling(self, hw, name='image'):
        """``(tile, store)`` of the context pass over ``hw``: ``(None, 'memory')`` when the
        untiled pass fits; else the largest tile whose pass fits beside the features in memory,
        else (features on disk) beside nothing; tile ``0`` and too large: MemoryBudgetError."""
        features = self.feature_bytes(hw)
        if isinstance(self.tile, (int, np.integer)) and self.tile > 0:
            t = int(self.tile)
            return t, 'memory' if self.fits(features + self.context_tile_bytes(hw, t, 'memory')) else 'disk'
        if self._fits_bounded('context', hw):
            return None, 'memory'
        need = self.context_bytes(hw)
        if self.fits(need):
            return None, 'memory'
        if self.tile == 0:
            raise MemoryBudgetError(
                f'{name}: the context pass over the {hw[1]}x{hw[0]} LR image needs ~{format_bytes(need * SAFETY)} '
                f'(estimate x{SAFETY}), over the memory budget of {format_bytes(self.max_memory)}, and tiling '
                'is disabled (tile=0): allow tiling or raise max_memory')
        for store, extra in (('memory', features), ('disk', 0)):
            for t in CONTEXT_TILES:
                if self.fits(extra + self.context_tile_bytes(hw, t, store)):
                    return t, store
        raise MemoryBudgetError(f'{name}: not even a {CONTEXT_TILES[-1]}-pixel tile of the context pass fits '
                                f'the memory budget of {format_bytes(self.max_memory)}')

    def whole_tile(self, hw, boxes=None):
        """Tile of whole-image SR of ``hw`` for ``boxes``: None when untiled fits; else, of the
        tile sizes that fit, the one whose touched tiles cost the fewest FLOPs (few boxes: small
        tiles, a full grid: large ones, less overlap); MemoryBudgetError with tiling off."""
        if isinstance(self.tile, (int, np.integer)) and self.tile > 0:
            return int(self.tile)
        if self._fits_bounded('whole', hw):
            return None
        need = self.whole_bytes(hw)
        if self.fits(need):
            return None
        if self.tile == 0:
            raise MemoryBudgetError(
                f'whole-image SR of the {hw[1]}x{hw[0]} LR image needs ~{format_bytes(need * SAFETY)} '
                f'(estimate x{SAFETY}), over the memory budget of {format_bytes(self.max_memory)}, and tiling '
                'is disabled (tile=0): allow tiling or raise max_memory')
        o = self.tile_overlap
        fitting = [t for t in WHOLE_TILES if self.fits(self.whole_bytes((min(hw[0], t + 2 * o), min(hw[1], t + 2 * o))))]
        if not fitting:
            raise MemoryBudgetError(f'whole-image SR: not even a {WHOLE_TILES[-1]}-pixel tile fits the memory '
                                    f'budget of {format_bytes(self.max_memory)}')
        if boxes is None:
            return fitting[0]
        return min(fitting, key=lambda t: (whole_image_flops(self.cost, hw, boxes, t, o), -t))
