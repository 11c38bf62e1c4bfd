"""Two-process CLSR training on CPU (gloo): torchrun -> train, validate on rank 0, checkpoint, resume.

``torchrun --nproc_per_node=2 clsr_arch/train.py -opt <yml> --launcher pytorch`` trains a tiny
CLSR (LocalSR's ROI + context loss, Sec. 3.5) for 4 iterations with one checkpoint, validates
on rank 0 (LocalSR's ROI-grid protocol, Sec. 4.1, ROIs saved as PNGs), and the test then checks
that

* the checkpoint is one consistent set: ``net_g_4.pth`` (``params`` + ``params_ema``, no DDP
  ``module.`` prefix, loads strictly into CLSR) and ``4.state`` (iter 4, one optimizer, one
  scheduler), nothing temporary left;
* ``clsr_arch/test.py`` on that checkpoint in a single process gives the same per-ROI outputs
  (every ROI PNG pixel-identical), the same per-ROI PSNR/SSIM as its ``rois_<dataset>.csv`` and
  the same dataset mean as rank 0 logged;
* ``--auto_resume`` under torchrun continues from iteration 4 with the lambda schedule intact.
"""
import csv
import glob
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from basicsr.metrics import calculate_psnr, calculate_ssim
from clsr_arch.models.lambda_schedule import LambdaSchedule
from clsr_arch.utils.checkpoint import safe_load
from conftest import REPO, tiny_clsr_train_opt

