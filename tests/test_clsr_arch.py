"""CLSR network (LocalSR Sec. 3.1-3.5): ROI helpers, stage adapters, GCM, PIM, shared context pass.

Tiny backbones so every test runs in seconds on a shared 2-core CPU.
"""
import copy

import pytest
import torch
from torch.nn import functional as F

import clsr_arch  # noqa: F401  (registries)
from basicsr.archs import build_network
from clsr_arch.archs import roi as roi_ops
from clsr_arch.archs.backbone_adapters import get_adapter
from clsr_arch.archs.clsr_arch import CLSR
from clsr_arch.archs.gcm import GlobalContextModule

from conftest import GCM, TINY, perturb_context_modules  # noqa: E402  (shared with test_tiling/test_api)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Many tiny ops: one torch thread (see conftest.one_torch_thread)."""


def plain_and_clsr(name, tmp_path, **kwargs):
    """A randomly initialised plain backbone, saved as a BasicSR checkpoint, and a CLSR that
    loads it through ``pretrain_backbone``."""
    torch.manual_seed(0)
    plain = build_network(copy.deepcopy(TINY[name])).eval()
    path = tmp_path / f'{name}.pth'
    torch.save({'params': plain.state_dict()}, path)
    torch.manual_seed(1)  # CLSR's own base starts from other weights: the load must replace them
    opts = dict(backbone=TINY[name], roi_pad=2, gcm=GCM, pim={'ratio': 0.1}, pretrain_backbone=str(path))
    opts.update(kwargs)
    net = build_network({'type': 'CLSR', **opts}).eval()
    return plain, net


def reference(plain, net, context, boxes):
    """The plain backbone on each ROI padded like CLSR pads it, cropped back."""
    h, w = roi_ops.box_size(boxes)
    pads = roi_ops.padding_for(h, w, net.roi_pad, net.adapter.multiple)
    pboxes, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, pads), boxes, context.shape[-2:],
                                          net.adapter.multiple)
    return roi_ops.crop_outputs(plain(roi_ops.crop(context, pboxes)), offsets, h, w, net.scale)


# --- ROI helpers -----------------------------------------------------------------------------
def test_validate_boxes_errors_name_box_and_context():
    shape = (2, 3, 20, 30)
    roi_ops.validate_boxes([[1, 25, 15, 5, 5]], shape)  # touching the bottom-right corner is fine
    cases = {
        'outside': ([[0, 26, 0, 5, 5]], r'box 0 .*x=26.*not inside.*20 x 30'),
        'negative x': ([[0, -1, 0, 5, 5]], r'box 0 .*x=-1.*not inside'),
        'zero size': ([[0, 0, 0, 0, 5]], r'box 0 .*w=0.*>= 1.*20 x 30'),
        'batch index': ([[0, 0, 0, 4, 4], [2, 0, 0, 4, 4]], r'box 1 .*batch_index=2.*out of range.*2 image'),
    }
    for name, (boxes, msg) in cases.items():
        with pytest.raises(ValueError, match=msg):
            roi_ops.validate_boxes(boxes, shape)
    with pytest.raises(ValueError, match=r'LongTensor\[R, 5\].*\(3, 4\)'):
        roi_ops.validate_boxes(torch.zeros(3, 4, dtype=torch.long), shape)
    with pytest.raises(ValueError, match='integer'):
        roi_ops.validate_boxes(torch.zeros(1, 5), shape)
    with pytest.raises(ValueError, match='share one'):
        roi_ops.box_size(torch.tensor([[0, 0, 0, 4, 4], [0, 0, 0, 4, 5]]))


def test_crop_uses_context_and_reflects_past_border():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 9, 11)
    # fully inside: a plain slice
    assert torch.equal(roi_ops.crop(x, torch.tensor([[1, 2, 3, 5, 4]])), x[1:2, :, 3:7, 2:7])
    # sticking out on every side: reflect padding about the border pixels
    out = roi_ops.crop(x, torch.tensor([[0, -2, -3, 15, 12]]))
    want = F.pad(x[:1], (2, 2, 3, 0), mode='reflect')
    assert torch.equal(out, want)
    # tiny map, far outside: mirrored repeatedly, never an index error
    t = torch.arange(3.).view(1, 1, 1, 3)
    assert roi_ops.crop(t, torch.tensor([[0, -4, 0, 10, 1]])).flatten().tolist() == \
        [0., 1., 2., 1., 0., 1., 2., 1., 0., 1.]


