"""The context pass over tiles (clsr_arch/archs/tiling.py): the PIM's halo is its true receptive
field, and the tiled pass -- in memory or on disk, from a float or a uint8 context -- gives the
untiled pass's features and CLSR outputs on every backbone (max abs difference <= 1e-5)."""
import copy

import pytest
import torch

from basicsr.archs import build_network
from clsr_arch.archs.tiling import DiskFeatures, crop_features, encode_pim_tiled, pim_halo, spans
from conftest import GCM, TINY, perturb_context_modules


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Many tiny ops: one torch thread (see conftest.one_torch_thread)."""


def clsr(name):
    torch.manual_seed(0)
    net = build_network({'type': 'CLSR', 'backbone': copy.deepcopy(TINY[name]), 'roi_pad': 2, 'gcm': GCM,
                         'pim': {'ratio': 0.25}}).eval()
    perturb_context_modules(net, std=0.1)  # injections non-zero: the PIM features matter
    return net


def test_spans_cover_once():
    assert spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert spans(3, 8) == [(0, 3)]
    with pytest.raises(ValueError, match='tile must be >= 1'):
        spans(3, 0)


@pytest.mark.parametrize('name', list(TINY))
def test_pim_halo_is_the_receptive_field_measured_by_gradients(name):
    """Which input pixels have a non-zero gradient for one output pixel of the last PIM stage:
    exactly those within pim_halo (Chebyshev distance)."""
    net = clsr(name)
    halo = pim_halo(net.pim)
    assert halo == 1 + 2 * len(net.pim.blocks)  # head conv + two 3x3 convs per slim block
    x = torch.rand(1, 3, 2 * halo + 11, 2 * halo + 11, requires_grad=True)
    c = x.shape[-1] // 2
    net.pim.encode(x)[-1][0, :, c, c].sum().backward()
    support = (x.grad[0].abs().sum(0) > 0).nonzero()
    assert (support - c).abs().max().item() == halo
    assert support.shape[0] == (2 * halo + 1) ** 2  # the whole square, no holes


@pytest.mark.parametrize('name', list(TINY))
def test_tiled_context_pass_equals_untiled_on_every_backbone(name, tmp_path):
    net = clsr(name)
    torch.manual_seed(3)
    context = torch.rand(1, 3, 37, 53)
    u8 = (context * 255).round().to(torch.uint8)
    context = u8.float() / 255.  # the same pixels as the uint8 context
    with torch.no_grad():
        full = net.encode_context(context)
        tiled = net.encode_context(u8, tile=16)
        disk = net.encode_context(context, tile=11, store='disk', folder=str(tmp_path))
    assert isinstance(disk['pim'], DiskFeatures) and disk['pim'].path.startswith(str(tmp_path))
    for a, b in zip(full['pim'], tiled['pim']):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-5
    for k in ('k', 'v', 'pos'):  # GCM windows come from the whole image either way
        assert torch.equal(full['gcm'][k], tiled['gcm'][k])
    # ROIs at corners, edges and inside, square and not, several sizes
    m = net.adapter.multiple
    for w, h, places in [(8, 8, [(0, 0), (45, 29), (20, 0), (0, 15), (17, 13)]),
                         (12, 5, [(41, 32), (30, 3)]), (36, 20, [(0, 0), (17, 17)])]:
        boxes = torch.tensor([[0, x, y, w, h] for x, y in places])
        with torch.no_grad():
            ref = net.decode(full, boxes)
            for state in (tiled, disk):
                out = net.decode(state, boxes)
                assert out.shape == (len(places), 3, 4 * h, 4 * w)
                assert (out - ref).abs().max() <= 1e-5, (name, w, h, m)
    # the disk store crops exactly what the in-memory crop gives, reflection past the border too
    boxes = torch.tensor([[0, -3, -2, 9, 7], [0, 48, 33, 9, 7]])
    for a, b in zip(crop_features(disk['pim'], boxes, 'cpu'), crop_features(full['pim'], boxes, 'cpu')):
        assert (a - b).abs().max() <= 1e-5
    path = disk['pim'].path
    disk['pim'].close()
    assert not tmp_path.joinpath(path).exists()


def test_tiled_pass_takes_one_context_and_a_known_store():
    net = clsr('MSRResNet')
    with pytest.raises(ValueError, match=r'one context at a time'):
        encode_pim_tiled(net.pim, torch.rand(2, 3, 20, 20), 8)
    with pytest.raises(ValueError, match=r"store must be 'memory' or 'disk'"):
        encode_pim_tiled(net.pim, torch.rand(1, 3, 20, 20), 8, store='cloud')
    with pytest.raises(ValueError, match=r'float in \[0, 1\] or uint8'):
        net.encode_context(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


def test_uint8_context_gives_the_float_context_outputs_exactly():
    net = clsr('CARN_M')
    u8 = torch.randint(0, 256, (1, 3, 30, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    f = u8.float() / 255.
    boxes = torch.tensor([[0, 3, 4, 10, 10], [0, 30, 20, 10, 10]])
    with torch.no_grad():
        assert torch.equal(net(u8, boxes), net(f, boxes))
