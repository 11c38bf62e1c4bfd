"""The Python API (clsr_arch/api.py): the shipped model by default, images from paths and arrays
by the dataset's rules, any number of boxes of any sizes, one context pass per image reused
until released, memory budgets (tiling, features on disk, clear errors), and bad input."""
import copy

import cv2
import numpy as np
import pytest
import torch

from basicsr.archs import build_network
from clsr_arch import api
from clsr_arch.api import LocalSR, LocalSRError, MemoryBudgetError
from clsr_arch.archs.tiling import DiskFeatures
from clsr_arch.whole_image import touched_tiles, whole_image_flops
from conftest import assert_same_uint8, GCM, TINY, perturb_context_modules, shared

ZEBRA = shared('Set14', 'HR', 'zebra.png')  # used as an LR image here: 586x391


@pytest.fixture(scope='module')
def shipped():
    # the bicubic CLSR-IMDN, on which the tiling tolerances below were measured (the default
    # clsr-imdn-real differs from its untiled self by more -- 43 dB PSNR, not > 50 -- through
    # IMDN's channel attention over whole-input statistics; docs/real_world.md)
    return LocalSR('clsr-imdn', device='cpu')


@pytest.fixture(scope='module')
def zebra():
    return cv2.imread(ZEBRA, cv2.IMREAD_COLOR)[:, :, ::-1].copy()  # RGB


@pytest.fixture(scope='module')
def zebra_part(zebra):
    """A 150x230 part: whole-image SR of it costs ~2 s, not ~8 s."""
    return zebra[100:250, 150:380].copy()


def tiny_model(**kwargs):
    torch.manual_seed(0)
    net = build_network({'type': 'CLSR', 'backbone': copy.deepcopy(TINY['MSRResNet']), 'roi_pad': 2, 'gcm': GCM,
                         'pim': {'ratio': 0.25}}).eval()
    perturb_context_modules(net, std=0.1)
    kwargs.setdefault('device', 'cpu')
    return LocalSR(net=net, **kwargs)


def test_shipped_model_any_boxes_equal_the_network_itself(shipped, zebra):
    boxes = [(0, 0, 24, 24), (100, 50, 48, 32), (562, 367, 24, 24), (300, 200, 7, 61)]
    with shipped.open(ZEBRA) as image:
        assert image.hw == (391, 586) and not image.encoded
        outs = image.super_resolve(boxes, plan=False)
        state = image.state
        tensors = image.super_resolve(boxes, output='tensor', plan=False)
        assert image.state is state  # one context pass, reused
    for (x, y, w, h), out, t in zip(boxes, outs, tensors):
        assert out.shape == (4 * h, 4 * w, 3) and out.dtype == np.uint8
        assert t.shape == (3, 4 * h, 4 * w) and t.dtype == torch.float32
        ctx = torch.from_numpy(zebra.astype(np.float32) / 255.).permute(2, 0, 1)[None]
        with torch.no_grad():
            ref = shipped.net(ctx, torch.tensor([[0, x, y, w, h]]))[0]
        assert (t - ref).abs().max() <= 1e-5
        assert_same_uint8(out, api.to_uint8(ref))
    # an array gives what the path gives
    with shipped.open(zebra) as image:
        assert_same_uint8(image.super_resolve(boxes[:1], plan=False)[0], outs[0])



def test_planned_boxes_are_consistent_where_they_overlap(shipped):
    boxes = [(50, 50, 40, 40), (70, 60, 40, 40), (110, 60, 24, 24), (10, 300, 24, 24)]
    with shipped.open(ZEBRA) as image:
        outs = image.super_resolve(boxes, output='tensor')
        run = image.last_run
    assert run['plan']['mode'] == 'pieces' and run['plan']['pieces'] < len(boxes)
    assert run['plan']['gflops'] <= run['plan']['gflops_singles']
    # boxes 0 and 1 overlap on LR x 70..89, y 60..89: identical HR pixels there
    np.testing.assert_array_equal(outs[0][:, 40:160, 80:160].numpy(), outs[1][:, 0:120, 0:80].numpy())
    # box 1 and 2 touch (x = 110): merged, and still each exactly its own size
    assert outs[2].shape == (3, 96, 96) and outs[3].shape == (3, 96, 96)


def test_methods_and_their_costs(shipped, zebra_part):
    box = [(100, 60, 24, 24)]
    with shipped.open(zebra_part) as image:
        got = {m: image.super_resolve(box, method=m, output='tensor')[0] for m in api.METHODS}
        runs = {}
        for m in api.METHODS:
            image.super_resolve(box, method=m)
            runs[m] = image.last_run
    assert runs['bicubic']['gflops'] < runs['pre_crop']['gflops'] < runs['clsr']['gflops'] < runs['post_crop']['gflops']
    assert runs['post_crop']['tile'] is None  # fits the default budget untiled
    # every method restores the same content (all within a few grey levels of each other on average)
    for m in ('pre_crop', 'clsr', 'bicubic'):
        assert (got[m] - got['post_crop']).abs().mean() < 0.03, m
    with pytest.raises(LocalSRError, match="method 'sharpen'"):
        shipped.open(zebra_part).super_resolve(box, method='sharpen')