def test_place_inside_shifts_padding_inward_and_crops_back():
    # 24x24 ROIs padded by 2 in a 40 (H) x 30 (W) context: interior, left/top corner, right edge
    boxes = torch.tensor([[0, 3, 5, 24, 24], [0, 0, 0, 24, 24], [0, 6, 16, 24, 24]])
    pboxes, offsets = roi_ops.place_inside(roi_ops.pad_boxes(boxes, (2, 2, 2, 2)), boxes, (40, 30))
    assert pboxes.tolist() == [[0, 1, 3, 28, 28], [0, 0, 0, 28, 28], [0, 2, 12, 28, 28]]
    assert offsets.tolist() == [[2, 2], [0, 0], [4, 4]]
    # every padded pixel is real context: the crop never mirrors
    ctx = torch.arange(40 * 30, dtype=torch.float).view(1, 1, 40, 30)
    crops = roi_ops.crop(ctx, pboxes)
    for (_, x, y, w, h), c in zip(pboxes.tolist(), crops):
        assert torch.equal(c[0], ctx[0, 0, y:y + h, x:x + w])
    # ... and the ROI is cut back from where it sits in its crop (scale 1 here)
    rois = roi_ops.crop_outputs(crops, offsets, 24, 24, 1)
    for (_, x, y, w, h), r in zip(boxes.tolist(), rois):
        assert torch.equal(r[0], ctx[0, 0, y:y + h, x:x + w])
    # a padded side longer than the context is cut to it (multiple 1) or left to mirror (SwinIR)
    tall = torch.tensor([[0, 2, 0, 24, 24]])  # context 24 high: no room for padding in y
    cut, off = roi_ops.place_inside(roi_ops.pad_boxes(tall, (2, 2, 2, 2)), tall, (24, 30))
    assert cut.tolist() == [[0, 0, 0, 28, 24]] and off.tolist() == [[2, 0]]
    kept, off = roi_ops.place_inside(roi_ops.pad_boxes(tall, (2, 2, 2, 2)), tall, (24, 30), multiple=4)
    assert kept.tolist() == [[0, 0, -2, 28, 28]] and off.tolist() == [[2, 2]]


def test_padding_and_window_grid():
    assert roi_ops.padding_for(24, 24, 2) == (2, 2, 2, 2)
    assert roi_ops.padding_for(24, 24, 0, 8) == (0, 0, 0, 0)
    assert roi_ops.padding_for(5, 7, 2, 4) == (2, 2, 3, 5)  # w 7+4 -> 12 (+1 right), h 5+4 -> 12 (+3 bottom)
    corners = roi_ops.window_grid(144, 216, 6, 48)  # grid 24 x 36 windows
    assert corners.shape[0] <= 48 and corners.shape[0] >= 40
    xs, ys = corners[:, 0].unique(), corners[:, 1].unique()
    assert len(xs) * len(ys) == corners.shape[0]
    assert (corners % 6 == 0).all() and xs.max() + 6 <= 216 and ys.max() + 6 <= 144
    # uniform: equal strides between sampled columns (up to rounding)
    steps = (xs[1:] - xs[:-1]).tolist()
    assert max(steps) - min(steps) <= 6
    assert roi_ops.window_grid(12, 18, 6, 64).shape[0] == 6  # fewer windows than asked: all of them


# --- stage adapters --------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(TINY))
def test_adapter_reproduces_backbone_forward(name):
    torch.manual_seed(0)
    net = build_network(copy.deepcopy(TINY[name])).eval()
    adapter = get_adapter(net)
    x = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        assert torch.equal(adapter.run(x), net(x))
    assert adapter.scale == 4 and adapter.num_stages >= 1


