"""IMDN (clsr_arch/archs/imdn_arch.py) and the official x4 weights: they load strictly
(weights_only, the DataParallel ``module.`` prefix stripped), reproduce the published x4 results
through our pipeline (Set5 and Set14 here, B100 in docs/imdn_official.md), and CLSR on IMDN at
initialisation is IMDN on the padded ROI. The six-backbone tests (init equivalence, gradients,
tiled context pass, FLOPs model, plan guarantee) include a tiny IMDN via conftest.TINY."""
import importlib.util
import os.path as osp
import sys

import pytest
import torch

from basicsr.archs import build_network
from clsr_arch.archs import roi as roi_ops
from clsr_arch.archs.imdn_arch import IMDN
from conftest import REPO, shared

sys.path.insert(0, osp.join(REPO, 'benchmarks'))
spec = importlib.util.spec_from_file_location('imdn_official', osp.join(REPO, 'benchmarks', 'imdn_official.py'))
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.fixture(scope='module')
def official():
    return bench.load_official_imdn(shared('weights', 'IMDN_x4.pth'))


def test_official_checkpoint_loads_strictly_and_has_the_published_size(official):
    sd = torch.load(shared('weights', 'IMDN_x4.pth'), map_location='cpu', weights_only=True)
    assert all(k.startswith('module.') for k in sd) and len(sd) == 92
    assert set(official.state_dict()) == {k[len('module.'):] for k in sd}
    assert sum(p.numel() for p in official.parameters()) == 715176
    assert sum(p.numel() for p in IMDN(upscale=4).parameters()) == 715176


@pytest.mark.parametrize('name', ['Set5', 'Set14'])
def test_official_imdn_reproduces_published_x4(official, name):
    with torch.no_grad():
        psnr, ssim, rows = bench.protocol.evaluate_set(official, shared(name, 'HR'), progress=False)
    pub_psnr, pub_ssim = bench.PUBLISHED[name]
    assert len(rows) == {'Set5': 5, 'Set14': 14}[name]
    assert abs(psnr - pub_psnr) < 0.03, f'{name}: {psnr:.3f} vs published {pub_psnr}'
    assert abs(ssim - pub_ssim) < 0.001, f'{name}: {ssim:.4f} vs published {pub_ssim}'


def test_clsr_imdn_at_init_is_imdn_on_the_padded_roi(official):
    """Official weights as the base, GCM/PIM as initialised: exactly pre-crop with roi_pad real
    context pixels (the contrast-aware attention then pools over that padded ROI, as pre-crop)."""
    net = build_network({'type': 'CLSR', 'backbone': {'type': 'IMDN', 'upscale': 4},
                         'pretrain_backbone': shared('weights', 'IMDN_x4.pth')}).eval()
    assert net.roi_pad == 2 and net.gcm_opt['stage'] == 1
    import cv2
    img = cv2.imread(shared('Set5', 'HR', 'bird.png'), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    context = torch.from_numpy(img[::4, ::4].astype('float32') / 255.).permute(2, 0, 1)[None].contiguous()
    boxes = torch.tensor([[0, 0, 0, 24, 24], [0, 30, 20, 24, 24], [0, 48, 48, 24, 24]])
    pads = roi_ops.padding_for(24, 24, 2)
    pboxes, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, pads), boxes, context.shape[-2:])
    with torch.no_grad():
        ref = roi_ops.crop_outputs(official(roi_ops.crop(context, pboxes)), offsets, 24, 24, 4)
        out = net(context, boxes)
    assert (out - ref).abs().max() < 1e-5
