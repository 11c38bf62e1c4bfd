"""clsr-infer (clsr_arch/infer.py): the files it promises, their values, and its documented
errors (one line, exit code 2). A tiny CLSR (MSRResNet base, 8 channels) keeps it fast; the
shipped model itself is tested in test_shipped_model.py."""
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr

from clsr_arch import api, infer
from conftest import TINY_CLI, bicubic_lr, save_tiny_cli_model, shared


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """(options YAML, weights) of a tiny CLSR whose GCM/PIM injections are zero (as initialised)."""
    return save_tiny_cli_model(tmp_path_factory.mktemp('infer_model'))


@pytest.fixture(scope='module')
def hr_image(tmp_path_factory):
    """A 98x102 HR crop of Set5 butterfly (not a multiple of 4: --degrade must crop it)."""
    img = cv2.imread(shared('Set5', 'HR', 'butterfly.png'), cv2.IMREAD_COLOR)[60:158, 70:172]
    path = tmp_path_factory.mktemp('infer_img') / 'butterfly_crop.png'
    cv2.imwrite(str(path), img)
    return str(path), img


def run(capsys, *argv):
    code = infer.main([str(a) for a in argv] + ['--compare', '--quiet', '--device', 'cpu'])
    return code, capsys.readouterr()


def test_degrade_writes_every_promised_file_with_the_right_values(tmp_path, capsys, tiny_model, hr_image):
    opt, weights = tiny_model
    path, img = hr_image
    out = tmp_path / 'out'
    # --no-plan: each ROI decoded on its own (the planner would merge these overlapping boxes)
    code, cap = run(capsys, path, '--degrade', '--roi', '2,3,12,10', '--roi', '10,8,8,8', '--no-plan',
                    '--opt', opt, '--weights', weights, '--out', out)
    assert code == 0, cap.err
    hr = img[:96, :100]  # cropped to a multiple of 4
    lr = bicubic_lr(hr, 4)
    assert lr.shape == (24, 25, 3)
    meta = json.loads((out / 'butterfly_crop_metrics.json').read_text())
    assert meta['lr_size'] == [25, 24] and meta['scale'] == 4
    assert osp.isfile(meta['figure']) and meta['figure'].endswith('butterfly_crop_compare.png')
    assert cv2.imread(meta['figure']).shape[1] > 500  # a real figure, not an empty canvas
    for i, (x, y, w, h) in enumerate([(2, 3, 12, 10), (10, 8, 8, 8)]):
        roi = meta['rois'][i]
        assert roi['box'] == [x, y, w, h]
        gt = cv2.imread(str(out / f'butterfly_crop_roi{i}_gt.png'))
        np.testing.assert_array_equal(gt, hr[4 * y:4 * (y + h), 4 * x:4 * (x + w)])
        imgs = {}
        for m in ('bicubic', 'pre_crop', 'clsr', 'post_crop'):
            imgs[m] = cv2.imread(str(out / f'butterfly_crop_roi{i}_{m}.png'))
            assert imgs[m].shape == (4 * h, 4 * w, 3)
            rec = roi['methods'][m]
            # the JSON's PSNR is that of the written file against the ground truth
            assert rec['psnr'] == pytest.approx(calculate_psnr(imgs[m], gt, 0), abs=1e-6)
            assert rec['gflops'] > 0 and rec['seconds'] >= 0
        # CLSR with zero context injections is exactly pre-cropping with CLSR's roi_pad
        np.testing.assert_array_equal(imgs['clsr'], imgs['pre_crop'])
        # the network outputs differ from bicubic, and bicubic is a sane upscaling (PSNR > 15 dB)
        assert np.abs(imgs['post_crop'].astype(int) - imgs['bicubic']).mean() > 1
        assert roi['methods']['bicubic']['psnr'] > 15
        # per ROI: GFLOPs grow bicubic < pre-crop < post-crop (whole 24x25 image)
        f = {m: roi['methods'][m]['gflops'] for m in infer.METHODS}
        assert f['bicubic'] < f['pre_crop'] < f['post_crop']


def test_lr_input_grid_without_ground_truth(tmp_path, capsys, tiny_model, hr_image):
    opt, weights = tiny_model
    lr_path = tmp_path / 'lr.png'
    cv2.imwrite(str(lr_path), bicubic_lr(hr_image[1][:96, :100], 4))  # 24x25 LR
    code, cap = run(capsys, lr_path, '--grid', '12', '--opt', opt, '--weights', weights, '--out', tmp_path / 'o')
    assert code == 0, cap.err
    meta = json.loads((tmp_path / 'o' / 'lr_metrics.json').read_text())
    assert [r['box'] for r in meta['rois']] == [[0, 0, 12, 12], [12, 0, 12, 12], [0, 12, 12, 12], [12, 12, 12, 12]]
    assert 'mean' not in meta and 'psnr' not in meta['rois'][0]['methods']['clsr']
    assert not (tmp_path / 'o' / 'lr_roi0_gt.png').exists()
    assert cv2.imread(str(tmp_path / 'o' / 'lr_roi3_clsr.png')).shape == (48, 48, 3)