# --- CLSR at initialisation == plain backbone on the padded ROI --------------------------------
@pytest.mark.parametrize('name', list(TINY))
def test_clsr_at_init_equals_plain_backbone_on_padded_roi(name, tmp_path):
    plain, net = plain_and_clsr(name, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.base.state_dict().values()))
    torch.manual_seed(3)
    context = torch.rand(2, 3, 15, 19)  # odd sizes
    cases = [
        torch.tensor([[0, 0, 0, 6, 6]]),  # top-left corner
        torch.tensor([[1, 13, 9, 6, 6], [0, 7, 4, 6, 6], [1, 0, 9, 6, 6]]),  # corners, centre, batched
        torch.tensor([[0, 3, 0, 4, 7], [1, 15, 8, 4, 7]]),  # non-square, top / bottom-right border
        torch.tensor([[1, 18, 14, 1, 1]]),  # one pixel in the corner
    ]
    with torch.no_grad():
        state = net.encode_context(context)
        for boxes in cases:
            h, w = roi_ops.box_size(boxes)
            sr = net.decode(state, boxes)
            assert sr.shape == (boxes.shape[0], 3, 4 * h, 4 * w)
            diff = (sr - reference(plain, net, context, boxes)).abs().max().item()
            assert diff < 1e-5, f'{name} boxes {boxes.tolist()}: max abs diff {diff}'
        sr, ctx_sr = net(context, cases[1], return_context=True)
        assert ctx_sr.shape == (2, 3, 60, 76)
        # the PIM's HR context starts near the bilinear upsampling it is a residual on
        up = F.interpolate(context, scale_factor=4, mode='bilinear', align_corners=False)
        assert 0 < (ctx_sr - up).abs().mean() < 0.5


def test_pretrain_backbone_mismatch_names_keys(tmp_path):
    plain = build_network(copy.deepcopy(TINY['MSRResNet']))
    sd = plain.state_dict()
    sd['extra.weight'] = torch.zeros(1)
    del sd['conv_last.bias']
    path = tmp_path / 'bad.pth'
    torch.save({'params_ema': sd}, path)
    msg = r"bad\.pth.*missing keys \['conv_last\.bias'\].*unexpected keys \['extra\.weight'\]"
    with pytest.raises(ValueError, match=msg):
        CLSR(backbone=TINY['MSRResNet'], pretrain_backbone=str(path))
    sd = plain.state_dict()
    sd['conv_first.weight'] = torch.zeros(16, 3, 5, 5)
    torch.save({'params': sd}, path)
    with pytest.raises(ValueError, match=r'conv_first\.weight: checkpoint \(16, 3, 5, 5\) vs backbone \(16, 3, 3, 3\)'):
        CLSR(backbone=TINY['MSRResNet'], pretrain_backbone=str(path))


def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match='gcm.stage=5 outside 0..2'):
        CLSR(backbone=TINY['MSRResNet'], gcm={'stage': 5})
    with pytest.raises(ValueError, match=r"unknown keys \['windows'\]"):
        CLSR(backbone=TINY['MSRResNet'], gcm={'windows': 4})
    with pytest.raises(ValueError, match='no stage adapter'):
        CLSR(backbone={'type': 'ECBSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_block': 1, 'num_channel': 8,
                       'with_idt': False, 'act_type': 'prelu', 'scale': 4})
    net = CLSR(backbone=TINY['MSRResNet'], gcm=GCM).eval()
    with pytest.raises(ValueError, match=r'\[B, 3, H, W\]'):
        net(torch.rand(3, 10, 10), torch.tensor([[0, 0, 0, 2, 2]]))
    with pytest.raises(ValueError, match=r'box 0 .*not inside.*10 x 12'):
        net(torch.rand(1, 3, 10, 12), torch.tensor([[0, 8, 0, 5, 5]]))
    # defaults come from the backbone's adapter (docs/architecture.md)
    assert net.roi_pad == 2 and CLSR(backbone=TINY['RCAN']).roi_pad == 0
    assert CLSR(backbone=TINY['MSRResNet'], gcm=None, pim=None).gcm is None


# --- training signal --------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(TINY))
def test_gcm_and_pim_get_gradients_after_one_step(name, tmp_path):
    _, net = plain_and_clsr(name, tmp_path)
    net.train()
    torch.manual_seed(4)
    context = torch.rand(2, 3, 13, 15)
    boxes = torch.tensor([[0, 2, 2, 4, 4], [1, 11, 9, 4, 4]])
    gt = torch.rand(2, 3, 16, 16)
    gt_context = torch.rand(2, 3, 52, 60)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss_fn():
        sr, ctx_sr = net(context, boxes, return_context=True)
        return F.l1_loss(sr, gt) + 0.5 * F.l1_loss(ctx_sr, gt_context)

    loss = loss_fn()
    loss.backward()
    # step 1: the zero-initialised W_V and PIM fusion convs already receive gradients
    assert net.gcm.to_v.weight.grad.abs().sum() > 0
    assert all(f.weight.grad.abs().sum() > 0 for f in net.pim.fuse)
    opt.step()
    opt.zero_grad()
    loss2 = loss_fn()
    loss2.backward()
    gcm_params = {'to_q': net.gcm.to_q.weight, 'to_k': net.gcm.to_k.weight, 'to_v': net.gcm.to_v.weight,
                  'alpha': net.gcm.alpha, 'beta': net.gcm.beta, 'dist_scale': net.gcm.dist_scale,
                  'down_q': net.gcm.down_q.conv.weight, 'down_kv': net.gcm.down_kv.conv.weight,
                  'up': net.gcm.up.conv.weight}
    for key, p in gcm_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f'{name}: no gradient in gcm.{key}'
    for key, p in net.pim.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f'{name}: no gradient in pim.{key}'
    assert loss2.item() != loss.item()


