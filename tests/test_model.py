"""Unit tests of CLSRModel (clsr_arch/models/clsr_model.py) and the lambda schedule.

Tiny networks on tiny real LR images (Set5, MATLAB-bicubic x4): every test runs in well under
a second or two on 2 CPU cores.
"""
import math
import os.path as osp
from copy import deepcopy

import cv2
import numpy as np
import pytest
import torch

import clsr_arch  # noqa: F401
from basicsr.archs import build_network
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.models import build_model
from basicsr.utils import img2tensor, tensor2img
from clsr_arch.models.clsr_model import MetricAverager, run_backbone
from clsr_arch.models.lambda_schedule import LambdaSchedule

from conftest import bicubic_lr, shared

SCALE = 4
TINY_SRRESNET = {'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': SCALE}
TINY_SWINIR = {'type': 'SwinIR', 'upscale': SCALE, 'in_chans': 3, 'img_size': 8, 'window_size': 4,
               'img_range': 1., 'depths': [1], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2,
               'upsampler': 'pixelshuffledirect'}
METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True},
           'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': True}}


# ----------------------------------------------------------------------------- helpers
def make_opt(tmp_path, network_g, mode, pretrain=None, **val):
    """The dict BasicSR's parse_options builds for a test run (is_train False, one process)."""
    return {
        'name': 'unit', 'model_type': 'CLSRModel', 'scale': SCALE, 'num_gpu': 0, 'is_train': False,
        'dist': False, 'rank': 0, 'world_size': 1, 'network_g': deepcopy(network_g),
        'path': {'pretrain_network_g': pretrain, 'strict_load_g': True, 'param_key_g': 'params',
                 'results_root': str(tmp_path / 'results'), 'visualization': str(tmp_path / 'vis')},
        'val': {'mode': mode, 'save_img': False, 'metrics': deepcopy(METRICS), **val},
    }


