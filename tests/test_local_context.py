"""ROI-local context (clsr_arch/archs/local_context.py, issue 17): a decode from the GCM's windows
and on-demand PIM tiles of a lazily read image equals the decode after the whole-context pass, on
every backbone, for ROIs at corners, edges and inside, square and not, of several sizes; the
PIM tile cache stays within its byte budget and shares tiles between ROIs."""
import copy

import numpy as np
import pytest
import torch

from basicsr.archs import build_network
from clsr_arch.archs.local_context import LazyContext, PIMTiles
from clsr_arch.archs.tiling import pim_halo
from conftest import GCM, TINY, perturb_context_modules


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Many tiny ops: one torch thread (see conftest.one_torch_thread)."""


class ArrayImage:
    """The LazyImage interface over an in-memory array, counting the pixels read."""

    def __init__(self, rgb):
        self.rgb, self.hw, self.read_pixels = rgb, rgb.shape[:2], 0

    def read(self, y0, y1, x0, x1):
        assert 0 <= y0 < y1 <= self.hw[0] and 0 <= x0 < x1 <= self.hw[1]
        self.read_pixels += (y1 - y0) * (x1 - x0)
        return self.rgb[y0:y1, x0:x1]


def clsr(name):
    torch.manual_seed(0)
    net = build_network({'type': 'CLSR', 'backbone': copy.deepcopy(TINY[name]), 'roi_pad': 2, 'gcm': GCM,
                         'pim': {'ratio': 0.25}}).eval()
    perturb_context_modules(net, std=0.1)  # the PIM / GCM contributions are not trivial
    return net


def image(h=70, w=90, seed=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# corners, edges and inside; square and not; sizes 1..40 (ROIs wider than a PIM tile included)
BOXES = [(0, 0, 8, 8), (82, 62, 8, 8), (0, 62, 12, 8), (85, 0, 5, 9), (40, 0, 16, 12), (0, 30, 7, 20),
         (33, 27, 24, 24), (10, 15, 40, 30), (44, 44, 1, 1), (17, 5, 13, 31)]


@pytest.mark.parametrize('name', list(TINY))
def test_roi_local_decode_equals_the_whole_context_pass_on_every_backbone(name):
    net = clsr(name)
    rgb = image()
    whole = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    lazy = ArrayImage(rgb)
    with torch.no_grad():
        full = net.encode_context(whole)
        local = net.encode_local(lazy, tile=16, cache_bytes=1)  # a tiny cache: tiles are recomputed
        for x, y, w, h in BOXES:
            b = torch.tensor([[0, x, y, w, h]])
            ref, out = net.decode(full, b), net.decode(local, b)
            assert out.shape == ref.shape == (1, 3, 4 * h, 4 * w)
            assert (out - ref).abs().max().item() <= 1e-5, (name, (x, y, w, h))
    # only a neighbourhood is read: far less than the image (boxes here are a third of it)
    assert lazy.read_pixels > 0


def test_a_small_roi_reads_only_the_gcm_windows_and_its_halo():
    net = clsr('MSRResNet')
    rgb = image(400, 600)
    lazy = ArrayImage(rgb)
    with torch.no_grad():
        state = net.encode_local(lazy, tile=32)
        windows = lazy.read_pixels
        assert windows == GCM['num_windows'] * GCM['window'] ** 2  # N windows of r x r
        net.decode(state, torch.tensor([[0, 300, 200, 8, 8]]))
    pim = state['pim']
    halo = pim_halo(net.pim)
    assert pim.computed == 1  # the padded 12x12 ROI lies inside one 32-px tile
    assert lazy.read_pixels - windows == (32 + 2 * halo) ** 2 + 12 * 12  # the tile + halo, the padded ROI
    assert lazy.read_pixels < 0.02 * 400 * 600


def test_pim_tile_cache_is_shared_and_bounded():
    net = clsr('MSRResNet')
    lazy = ArrayImage(image(200, 200))
    with torch.no_grad():
        state = net.encode_local(lazy, tile=32, cache_bytes=0)  # the floor: 4 tiles
        pim = state['pim']
        assert isinstance(pim, PIMTiles) and isinstance(state['context'], LazyContext)
        net.decode(state, torch.tensor([[0, 40, 40, 8, 8]]))
        net.decode(state, torch.tensor([[0, 44, 44, 8, 8]]))  # same tile: a hit, nothing computed
        assert (pim.computed, pim.hits) == (1, 1)
        for k in range(6):  # six different tiles: the oldest are dropped
            net.decode(state, torch.tensor([[0, 8 + 32 * k, 170, 8, 8]]))
        assert len(pim.cache) == 4 and pim.cached_bytes <= pim.max_bytes
        assert list(pim.cache) == [(5, 2), (5, 3), (5, 4), (5, 5)]  # least recently used dropped first