@pytest.mark.parametrize('roi, needle', [
    ('20,0,8,8', '--roi 20,0,8,8 is outside the 25x24 (WxH) LR image'),
    ('-1,0,8,8', '--roi -1,0,8,8 is outside'),
    ('0,20,8,5', '--roi 0,20,8,5 is outside'),
    ('0,0,0,8', '--roi 0,0,0,8: w and h must be >= 1'),
    ('1,2,3', "--roi '1,2,3': expected x,y,w,h"),
])
def test_bad_box_is_one_line_exit_2(tmp_path, capsys, tiny_model, hr_image, roi, needle):
    opt, weights = tiny_model
    code, cap = run(capsys, hr_image[0], '--degrade', f'--roi={roi}', '--opt', opt, '--weights', weights,
                    '--out', tmp_path / 'o')
    assert code == 2
    assert cap.err.startswith('clsr-infer: error: ') and needle in cap.err
    assert cap.err.count('\n') == 1
    assert not (tmp_path / 'o').exists()  # nothing written


def test_unreadable_image_and_missing_files(tmp_path, capsys, tiny_model):
    opt, weights = tiny_model
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not a png at all')
    code, cap = run(capsys, bad, '--roi', '0,0,4,4', '--opt', opt, '--weights', weights, '--out', tmp_path / 'o')
    assert code == 2 and str(bad) in cap.err and cap.err.count('\n') == 1
    code, cap = run(capsys, tmp_path / 'nope.png', '--roi', '0,0,4,4', '--opt', opt, '--weights', weights)
    assert code == 2 and 'nope.png' in cap.err and 'cannot read' in cap.err
    code, cap = run(capsys, bad, '--roi', '0,0,4,4', '--opt', opt, '--weights', tmp_path / 'none.pth')
    assert code == 2 and 'none.pth' in cap.err and 'does not exist' in cap.err


def test_weights_that_do_not_match_the_options_name_the_keys(tmp_path, capsys, tiny_model, hr_image):
    opt, weights = tiny_model
    sd = torch.load(weights, weights_only=True)['params']
    dropped = sorted(k for k in sd if k.startswith('pim.'))[0]
    del sd[dropped]
    sd['extra.weight'] = torch.zeros(1)
    bad = tmp_path / 'bad.pth'
    torch.save({'params': sd}, bad)
    code, cap = run(capsys, hr_image[0], '--degrade', '--roi', '0,0,8,8', '--opt', opt, '--weights', bad)
    assert code == 2 and cap.err.count('\n') == 1
    assert f'missing [{dropped}]' in cap.err and 'unexpected [extra.weight]' in cap.err and str(bad) in cap.err
    # a different width: shape mismatches are named too
    other = dict(TINY_CLI, backbone=dict(TINY_CLI['backbone'], num_feat=16))
    torch.save({'params': build_network(other).state_dict()}, bad)
    code, cap = run(capsys, hr_image[0], '--degrade', '--roi', '0,0,8,8', '--opt', opt, '--weights', bad)
    assert code == 2 and 'shape mismatches [base.' in cap.err and '(16, 16, 3, 3) vs (8, 8, 3, 3)' in cap.err


def test_negative_box_after_a_space_gets_the_box_error_not_argparse(tmp_path, capsys, tiny_model, hr_image):
    opt, weights = tiny_model
    code, cap = run(capsys, hr_image[0], '--degrade', '--roi', '-1,0,5,5', '--opt', opt, '--weights', weights,
                    '--out', tmp_path / 'o')
    assert code == 2 and '--roi -1,0,5,5 is outside the 25x24 (WxH) LR image' in cap.err
    assert cap.err.count('\n') == 1 and not (tmp_path / 'o').exists()


