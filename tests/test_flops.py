"""FLOPs helper and the paper's Table 1 budget (x4, 24x24 ROI): CLSR must cost no more than the
paper's "Ours" at BSD100 (144x216 LR context) and Urban100 (384x480) size, for every backbone.

Counting runs on meta tensors (no real compute), so full-size RCAN/SwinIR are affordable.
"""
import pytest
import torch
from torch import nn

import clsr_arch  # noqa: F401
from clsr_arch.utils.flops import (BSD100_HW, PAPER_BACKBONES, URBAN100_HW, build_on, count_flops,
                                   localsr_flops)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Many tiny ops: one torch thread (see conftest.one_torch_thread)."""


def test_count_flops_single_conv_matches_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.rand(1, 3, 10, 12)
    assert count_flops(conv, x) == 2 * 3 * 8 * 3 * 3 * 10 * 12
    conv5 = nn.Conv2d(4, 6, 5, stride=1, padding=2).to('meta')
    assert count_flops(conv5, torch.empty(2, 4, 7, 9, device='meta')) == 2 * 2 * 4 * 6 * 25 * 7 * 9


def test_srresnet_pre_and_post_crop_match_paper():
    opt = PAPER_BACKBONES['SRResNet'][0]
    out = localsr_flops(opt, BSD100_HW, (24, 24))
    assert abs(out['pre_crop'] - 2.93) / 2.93 < 0.01  # Table 1 pre-cropping
    assert abs(out['post_crop'] - 158.19) / 158.19 < 0.01  # Table 1 post-cropping, BSD100 (144x216)
    assert out['clsr'] == pytest.approx(out['clsr_context'] + out['clsr_roi'])
    assert out['pre_crop'] < out['clsr'] < out['post_crop']


def test_clsr_flops_parts_and_training_head_excluded():
    """The context pass grows with the context, the per-ROI part does not; the PIM's HR tail
    (training only) is not part of CLSR's inference cost."""
    opt = {'type': 'CLSR', 'backbone': PAPER_BACKBONES['SRResNet'][0]}
    net = build_on(opt, 'meta')
    small = localsr_flops(net, BSD100_HW, strategies=('clsr', ))
    big = localsr_flops(net, URBAN100_HW, strategies=('clsr', ))
    assert big['clsr_roi'] == small['clsr_roi']
    assert big['clsr_context'] > 3 * small['clsr_context']
    context = torch.empty(1, 3, *BSD100_HW, device='meta')
    box = torch.tensor([[0, 96, 60, 24, 24]])
    with_tail = count_flops(net, context, box, return_context=True) / 1e9
    tail = 2 * net.pim.channels * 3 * 16 * 9 * BSD100_HW[0] * BSD100_HW[1] / 1e9  # conv c' -> 3*s^2
    assert with_tail == pytest.approx(small['clsr'] + tail, rel=1e-6)


@pytest.mark.parametrize('name', [n for n, (_, paper) in PAPER_BACKBONES.items() if paper[1] is not None])
def test_clsr_within_paper_budget(name):
    opt, (_, bsd_target, urban_target, _) = PAPER_BACKBONES[name]
    net = build_on({'type': 'CLSR', 'backbone': opt}, 'meta')
    bsd = localsr_flops(net, BSD100_HW, strategies=('clsr', ))['clsr']
    urban = localsr_flops(net, URBAN100_HW, strategies=('clsr', ))['clsr']
    assert bsd <= bsd_target, f'{name}: CLSR {bsd:.3f} GFLOPs at BSD100 > paper {bsd_target}'
    assert urban <= urban_target, f'{name}: CLSR {urban:.3f} GFLOPs at Urban100 > paper {urban_target}'
