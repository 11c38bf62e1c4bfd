"""Shared fixtures: tiny real datasets made at test time from ../shared/data (never downloaded)."""
import os
import os.path as osp

import cv2
import pytest
import torch

import clsr_arch  # noqa: F401  (compat + registries)
from clsr_arch.data.prep import bicubic_lr  # the paper's LR, also imported from here by tests

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
SHARED_DATA = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data'))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='run tests marked slow')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long-running (run with --runslow)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'):
        return
    skip = pytest.mark.skip(reason='slow: run with --runslow (make test-all)')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """For modules of many tiny ops: on a shared, oversubscribed 2-core machine two OpenMP
    threads spin-wait on each other (measured: 5 s vs 15 ms for one tiny CLSR decode), one
    thread does not. Restored afterwards for other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared(*parts):
    path = osp.join(SHARED_DATA, *parts)
    if not osp.exists(path):
        pytest.skip(f'{path} missing: ../shared/data must sit beside the repository')
    return path


@pytest.fixture(scope='session')
def tiny_pairs(tmp_path_factory):
    """HR/LR x4 folders: 96x96 HR crops of Set5 images (LR 24x24), same file names."""
    root = tmp_path_factory.mktemp('tiny_pairs')
    hr_dir, lr_dir = root / 'HR', root / 'LR'
    hr_dir.mkdir()
    lr_dir.mkdir()
    src = shared('Set5', 'HR')
    for name in sorted(os.listdir(src))[:4]:
        img = cv2.imread(osp.join(src, name), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        crop = img[h // 2 - 48:h // 2 + 48, w // 2 - 48:w // 2 + 48]
        cv2.imwrite(str(hr_dir / name), crop)
        cv2.imwrite(str(lr_dir / name), bicubic_lr(crop, 4))
    return root


# --- reliability tests (tests/test_reliability_kill.py, test_bad_input.py, test_ddp.py) ---------
CPU_TINY_YML = osp.join(REPO, 'options', 'train', 'CLSR_SRResNet_x4_cpu_tiny.yml')


def tiny_clsr_train_opt(name, pairs, total_iter, ckpt_freq=2, val_freq=3, num_feat=8):
    """options/train/CLSR_SRResNet_x4_cpu_tiny.yml shrunk for a subprocess test run on ``tiny_pairs``
    (24x24 LR): 16x16 contexts with 12x12 ROIs, 12x12 validation ROIs, every iteration logged."""
    import yaml
    from basicsr.utils.options import ordered_yaml
    with open(CPU_TINY_YML) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    opt = yaml.safe_load(yaml.safe_dump(_plain(opt)))
    opt['name'] = name
    for phase, ds in opt['datasets'].items():
        ds.update(dataroot_gt=str(pairs / 'HR'), dataroot_lq=str(pairs / 'LR'), roi_size=12)
        if phase == 'train':
            ds.update(context_size=16, batch_size_per_gpu=2, dataset_enlarge_ratio=4, num_worker_per_gpu=0)
    opt['network_g']['backbone'].update(num_feat=num_feat, num_block=1)
    opt['network_g']['gcm'] = {'num_windows': 4, 'heads': 2}
    opt['train'].update(total_iter=total_iter, ema_decay=0.9)
    opt['train']['scheduler']['periods'] = [total_iter]
    opt['train']['lambda_schedule']['periods'] = total_iter
    opt['val'].update(val_freq=val_freq, pbar=False)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=ckpt_freq, use_tb_logger=False)
    return opt


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


# tiny configurations of every CLSR backbone (tests/test_clsr_arch.py, test_tiling.py, test_api.py)
TINY = {
    'MSRResNet': dict(type='MSRResNet', num_feat=16, num_block=2, upscale=4),
    'CARN_M': dict(type='CARN_M'),  # as is (64 channels, groups of 4)
    'CARN': dict(type='CARN', num_feat=16),
    'RCAN': dict(type='RCAN', num_in_ch=3, num_out_ch=3, num_feat=16, num_group=1, num_block=2, squeeze_factor=4,
                 upscale=4),
    'SwinIR-light': dict(type='SwinIR', upscale=4, img_size=16, window_size=4, embed_dim=12, depths=[2],
                         num_heads=[2], mlp_ratio=2, upsampler='pixelshuffledirect'),
    'SwinIR': dict(type='SwinIR', upscale=4, img_size=16, window_size=4, embed_dim=12, depths=[2, 2],
                   num_heads=[2, 2], mlp_ratio=2, upsampler='pixelshuffle'),
    'IMDN': dict(type='IMDN', num_feat=16, num_block=3, upscale=4),
    # BasicSR's other SR archs (issue 24)
    'EDSR': dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=16, num_block=2, upscale=4),
    'RRDBNet': dict(type='RRDBNet', num_in_ch=3, num_out_ch=3, scale=4, num_feat=16, num_block=2, num_grow_ch=8),
    'SRVGGNetCompact': dict(type='SRVGGNetCompact', num_feat=16, num_conv=3, upscale=4),  # 2 stages: 2 + 1 convs
}
GCM = {'window': 6, 'num_windows': 6, 'heads': 2, 'stage': 1}


def perturb_context_modules(net, std=1.0):
    """Random GCM/PIM weights, so that their (zero at init) contributions are not trivial."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in (net.gcm, net.pim):
            if module is not None:
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * std)


def assert_same_uint8(a, b):
    """uint8 SR outputs of two runs whose floats agree to <= 1e-5: equal, except a rare pixel whose
    float sits within 1e-5 of a .5 rounding boundary (the summation order can differ between calls,
    e.g. with the memory layout oneDNN gets)."""
    import numpy as np
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f'max {diff.max()}, {(diff > 0).sum()} pixels differ'


# --- CLI tests (tests/test_infer.py, test_batch_infer.py): a tiny CLSR as a YAML + weights pair ---
TINY_CLI = {'type': 'CLSR', 'backbone': {'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': 4},
            'roi_pad': 2, 'gcm': {'num_windows': 4, 'heads': 2}, 'pim': {'ratio': 0.25}}


def save_tiny_cli_model(root, perturb=None):
    """``(options YAML, weights)`` paths of ``TINY_CLI`` (seed 0) under ``root``; ``perturb``: std of
    random context-module weights (None: zero injections, as initialised)."""
    from basicsr.archs import build_network
    import yaml
    torch.manual_seed(0)
    net = build_network(dict(TINY_CLI))
    if perturb is not None:
        perturb_context_modules(net, perturb)
    opt = root / 'tiny.yml'
    opt.write_text(yaml.safe_dump({'name': 'tiny', 'network_g': TINY_CLI}))
    weights = root / 'tiny.pth'
    torch.save({'params': net.state_dict()}, weights)
    return str(opt), str(weights)