def test_methods_choice_and_the_summary(tmp_path, capsys, tiny_model, hr_image):
    opt, weights = tiny_model
    out = tmp_path / 'o'
    code = infer.main([hr_image[0], '--compare', '--degrade', '--roi', '2,3,12,10', '--methods', 'clsr,bicubic',
                       '--opt', opt, '--weights', weights, '--out', str(out), '--device', 'cpu'])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    meta = json.loads((out / 'butterfly_crop_metrics.json').read_text())
    assert meta['methods'] == ['bicubic', 'clsr'] and set(meta['rois'][0]['methods']) == {'bicubic', 'clsr'}
    assert not (out / 'butterfly_crop_roi0_post_crop.png').exists()
    assert meta['peak_rss_bytes'] > 10 * 2 ** 20 and 'peak RSS' in cap.out and 'plan:' in cap.out
    assert sorted(p.name for p in out.iterdir() if p.name.startswith('.')) == []  # no temporaries left
    code, cap = run(capsys, hr_image[0], '--degrade', '--roi', '2,3,12,10', '--methods', 'clsr,sharpen',
                    '--opt', opt, '--weights', weights, '--out', tmp_path / 'o2')
    assert code == 2 and "--methods 'clsr,sharpen'" in cap.err and not (tmp_path / 'o2').exists()


def test_a_memory_budget_tiles_or_skips_post_crop(tmp_path, capsys, tiny_model):
    """Whole-image SR over the budget: tiled by default; with --tile 0 skipped with one line
    (default methods) or an error naming the budget (asked for by name)."""
    opt, weights = tiny_model
    image = shared('Set5', 'HR', 'butterfly.png')  # 256x256 HR -> 64x64 LR
    model = api.LocalSR(weights, opt, device='cpu')
    budget = int(api.SAFETY * model.whole_bytes((40, 40)))  # a 32-pixel tile + 2 x 4 overlap fits
    assert budget < api.SAFETY * model.whole_bytes((64, 64))  # the whole image does not
    args = [image, '--degrade', '--roi', '2,3,12,10', '--opt', opt, '--weights', weights, '--max-memory', str(budget),
            '--tile-overlap', '4']
    code, cap = run(capsys, *args, '--out', tmp_path / 'a')
    assert code == 0, cap.err
    assert 'clsr-infer: post_crop: whole-image SR tiled (32-pixel LR tiles, overlap 4; the 1 of 4 tiles' in cap.err
    meta = json.loads((tmp_path / 'a' / 'butterfly_metrics.json').read_text())
    assert meta['runs']['post_crop']['tile'] == 32 and meta['methods'] == list(infer.METHODS)
    code, cap = run(capsys, *args, '--tile', '0', '--methods', 'bicubic,pre_crop,post_crop', '--out', tmp_path / 'b')
    assert code == 2 and 'whole-image SR of the 64x64 LR image needs' in cap.err and 'tiling is disabled' in cap.err
    assert cap.err.count('\n') == 1 and not (tmp_path / 'b').exists()
    code, cap = run(capsys, *args, '--tile', '0', '--out', tmp_path / 'c')
    assert code == 0, cap.err
    assert 'clsr-infer: post_crop skipped: whole-image SR of the 64x64 LR image needs' in cap.err
    meta = json.loads((tmp_path / 'c' / 'butterfly_metrics.json').read_text())
    assert 'post_crop' not in meta['methods'] and 'bicubic' in meta['methods']


def test_nothing_half_written_when_writing_fails(tmp_path, capsys, tiny_model, hr_image, monkeypatch):
    opt, weights = tiny_model
    out = tmp_path / 'o'
    calls = []

    def failing_figure(*a, **k):
        calls.append(1)
        raise OSError('disk full')
    monkeypatch.setattr('clsr_arch.utils.figure.comparison_figure', failing_figure)
    with pytest.raises(OSError, match='disk full'):
        infer.main([hr_image[0], '--compare', '--degrade', '--roi', '2,3,12,10', '--opt', opt, '--weights', weights,
                    '--out', str(out), '--quiet', '--device', 'cpu'])
    assert calls and list(out.iterdir()) == []  # the ROI PNGs written before the failure are gone


def test_propose_adds_the_best_boxes_and_marks_them(tmp_path, capsys, tiny_model):
    opt, weights = tiny_model
    image = shared('Set5', 'HR', 'butterfly.png')
    code, cap = run(capsys, image, '--degrade', '--propose', '2', '--propose-size', '16', '--propose-by', 'gradient',
                    '--methods', 'clsr,bicubic', '--opt', opt, '--weights', weights, '--out', tmp_path / 'o')
    assert code == 0, cap.err
    assert 'clsr-infer: proposed (by gradient): ' in cap.err
    meta = json.loads((tmp_path / 'o' / 'butterfly_metrics.json').read_text())
    assert [r['proposed'] for r in meta['rois']] == [True, True]
    assert all(r['box'][2:] == [16, 16] for r in meta['rois'])
