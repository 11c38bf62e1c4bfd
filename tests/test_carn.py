"""CARN / CARN-M (clsr_arch/archs/carn_arch.py) and the official CARN-M weights.

The proof of faithfulness is numerical: the official weights, mapped into our CARN_M, must
reproduce the CARN paper's published x4 PSNR on Set5 and Set14 within 0.05 dB.
"""
import importlib.util
import os.path as osp

import pytest
import torch

from basicsr.archs import build_network
from clsr_arch.archs.carn_arch import CARN, CARN_M, RGB_MEAN, official_carn_m_to_single_scale
from conftest import REPO, shared


def _load_module(rel_path, name):
    spec = importlib.util.spec_from_file_location(name, osp.join(REPO, rel_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_module('benchmarks/carn_m_official.py', 'carn_m_official')
convert_carn_m = _load_module('data/convert_carn_m.py', 'convert_carn_m')


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope='module')
def official_state():
    return torch.load(shared('weights', 'carn_m.pth'), map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def official_net(official_state):
    net = CARN_M(upscale=4)
    net.load_state_dict(official_carn_m_to_single_scale(official_state, 4), strict=True)
    return net.eval()


# --- structure ----------------------------------------------------------------------------
def test_parameter_counts(official_state):
    # Multi-scale = the official layout: CARN-M has exactly the checkpoint's tensors ...
    multi_m = CARN_M(multi_scale=True)
    assert n_params(multi_m) == sum(v.numel() for v in official_state.values()) == 414_811
    # ... and CARN matches the paper's 1,592K (Table 2; counted multi-scale).
    multi = CARN(multi_scale=True)
    assert n_params(multi) == 1_591_963
    assert round(n_params(multi) / 1000) == 1592
    # Single-scale x4 drops the x2 and x3 branches: 64->256 (3x3) and 64->576 (3x3), grouped for CARN-M.
    assert n_params(CARN(upscale=4)) == 1_591_963 - (64 * 256 * 9 + 256) - (64 * 576 * 9 + 576)
    assert n_params(CARN_M(upscale=4)) == 414_811 - (16 * 256 * 9 + 256) - (16 * 576 * 9 + 576)
    # The mean shift (2 x 12 parameters) is frozen, as in the official code.
    frozen = [k for k, p in CARN_M().named_parameters() if not p.requires_grad]
    assert sorted(frozen) == ['add_mean.shifter.bias', 'add_mean.shifter.weight',
                              'sub_mean.shifter.bias', 'sub_mean.shifter.weight']


def test_carn_m_shares_one_residual_block_per_cascading_block():
    net = CARN_M()
    for blk in (net.b1, net.b2, net.b3):
        assert not hasattr(blk, 'b2') and not hasattr(blk, 'b3')
        assert blk.b1.body[0].groups == 4 and blk.b1.body[2].groups == 4
    full = CARN()
    assert full.b1.b1 is not full.b1.b2
    assert full.b1.b1.body[0].groups == 1


@pytest.mark.parametrize('cls', [CARN, CARN_M])
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_output_shapes_and_registry(cls, scale):
    torch.manual_seed(0)
    net = build_network({'type': cls.__name__, 'upscale': scale}).eval()
    assert type(net) is cls
    x = torch.rand(2, 3, 7, 5)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 7 * scale, 5 * scale)
    assert torch.isfinite(y).all()


def test_mean_shift_values():
    net = CARN_M()
    x = torch.rand(1, 3, 4, 4)
    mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(net.sub_mean(x), x - mean, atol=1e-7)
    assert torch.allclose(net.add_mean(x), x + mean, atol=1e-7)


def test_forward_is_head_stages_tail(official_net):
    """The decomposition the CLSR stage adapter relies on reproduces forward exactly."""
    net = official_net
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        c = o = net.entry(net.sub_mean(x))  # head
        for blk, fuse in ((net.b1, net.c1), (net.b2, net.c2), (net.b3, net.c3)):  # stages
            c = torch.cat([c, blk(o)], dim=1)
            o = fuse(c)
        y = net.add_mean(net.exit(net.upsample(o)))  # tail
        assert torch.equal(y, net(x))


# --- official weights -----------------------------------------------------------------------
def test_official_weights_multi_scale_equals_single_scale(official_state):
    multi = CARN_M(multi_scale=True).eval()
    multi.load_state_dict(official_state, strict=True)
    x = torch.rand(1, 3, 10, 8)
    with torch.no_grad():
        for scale in (2, 3, 4):
            single = CARN_M(upscale=scale).eval()
            single.load_state_dict(official_carn_m_to_single_scale(official_state, scale), strict=True)
            ref = multi(x, scale)
            assert ref.shape == (1, 3, 10 * scale, 8 * scale)
            assert torch.equal(single(x), ref)
        # Different scales really use different branches.
        assert not torch.allclose(multi(x, 2), torch.nn.functional.interpolate(multi(x, 4), scale_factor=0.5))


def test_convert_writes_strict_basicsr_checkpoint(tmp_path, official_state, official_net):
    out = tmp_path / 'pretrained_models' / 'CARN_M_x4.pth'
    convert_carn_m.main(['--input', shared('weights', 'carn_m.pth'), '--output', str(out), '--scale', '4'])
    ckpt = torch.load(out, map_location='cpu', weights_only=True)
    assert list(ckpt) == ['params']
    assert 'upsample.up.body.3.weight' in ckpt['params']
    assert not any(k.startswith(('upsample.up2', 'upsample.up3', 'upsample.up4')) for k in ckpt['params'])
    net = CARN_M(upscale=4).eval()
    net.load_state_dict(ckpt['params'], strict=True)
    assert torch.equal(ckpt['params']['upsample.up.body.0.weight'], official_state['upsample.up4.body.0.weight'])
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(net(x), official_net(x))
    assert [p.name for p in out.parent.iterdir()] == ['CARN_M_x4.pth']  # no temp file left behind


@pytest.mark.parametrize('name', ['Set5', 'Set14'])
def test_official_carn_m_reproduces_published_x4(official_net, name):
    psnr, ssim, rows = bench.evaluate_set(official_net, shared(name, 'HR'), progress=False)
    pub_psnr, pub_ssim = bench.PUBLISHED[name]
    assert len(rows) == {'Set5': 5, 'Set14': 14}[name]
    assert abs(psnr - pub_psnr) < 0.05, f'{name}: PSNR {psnr:.3f} vs published {pub_psnr}'
    assert abs(ssim - pub_ssim) < 0.002, f'{name}: SSIM {ssim:.4f} vs published {pub_ssim}'


# --- FLOPs (LocalSR Table 1 "CARN" = 0.65 GFLOPs at 24x24, x4) ------------------------------
def test_flops_match_localsr_table1():
    g_m = bench.count_gflops(CARN_M(upscale=4).eval(), (24, 24))
    g = bench.count_gflops(CARN(upscale=4).eval(), (24, 24))
    assert abs(g_m - 0.65) < 0.01, g_m
    assert g > 2.5 * g_m  # full CARN is not the paper's "CARN" row


# --- errors ------------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors(official_state):
    with pytest.raises(ValueError, match='upscale'):
        CARN(upscale=5)
    with pytest.raises(ValueError, match='upscale'):
        CARN_M(upscale=8, multi_scale=True)
    with pytest.raises(ValueError, match='num_in_ch'):
        CARN(num_in_ch=1)
    with pytest.raises(ValueError, match='divisible'):
        CARN_M(num_feat=30)
    with pytest.raises(ValueError, match='built for x4'):
        CARN_M(upscale=4)(torch.rand(1, 3, 4, 4), 2)
    with pytest.raises(ValueError, match='upsample.up4'):
        official_carn_m_to_single_scale(CARN_M(upscale=4).state_dict(), 4)
    with pytest.raises(ValueError, match='scale'):
        official_carn_m_to_single_scale(official_state, 8)


def test_convert_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        convert_carn_m.convert(str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth'))
    basicsr_ckpt = tmp_path / 'already.pth'
    torch.save({'params': CARN_M().state_dict()}, basicsr_ckpt)
    with pytest.raises(ValueError, match='already a BasicSR checkpoint'):
        convert_carn_m.convert(str(basicsr_ckpt), str(tmp_path / 'out.pth'))
    carn_full = tmp_path / 'carn_full.pth'
    torch.save(CARN(multi_scale=True).state_dict(), carn_full)
    with pytest.raises(ValueError, match='does not match CARN_M'):
        convert_carn_m.convert(str(carn_full), str(tmp_path / 'out.pth'))
    assert not (tmp_path / 'out.pth').exists()
