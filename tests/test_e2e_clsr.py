"""End to end on CPU: clsr_arch/train.py -> --auto_resume -> clsr_arch/test.py in three modes.

Subprocesses run the real entry points on options/train/CLSR_SRResNet_x4_cpu_tiny.yml and
options/test/{CLSR,PreCrop,PostCrop}_SRResNet_x4.yml, shrunk to a tiny network and the
``tiny_pairs`` Set5 crops (LR 24x24, ROI grid 12x12 -> 4 ROIs per image), with CLSR_ROOT
pointing experiments/, tb_logger/ and results/ into a tmp folder.
"""
import csv
import glob
import json
import math
import os
import os.path as osp
import re
import subprocess
import sys
from copy import deepcopy

import pytest
import torch
import yaml

import clsr_arch  # noqa: F401
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr
from basicsr.utils import img2tensor, tensor2img
from clsr_arch.models.lambda_schedule import LambdaSchedule

from conftest import REPO

NAME = 'e2e_clsr'
LAMBDA = {'type': 'cosine', 'start': 0.5, 'end': 0.0, 'periods': 6}
TINY_NET = {'type': 'CLSR',
            'backbone': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2,
                         'upscale': 4},
            'gcm': {'num_windows': 4, 'heads': 2}, 'pim': {'ratio': 0.25}, 'pretrain_backbone': None}


def load_yml(rel):
    with open(osp.join(REPO, rel)) as f:
        return yaml.safe_load(f)


