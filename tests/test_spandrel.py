"""Any SR network for LocalSR through spandrel, pad/method auto, and CLSR over CRAFT (issue 24,
items 3 and 4). Tiny networks of spandrel's own architectures, saved to files at test time; the
real CRAFT_x4.pth only where loading is enough (its forward is slow on the CPU)."""
import json

import numpy as np
import pytest
import torch
from spandrel.architectures.Compact import Compact
from spandrel.architectures.CRAFT import CRAFT

import clsr_arch  # noqa: F401  (compat + registries)
from basicsr.archs import build_network
from clsr_arch.api import LocalSR, LocalSRError
from clsr_arch.api import calibration
from clsr_arch.api.spandrel_model import SpandrelSR, load_sr_model
from clsr_arch.archs import craft_adapter  # noqa: F401  (registers CRAFT and its adapter)
from clsr_arch.archs.backbone_adapters import get_adapter, run_backbone
from conftest import perturb_context_modules, shared

TINY_CRAFT = dict(embed_dim=12, depths=[1, 1], num_heads=[2, 2], split_size_0=4, split_size_1=16, upscale=4)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread, tmp_path, monkeypatch):
    monkeypatch.setenv('CLSR_CACHE', str(tmp_path / 'calibration'))


def save(tmp_path, net, name, wrap=False):
    path = tmp_path / name
    torch.save({'params': net.state_dict()} if wrap else net.state_dict(), path)
    return path


@pytest.fixture
def compact_file(tmp_path):
    torch.manual_seed(0)
    return save(tmp_path, Compact(num_feat=8, num_conv=2, upscale=4), 'compact_x4.pth')


@pytest.fixture
def craft_file(tmp_path):
    torch.manual_seed(0)
    return save(tmp_path, CRAFT(**TINY_CRAFT), 'craft_tiny_x4.pth', wrap=True)