def test_pre_crop_is_charged_for_the_pad_that_ran(shipped, zebra_part):
    """roi_gflops (clsr-infer's figure and metrics) charges pre-crop for the pad it ran with, not
    CLSR's roi_pad: a model from a file whose trained CLSR keeps roi_pad 4 pre-crops at its
    calibrated pad (CRAFT: 16), and the figure said 'pad 4' beside pad 16's output."""
    box = (100, 60, 24, 24)
    with shipped.open(zebra_part) as image:
        image.super_resolve([box], method='pre_crop', pad=6)
        run = dict(image.last_run)
    assert run['pad'] == 6 != shipped.net.roi_pad
    assert api.roi_gflops(image, 'pre_crop', box, run) == pytest.approx(run['gflops'])
    assert api.roi_gflops(image, 'pre_crop', box, run) > api.roi_gflops(image, 'pre_crop', box, dict(run, pad=2))


def test_tiled_context_under_a_small_budget_equals_the_untiled_pass(zebra, tmp_path):
    """Real image, shipped model: a budget too small for the untiled pass tiles it, and a budget
    too small for the features sends them to disk; outputs equal (<= 1e-5). (Boxes small enough
    that their decode fits these budgets too.)"""
    boxes = [(0, 0, 8, 8), (280, 180, 12, 8), (578, 383, 8, 8)]
    ref_model = LocalSR(device='cpu')
    with ref_model.open(zebra) as image:
        ref = image.super_resolve(boxes, output='tensor', plan=False)
        assert image.context_info['tile'] is None and image.context_info['store'] == 'memory'
    hw, f = (391, 586), api.SAFETY
    # budgets just large enough for 64-pixel tiles: beside the features, or alone (disk)
    in_memory = int(f * (ref_model.feature_bytes(hw) + ref_model.context_tile_bytes(hw, 64, 'memory'))) + 1
    on_disk = int(f * ref_model.context_tile_bytes(hw, 64, 'disk')) + 1
    assert on_disk < in_memory < f * ref_model.context_bytes(hw)  # neither fits untiled
    assert f * ref_model.decode_bytes(16 * 12) < on_disk
    for budget, store in ((in_memory, 'memory'), (on_disk, 'disk')):
        model = LocalSR(device='cpu', max_memory=budget, cache_dir=str(tmp_path))
        image = model.open(zebra)
        outs = image.super_resolve(boxes, output='tensor', plan=False)
        assert image.context_info['tile'] == 64 and image.context_info['store'] == store
        for a, b in zip(outs, ref):
            assert (a - b).abs().max() <= 1e-5
        if store == 'disk':
            assert isinstance(image.state['pim'], DiskFeatures)
            assert len(list(tmp_path.iterdir())) == 1
        image.release()
        assert list(tmp_path.iterdir()) == []  # the feature file goes with the image
        with pytest.raises(LocalSRError, match='released'):
            image.super_resolve(boxes)


def test_no_tiling_and_too_little_memory_is_a_clear_error(zebra):
    big_box = LocalSR(device='cpu', max_memory='200M').open(zebra)
    with pytest.raises(MemoryBudgetError, match=r'box \(0, 0, 586, 391\): one CLSR decode of 586x391 LR pixels needs'):
        big_box.super_resolve([(0, 0, 586, 391)], plan=False)
    model = LocalSR(device='cpu', max_memory='6M', tile=0)
    image = model.open(zebra)
    with pytest.raises(MemoryBudgetError, match=r'context pass over the 586x391 LR image needs .* over the '
                                                r'memory budget of 6.00 MiB.*tiling is disabled'):
        image.encode()
    with pytest.raises(MemoryBudgetError, match=r'whole-image SR of the 586x391 LR image needs'):
        image.super_resolve([(0, 0, 8, 8)], method='post_crop')


