"""Real-world degradations (issue 21): BasicSR's Real-ESRGAN model applied once to a whole context,
the degradation-mode dataset and model, plain-backbone training, and the degraded test sets."""
import filecmp
import json
import os
import os.path as osp
import random
import subprocess
import sys
import types
from copy import deepcopy

import cv2
import numpy as np
import pytest
import torch

import clsr_arch  # noqa: F401
from basicsr.data.realesrgan_dataset import RealESRGANDataset
from basicsr.models import build_model
from basicsr.models.realesrnet_model import RealESRNetModel
from basicsr.utils import DiffJPEG
from clsr_arch.data.context_roi_dataset import ContextROIDataset
from clsr_arch.data.degradation import DEFAULTS, Degrader, check_options, sample_kernels, second_order
from clsr_arch.data.degraded_sets import KINDS, make_degraded_sets
from clsr_arch.data.image_io import DataError

from conftest import REPO, shared

SCALE = 4


def seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def hr_batch(b=2, size=64):
    img = cv2.imread(shared('Set5', 'HR', 'baby.png'))[:, :, ::-1].copy()
    crops = [img[40 * i:40 * i + size, 50:50 + size] for i in range(b)]
    return torch.from_numpy(np.stack(crops).transpose(0, 3, 1, 2).copy()).float() / 255.


# ------------------------------------------------------------------------- the degradation model
def test_kernels_are_realesrgan_datasets_draws(tmp_path):
    """sample_kernels makes RealESRGANDataset's kernels from the same random state."""
    cv2.imwrite(str(tmp_path / 'a.png'), cv2.imread(shared('Set5', 'HR', 'baby.png'))[:400, :400])
    (tmp_path / 'meta.txt').write_text('a.png\n')
    opt = dict(DEFAULTS, dataroot_gt=str(tmp_path), meta_info=str(tmp_path / 'meta.txt'),
               io_backend={'type': 'disk'}, use_hflip=False, use_rot=False)
    ds = RealESRGANDataset(opt)
    for seed in range(6):
        seed_all(seed)
        ref = ds[0]
        seed_all(seed)
        ours = sample_kernels(check_options({}))
        for k in ('kernel1', 'kernel2', 'sinc_kernel'):
            assert torch.equal(ours[k], ref[k]), (seed, k)


def test_second_order_is_realesrnet_feed_data_bit_for_bit():
    """Our pipeline makes RealESRNetModel.feed_data's LR from the same random state (so it is
    BasicSR's degradation model, not a new one), and reports the parameters it drew."""
    opt = check_options({})
    gt = hr_batch()
    seed_all(3)
    kernels = {k: torch.stack([v, v]) for k, v in sample_kernels(opt).items()}
    jpeger = DiffJPEG(differentiable=False)
    for seed in range(5):
        proxy = types.SimpleNamespace(is_train=True, device=torch.device('cpu'), jpeger=jpeger,
                                      opt=dict(opt, scale=SCALE, gt_usm=False, gt_size=gt.shape[-1]),
                                      _dequeue_and_enqueue=lambda: None)
        seed_all(seed)
        RealESRNetModel.feed_data(proxy, dict(kernels, gt=gt))
        seed_all(seed)
        lq, params = second_order(gt, kernels['kernel1'], kernels['kernel2'], kernels['sinc_kernel'], opt, SCALE,
                                  jpeger)
        assert torch.equal(lq, proxy.lq), seed
        assert lq.shape == (2, 3, 16, 16)
        assert len(params) == 2 and 30 <= params[0]['jpeg1'] <= 95 and 30 <= params[1]['jpeg2'] <= 95
        assert params[0]['noise1'][0] in ('gaussian', 'poisson')