# --- shared context pass ----------------------------------------------------------------------
@pytest.mark.parametrize('name', ['MSRResNet', 'CARN_M', 'SwinIR'])
def test_shared_context_pass_equals_per_roi_decoding(name, tmp_path):
    plain, net = plain_and_clsr(name, tmp_path)
    perturb_context_modules(net)
    torch.manual_seed(5)
    context = torch.rand(2, 3, 21, 25)
    boxes = torch.tensor([[0, 0, 0, 6, 7], [1, 19, 14, 6, 7], [0, 9, 8, 6, 7], [1, 3, 2, 6, 7]])
    with torch.no_grad():
        state = net.encode_context(context)
        together = net.decode(state, boxes)
        alone = torch.cat([net(context[b:b + 1], torch.tensor([[0, *row[1:]]])) for b, row in
                           zip(boxes[:, 0].tolist(), boxes.tolist())])
        # random GCM/PIM weights can blow values up (CARN-M: ~1e4): compare relatively
        scale = 1 + alone.abs().max()
        assert (together - alone).abs().max() < 1e-5 * scale
        # with live GCM/PIM the result is no longer the plain backbone's
        assert (together - reference(plain, net, context, boxes)).abs().max() > 1e-2


def test_context_reaches_roi_only_through_gcm_and_pim(tmp_path):
    """Changing context outside the padded ROI changes the output only through the context
    modules: far pixels through the GCM (global), pixels just outside the padded ROI through the
    PIM (proximity: its receptive field is a few pixels), and nothing without them."""
    torch.manual_seed(6)
    context = torch.rand(1, 3, 40, 48)
    box = torch.tensor([[0, 2, 2, 6, 6]])  # padded ROI: rows/cols 0..9
    far, near = context.clone(), context.clone()
    far[:, :, 24:, 30:] = torch.rand(1, 3, 16, 18)  # holds a GCM window, far from the ROI
    near[:, :, 10:13, 0:12] = torch.rand(1, 3, 3, 12)  # just below the padded ROI
    change = {}
    for key, kwargs in {'none': dict(gcm=None, pim=None), 'gcm': dict(pim=None), 'pim': dict(gcm=None)}.items():
        _, net = plain_and_clsr('MSRResNet', tmp_path, **kwargs)
        perturb_context_modules(net)
        with torch.no_grad():
            out = net(context, box)
            change[key] = {name: (out - net(x, box)).abs().max().item() for name, x in
                           (('far', far), ('near', near))}
    assert change['none'] == {'far': 0, 'near': 0}
    assert change['gcm']['far'] > 1e-4
    assert change['pim']['near'] > 1e-4 and change['pim']['far'] == 0


def test_window_encoding_cost_does_not_grow_with_context():
    """GCM windows are subsampled before encoding: G sees N*r*r pixels for any context size."""
    net = CLSR(backbone=TINY['MSRResNet'], gcm={'num_windows': 8, 'window': 6, 'heads': 2, 'stage': 1},
               pim=None).eval()
    seen = []
    hook = net.base.conv_first.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        for hw in [(30, 36), (300, 420)]:
            net.encode_context(torch.rand(1, 3, *hw))
    hook.remove()
    assert seen[0] == seen[1] and seen[0][0] <= 8 and tuple(seen[0][2:]) == (6, 6)


