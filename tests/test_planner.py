"""Many ROIs, planned (clsr_arch/planner.py) priced by clsr_arch.utils.flops.CostModel.

The guarantee of issue 12: for any set of boxes the plan costs no more FLOPs than post-crop and
than decoding every box on its own -- checked against FLOPs *counted* by torch's flop counter,
not against the cost model the planner itself uses; and the model predicts what actually runs.
"""
import copy
import random

import pytest
import torch

from basicsr.archs import build_network
from clsr_arch.archs.backbone_adapters import run_backbone
from clsr_arch.planner import Piece, composite, depth_map, merge_pieces, plan_boxes
from clsr_arch.utils.flops import CostModel, count_flops
from conftest import GCM, TINY


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Many tiny ops: one torch thread (see conftest.one_torch_thread)."""


def clsr(name, roi_pad=2):
    torch.manual_seed(0)
    return build_network({'type': 'CLSR', 'backbone': copy.deepcopy(TINY[name]), 'roi_pad': roi_pad,
                          'gcm': GCM, 'pim': {'ratio': 0.25}}).eval()


def random_boxes(rng, hw, n, max_side):
    H, W = hw
    out = []
    for _ in range(n):
        w, h = rng.randint(1, min(max_side, W)), rng.randint(1, min(max_side, H))
        out.append((rng.randint(0, W - w), rng.randint(0, H - h), w, h))
    return out


@pytest.mark.parametrize('name', list(TINY))
def test_cost_model_equals_counted_flops(name):
    net = clsr(name)
    cost = CostModel(net)
    assert cost.fit_error < 1e-9
    rng = random.Random(1)
    for hw in [(30, 41), (53, 26)]:
        context = torch.rand(1, 3, *hw)
        with torch.no_grad():
            state = net.encode_context(context)
        assert cost.context(*hw) == pytest.approx(count_flops(net.encode_context, context), rel=1e-9)
        for x, y, w, h in random_boxes(rng, hw, 4, 40) + [(0, 0, hw[1], hw[0])]:
            counted = count_flops(net.decode, state, torch.tensor([[0, x, y, w, h]]))
            assert cost.decode(h, w, hw) == pytest.approx(counted, rel=1e-9), (x, y, w, h)
        whole = count_flops(run_backbone, net.base, context, net.scale, net.adapter.multiple)
        assert cost.base(*hw) == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize('name', list(TINY))
def test_plan_never_costs_more_than_post_crop_or_single_decodes(name):
    """Seeded random box sets (any sizes, overlapping or touching), every backbone."""
    net = clsr(name)
    cost = CostModel(net)
    rng = random.Random(list(TINY).index(name))
    hw = (36, 44)
    context = torch.rand(1, 3, *hw)
    with torch.no_grad():
        state = net.encode_context(context)
    decode_counted = {}

    def counted(x, y, w, h):  # decode FLOPs depend on the box size only
        if (w, h) not in decode_counted:
            decode_counted[(w, h)] = count_flops(net.decode, state, torch.tensor([[0, x, y, w, h]]))
        return decode_counted[(w, h)]
    post = count_flops(run_backbone, net.base, context, net.scale, net.adapter.multiple)
    context_flops = count_flops(net.encode_context, context)
    modes = set()
    for trial in range(6):
        boxes = random_boxes(rng, hw, rng.choice([1, 3, 8, 25]), rng.choice([6, 16, 30]))
        if trial == 0:  # touching neighbours and an exact duplicate
            boxes = [(0, 0, 8, 8), (8, 0, 8, 8), (8, 0, 8, 8), (20, 20, 5, 9)]
        if trial == 1:  # every pixel, in a grid of 4x4 boxes
            boxes = [(x, y, 4, 4) for y in range(0, hw[0], 4) for x in range(0, hw[1], 4)]
        plan = plan_boxes(cost, boxes, hw, whole_flops=post)
        singles = context_flops + sum(counted(*b) for b in boxes)
        assert plan.flops <= min(post, singles) * (1 + 1e-9), (boxes, plan.summary())
        modes.add(plan.mode)
        if plan.mode == 'pieces':  # what runs: one context pass + one decode per piece
            ran = context_flops + sum(counted(p.x, p.y, p.w, p.h) for p in plan.pieces)
            assert plan.flops == pytest.approx(ran, rel=1e-9)
            for i, b in enumerate(boxes):  # every box lies inside the piece that serves it
                (p, ) = [p for p in plan.pieces if i in p.boxes]
                assert p.x <= b[0] and b[0] + b[2] <= p.x + p.w and p.y <= b[1] and b[1] + b[3] <= p.y + p.h
        else:
            assert plan.flops == post
    assert modes == {'pieces', 'whole'}  # both routes were exercised


def test_merging_takes_touching_boxes_and_leaves_distant_ones():
    cost = CostModel(clsr('MSRResNet'))
    hw = (100, 100)

    def price(p):
        return cost.decode(p.h, p.w, hw)
    pieces, _ = merge_pieces([(10, 10, 24, 24), (34, 10, 24, 24)], price, 8, 10 ** 6)
    assert [(p.x, p.y, p.w, p.h) for p in pieces] == [(10, 10, 48, 24)]
    pieces, _ = merge_pieces([(0, 0, 24, 24), (60, 60, 24, 24)], price, 8, 10 ** 6)
    assert len(pieces) == 2
    # the area limit (memory) is respected
    pieces, _ = merge_pieces([(10, 10, 24, 24), (34, 10, 24, 24)], price, 8, 24 * 24 * 2 - 1)
    assert len(pieces) == 2
    # a full grid goes whole-image when that is cheaper, and the context pass is then skipped
    grid = [(x, y, 20, 20) for y in range(0, 100, 20) for x in range(0, 100, 20)]
    plan = plan_boxes(cost, grid, hw, whole_flops=cost.base(*hw))
    assert plan.mode == 'whole' and plan.flops == cost.base(*hw) < plan.flops_singles
    assert plan_boxes(cost, grid, hw, whole_flops=None).mode == 'pieces'
    with pytest.raises(ValueError, match='no boxes'):
        plan_boxes(cost, [], hw)


def test_composite_takes_each_pixel_from_the_piece_it_lies_deepest_in():
    # two 1-channel pieces in a 20x40 image (scale 1), overlapping on columns 10..19
    a, b = Piece(0, 0, 20, 20), Piece(10, 0, 20, 20)
    outs = [torch.full((1, 20, 20), 1.), torch.full((1, 20, 20), 2.)]
    got = composite((5, 0, 20, 20), [a, b], outs, 1, (20, 40))
    # piece a's right side is interior: columns 15..19 are deeper in b (its left side at 10)
    depth_a = depth_map((0, 0, 20, 20), (10, 0, 10, 1), (40, 20))[0]
    depth_b = depth_map((10, 0, 20, 20), (10, 0, 10, 1), (40, 20))[0]
    assert depth_a.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert depth_b.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert got[0, 0].tolist() == [1.] * 10 + [2.] * 10  # ties (col 14/15 none here) go to a
    # the same pixels whichever box asks: consistent overlaps
    other = composite((12, 0, 10, 20), [a, b], outs, 1, (20, 40))
    assert torch.equal(other, got[:, :, 7:17])