def test_degrader_runs_on_the_inputs_device_and_checks_sizes():
    deg = Degrader({}, SCALE)
    seed_all(0)
    kernels = {k: v.unsqueeze(0) for k, v in sample_kernels(deg.opt).items()}
    lq, _ = deg(hr_batch(1), kernels)
    assert lq.device.type == 'cpu' and lq.shape == (1, 3, 16, 16)
    assert torch.equal(lq, (lq * 255).round() / 255)  # 8-bit values, like a saved image
    with pytest.raises(ValueError, match='not a multiple of scale 4'):
        deg(hr_batch(1, 62), kernels)
    if torch.cuda.is_available():  # pragma: no cover - no GPU here
        lq_cuda, _ = deg(hr_batch(1).cuda(), kernels)
        assert lq_cuda.device.type == 'cuda'


def test_blur_only_share_is_blur_then_bicubic_without_noise():
    """blur_only_prob: those samples are exactly filter2D(gt, kernel1) then MATLAB bicubic, 8-bit."""
    from basicsr.utils.img_process_util import filter2D
    from basicsr.utils.matlab_functions import imresize
    deg = Degrader({'blur_only_prob': 1.0}, SCALE)
    seed_all(0)
    kernels = {k: torch.stack([v, v]) for k, v in sample_kernels(deg.opt).items()}
    gt = hr_batch()
    lq, params = deg(gt, kernels)
    ref = torch.stack([imresize(b, 1 / SCALE) for b in filter2D(gt, kernels['kernel1']).clamp(0, 1)]).clamp(0, 1)
    assert torch.equal(lq, (ref * 255).round() / 255)
    assert all(p['blur_only'] for p in params)
    with pytest.raises(ValueError, match='blur_only_prob'):
        check_options({'blur_only_prob': 1.5})


def test_degradation_options_are_checked():
    with pytest.raises(ValueError, match="unknown key.*jpeg_rnage"):
        check_options({'jpeg_rnage': [30, 95]})
    with pytest.raises(ValueError, match='jpeg_range2'):
        check_options({'jpeg_range2': [0, 95]})
    with pytest.raises(ValueError, match='resize_prob'):
        check_options({'resize_prob': [1, 0]})
    assert check_options(True) == dict(DEFAULTS, type='realesrgan')
    assert check_options({'type': 'bicubic'}) == {'type': 'bicubic'}
    with pytest.raises(ValueError, match='takes no other keys'):
        check_options({'type': 'bicubic', 'jpeg_range': [30, 95]})
    with pytest.raises(ValueError, match='expected realesrgan'):
        check_options({'type': 'bsrgan'})


# ------------------------------------------------------------------------- dataset and model
def degradation_set_opt(folder, **kw):
    opt = {'name': 'real', 'type': 'ContextROIDataset', 'phase': 'train', 'scale': SCALE,
           'dataroot_gt': str(folder), 'io_backend': {'type': 'disk'}, 'degradation': {},
           'context_size': 16, 'roi_size': 8, 'roi_placement': 'random', 'use_hflip': True, 'use_rot': True}
    opt.update(kw)
    return opt


def test_dataset_degradation_mode_items(tiny_pairs):
    ds = ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR'))  # no dataroot_lq needed
    for i in range(len(ds)):
        item = ds[i]
        assert 'lq' not in item
        x, y, w, h = item['roi'].tolist()
        assert (w, h) == (8, 8) and 0 <= x <= 8 and 0 <= y <= 8
        assert item['gt_context'].shape == (3, 64, 64)
        assert torch.equal(item['gt'], item['gt_context'][:, 4 * y:4 * (y + 8), 4 * x:4 * (x + 8)])
        assert {k: tuple(item[k].shape) for k in ('kernel1', 'kernel2', 'sinc_kernel')} == \
            {'kernel1': (21, 21), 'kernel2': (21, 21), 'sinc_kernel': (21, 21)}


def test_dataset_pads_small_images_and_rejects_bad_options(tiny_pairs, tmp_path):
    ds = ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR', context_size=40))  # HR 96 < 160: padded
    assert ds[0]['gt_context'].shape == (3, 160, 160)
    with pytest.raises(DataError, match='unknown key'):
        ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR', degradation={'noise_rnage': [1, 2]}))
    with pytest.raises(DataError, match='train phase'):
        ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR', phase='val'))
    with pytest.raises(DataError, match='mean/std'):
        ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR', mean=[0.5, 0.5, 0.5]))
    with pytest.raises(DataError, match='meta_info_file'):
        ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR', meta_info_file=str(tmp_path / 'none.txt')))