def image(h=40, w=52, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# --- bad input: each a clear error naming the file
def test_unrecognised_file_is_named(tmp_path):
    path = tmp_path / 'not_a_model.pth'
    torch.save({'foo.weight': torch.zeros(3, 3)}, path)
    with pytest.raises(LocalSRError, match=r'not_a_model\.pth.*not a network spandrel'):
        LocalSR.from_model(path)
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a pickle at all')
    with pytest.raises(LocalSRError, match=r'junk\.pth.*cannot be read'):
        LocalSR.from_model(junk)
    with pytest.raises(LocalSRError, match=r'missing\.pth: no such file'):
        LocalSR.from_model(tmp_path / 'missing.pth')


def test_non_sr_model_is_refused(tmp_path):
    path = save(tmp_path, Compact(num_feat=8, num_conv=2, upscale=1), 'denoise_x1.pth')
    with pytest.raises(LocalSRError, match=r'denoise_x1\.pth: a x1 Compact network.*not super-resolution'):
        LocalSR.from_model(path)


def test_other_scale_is_refused(tmp_path):
    path = save(tmp_path, Compact(num_feat=8, num_conv=2, upscale=2), 'compact_x2.pth')
    with pytest.raises(LocalSRError, match=r'compact_x2\.pth: a x2 Compact checkpoint, but x4 was asked for'):
        LocalSR.from_model(path, scale=4)
    assert load_sr_model(path).upscale == 2  # without a scale asked: the file's


def test_bad_pad_and_method(compact_file):
    with pytest.raises(LocalSRError, match='pad must be'):
        LocalSR.from_model(compact_file, pad=-1)
    with pytest.raises(LocalSRError, match='method'):
        LocalSR.from_model(compact_file, method='best')


# --- size requirements
def test_size_requirements_are_met_inside(craft_file):
    sr = load_sr_model(craft_file, 4)
    assert (sr.architecture, sr.minimum, sr.multiple) == ('CRAFT', 16, 16)
    with torch.no_grad():
        for h, w in ((5, 7), (16, 16), (21, 34)):
            x = torch.rand(1, 3, h, w)
            out = sr(x)
            assert out.shape[-2:] == (4 * h, 4 * w)
            if h % 16 == 0 and w % 16 == 0:
                assert torch.equal(out, sr.model(x))


# --- a network without a stage adapter: pre-crop, post-crop and the planner
def test_plain_model_methods(compact_file):
    model = LocalSR.from_model(compact_file, scale=4, pad=3, method='auto')
    assert not model.has_clsr and model.pad == 3 and model.calibration is not None  # method auto: measured
    assert model.calibration['method'] == 'pre_crop'
    rgb = image()
    sr = model.sr
    with model.open(rgb) as im:
        boxes = [(2, 3, 12, 10), (30, 20, 16, 16)]
        pre = im.super_resolve(boxes, method='pre_crop', output='tensor')
        assert im.last_run['pad'] == 3
        post = im.super_resolve(boxes, method='post_crop', output='tensor')
        auto = im.super_resolve(boxes, output='tensor')  # default: auto = the planner over padded pre-crop
        run = im.last_run
        assert run['method'] == 'pre_crop' and run['planned'] and run['auto']['chose'] == 'pre_crop'
        assert 'no stage adapter' in run['auto']['reason'] and 'plan' in run
        with pytest.raises(LocalSRError, match='no stage adapter for Compact'):
            im.super_resolve(boxes, method='clsr')
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        whole = sr(x)[0]
        x0, y0, w, h = boxes[1]
        direct = sr(x[..., y0 - 3:y0 + h + 3, x0 - 3:x0 + w + 3])[0, :, 12:12 + 4 * h, 12:12 + 4 * w]
    assert torch.allclose(post[1], whole[:, 4 * y0:4 * (y0 + h), 4 * x0:4 * (x0 + w)], atol=1e-5)
    assert torch.allclose(pre[1], direct, atol=1e-5)
    for a, b in zip(auto, pre):  # no overlap, cheaper than whole: one padded crop per box
        assert torch.allclose(a, b, atol=1e-5)


def test_plain_model_plan_merges_a_full_grid(compact_file):
    model = LocalSR.from_model(compact_file, pad=4, method='pre_crop')
    assert model.calibration is None  # nothing automatic asked: nothing measured
    with model.open(image(32, 32)) as im:
        grid = [(x, y, 8, 8) for y in range(0, 32, 8) for x in range(0, 32, 8)]
        p = im.plan(grid)  # merged into fewer padded crops, or whole-image SR: never 16 padded crops
        assert p.mode == 'whole' or len(p.pieces) < len(grid)
        assert p.flops <= p.summary()['gflops_singles'] * 1e9


# --- calibration: cached by the weights' hash, fixed validation crops
def test_calibration_is_cached_by_weights_hash(compact_file, tmp_path):
    shared('BSDS500')
    a = LocalSR.from_model(compact_file, calibration_limit=2)
    rec = a.calibration
    assert rec['cached'] is None and rec['images'] == 2 and rec['rois'] == 8
    assert rec['pad'] in calibration.PADS and set(rec['psnr']) >= {'post_crop', 'pre pad 0'}
    files = list((tmp_path / 'calibration').glob(f'{a.sr.sha256}-*.json'))
    assert len(files) == 1 and json.loads(files[0].read_text())['pad'] == rec['pad']
    b = LocalSR.from_model(compact_file, calibration_limit=2)
    assert b.calibration['cached'] == str(files[0]) and b.pad == a.pad
    assert 'pad' in b.describe() and 'Compact x4' in b.describe()


def test_validation_split_is_prepare_real_datas():
    shared('BSDS500')
    paths = calibration.validation_paths()
    assert len(paths) == 24 and all('/Set' not in p and 'BSD100' not in p for p in paths)


def test_decide_rules():
    m = {'psnr': {'post_crop': 30.0, 'pre pad 0': 29.8, 'pre pad 4': 29.996, 'pre pad 8': 30.01},
         'gflops': {'pre pad 0': 1., 'pre pad 4': 1.8, 'pre pad 8': 2.8, 'post_crop': 5.}}
    assert calibration.decide(m, None)[:3] == (4, True, "pre_crop")
    m['psnr']['clsr'], m['gflops']['clsr'] = 30.02, 2.0  # above every pre-crop costing <= 2.0
    assert calibration.decide(m, True)[2] == 'clsr'
    m['psnr']['clsr'] = 29.99  # below pad 4 at lower cost
    assert calibration.decide(m, True)[2] == 'pre_crop'
    m['psnr'] = {'post_crop': 30.0, 'pre pad 0': 29.8, 'pre pad 4': 29.9}
    assert calibration.decide(m, None)[:2] == (4, False)


# --- CLSR over CRAFT (item 4)
def test_craft_adapter_reproduces_spandrels_forward(craft_file):
    net = load_sr_model(craft_file, 4).model
    adapter = get_adapter(net)
    assert (adapter.num_stages, adapter.num_feat, adapter.multiple) == (2, 12, 16)
    with torch.no_grad():
        for h, w in ((16, 16), (20, 36), (32, 48)):
            x = torch.rand(2, 3, h, w)
            assert torch.equal(adapter.run(x), net(x))


def craft_clsr(craft_file, **kw):
    opt = {'type': 'CLSR', 'backbone': {'type': 'CRAFT', **TINY_CRAFT}, 'pretrain_backbone': str(craft_file),
           'adapter_modules': ['clsr_arch.archs.craft_adapter'],
           'gcm': {'window': 6, 'num_windows': 4, 'heads': 2, 'stage': 1}, **kw}
    return build_network(opt).eval()


def test_clsr_craft_gradients_reach_gcm_and_pim_and_tiling_matches(craft_file):
    net = craft_clsr(craft_file)
    perturb_context_modules(net, 0.1)
    net.train()
    ctx = torch.rand(1, 3, 40, 40)
    boxes = torch.tensor([[0, 8, 8, 16, 16]])
    out = net.decode(net.encode_context(ctx), boxes)
    out.mean().backward()
    for module in (net.gcm, net.pim):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    net.eval()
    with torch.no_grad():
        a = net.decode(net.encode_context(ctx), boxes)
        b = net.decode(net.encode_context(ctx, tile=16), boxes)
    assert (a - b).abs().max() <= 1e-5


def test_from_model_with_an_adapter_builds_clsr_equal_to_padded_pre_crop(craft_file):
    """CLSR-CRAFT at initialisation (zero GCM value projection and PIM fusions) equals pre-crop
    with its roi_pad, at the image corner, inside and at the far edge, square and not."""
    model = LocalSR.from_model(craft_file, pad=4, method='pre_crop')
    assert model.has_clsr and type(model.net.base).__name__ == 'CRAFT' and model.net.gcm is not None
    assert model.net.roi_pad == 4
    with model.open(image(40, 44)) as im:
        boxes = [(0, 0, 24, 24), (10, 12, 13, 9), (20, 16, 24, 24)]
        clsr = im.super_resolve(boxes, method='clsr', output='tensor', plan=False)
        pre = im.super_resolve(boxes, method='pre_crop', output='tensor')
    for a, b in zip(clsr, pre):
        assert torch.allclose(a, b, atol=1e-5)


def test_real_craft_fixture_loads():
    path = shared('weights', 'CRAFT_x4.pth')
    sr = load_sr_model(path, 4)
    assert isinstance(sr, SpandrelSR) and sr.architecture == 'CRAFT' and (sr.minimum, sr.multiple) == (16, 16)
    assert sum(p.numel() for p in sr.parameters()) == 753_344
    with pytest.raises(LocalSRError, match=r'CRAFT_x4\.pth: a x4 CRAFT checkpoint, but x2 was asked for'):
        load_sr_model(path, 2)


# --- the command lines
def test_cli_model_path(compact_file, tmp_path):
    from clsr_arch.infer import main
    img = tmp_path / 'in.png'
    import cv2
    cv2.imwrite(str(img), image(30, 30))
    out = tmp_path / 'out'
    assert main([str(img), '--roi', '2,2,12,12', '--model-path', str(compact_file), '--pad', '2', '-o', str(out),
                 '--quiet', '--threads', '1']) == 0
    assert (out / 'in_x2_y2_12x12_auto.png').exists()
    assert main([str(img), '--roi', '2,2,12,12', '--model-path', str(compact_file), '--scale', '2', '-o',
                 str(out), '--quiet']) == 2


def test_viewer_model_path(compact_file):
    from clsr_arch.viewer.cli import build_parser, load_model
    args = build_parser().parse_args(['--model-path', str(compact_file), '--pad', '2'])
    model = load_model(args)
    with model.open(image(30, 30)) as im:
        im.super_resolve([(1, 1, 8, 8)], method='clsr', plan=False)  # the viewer's main pane: auto
        assert im.last_run['auto']['chose'] == 'pre_crop'


def test_clsr_craft_training_yaml_builds():
    shared('weights', 'CRAFT_x4.pth')
    import os.path as osp

    import yaml
    from conftest import REPO
    with open(osp.join(REPO, 'options', 'train', 'CLSR_CRAFT_x4_bicubic497.yml')) as f:
        opt = yaml.safe_load(f)['network_g']
    opt['pretrain_backbone'] = osp.join(REPO, opt['pretrain_backbone'])
    net = build_network(opt)
    assert type(net.base).__name__ == 'CRAFT' and net.roi_pad == 4 and net.gcm_opt['stage'] == 0
    official = load_sr_model(opt['pretrain_backbone'], 4).model.state_dict()
    for k, v in official.items():  # the official weights, loaded strictly into the base
        assert torch.equal(net.base.state_dict()[k], v)


def test_shipped_clsr_craft_is_found_by_the_weights_it_was_trained_over():
    """weights/CLSR_CRAFT_x4.pth (issue 24, item 4): loads strictly, its base is the official CRAFT
    bit for bit (train.fix_base) and its GCM/PIM are trained; LocalSR.from_model(CRAFT_x4.pth) finds
    it by the file's SHA-256 (registry.TRAINED_CLSR), and clsr=False asks for the untrained one."""
    from clsr_arch import api
    path = shared('weights', 'CRAFT_x4.pth')
    sr = load_sr_model(path, 4)
    weights, opt = api.TRAINED_CLSR[sr.sha256]
    net = api.load_network(opt, weights)  # strict
    base = net.base.state_dict()
    for k, v in sr.model.state_dict().items():
        assert torch.equal(base[k], v), k
    assert net.gcm.to_v.weight.abs().sum() > 0 and all(c.weight.abs().sum() > 0 for c in net.pim.fuse)
    model = api.LocalSR.from_model(path, pad=4, method='pre_crop', device='cpu')  # no calibration: fast
    assert model.has_clsr and torch.equal(model.net.gcm.to_v.weight, net.gcm.to_v.weight)
    untrained = api.LocalSR.from_model(path, pad=4, method='pre_crop', clsr=False, device='cpu')
    assert untrained.has_clsr and untrained.net.gcm.to_v.weight.abs().sum() == 0