def test_tiled_whole_image_sr_is_close_to_untiled(shipped, zebra_part):
    """post-crop over 64-pixel tiles with 16 pixels of overlap vs the whole image at once, and
    only the tiles the boxes touch are run."""
    boxes = [(0, 0, 24, 24), (60, 60, 24, 24), (206, 126, 24, 24)]
    with shipped.open(zebra_part) as image:
        ref = image.super_resolve(boxes, method='post_crop', output='tensor')
        whole = image.last_run['gflops']
    with LocalSR('clsr-imdn', device='cpu', tile=64).open(zebra_part) as tiled:
        outs = tiled.super_resolve(boxes, method='post_crop', output='tensor')
        assert tiled.last_run['tile'] == 64 and len(touched_tiles((150, 230), 64, 16, boxes)) == 6
        # only the 6 of the 12 tiles the boxes touch ran (each grown by the overlap)
        every_tile = whole_image_flops(tiled.model.cost, (150, 230), [(0, 0, 230, 150)], 64, 16) / 1e9
        assert tiled.last_run['gflops'] == pytest.approx(every_tile * 6 / 12, rel=0.2) and whole < every_tile
    for a, b in zip(outs, ref):
        mse = ((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean().item()
        assert mse == 0 or 10 * np.log10(1 / mse) > 50  # the overlap hides the tile seams


@pytest.mark.parametrize('array, expect', [
    (np.full((20, 30), 128, np.uint8), 'gray'),
    (np.full((20, 30, 3), 257 * 128, np.uint16), '16-bit'),
    (np.dstack([np.full((20, 30, 3), 128, np.uint8), np.full((20, 30), 255, np.uint8)]), 'opaque alpha'),
])
def test_arrays_are_converted_as_the_dataset_does(array, expect):
    model = tiny_model()
    image = model.open(array)
    assert image.rgb.shape == (20, 30, 3) and image.rgb.dtype == np.uint8 and (image.rgb == 128).all(), expect
    assert image.super_resolve([(0, 0, 5, 5)])[0].shape == (20, 20, 3)


def test_bad_input_names_the_thing(tmp_path):
    model = tiny_model()
    img = np.zeros((20, 30, 3), np.uint8)
    image = model.open(img)
    for boxes, needle in [
            ([(25, 0, 8, 8)], r'box 0 \(25, 0, 8, 8\) is outside the 30x20 \(WxH\) LR image'),
            ([(0, 0, 4, 4), (-1, 0, 5, 5)], r'box 1 \(-1, 0, 5, 5\) is outside'),
            ([], 'no boxes given'),
            ([(0, 0, 0, 5)], r'box 0 \(0, 0, 0, 5\): w and h must be >= 1 \(a zero-size box\)'),
            ([(0, 0, 2.5, 5)], r'box 0 .*four integers'),
            ([(0, 0, 5)], r'box 0 .*four integers')]:
        with pytest.raises(LocalSRError, match=needle):
            image.super_resolve(boxes)
    transparent = np.dstack([img, np.zeros((20, 30), np.uint8)])
    with pytest.raises(LocalSRError, match='alpha channel is not fully opaque'):
        model.open(transparent)
    with pytest.raises(LocalSRError, match='unsupported pixel type float32'):
        model.open(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(LocalSRError, match=r'expected an H x W or H x W x C image array'):
        model.open(np.zeros((4, ), np.uint8))
    junk = tmp_path / 'notes.png'
    junk.write_text('not an image')
    with pytest.raises(LocalSRError, match=f'{junk}'):
        model.open(str(junk))
    with pytest.raises(LocalSRError, match='cannot read'):
        model.open(str(tmp_path / 'missing.png'))
    with pytest.raises(LocalSRError, match='torch tensor'):
        model.open(torch.zeros(3, 4, 4))


def test_options_errors():
    with pytest.raises(LocalSRError, match='give both weights and opt'):
        LocalSR(weights='x.pth')
    with pytest.raises(LocalSRError, match="device 'tpu'"):
        tiny_model(device='tpu')
    if not torch.cuda.is_available():
        with pytest.raises(LocalSRError, match='CUDA is not available'):
            LocalSR(net=tiny_model().net, device='cuda')
    with pytest.raises(LocalSRError, match='max_memory'):
        tiny_model(max_memory='lots')
    with pytest.raises(LocalSRError, match='tile must be'):
        tiny_model(tile=-3)
    with pytest.raises(LocalSRError, match='threads must be >= 1'):
        tiny_model(threads=0)


def test_touched_tiles_are_the_tiles_whose_core_meets_a_box():
    """whole_image.touched_tiles indexes tiles from the boxes; it must equal the plain scan."""
    import random
    from clsr_arch.whole_image import tile_layout
    rng = random.Random(0)
    for _ in range(200):
        H, W, t = rng.randint(1, 300), rng.randint(1, 300), rng.randint(1, 80)
        boxes = []
        for _ in range(rng.randint(1, 6)):
            w, h = rng.randint(1, W), rng.randint(1, H)
            boxes.append((rng.randint(0, W - w), rng.randint(0, H - h), w, h))
        scan = [(c, g) for c, g in tile_layout((H, W), t, 5)
                if any(x < c[3] and c[2] < x + bw and y < c[1] and c[0] < y + bh for x, y, bw, bh in boxes)]
        assert touched_tiles((H, W), t, 5, boxes) == scan