TINY_BASE = {'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': SCALE}


def model_opt(tmp_path, network_g, mode, **train):
    opt = {'name': 'deg', 'model_type': 'CLSRModel', 'scale': SCALE, 'num_gpu': 0, 'is_train': True, 'dist': False,
           'rank': 0, 'world_size': 1, 'network_g': network_g,
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'models': str(tmp_path),
                    'training_states': str(tmp_path), 'visualization': str(tmp_path), 'log': str(tmp_path)},
           'datasets': {'train': {'degradation': {}}},
           'train': dict({'ema_decay': 0, 'total_iter': 4,
                          'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                          'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                          'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}}, **train),
           'val': {'mode': mode}}
    return opt


def collate(ds, n):
    items = [ds[i % len(ds)] for i in range(n)]
    return {k: (torch.stack([it[k] for it in items]) if torch.is_tensor(items[0][k]) else [it[k] for it in items])
            for k in items[0]}


def test_model_degrades_the_whole_context_once_and_crops_the_roi(tiny_pairs, tmp_path):
    """The ROI's LR pixels are exactly the crop of the one degraded LR context."""
    tiny_clsr = {'type': 'CLSR', 'backbone': TINY_BASE, 'roi_pad': 2,
                 'gcm': {'window': 4, 'num_windows': 4, 'heads': 2, 'stage': 1}, 'pim': {'ratio': 0.5}}
    ctx = {'context_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
           'lambda_schedule': {'type': 'constant', 'start': 0.5, 'end': 0.5}}
    model = build_model(model_opt(tmp_path, tiny_clsr, 'clsr', **ctx))
    seed_all(0)
    batch = collate(ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR')), 3)
    calls = []
    orig = model.net_g.forward

    def spy(lq, boxes, **kw):
        calls.append((lq.clone(), boxes.clone()))
        return orig(lq, boxes, **kw)
    model.net_g.forward = spy
    seed_all(7)
    model.feed_data(batch)
    seed_all(7)
    ref, _ = Degrader({}, SCALE)(batch['gt_context'], batch)
    assert torch.equal(model.lq, ref) and model.lq.shape == (3, 3, 16, 16)
    model.optimize_parameters(1)
    (lq_seen, boxes), = calls
    assert torch.equal(lq_seen, ref)  # the network crops its ROI from this one degraded context
    for b, x, y, w, h in boxes.tolist():
        roi_lr = lq_seen[b, :, y:y + h, x:x + w]
        assert torch.equal(roi_lr, ref[b, :, y:y + h, x:x + w])
        assert torch.equal(model.gt[b], batch['gt_context'][b, :, 4 * y:4 * (y + h), 4 * x:4 * (x + w)])
    assert model.get_current_log()['l_context'] > 0


def test_plain_backbone_trains_on_the_whole_degraded_context(tiny_pairs, tmp_path):
    """The real base (issue 21, like Real-ESRNet): a plain arch under CLSRModel, L1 on the context."""
    model = build_model(model_opt(tmp_path, dict(TINY_BASE), 'pre_crop'))
    seed_all(1)
    batch = collate(ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR')), 2)
    before = [p.clone() for p in model.net_g.parameters()]
    model.feed_data(batch)
    with torch.no_grad():
        expected = (model.net_g(model.lq) - batch['gt_context']).abs().mean().item()
    model.optimize_parameters(1)
    assert model.get_current_log()['l_pix'] == pytest.approx(expected, rel=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))
    bad = model_opt(tmp_path, dict(TINY_BASE), 'pre_crop', fix_base=True)
    with pytest.raises(ValueError, match='is a plain backbone'):
        build_model(bad)


def test_bicubic_type_makes_the_papers_lr_of_the_same_contexts(tiny_pairs, tmp_path):
    """degradation {type: bicubic}: the bicubic models train on the same HR contexts, with the
    MATLAB-bicubic LR that data/generate_lr.py writes (8-bit)."""
    from clsr_arch.data.prep import bicubic_lr
    opt = model_opt(tmp_path, dict(TINY_BASE), 'pre_crop')
    opt['datasets']['train']['degradation'] = {'type': 'bicubic'}
    model = build_model(opt)
    ds = ContextROIDataset(degradation_set_opt(tiny_pairs / 'HR', degradation={'type': 'bicubic'}))
    batch = collate(ds, 2)
    assert 'kernel1' not in batch
    model.feed_data(batch)
    for b in range(2):
        hr = (batch['gt_context'][b].numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype(np.uint8)
        ref = bicubic_lr(np.ascontiguousarray(hr), SCALE)[:, :, ::-1].transpose(2, 0, 1) / 255.
        assert np.abs(model.lq[b].numpy() - ref).max() <= 1 / 255 + 1e-6


# ------------------------------------------------------------------------- degraded test sets
@pytest.fixture(scope='module')
def two_hr(tmp_path_factory):
    root = tmp_path_factory.mktemp('hr2')
    for name in ('baby.png', 'bird.png'):
        img = cv2.imread(shared('Set5', 'HR', name))
        cv2.imwrite(str(root / name), img[:130, :122])  # not a multiple of 4: cropped
    return root


def test_degraded_sets_are_byte_for_byte_reproducible(two_hr, tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    make_degraded_sets(str(two_hr), str(a), show_progress=False)
    make_degraded_sets(str(two_hr), str(b), show_progress=False)
    make_degraded_sets(str(two_hr), str(c), seed=1, kinds=['realesrgan'], show_progress=False)
    for kind in KINDS:
        for name in ('baby.png', 'bird.png'):
            pa, pb = a / kind / 'X4' / name, b / kind / 'X4' / name
            assert filecmp.cmp(pa, pb, shallow=False), (kind, name)
            lr = cv2.imread(str(pa))
            assert lr.shape == (32, 30, 3)
        assert (a / kind / 'manifest.json').read_bytes() == (b / kind / 'manifest.json').read_bytes()
    assert cv2.imread(str(a / 'HR' / 'baby.png')).shape == (128, 120, 3)
    assert not filecmp.cmp(a / 'realesrgan' / 'X4' / 'baby.png', c / 'realesrgan' / 'X4' / 'baby.png', shallow=False)
    man = json.loads((a / 'realesrgan' / 'manifest.json').read_text())
    p = man['images']['baby']
    assert man['seed'] == 0 and {'seed', 'jpeg1', 'jpeg2', 'noise1', 'resize1', 'blur1_sigma'} <= set(p)
    assert json.loads((a / 'jpeg30' / 'manifest.json').read_text())['images']['bird']['jpeg_quality'] == 30
    # the single-factor sets are what they say: noise10's LR minus the plain bicubic LR has sigma ~10
    from clsr_arch.data.prep import bicubic_lr
    clean = bicubic_lr(cv2.imread(str(a / 'HR' / 'baby.png')), 4).astype(float)
    noisy = cv2.imread(str(a / 'noise10' / 'X4' / 'baby.png')).astype(float)
    assert 8 < (noisy - clean).std() < 11


def test_degraded_sets_bad_input_names_the_file(two_hr, tmp_path):
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    with pytest.raises(DataError, match='broken.png'):
        make_degraded_sets(str(bad), str(tmp_path / 'out'), show_progress=False)
    with pytest.raises(DataError, match='unknown degradation kind'):
        make_degraded_sets(str(two_hr), str(tmp_path / 'out'), kinds=['jpeg31'], show_progress=False)
    r = subprocess.run([sys.executable, osp.join(REPO, 'data', 'make_degraded_sets.py'), str(tmp_path / 'nowhere'),
                        str(tmp_path / 'out')], capture_output=True, text=True)
    assert r.returncode != 0 and 'nowhere' in r.stderr and 'Traceback' not in r.stderr