def run(script, opt, tmp, *flags, nproc=1):
    path = osp.join(tmp, f'{opt["name"]}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f)
    env = dict(os.environ, CLSR_ROOT=str(tmp), OMP_NUM_THREADS='1' if nproc > 1 else '2', PYTHONWARNINGS='ignore')
    launcher = [sys.executable]
    if nproc > 1:  # DDP on CPU (gloo, clsr_arch.compat)
        launcher += ['-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', f'--master_port={free_port()}']
        flags += ('--launcher', 'pytorch')
    proc = subprocess.run(launcher + [osp.join(REPO, 'clsr_arch', script), '-opt', path, *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f'{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def parse_train_log(path):
    """{iter: {name: value}} from BasicSR MessageLogger lines."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.search(r'iter:\s*([\d,]+), lr:\(.*?\)\] \[eta: [^\]]*\] (.*)$', line)
            if m:
                out[int(m.group(1).replace(',', ''))] = {k: float(v) for k, v in re.findall(r'(\w+): ([-+.\deE]+)',
                                                                                       m.group(2))}
    return out


def train_opt(tiny_pairs, total_iter):
    opt = load_yml('options/train/CLSR_SRResNet_x4_cpu_tiny.yml')
    opt['name'] = NAME
    tr, val = opt['datasets']['train'], opt['datasets']['val']
    for d in (tr, val):
        d.update(dataroot_gt=str(tiny_pairs / 'HR'), dataroot_lq=str(tiny_pairs / 'LR'))
    tr.update(context_size=14, roi_size=12, batch_size_per_gpu=2, dataset_enlarge_ratio=1)
    val.update(name='tiny_val', roi_size=12)
    opt['network_g'] = deepcopy(TINY_NET)
    opt['train'].update(total_iter=total_iter, ema_decay=0.9, lambda_schedule=dict(LAMBDA))
    opt['train']['scheduler']['periods'] = [6]
    opt['val']['val_freq'] = 2
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    return opt


@pytest.fixture(scope='module')
def trained(tiny_pairs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('e2e')
    run('train.py', train_opt(tiny_pairs, 4), tmp)
    first_logs = set(glob.glob(str(tmp / 'experiments' / NAME / f'train_{NAME}_*.log')))
    # a longer run of the same experiment, resumed from its newest training state (iter 4)
    run('train.py', train_opt(tiny_pairs, 6), tmp, '--auto_resume')
    logs = set(glob.glob(str(tmp / 'experiments' / NAME / f'train_{NAME}_*.log')))
    assert len(first_logs) == 1 and len(logs - first_logs) == 1
    (new_log,) = logs - first_logs  # before popping first_logs: the tuple is built left to right
    return tmp, first_logs.pop(), new_log


def test_train_logs_losses_and_lambda_schedule(trained):
    _, log1, log2 = trained
    sched = LambdaSchedule(**LAMBDA)
    first, resumed = parse_train_log(log1), parse_train_log(log2)
    assert sorted(first) == [1, 2, 3, 4]
    assert sorted(resumed) == [5, 6]  # continues at the saved iteration, not from 1
    for it, vals in {**first, **resumed}.items():
        assert vals['lambda'] == pytest.approx(sched(it), abs=1e-4), it  # logged with 4 decimals
        assert 0 < vals['l_pix'] < 1
        if sched(it) > 0:
            assert 0 < vals['l_context'] < 1
        else:  # iteration 6: lambda == 0, the context prediction is skipped
            assert 'l_context' not in vals
    assert resumed[5]['lambda'] == pytest.approx(0.25 * (1 + math.cos(5 * math.pi / 6)), abs=1e-4)
    with open(log2) as f:
        assert 'Resuming training from epoch' in f.read()


def test_train_validation_checkpoints_and_tensorboard(trained):
    tmp, log1, _ = trained
    text = open(log1).read()
    assert 'tiny_val: mode clsr, 16 ROIs in 4 images' in text
    psnrs = [float(v) for v in re.findall(r'# psnr: ([\d.]+)', text)]
    ssims = [float(v) for v in re.findall(r'# ssim: ([\d.]+)', text)]
    assert len(psnrs) == 3 and all(15 < v < 45 for v in psnrs)  # iters 2, 4 and the final one
    assert all(0 < v <= 1 for v in ssims)
    exp = tmp / 'experiments' / NAME
    for it in (2, 4, 6):
        assert (exp / 'training_states' / f'{it}.state').is_file()
        ckpt = torch.load(exp / 'models' / f'net_g_{it}.pth', weights_only=True)
        assert set(ckpt) == {'params', 'params_ema'}
    assert (exp / 'models' / 'net_g_latest.pth').is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp / 'tb_logger' / NAME))
    acc.Reload()
    tags = acc.Tags()['scalars']
    assert {'lambda', 'losses/l_pix', 'losses/l_context', 'metrics/tiny_val/psnr'} <= set(tags)
    assert [e.step for e in acc.Scalars('lambda')] == [1, 2, 3, 4, 5, 6]


def test_test_py_three_modes(trained, tiny_pairs):
    tmp, _, _ = trained
    ckpt = str(tmp / 'experiments' / NAME / 'models' / 'net_g_latest.pth')
    summaries = {}
    for prefix in ('CLSR', 'PreCrop', 'PostCrop'):
        opt = load_yml(f'options/test/{prefix}_SRResNet_x4.yml')
        opt['name'] = f'e2e_test_{prefix}'
        opt['num_gpu'] = 0
        opt['datasets'] = {'test_1': {'name': 'tiny_roi12', 'type': 'ContextROIDataset', 'io_backend': {'type': 'disk'},
                                      'dataroot_gt': str(tiny_pairs / 'HR'), 'dataroot_lq': str(tiny_pairs / 'LR'),
                                      'roi_size': 12}}
        # the trained CLSR checkpoint: CLSR mode uses it whole, pre/post-crop its base
        opt['network_g'] = deepcopy(TINY_NET)
        opt['path'] = {'pretrain_network_g': ckpt, 'param_key_g': 'params_ema', 'strict_load_g': True}
        opt['val'].pop('pre_crop_pad', None)  # default: the network's own roi_pad
        if prefix == 'PreCrop':
            # with roi_pad 2 of real context (shifted inward at borders, roi.place_inside) this
            # tiny net's receptive field is covered and pre-crop equals post-crop: test pad 0
            opt['val']['pre_crop_pad'] = 0
        opt['val'].update(save_img=True, save_roi=prefix == 'CLSR')
        run('test.py', opt, tmp)
        res = tmp / 'results' / opt['name']
        summary = json.load(open(res / 'metrics_tiny_roi12.json'))
        rows = list(csv.DictReader(open(res / 'rois_tiny_roi12.csv')))
        assert summary['mode'] == opt['val']['mode'] and summary['num_rois'] == len(rows) == 16
        assert summary['num_images'] == 4
        assert summary['metrics']['psnr'] == pytest.approx(sum(float(r['psnr']) for r in rows) / 16, abs=1e-9)
        assert 15 < summary['metrics']['psnr'] < 45 and 0 < summary['metrics']['ssim'] <= 1
        log = open(glob.glob(str(tmp / 'results' / opt['name'] / f'test_{opt["name"]}_*.log'))[0]).read()
        assert f'# psnr: {summary["metrics"]["psnr"]:.4f}' in log
        sr = sorted(glob.glob(str(res / 'visualization' / 'tiny_roi12' / '*.png')))
        assert len(sr) == 4
        summaries[prefix] = (summary, rows)
    psnr = {k: v[0]['metrics']['psnr'] for k, v in summaries.items()}
    # three different rows of Table 1 (CLSR differs from post-crop only by its briefly trained GCM/PIM)
    assert len(set(psnr.values())) == 3 and abs(psnr['PreCrop'] - psnr['PostCrop']) > 1e-3, psnr
    assert len(glob.glob(str(tmp / 'results' / 'e2e_test_CLSR' / 'visualization' / 'tiny_roi12' / '*_rois' /
                             '*.png'))) == 16

    # recompute one CLSR-mode ROI independently: the checkpoint, the net, BasicSR's PSNR
    import cv2
    row = summaries['CLSR'][1][5]
    net = build_network(deepcopy(TINY_NET))
    net.load_state_dict(torch.load(ckpt, weights_only=True)['params_ema'])
    net.eval()
    name = row['image'] + '.png'
    lq = img2tensor(cv2.imread(str(tiny_pairs / 'LR' / name)).astype('float32') / 255.).unsqueeze(0)
    gt = cv2.imread(str(tiny_pairs / 'HR' / name))
    x, y, w, h = (int(row[k]) for k in 'xywh')
    with torch.no_grad():
        sr = net(lq, torch.tensor([[0, x, y, w, h]]))
    ref = calculate_psnr(tensor2img([sr]), gt[4 * y:4 * (y + h), 4 * x:4 * (x + w)], 0, test_y_channel=True)
    assert float(row['psnr']) == pytest.approx(ref, abs=1e-6)


def tiny_test_opt(prefix, name, tiny_pairs, ckpt):
    opt = load_yml(f'options/test/{prefix}_SRResNet_x4.yml')
    opt.update(name=name, num_gpu=0)
    opt['datasets'] = {'test_1': {'name': 'tiny_roi12', 'type': 'ContextROIDataset', 'io_backend': {'type': 'disk'},
                                  'dataroot_gt': str(tiny_pairs / 'HR'), 'dataroot_lq': str(tiny_pairs / 'LR'),
                                  'roi_size': 12}}
    opt['network_g'] = deepcopy(TINY_NET)
    opt['path'] = {'pretrain_network_g': ckpt, 'param_key_g': 'params', 'strict_load_g': True}
    opt['val'].pop('pre_crop_pad', None)
    return opt


@pytest.mark.slow
def test_ddp_two_processes_train_past_lambda_zero_and_same_test_numbers(tiny_pairs, tmp_path):
    """2-process DDP on CPU (gloo): training goes on after lambda reaches 0 without
    find_unused_parameters (the PIM head is tied in with a zero), and test.py gives the same
    metrics on 2 processes as on 1 (validation runs on rank 0)."""
    opt = train_opt(tiny_pairs, 3)
    opt.update(name='e2e_ddp', find_unused_parameters=False)
    opt['train'].update(ema_decay=0, lambda_schedule={'type': 'linear', 'start': 0.5, 'end': 0.0, 'periods': 2})
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    opt['val']['val_freq'] = 100
    run('train.py', opt, tmp_path, nproc=2)
    log = parse_train_log(glob.glob(str(tmp_path / 'experiments' / 'e2e_ddp' / 'train_e2e_ddp_*.log'))[0])
    assert sorted(log) == [1, 2, 3] and log[3]['lambda'] == 0.0 and 'l_context' not in log[3]
    ckpt = str(tmp_path / 'experiments' / 'e2e_ddp' / 'models' / 'net_g_latest.pth')
    results = []
    for nproc in (1, 2):
        test = tiny_test_opt('CLSR', f'e2e_ddp_test_{nproc}', tiny_pairs, ckpt)
        run('test.py', test, tmp_path, nproc=nproc)
        results.append(json.load(open(tmp_path / 'results' / test['name'] / 'metrics_tiny_roi12.json')))
    assert results[0]['num_rois'] == results[1]['num_rois'] == 16
    assert results[0]['metrics'] == results[1]['metrics']


@pytest.mark.slow
def test_every_shipped_network_config_builds():
    """The paper-size networks of options/ (SwinIR takes seconds to build on CPU: slow)."""
    for name in sorted(os.listdir(osp.join(REPO, 'options', 'train'))):
        net_opt = load_yml(osp.join('options', 'train', name))['network_g']
        if net_opt['type'] == 'CLSR':
            net_opt['pretrain_backbone'] = None
        net = build_network(net_opt)  # a plain backbone too (the real-world base, issue 21)
        scale = net.scale if net_opt['type'] == 'CLSR' else net_opt['upscale']
        assert scale == 4 and sum(p.numel() for p in net.parameters()) > 1e4, name