# --- GCM semantics -----------------------------------------------------------------------------
def test_gcm_alpha_null_key_and_distance_bias():
    """Query on top of one key token: a large distance scale and alpha select exactly that key's
    value; a very negative alpha sends all attention to the null key (output 0)."""
    torch.manual_seed(7)
    c = 4
    gcm = GlobalContextModule(c, heads=1)
    with torch.no_grad():
        gcm.to_v.weight.copy_(torch.eye(c))
        gcm.beta.fill_(0.)
        gcm.dist_scale.fill_(100.)
        gcm.alpha.fill_(30.)
    windows = torch.rand(1, 3, c, 2, 2)  # three 2x2 windows -> one token each after stride 2
    corners = torch.tensor([[0, 0], [10, 0], [0, 10]])
    keys = gcm.encode_keys(windows, corners)
    z = torch.rand(1, c, 2, 2)
    with torch.no_grad():
        for i, (x, y) in enumerate(corners.tolist()):
            out = gcm(z, torch.tensor([[x, y]]), torch.tensor([0]), keys)
            want = windows[0, i].mean(dim=(1, 2))  # bilinear 2x -> 1 token = mean, W_V = I
            assert torch.allclose(out, want.view(1, c, 1, 1).expand(1, c, 2, 2), atol=1e-5)
        gcm.alpha.fill_(-30.)
        out = gcm(z, torch.tensor([[0, 0]]), torch.tensor([0]), keys)
        assert out.abs().max() < 1e-10


# --- real data: the official CARN-M weights --------------------------------------------------
def test_official_carn_m_weights_through_pretrain_backbone():
    """CLSR on the official CARN-M checkpoint (multi-scale, mapped to x4 on load) reproduces the
    official network on padded ROIs of a real Set5 image and beats bicubic on them."""
    import cv2
    from basicsr.metrics import calculate_psnr
    from clsr_arch.archs.carn_arch import official_carn_m_to_single_scale
    from conftest import bicubic_lr, shared

    weights = shared('weights', 'carn_m.pth')
    hr = cv2.imread(shared('Set5', 'HR', 'baby.png'), cv2.IMREAD_COLOR)[160:352, 136:376]  # face, textured
    lr = bicubic_lr(hr, 4)  # 48 x 60
    context = torch.from_numpy(lr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255.
    net = CLSR(backbone={'type': 'CARN_M', 'upscale': 4}, gcm=GCM, pretrain_backbone=weights).eval()
    plain = build_network({'type': 'CARN_M', 'upscale': 4}).eval()
    plain.load_state_dict(official_carn_m_to_single_scale(torch.load(weights, map_location='cpu', weights_only=True)))
    boxes = torch.tensor([[0, 0, 0, 12, 12], [0, 24, 18, 12, 12], [0, 48, 36, 12, 12]])
    with torch.no_grad():
        sr = net(context, boxes)
        assert (sr - reference(plain, net, context, boxes)).abs().max() < 1e-5
    gains = []
    for i, (_, x, y, w, h) in enumerate(boxes.tolist()):
        out = (sr[i].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1] * 255.).round()
        gt = hr[4 * y:4 * (y + h), 4 * x:4 * (x + w)].astype('float64')
        bic = cv2.resize(lr, (lr.shape[1] * 4, lr.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
        bic = bic[4 * y:4 * (y + h), 4 * x:4 * (x + w)].astype('float64')
        gains.append(calculate_psnr(out, gt, crop_border=0, test_y_channel=True) -
                     calculate_psnr(bic, gt, crop_border=0, test_y_channel=True))
    assert min(gains) > 0 and sum(gains) / len(gains) > 0.5, f'PSNR gains over bicubic per ROI: {gains}'


@pytest.mark.slow
def test_2048_context_fits_in_a_few_gib():
    """Full SRResNet CLSR on a 2048x2048 LR context: encode once, decode 3 ROIs; peak extra RSS
    (measured in a fresh process) stays below 3 GiB (measured ~1.9 GiB)."""
    import subprocess
    import sys
    code = (
        "import resource, torch, clsr_arch\n"
        "from basicsr.archs import build_network\n"
        "torch.set_num_threads(2)\n"
        "net = build_network({'type': 'CLSR', 'backbone': {'type': 'MSRResNet', 'num_feat': 64, "
        "'num_block': 16, 'upscale': 4}}).eval()\n"
        "ctx = torch.rand(1, 3, 2048, 2048)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "with torch.no_grad():\n"
        "    st = net.encode_context(ctx)\n"
        "    sr = net.decode(st, torch.tensor([[0, 1000, 1000, 24, 24], [0, 0, 0, 24, 24], [0, 2024, 2024, 24, 24]]))\n"
        "assert sr.shape == (3, 3, 96, 96)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2 ** 20)\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=600, check=True)
    extra_gib = float(out.stdout.strip().splitlines()[-1])
    assert extra_gib < 3.0, f'2048x2048 context used {extra_gib:.2f} GiB'