TORCHRUN = osp.join(osp.dirname(sys.executable), 'torchrun')
RESUME_RE = re.compile(r'Resuming training from epoch: (\d+), iter: (\d+)\.')
ITER_RE = re.compile(r'iter:\s*([\d,]+), lr:\([^)]*\)\].*?lambda: (\S+)')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun_train(opt_path, root, *extra, timeout=400):
    env = dict(os.environ, CLSR_ROOT=str(root), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    cmd = [TORCHRUN, '--nproc_per_node=2', '--master_addr=127.0.0.1', f'--master_port={free_port()}',
           osp.join(REPO, 'clsr_arch', 'train.py'), '-opt', str(opt_path), '--launcher', 'pytorch', *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}'
    return proc.stdout + proc.stderr


def run_test_main(opt, root, monkeypatch):
    """``clsr_arch/test.py -opt <opt>`` in this process (what the script's main() does)."""
    import clsr_arch.test as test_script
    path = root / f'{opt["name"]}.yml'
    path.write_text(yaml.safe_dump(opt))
    monkeypatch.setenv('CLSR_ROOT', str(root))
    monkeypatch.setattr(sys, 'argv', ['test.py', '-opt', str(path)])
    test_script.main()


def test_two_process_cpu_training_validates_like_one_process_and_resumes(tiny_pairs, tmp_path, monkeypatch):
    name = 'ddp'
    opt = tiny_clsr_train_opt(name, tiny_pairs, total_iter=6, ckpt_freq=4, val_freq=4)
    opt['train']['total_iter'] = 4  # schedules for 6 iterations; stop at 4, then resume to 6
    opt['val']['save_roi'] = True  # rank 0 writes every validated ROI as a PNG
    opt['val']['metrics']['ssim'] = {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': True}
    opt_path = tmp_path / 'ddp.yml'
    opt_path.write_text(yaml.safe_dump(opt))
    torchrun_train(opt_path, tmp_path)
    exp = tmp_path / 'experiments' / name

    # --- one consistent checkpoint, written once (rank 0), nothing temporary left
    assert sorted(os.listdir(exp / 'models')) == ['net_g_4.pth', 'net_g_latest.pth']
    assert sorted(os.listdir(exp / 'training_states')) == ['4.state']
    state = safe_load(str(exp / 'training_states' / '4.state'))
    assert state['iter'] == 4 and len(state['optimizers']) == 1 and len(state['schedulers']) == 1
    ckpt = safe_load(str(exp / 'models' / 'net_g_4.pth'))
    assert set(ckpt) == {'params', 'params_ema'}
    assert not any(k.startswith('module.') for k in ckpt['params'])
    from basicsr.archs import build_network
    net = build_network(dict(opt['network_g']))
    net.load_state_dict(ckpt['params_ema'], strict=True)
    latest = safe_load(str(exp / 'models' / 'net_g_latest.pth'))
    assert all(torch.equal(latest['params_ema'][k], v) for k, v in ckpt['params_ema'].items())
    assert not glob.glob(str(exp / '**' / '.tmp-*'), recursive=True)

    log = open(glob.glob(str(exp / f'train_{name}_*.log'))[0]).read()
    assert 'World size (gpu number): 2' in log
    logged = {m: [float(v) for v in re.findall(rf'# {m}: ([\d.]+)', log)] for m in ('psnr', 'ssim')}
    assert len(logged['psnr']) == 2  # at iteration 4 and the final validation (same network)

    # --- a single process evaluates the same checkpoint with clsr_arch/test.py
    val = dict(opt['datasets']['val'], phase='test')
    test_opt = {
        'name': 'ddp_single', 'model_type': 'CLSRModel', 'scale': 4, 'num_gpu': 0,
        'datasets': {'test_1': val}, 'network_g': opt['network_g'],
        'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_4.pth'), 'param_key_g': 'params_ema',
                 'strict_load_g': True},
        'val': {'mode': 'clsr', 'save_img': False, 'save_roi': True, 'suffix': 'single',
                'metrics': opt['val']['metrics']},
    }
    run_test_main(test_opt, tmp_path, monkeypatch)
    results = tmp_path / 'results' / 'ddp_single'
    summary = json.load(open(results / f'metrics_{val["name"]}.json'))
    with open(results / f'rois_{val["name"]}.csv') as f:
        rows = list(csv.DictReader(f))
    assert summary['num_rois'] == len(rows) == 4 * 4  # 4 images x a 2x2 grid of 12x12 ROIs

    gt_dir = tiny_pairs / 'HR'
    for row in rows:
        img, i = row['image'], int(row['roi'])
        ddp_png = exp / 'visualization' / img / f'{img}_rois' / f'{img}_roi{i:04d}_4.png'
        single_png = results / 'visualization' / val['name'] / f'{img}_rois' / f'{img}_roi{i:04d}_single.png'
        ddp_roi, single_roi = cv2.imread(str(ddp_png), cv2.IMREAD_UNCHANGED), cv2.imread(str(single_png),
                                                                                       cv2.IMREAD_UNCHANGED)
        assert ddp_roi is not None and single_roi is not None, (ddp_png, single_png)
        assert np.array_equal(ddp_roi, single_roi), f'{img} ROI {i}: rank 0 and the single process differ'
        x, y, w, h = (int(row[k]) for k in ('x', 'y', 'w', 'h'))
        gt = cv2.imread(str(gt_dir / f'{img}.png'))[4 * y:4 * (y + h), 4 * x:4 * (x + w)]
        assert calculate_psnr(ddp_roi, gt, 0, test_y_channel=True) == pytest.approx(float(row['psnr']), abs=1e-9)
        assert calculate_ssim(ddp_roi, gt, 0, test_y_channel=True) == pytest.approx(float(row['ssim']), abs=1e-9)
    for m in ('psnr', 'ssim'):  # the log prints 4 decimals
        assert all(v == pytest.approx(summary['metrics'][m], abs=6e-5) for v in logged[m]), (m, logged, summary)
    assert 10 < summary['metrics']['psnr'] < 45

    # --- resume under torchrun
    opt['train']['total_iter'] = 6
    opt['val']['save_roi'] = False
    opt_path.write_text(yaml.safe_dump(opt))
    torchrun_train(opt_path, tmp_path, '--auto_resume')
    logs = sorted(glob.glob(str(exp / f'train_{name}_*.log')), key=os.path.getmtime)
    resumed = open(logs[-1]).read()
    m = RESUME_RE.search(resumed)
    assert m and (int(m.group(1)), int(m.group(2))) == (state['epoch'], 4), resumed[-2000:]
    iters = [(int(i.replace(',', '')), float(lam)) for i, lam in ITER_RE.findall(resumed)]
    assert [i for i, _ in iters] == [5, 6]
    sched = LambdaSchedule.from_opt(opt['train']['lambda_schedule'], 6)
    for i, lam in iters:
        assert lam == pytest.approx(sched(i), rel=2e-4, abs=1e-12)
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    assert safe_load(str(exp / 'training_states' / '4.state'))['iter'] == 4
