"""Foundation: the plugin imports, registers, and BasicSR's own train pipeline runs and resumes on CPU."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import yaml

from conftest import REPO


def run_pipeline(script, opt_path, root, *extra, timeout=300):
    env = dict(os.environ, CLSR_ROOT=str(root), OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    cmd = [sys.executable, osp.join(REPO, 'clsr_arch', script), '-opt', str(opt_path), *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def msrresnet_opt(name, pairs, total_iter):
    """A stock BasicSR SRModel + PairedImageDataset + MSRResNet option dict, CPU-sized."""
    data = dict(dataroot_gt=str(pairs / 'HR'), dataroot_lq=str(pairs / 'LR'), io_backend={'type': 'disk'},
                type='PairedImageDataset')
    return {
        'name': name, 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(data, name='tiny', phase='train', gt_size=64, use_hflip=True, use_rot=True,
                          num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=4,
                          prefetch_mode=None),
            'val': dict(data, name='tiny_val', phase='val'),
        },
        'network_g': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2,
                      'upscale': 4},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9,
            'optim_g': {'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                          'eta_min': 1e-7},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        },
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True},
                            'ssim': {'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True, 'wandb': {'project': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def test_import_registers_and_basicsr_imports():
    import clsr_arch  # noqa: F401
    import basicsr  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY
    assert 'MSRResNet' in ARCH_REGISTRY  # basicsr's own archs are there too
    # every *_arch/_dataset/_model module of the folders BasicSR's convention scans was imported
    # by the package (api/spandrel_model.py is not a BasicSR model: not in models/)
    for sub, kind in (('archs', '_arch'), ('data', '_dataset'), ('models', '_model')):
        for p in glob.glob(osp.join(REPO, 'clsr_arch', sub, f'*{kind}.py')):
            mod = osp.basename(p)[:-3]
            assert f'clsr_arch.{sub}.{mod}' in sys.modules, mod
    for name in ('CLSR', 'CARN', 'CARN_M'):
        assert name in ARCH_REGISTRY, name
    assert 'ContextROIDataset' in DATASET_REGISTRY
    assert 'CLSRModel' in MODEL_REGISTRY


def test_train_validate_checkpoint_tensorboard_then_auto_resume(tiny_pairs, tmp_path):
    # a 6-iteration schedule stopped after 4 iterations, as if the run had been interrupted
    opt = msrresnet_opt('found_e2e', tiny_pairs, total_iter=6)
    opt['train']['total_iter'] = 4
    opt_path = tmp_path / 'train.yml'
    opt_path.write_text(yaml.safe_dump(opt))
    run_pipeline('train.py', opt_path, tmp_path)

    exp = tmp_path / 'experiments' / 'found_e2e'
    assert (exp / 'models' / 'net_g_4.pth').is_file()
    assert (exp / 'training_states' / '4.state').is_file()
    log = open(glob.glob(str(exp / 'train_found_e2e_*.log'))[0]).read()
    psnrs = [float(v) for v in re.findall(r'# psnr: ([\d.]+)', log)]
    ssims = [float(v) for v in re.findall(r'# ssim: ([\d.]+)', log)]
    # validated at iters 2 and 4, and once more when training ends (BasicSR's final validation)
    assert len(psnrs) == 3 and all(10 < p < 40 for p in psnrs), psnrs
    assert len(ssims) == 3 and all(0 < s < 1 for s in ssims)
    assert glob.glob(str(tmp_path / 'tb_logger' / 'found_e2e' / 'events.out.tfevents.*'))

    # resume: must start from iteration 4, not from scratch
    opt['train']['total_iter'] = 6
    opt_path.write_text(yaml.safe_dump(opt))
    run_pipeline('train.py', opt_path, tmp_path, '--auto_resume')
    logs = sorted(glob.glob(str(exp / 'train_found_e2e_*.log')))
    resumed = open(logs[-1]).read()
    assert 'Resuming training from epoch' in resumed
    assert re.search(r'Resuming training from epoch: \d+, iter: 4\.', resumed), resumed[-2000:]
    iters = [int(v) for v in re.findall(r'iter:\s+([\d,]+)', resumed.replace(',', ''))]
    assert min(i for i in iters if i > 0) >= 4
    assert (exp / 'models' / 'net_g_6.pth').is_file()
    assert not glob.glob(str(exp / '**' / '.tmp-*'), recursive=True)  # atomic saves left nothing behind


def test_test_pipeline_evaluates_a_saved_checkpoint(tiny_pairs, tmp_path):
    import torch
    from basicsr.archs import build_network
    net = build_network({'type': 'MSRResNet', 'num_feat': 16, 'num_block': 2, 'upscale': 4})
    ckpt = tmp_path / 'msrresnet.pth'
    torch.save({'params': net.state_dict()}, ckpt)
    opt = {
        'name': 'found_test', 'model_type': 'SRModel', 'scale': 4, 'num_gpu': 0,
        'datasets': {'test_1': {'name': 'tiny', 'type': 'PairedImageDataset', 'phase': 'test',
                                'dataroot_gt': str(tiny_pairs / 'HR'), 'dataroot_lq': str(tiny_pairs / 'LR'),
                                'io_backend': {'type': 'disk'}}},
        'network_g': {'type': 'MSRResNet', 'num_feat': 16, 'num_block': 2, 'upscale': 4},
        'path': {'pretrain_network_g': str(ckpt), 'strict_load_g': True},
        'val': {'save_img': False, 'suffix': None,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}},
    }
    opt_path = tmp_path / 'test.yml'
    opt_path.write_text(yaml.safe_dump(opt))
    run_pipeline('test.py', opt_path, tmp_path)
    log = open(glob.glob(str(tmp_path / 'results' / 'found_test' / 'test_found_test_*.log'))[0]).read()
    assert re.search(r'# psnr: [\d.]+', log)
