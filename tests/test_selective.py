"""Where SR matters (clsr_arch/selective.py): tile-gain estimators, proposals, selective SR."""
import numpy as np
import pytest
import torch

from clsr_arch import selective
from clsr_arch.api import LocalSR, LocalSRError
from conftest import shared


@pytest.fixture(scope='module')
def model():
    return LocalSR(device='cpu')


@pytest.fixture(scope='module')
def butterfly(model):
    """Set5 butterfly made LR (64x64 -> a 2x2 grid of 24x24 tiles after the grid crop) and HR."""
    import cv2
    from clsr_arch.data.prep import bicubic_lr
    hr = cv2.imread(shared('Set5', 'HR', 'butterfly.png'), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    return bicubic_lr(hr, 4)[:48, :48].copy(), hr[:192, :192].copy()


def test_box_means_are_the_means():
    rng = np.random.default_rng(0)
    m = rng.random((30, 40))
    boxes = [(0, 0, 40, 30), (3, 5, 7, 2), (39, 29, 1, 1)]
    np.testing.assert_allclose(selective.box_means(m, boxes), [m.mean(), m[5:7, 3:10].mean(), m[29, 39]])


def test_proposals_find_the_texture_and_never_overlap(model):
    flat = np.full((80, 120, 3), 128, np.uint8)
    rng = np.random.default_rng(1)
    flat[40:72, 70:102] = rng.integers(0, 256, (32, 32, 3))  # the only texture
    with model.open(flat) as image:
        for est in ('gradient', 'pim', 'learned'):
            boxes, scores = image.propose(3, 16, est)
            assert len(boxes) == 3 and scores == sorted(scores, reverse=True)
            x, y, w, h = boxes[0]
            assert (w, h) == (16, 16) and 54 <= x <= 102 and 24 <= y <= 72, (est, boxes[0])  # on the texture
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert a[0] + 16 <= b[0] or b[0] + 16 <= a[0] or a[1] + 16 <= b[1] or b[1] + 16 <= a[1]
        with pytest.raises(LocalSRError, match='does not fit'):
            image.propose(2, 200)
        with pytest.raises(LocalSRError, match='n must be >= 1'):
            image.propose(0)


def test_selective_sr_ends_are_bicubic_and_post_crop(model, butterfly):
    lr, hr = butterfly
    with model.open(lr) as image:
        scores = np.array([0.3, 0.9, 0.1, 0.5])
        bic = selective.whole_bicubic(lr, 4)
        out, run, chosen = selective.selective_sr(image, scores, 0)
        assert run is None and chosen == [] and np.array_equal(out, bic)
        out, run, chosen = selective.selective_sr(image, scores, 0.25)
        assert chosen == [(24, 0, 24, 24)]  # the best tile
        sr = image.super_resolve([(22, 0, 26, 26)], output='tensor')[0]  # the tile + 2 px margin, clipped
        core = (sr.clamp(0, 1).permute(1, 2, 0).numpy()[:96, 8:] * 255.).round().astype(np.uint8)
        np.testing.assert_array_equal(out[:96, 96:], core)  # the tile itself: CLSR's pixels
        np.testing.assert_array_equal(out[104:, :88], bic[104:, :88])  # far from it: bicubic
        seam = out[:96, 88:96].astype(int)  # the margin: between the two
        lo, hi = np.minimum(bic[:96, 88:96], (sr.clamp(0, 1).permute(1, 2, 0).numpy()[:96, :8] * 255).round()), \
            np.maximum(bic[:96, 88:96], (sr.clamp(0, 1).permute(1, 2, 0).numpy()[:96, :8] * 255).round())
        assert ((seam >= lo - 1) & (seam <= hi + 1)).all()
        out, run, chosen = selective.selective_sr(image, scores, 1.0)
        post = image.super_resolve([(0, 0, 48, 48)], method='post_crop')[0]
        assert len(chosen) == 4 and np.abs(out.astype(int) - post).max() <= 1
        with pytest.raises(LocalSRError, match='3 scores for 4 tiles'):
            selective.selective_sr(image, scores[:3], 0.5)


def test_estimators_rank_real_tiles_better_than_chance(model):
    """Set14 zebra and baboon, every 24x24 tile: the heuristic and the PIM estimate correlate with
    the true SR gain; all cost a small fraction of the SR they steer."""
    from scipy.stats import spearmanr
    import cv2
    from clsr_arch.data.prep import bicubic_lr, mod_crop
    ests = selective.estimators(model)
    truth, est = [], {k: [] for k in ests}
    for name in ('zebra.png', 'baboon.png'):
        hr = mod_crop(cv2.imread(shared('Set14', 'HR', name), cv2.IMREAD_COLOR), 4)[:, :, ::-1].copy()
        lr = bicubic_lr(hr, 4)
        kh, kw = lr.shape[0] // 24 * 24, lr.shape[1] // 24 * 24
        boxes = [(x, y, 24, 24) for y in range(0, kh, 24) for x in range(0, kw, 24)]
        with model.open(lr[:kh, :kw].copy()) as image:
            g = selective.tile_gains(image, hr[:4 * kh, :4 * kw].copy(), boxes)[0]
            truth += list(g)
            for k, e in ests.items():
                est[k] += list(e.scores(image, boxes))
                assert 0 < e.gflops(image.hw) < 0.2 * model.cost.base(*image.hw) / 1e9
    rho = {k: spearmanr(v, truth)[0] for k, v in est.items()}
    assert rho['gradient'] > 0.3 and rho['pim'] > 0.3 and rho['learned'] > 0.1, rho


def test_learned_predictor_takes_any_tile_size():
    net = selective.LearnedGain().net
    for h, w in ((24, 24), (7, 31), (48, 16)):
        assert net(torch.rand(2, 3, h, w)).shape == (2, )