def lr_hr(name, hr_size):
    """A centred HR crop of a Set5 image and its bicubic x4 LR, both as [1, 3, h, w] tensors."""
    img = cv2.imread(shared('Set5', 'HR', name), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    hh, ww = hr_size
    hr = img[(h - hh) // 2:(h - hh) // 2 + hh, (w - ww) // 2:(w - ww) // 2 + ww]
    lr = bicubic_lr(hr, SCALE)
    to_t = lambda a: img2tensor(a.astype(np.float32) / 255., bgr2rgb=True, float32=True).unsqueeze(0)  # noqa
    return to_t(lr), to_t(hr)


def grid(h, w, roi):
    return torch.tensor([[x, y, roi, roi] for y in range(0, h - roi + 1, roi) for x in range(0, w - roi + 1, roi)])


def val_item(name, hr_size, roi):
    lq, gt = lr_hr(name, hr_size)
    return {'lq': lq, 'gt': gt, 'rois': grid(lq.shape[-2], lq.shape[-1], roi).unsqueeze(0),
            'lq_path': [f'/x/{name}'], 'gt_path': [f'/x/{name}']}


class FakeLoader(list):
    """What nondist_validation needs of a dataloader: iteration, len, dataset.opt['name']."""

    class _DS:
        opt = {'name': 'fake'}

    dataset = _DS()


def saved_plain_net(tmp_path, net_opt, seed=0):
    torch.manual_seed(seed)
    net = build_network(deepcopy(net_opt))
    path = str(tmp_path / f'{net_opt["type"]}.pth')
    torch.save({'params': net.state_dict()}, path)
    return net.eval(), path


# ----------------------------------------------------------------------------- lambda schedule
def test_lambda_cosine_linear_constant_values():
    cos = LambdaSchedule('cosine', 0.5, 0.0, 100)
    assert cos(0) == 0.5
    assert cos(50) == pytest.approx(0.25, abs=1e-12)
    assert cos(25) == pytest.approx(0.25 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert cos(100) == 0.0 and cos(1000) == 0.0  # exact zero: the PIM head is then skipped
    lin = LambdaSchedule('linear', 0.5, 0.0, 100)
    assert lin(25) == pytest.approx(0.375) and lin(100) == 0.0 and lin(150) == 0.0
    lin_up = LambdaSchedule('linear', 0.1, 0.8, 10)
    assert lin_up(5) == pytest.approx(0.45)
    const = LambdaSchedule('constant', 0.5)
    assert const(0) == const(10 ** 6) == 0.5
    # a resumed run continues: the schedule is a pure function of the absolute iteration
    values = [cos(t) for t in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lambda_from_opt_defaults_and_errors():
    sched = LambdaSchedule.from_opt({'type': 'linear', 'start': 0.5, 'end': 0.0}, total_iter=40)
    assert sched.periods == 40 and sched(20) == pytest.approx(0.25)
    assert LambdaSchedule.from_opt(None, total_iter=10)(5) == pytest.approx(0.25)  # paper default
    with pytest.raises(ValueError, match='type'):
        LambdaSchedule('exp', 0.5, 0.0, 10)
    with pytest.raises(ValueError, match='periods'):
        LambdaSchedule('cosine', 0.5, 0.0, None)
    with pytest.raises(ValueError, match='unknown keys'):
        LambdaSchedule.from_opt({'type': 'cosine', 'period': 10}, total_iter=10)
    with pytest.raises(ValueError, match='>= 0'):
        LambdaSchedule('constant', -1)


# ----------------------------------------------------------------------------- metric averaging
def test_metric_averager_over_rois_and_inf():
    avg = MetricAverager(['psnr'])
    for v in (30., 20., 40., float('inf')):
        avg.add({'psnr': v})
    assert avg.num_rois == 4 and avg.num_inf['psnr'] == 1
    assert avg.means()['psnr'] == pytest.approx(30.)


def test_validation_averages_over_all_rois_not_images(tmp_path):
    """Two images with 6 and 2 ROIs: the dataset PSNR is the mean of the 8 ROI PSNRs."""
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    model = build_model(make_opt(tmp_path, TINY_SRRESNET, 'post_crop', pretrain=path, image_metrics=True))
    items = [val_item('baby.png', (96, 144), 12), val_item('bird.png', (48, 96), 12)]
    model.nondist_validation(FakeLoader(items), 1, None, save_img=False)

    net = model.net_g
    per_roi, per_image, stitched = {'psnr': [], 'ssim': []}, [], []
    for it in items:
        with torch.no_grad():
            sr = tensor2img([net(it['lq'])])
        gt = tensor2img([it['gt']])
        stitched.append(calculate_psnr(sr, gt, 0, test_y_channel=True))
        img_psnr = []
        for x, y, w, h in it['rois'][0].tolist():
            a, b = sr[4 * y:4 * (y + h), 4 * x:4 * (x + w)], gt[4 * y:4 * (y + h), 4 * x:4 * (x + w)]
            per_roi['psnr'].append(calculate_psnr(a, b, 0, test_y_channel=True))
            per_roi['ssim'].append(calculate_ssim(a, b, 0, test_y_channel=True))
            img_psnr.append(per_roi['psnr'][-1])
        per_image.append(np.mean(img_psnr))
    assert len(per_roi['psnr']) == 8 and model.num_rois == 8
    assert model.metric_results['psnr'] == pytest.approx(np.mean(per_roi['psnr']), abs=1e-9)
    assert model.metric_results['ssim'] == pytest.approx(np.mean(per_roi['ssim']), abs=1e-9)
    assert abs(np.mean(per_image) - np.mean(per_roi['psnr'])) > 1e-3  # the two averages differ here
    # val.image_metrics: the secondary whole-(stitched-)image mean, reported beside it
    assert model.image_metric_results['psnr'] == pytest.approx(np.mean(stitched), abs=1e-9)
    assert abs(model.image_metric_results['psnr'] - model.metric_results['psnr']) > 1e-3
    assert model.best_metric_results['fake']['psnr']['iter'] == 1
    assert 5 < model.metric_results['psnr'] < 40  # a random tiny net is poor but finite


# ----------------------------------------------------------------------------- baselines
def test_post_crop_equals_cropping_whole_image_output(tmp_path):
    net, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    model = build_model(make_opt(tmp_path, TINY_SRRESNET, 'post_crop', pretrain=path))
    model.feed_data(val_item('head.png', (96, 96), 8))
    model.test()
    with torch.no_grad():
        full = net(model.lq)
    assert torch.equal(model.output, full)  # the grid covers the whole image
    x, y, w, h = model.rois[4].tolist()
    assert torch.equal(model.roi_outputs[4], full[0, :, 4 * y:4 * (y + h), 4 * x:4 * (x + w)])


def test_pre_crop_runs_on_roi_alone_with_inward_padding(tmp_path):
    net, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    item = val_item('head.png', (96, 96), 8)
    lq = item['lq']
    for pad in (3, 0):  # pad 0 last: compared with post-crop below
        model = build_model(make_opt(tmp_path, TINY_SRRESNET, 'pre_crop', pretrain=path, pre_crop_pad=pad))
        model.feed_data(item)
        model.test()
        # ROI (8, 0): at the top border the padded window is shifted down (all 2*pad context rows
        # below the ROI, none mirrored: roi.place_inside); left/right it is real context
        x, y = 8, 0
        i = model.rois.tolist().index([x, y, 8, 8])
        crop = lq[..., 0:8 + 2 * pad, x - pad:x + 8 + pad]
        with torch.no_grad():
            ref = net(crop)[0, :, 0:32, 4 * pad:4 * (pad + 8)]
        assert torch.allclose(model.roi_outputs[i], ref, atol=1e-6)
    # pre-crop without padding loses context: its ROIs differ from post-crop's
    post = build_model(make_opt(tmp_path, TINY_SRRESNET, 'post_crop', pretrain=path))
    post.feed_data(item)
    post.test()
    assert (post.roi_outputs[i] - model.roi_outputs[i]).abs().max() > 1e-4


def test_swinir_baselines_pad_to_window(tmp_path):
    """SwinIR (window 4) on 6x6 ROIs and a 18x18 image: reflect-padded inside the runner."""
    net, path = saved_plain_net(tmp_path, TINY_SWINIR)
    item = val_item('butterfly.png', (72, 72), 6)
    model = build_model(make_opt(tmp_path, TINY_SWINIR, 'post_crop', pretrain=path))
    assert model.size_multiple == 4
    model.feed_data(item)
    model.test()
    with torch.no_grad():
        ref = net(torch.nn.functional.pad(model.lq, (0, 2, 0, 2), mode='reflect'))[..., :72, :72]
    assert torch.allclose(model.output, ref, atol=1e-5)
    pre = build_model(make_opt(tmp_path, TINY_SWINIR, 'pre_crop', pretrain=path, pre_crop_pad=1))
    pre.feed_data(item)
    pre.test()  # 6 + 2 = 8: already a multiple of 4
    assert pre.output.shape == (1, 3, 72, 72) and torch.isfinite(pre.output).all()


def test_run_backbone_checks_scale():
    net = build_network(deepcopy(TINY_SRRESNET))
    with pytest.raises(ValueError, match='scale'):
        run_backbone(net, torch.rand(1, 3, 8, 8), 2)


# ----------------------------------------------------------------------------- bad input
def test_bad_options_and_boxes(tmp_path):
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    with pytest.raises(ValueError, match='needs a CLSR network'):
        build_model(make_opt(tmp_path, TINY_SRRESNET, 'clsr', pretrain=path))
    with pytest.raises(ValueError, match='val.mode'):
        build_model(make_opt(tmp_path, TINY_SRRESNET, 'precrop', pretrain=path))
    model = build_model(make_opt(tmp_path, TINY_SRRESNET, 'post_crop', pretrain=path))
    item = val_item('head.png', (96, 96), 8)
    item['rois'] = torch.tensor([[[20, 0, 8, 8]]])  # x + w = 28 > 24
    with pytest.raises(ValueError, match=r'head\.png.*box 0'):
        model.feed_data(item)
    item.pop('rois')
    with pytest.raises(ValueError, match='`roi` .*`rois`'):
        model.feed_data(item)


# ----------------------------------------------------------------------------- with the CLSR network
def tiny_clsr(pretrain):
    return {'type': 'CLSR', 'backbone': deepcopy(TINY_SRRESNET), 'gcm': {'num_windows': 4, 'heads': 2},
            'pim': {'ratio': 0.25}, 'pretrain_backbone': pretrain}


def test_clsr_at_init_reproduces_pre_crop_with_padding_metrics(tmp_path):
    """CLSR built on a plain checkpoint (injections zero) == the pre-crop baseline of that
    checkpoint with the same padding: same ROI images, same dataset metrics."""
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    items = [val_item('baby.png', (96, 144), 8), val_item('woman.png', (64, 96), 8)]
    clsr = build_model(make_opt(tmp_path, tiny_clsr(path), 'clsr'))
    pad = clsr.net_g.roi_pad
    assert pad > 0 and clsr.pre_crop_pad == pad  # default pre-crop padding = CLSR's own
    plain = build_model(make_opt(tmp_path, TINY_SRRESNET, 'pre_crop', pretrain=path, pre_crop_pad=pad))
    for it in items:
        for model in (clsr, plain):
            model.feed_data(it)
            model.test()
        for a, b in zip(clsr.roi_outputs, plain.roi_outputs):
            assert (a - b).abs().max() < 1e-5
    clsr.nondist_validation(FakeLoader(items), 0, None, False)
    plain.nondist_validation(FakeLoader(items), 0, None, False)
    assert clsr.num_rois == plain.num_rois == 3 * 4 + 2 * 3
    for k in METRICS:
        assert clsr.metric_results[k] == pytest.approx(plain.metric_results[k], abs=1e-9)
    # and without padding the baseline is measurably different (the padding matters)
    nopad = build_model(make_opt(tmp_path, TINY_SRRESNET, 'pre_crop', pretrain=path, pre_crop_pad=0))
    nopad.nondist_validation(FakeLoader(items), 0, None, False)
    assert abs(nopad.metric_results['psnr'] - clsr.metric_results['psnr']) > 1e-4


def train_opt(tmp_path, pretrain, schedule, ema_decay=0.):
    opt = make_opt(tmp_path, tiny_clsr(pretrain), 'clsr')
    opt['is_train'] = True
    opt['train'] = {
        'ema_decay': ema_decay, 'total_iter': 4,
        'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
        'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [4], 'restart_weights': [1], 'eta_min': 1e-7},
        'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        'context_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
        'lambda_schedule': schedule}
    return opt


def train_batch():
    """Two 14x14 LR contexts with centred 12x12 ROIs, their HR ROIs and HR contexts (x4)."""
    lqs, gts = zip(*(lr_hr(n, (56, 56)) for n in ('baby.png', 'bird.png')))
    lq, gt_ctx = torch.cat(lqs), torch.cat(gts)
    return {'lq': lq, 'roi': torch.tensor([[1, 1, 12, 12]] * 2), 'gt': gt_ctx[..., 4:52, 4:52],
            'gt_context': gt_ctx, 'lq_path': ['a', 'b']}


def test_training_loss_lambda_and_skipped_context(tmp_path):
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    model = build_model(train_opt(tmp_path, path, {'type': 'linear', 'start': 0.5, 'end': 0.0, 'periods': 2}))
    net, batch = model.net_g, train_batch()
    model.feed_data(batch)
    assert model.boxes.tolist() == [[0, 1, 1, 12, 12], [1, 1, 1, 12, 12]]
    with torch.no_grad():
        sr, ctx = net(batch['lq'], model.boxes, return_context=True)
    tail_before = [p.clone() for p in net.pim.tail.parameters()]
    model.optimize_parameters(1)  # lambda(1) = 0.25
    log = model.get_current_log()
    assert log['lambda'] == pytest.approx(0.25)
    assert log['l_pix'] == pytest.approx((sr - batch['gt']).abs().mean().item(), rel=1e-5)
    assert log['l_context'] == pytest.approx((ctx - batch['gt_context']).abs().mean().item(), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(tail_before, net.pim.tail.parameters()))

    # lambda(2) = 0: Y^_P is not computed at all, the PIM's HR head gets no gradient
    def no_context(*args, **kwargs):
        raise AssertionError('predict_context called with lambda == 0')
    net.predict_context = no_context
    tail_before = [p.clone() for p in net.pim.tail.parameters()]
    model.feed_data(batch)
    model.optimize_parameters(2)
    log = model.get_current_log()
    assert log['lambda'] == 0.0 and 'l_context' not in log and log['l_pix'] > 0
    assert all(torch.equal(a, b) for a, b in zip(tail_before, net.pim.tail.parameters()))


def test_training_ema_and_bad_batches(tmp_path):
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    model = build_model(train_opt(tmp_path, path, {'type': 'constant', 'start': 0.5}, ema_decay=0.5))
    ema_before = {k: v.clone() for k, v in model.net_g_ema.state_dict().items()}
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    assert model.get_current_log()['lambda'] == 0.5
    new = dict(model.net_g.named_parameters())
    for k, p in model.net_g_ema.named_parameters():
        assert torch.allclose(p, 0.5 * ema_before[k] + 0.5 * new[k], atol=1e-7)
    bad = train_batch()
    bad['roi'] = torch.tensor([[1, 1, 12, 12], [4, 4, 12, 12]])  # 4 + 12 > 14
    with pytest.raises(ValueError, match='box 1'):
        model.feed_data(bad)
    with pytest.raises(ValueError, match='is a plain backbone'):
        opt = train_opt(tmp_path, None, None)
        opt['network_g'] = deepcopy(TINY_SRRESNET)
        build_model(opt)


# ----------------------------------------------------------------------------- shipped options
def _load_options(pattern):
    import glob

    import yaml
    from basicsr.utils.options import ordered_yaml
    from conftest import REPO
    files = sorted(glob.glob(osp.join(REPO, 'options', pattern)))
    assert files, pattern
    return {osp.basename(f)[:-4]: yaml.load(open(f), Loader=ordered_yaml()[0]) for f in files}


def test_shipped_options_follow_the_paper_protocol():
    from clsr_arch.archs.backbone_adapters import adapter_class
    # the paper-protocol YAMLs (the real-world model of issue 21 has its own protocol and test)
    train = {k: v for k, v in _load_options('train/CLSR_*_x4.yml').items() if not k.endswith('_real_x4')}
    assert set(train) == {f'CLSR_{b}_x4' for b in ('CARN', 'CARN_M', 'SRResNet', 'RCAN', 'SwinIR_light', 'SwinIR')}
    for name, opt in train.items():
        t, d = opt['train'], opt['datasets']['train']
        assert opt['model_type'] == 'CLSRModel' and opt['network_g']['type'] == 'CLSR', name
        assert (d['context_size'], d['roi_size'], d['roi_placement'], d['batch_size_per_gpu']) == (54, 48, 'center', 16)
        assert t['total_iter'] == 200000 and t['optim_g']['lr'] == 1e-4
        assert t['scheduler']['type'] == 'CosineAnnealingRestartLR' and t['scheduler']['periods'] == [200000]
        assert t['pixel_opt']['type'] == t['context_opt']['type'] == 'L1Loss'
        assert LambdaSchedule.from_opt(t['lambda_schedule'], 200000)(0) == 0.5
        assert LambdaSchedule.from_opt(t['lambda_schedule'], 200000)(200000) == 0.0
        assert opt['network_g']['pretrain_backbone'] == f'experiments/pretrained_models/{name[5:]}.pth'
        assert opt['datasets']['val']['roi_size'] == 24 and opt['val']['mode'] == 'clsr'
    test = _load_options('test/*_x4.yml')
    assert len(test) == 3 * len(train)
    for name, opt in test.items():
        prefix, bb = name.split('_', 1)
        mode = {'CLSR': 'clsr', 'PreCrop': 'pre_crop', 'PostCrop': 'post_crop'}[prefix]
        assert opt['val']['mode'] == mode, name
        assert all(m['crop_border'] == 0 for m in opt['val']['metrics'].values()), name
        sets = {(d['name'], d['roi_size'], d['dataroot_lq']) for d in opt['datasets'].values()}
        assert sets == {(f'{b}_roi{r}', r, f'datasets/{b}/LR_bicubic/X4')
                        for b in ('BSD100', 'Urban100', 'Manga109', 'Test2K') for r in (24, 48)}, name
        train_net = train[f'CLSR_{bb[:-3]}_x4']['network_g']
        if mode == 'clsr':
            assert opt['network_g']['backbone'] == train_net['backbone'], name
        else:  # the plain arch, loading its plain checkpoint unchanged
            assert opt['network_g'] == train_net['backbone'], name
            assert opt['path']['pretrain_network_g'] == train_net['pretrain_backbone'], name
        if mode == 'pre_crop':  # the padding CLSR's base branch sees for this backbone
            assert opt['val']['pre_crop_pad'] == adapter_class(opt['network_g']['type']).defaults['roi_pad'], name


def test_fix_base_trains_only_the_context_modules(tmp_path):
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    opt = train_opt(tmp_path, path, {'type': 'constant', 'start': 0.5})
    opt['train']['fix_base'] = True
    model = build_model(opt)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(train_batch())
    model.optimize_parameters(1)
    after = model.net_g.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith('base.') for k in changed)
    assert any(k.startswith('pim.') for k in changed) and any(k.startswith('gcm.') for k in changed)


def test_bicubic_reference_mode_upsamples_each_roi_alone(tmp_path):
    from basicsr.utils.matlab_functions import imresize
    _, path = saved_plain_net(tmp_path, TINY_SRRESNET)
    model = build_model(make_opt(tmp_path, TINY_SRRESNET, 'bicubic', pretrain=path))
    item = val_item('head.png', (96, 96), 8)
    model.feed_data(item)
    model.test()
    x, y, w, h = model.rois[4].tolist()
    ref = imresize(item['lq'][0, :, y:y + h, x:x + w], SCALE).clamp(0, 1)
    assert torch.allclose(model.roi_outputs[4], ref, atol=1e-6)
    # ROI-alone bicubic differs from bicubic of the whole image at ROI borders (no context)
    whole = imresize(item['lq'][0], SCALE)[:, 4 * y:4 * (y + h), 4 * x:4 * (x + w)].clamp(0, 1)
    assert (whole - model.roi_outputs[4]).abs().max() > 1e-3
