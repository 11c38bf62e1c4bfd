"""The shipped real-world models (issue 21): the real base (weights/IMDN_real_x4.pth) and
CLSR-IMDN-real (weights/CLSR_IMDN_real_x4.pth, ``LocalSR('clsr-imdn-real')``) load strictly and,
on an image nobody trained on, made into a JPEG q30 photo and a noisy one exactly as the
validation split is (same seeds), beat their references: the bicubic-trained CLSR-IMDN (the
default before this issue, which on JPEG input lands below plain bicubic) and plain bicubic;
CLSR-IMDN-real is not below its base's padded pre-crop.

The image is not picked: the first held-out image of data/prepare_real_data.sh's split (the
20th of the 497 training images in its order: BSDS500 train, sorted), every ROI of its 24x24 grid
(15), the whole LR image as context. (On the Real-ESRGAN-degraded version of this one image the
bicubic model happens to score higher, 23.302 vs 23.253 dB; over the 24 held-out images the real
models gain +0.37 dB there: docs/real_world.md.)
"""
import os

import numpy as np
import pytest
import torch

from basicsr.metrics import calculate_psnr

from clsr_arch import api
from clsr_arch.archs.imdn_arch import IMDN
from clsr_arch.data.context_roi_dataset import validation_grid
from clsr_arch.data.degraded_sets import degrade_image, image_seed
from clsr_arch.data.image_io import read_bgr8
from clsr_arch.data.prep import mod_crop
from conftest import REPO, shared

BASE = os.path.join(REPO, 'weights', 'IMDN_real_x4.pth')
# measured on this checkout (mean PSNR-Y of the 15 ROIs, dB): CLSR-IMDN-real, real base pad 4,
# bicubic-trained CLSR-IMDN (the 497-image retrain shipped by item 6; the issue-13 one it replaced
# measured the same to the third decimal), bicubic
MEASURED = {'jpeg30': (24.771, 24.763, 24.492, 24.677), 'noise10': (26.401, 26.391, 25.877, 26.085)}


@pytest.fixture(scope='module', params=sorted(MEASURED))
def held_out(request):
    folder = shared('BSDS500', 'train')
    name = sorted(os.listdir(folder))[19]  # the split's first validation image (every 20th)
    stem = 'BSDS500_train_' + os.path.splitext(name)[0]
    hr = mod_crop(read_bgr8(os.path.join(folder, name)), 4)
    lr, _ = degrade_image(hr, request.param, 4, image_seed(0, request.param, stem))
    return request.param, hr, lr


def test_real_weights_load_strictly():
    net = api.load_network(api.SHIPPED['clsr-imdn-real'][1], api.SHIPPED['clsr-imdn-real'][0])
    assert net.roi_pad == 4 and type(net.base).__name__ == 'IMDN'
    ckpt = torch.load(BASE, map_location='cpu', weights_only=True)
    assert set(ckpt) == {'params'}
    IMDN(upscale=4).load_state_dict(ckpt['params'], strict=True)
    official = torch.load(shared('weights', 'IMDN_x4.pth'), map_location='cpu', weights_only=True)
    assert any(not torch.equal(v, ckpt['params'][k[len('module.'):]]) for k, v in official.items())  # fine-tuned


def psnr_y(outs, hr, boxes):
    return np.array([calculate_psnr(o[:, :, ::-1], hr[4 * y:4 * (y + h), 4 * x:4 * (x + w)], 0, test_y_channel=True)
                     for o, (x, y, w, h) in zip(outs, boxes)])


def test_real_models_beat_their_references_on_a_held_out_image(held_out):
    kind, hr, lr = held_out
    rois, (kh, kw) = validation_grid(lr.shape[0], lr.shape[1], 24, 24)
    boxes = [tuple(r) for r in rois.tolist()]
    rgb = np.ascontiguousarray(lr[:kh, :kw, ::-1])
    hr = hr[:4 * kh, :4 * kw]
    real = api.LocalSR('clsr-imdn-real', device='cpu', base_weights=BASE)
    with real.open(rgb) as image:
        clsr = psnr_y(image.super_resolve(boxes), hr, boxes)
        base4 = psnr_y(image.super_resolve(boxes, method='pre_crop', pad=4), hr, boxes)
        bicubic = psnr_y(image.super_resolve(boxes, method='bicubic'), hr, boxes)
    with api.LocalSR('clsr-imdn', device='cpu').open(rgb) as image:
        default = psnr_y(image.super_resolve(boxes), hr, boxes)
    print(f'{len(boxes)} ROIs, PSNR-Y: CLSR-IMDN-real {clsr.mean():.3f}, real base pad 4 {base4.mean():.3f}, '
          f'default {default.mean():.3f}, bicubic {bicubic.mean():.3f}')
    m_clsr, m_base, m_default, m_bicubic = MEASURED[kind]
    assert clsr.mean() - default.mean() > (m_clsr - m_default) / 2      # 0.28 / 0.52 dB measured
    assert base4.mean() - default.mean() > (m_base - m_default) / 2
    assert clsr.mean() - bicubic.mean() > (m_clsr - m_bicubic) / 2      # 0.09 / 0.32 dB measured
    assert clsr.mean() >= base4.mean() - 0.01                           # +0.008 / +0.010 measured
