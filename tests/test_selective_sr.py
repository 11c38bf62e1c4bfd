"""Selective whole-image SR with a learned fallback (clsr_arch/selective_sr.py, issue 23 item 4):
the fallback's and the heavy network's pixels by value, the two ends (k = 0: the light network
everywhere; k = 1: post-crop), the tile merging, the FLOPs accounting and bad input."""
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from clsr_arch import selective_sr as ssr
from clsr_arch.api import LocalSR, LocalSRError
from conftest import bicubic_lr, shared


@pytest.fixture(scope='module')
def model():
    return LocalSR('clsr-carn-m', device='cpu')


@pytest.fixture(scope='module')
def lr():
    """Set5 bird made LR and cropped to 48 x 72 (a 2 x 3 grid of 24 x 24 tiles)."""
    import cv2
    hr = cv2.imread(shared('Set5', 'HR', 'bird.png'), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    return bicubic_lr(hr, 4)[:48, :72].copy()


@pytest.fixture(scope='module')
def sel(model):
    torch.manual_seed(0)
    lite = ssr.LiteSR(channels=8, convs=2)  # random weights: the routing, not the quality, is tested
    return ssr.SelectiveSR(model, lite=lite)


def test_fallback_on_a_tile_is_the_light_network_by_hand(sel, lr):
    """Unchosen tiles hold LiteSR's pixels: recomputed here from its layers (convs with zero
    padding on the crop grown by its receptive field, bilinear on the whole image)."""
    scores = np.array([0, 0, 0, 0, 0, 1.])
    out, plan = sel.run(lr, scores, 1 / 6)
    assert plan['chosen'] == [5] and not plan['whole']
    net = sel.lite
    x = ssr.to_tensor(lr)
    # tile (0, 0) = LR rows/cols 0..23; the convs need convs + 2 = 4 LR px of context
    crop = x[..., :28, :28]
    feat = crop - ssr.RGB_MEAN
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        feat = F.relu(F.conv2d(feat, conv.weight, conv.bias, padding=1))
    tail = net.tail[0]
    detail = F.pixel_shuffle(F.conv2d(feat, tail.weight, tail.bias, padding=1), 4)
    up = F.interpolate(x, scale_factor=4, mode='bilinear', align_corners=False)[..., :96, :96]
    expect = ssr.to_u8((detail[..., :96, :96] + up).detach())
    assert np.abs(out[:96, :96].astype(int) - expect).max() <= 1


def test_chosen_tile_is_the_padded_heavy_network(model, sel, lr):
    scores = np.array([0, 0, 0, 0, 1., 0])  # tile (24, 24)
    out, plan = sel.run(lr, scores, 1 / 6)
    assert plan['boxes'] == [(24, 24, 24, 24)]
    crop = ssr.to_tensor(lr[20:48, 20:52])  # grown by 4 px, clipped at the bottom
    with torch.no_grad():
        heavy = model.base(crop)
    expect = ssr.to_u8(heavy[..., 16:112, 16:112])
    np.testing.assert_array_equal(out[96:192, 96:192], expect)
    fb = ssr.to_u8(sel.fallback(lr))
    np.testing.assert_array_equal(out[:96], fb[:96])  # the other row: fallback only


def test_k0_is_the_fallback_and_k1_is_post_crop(model, sel, lr):
    scores = np.random.default_rng(0).random(6)
    out, plan = sel.run(lr, scores, 0)
    np.testing.assert_array_equal(out, ssr.to_u8(sel.fallback(lr)))
    assert plan['gflops']['heavy'] == 0 and plan['boxes'] == []
    out, plan = sel.run(lr, scores, 1)
    assert plan['whole'] and plan['gflops']['light'] == 0
    with model.open(lr) as image:
        post = image.super_resolve([(0, 0, 72, 48)], method='post_crop')[0]
    np.testing.assert_array_equal(out, post)
    assert plan['gflops']['total'] == pytest.approx(model.cost.base(48, 72) / 1e9)


def test_rectangles_partition_the_chosen_tiles():
    rng = np.random.default_rng(3)
    for _ in range(50):
        mask = rng.random((5, 7)) < rng.random()
        boxes = ssr.rectangles(mask, (120, 168))
        cover = np.zeros((120, 168), int)
        for x, y, w, h in boxes:
            cover[y:y + h, x:x + w] += 1
        np.testing.assert_array_equal(cover, np.kron(mask, np.ones((24, 24), int)))
    full = ssr.rectangles(np.ones((5, 7), bool), (120, 168))
    assert full == [(0, 0, 168, 120)]


def test_flops_are_monotone_in_k_and_bounded_by_post_crop(model, sel):
    hw = (144, 216)  # a BSD100-sized LR image: 6 x 9 tiles
    post = model.cost.base(*hw) / 1e9
    for seed in range(5):
        scores = np.random.default_rng(seed).random(54)
        totals = [sel.plan(hw, scores, k / 54)['gflops']['total'] for k in range(55)]
        assert all(b >= a - 1e-12 for a, b in zip(totals, totals[1:])), seed
        assert totals[0] == pytest.approx(ssr.lite_flops(sel.lite, *hw) / 1e9)
        assert totals[-1] == pytest.approx(post) and max(totals) <= post + 1e-9


def test_lite_flops_match_the_flop_counter(sel):
    from clsr_arch.utils.flops import count_flops
    x = torch.zeros(1, 3, 40, 56)
    counted = count_flops(sel.lite, x)  # convs only: the bilinear skip is not a matmul
    bilinear = 3 * 160 * 224 * 4 * 2
    assert ssr.lite_flops(sel.lite, 40, 56) == pytest.approx(counted + bilinear)


def test_bad_input_names_the_problem(model, sel, lr, tmp_path):
    with pytest.raises(LocalSRError, match='5 scores for 6 tiles'):
        sel.run(lr, np.zeros(5), 0.5)
    with pytest.raises(LocalSRError, match='k must be a fraction'):
        sel.run(lr, np.zeros(6), 1.5)
    with pytest.raises(LocalSRError, match='multiple of the 24-pixel tile'):
        sel.run(lr[:40], np.zeros(6), 0.5)
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(LocalSRError, match='nope.pth missing'):
        ssr.load_lite(missing)
    torch.save({'weights': 1}, tmp_path / 'bad.pth')
    with pytest.raises(LocalSRError, match='bad.pth: not a LiteSR checkpoint'):
        ssr.load_lite(str(tmp_path / 'bad.pth'))


def test_shipped_fallback_beats_bicubic(model, lr):
    """The shipped weights (trained on the training split) are far better than bicubic on a
    test image they never saw (Set5 bird crop), and below the heavy network."""
    import cv2
    from clsr_arch.selective import whole_bicubic
    hr = cv2.imread(shared('Set5', 'HR', 'bird.png'), cv2.IMREAD_COLOR)[:, :, ::-1][:192, :288].copy()
    sel = ssr.SelectiveSR(model)
    light = ssr.to_u8(sel.fallback(lr))
    heavy, _ = sel.run(lr, np.zeros(6), 1)
    p = {k: ssr._psnr_y(v, hr) for k, v in (('bic', whole_bicubic(lr, 4)), ('light', light), ('heavy', heavy))}
    assert p['light'] > p['bic'] + 0.5 and p['heavy'] > p['light'], p


def test_lite_detail_is_the_mean_squared_luma_detail(sel, lr):
    fb = sel.fallback(lr)
    boxes = [(0, 0, 24, 24), (48, 24, 24, 24)]
    got = ssr.lite_detail(fb, lr, boxes)
    up = F.interpolate(ssr.to_tensor(lr), scale_factor=4, mode='bilinear', align_corners=False)
    d = (fb - up)[0]
    y = 65.481 * d[0] + 128.553 * d[1] + 24.966 * d[2]
    expect = [float((y[:96, :96] ** 2).mean()), float((y[96:192, 192:288] ** 2).mean())]
    np.testing.assert_allclose(got, expect, rtol=1e-5)
