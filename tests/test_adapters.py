"""Issue 24, item 1: the stage-adapter registry, the worked example of docs/adapters.md, the
YAML-only path (``network_g.adapter_modules``) through BasicSR's ``build_network``, and the
adapters of BasicSR's EDSR / RRDBNet / SRVGGNetCompact beyond what the parametrised tests of
test_clsr_arch / test_tiling / test_local_context / test_planner run on them (conftest.TINY).
"""
import copy
import os.path as osp
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import clsr_arch  # noqa: F401  (registries)
from basicsr.archs import build_network
from clsr_arch.archs import backbone_adapters as ba
from clsr_arch.archs.clsr_arch import CLSR
from conftest import GCM, REPO, TINY, perturb_context_modules

EXAMPLE = osp.join(REPO, 'examples', 'tiny_vdsr_adapter.py')
DOC = osp.join(REPO, 'docs', 'adapters.md')


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Many tiny ops: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture
def registry():
    """A fresh registry swapped in for the module's, so tests never leave registrations behind."""
    saved = ba.ADAPTER_REGISTRY
    ba.ADAPTER_REGISTRY = ba.AdapterRegistry()
    yield ba.ADAPTER_REGISTRY
    ba.ADAPTER_REGISTRY = saved


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.upscale = 1
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


class _NetAdapter(ba.StageAdapter):
    num_feat, num_stages = 3, 0

    def head(self, x):
        return {'feat': self.net.conv(x)}

    def tail(self, state):
        return state['feat']


# --- the registry --------------------------------------------------------------------------------
def test_builtin_backbones_are_registered_by_class_and_type_name():
    for name in TINY:
        net = build_network(copy.deepcopy(TINY[name]))
        adapter = ba.get_adapter(net)
        assert isinstance(adapter, ba.StageAdapter)
        assert ba.adapter_class(type(net)) is type(adapter) is ba.adapter_class(TINY[name]['type'])
    assert ba.adapter_class('SRVGGNetCompact') is ba.SRVGGNetCompactAdapter  # registered by BasicSR as *_basicsr
    assert ba.adapter_class('ECBSR') is None
    names = ba.ADAPTER_REGISTRY.names()
    assert {'MSRResNet', 'RCAN', 'CARN_M', 'CARN', 'SwinIR', 'IMDN', 'EDSR', 'RRDBNet', 'SRVGGNetCompact'} <= set(names)


def test_register_by_class_name_and_qualified_name(registry):
    net = _Net()
    with pytest.raises(ValueError, match=r"no stage adapter for backbone type '_Net'.*adapter_modules"):
        ba.get_adapter(net)
    ba.register_adapter(_Net, _NetAdapter)
    assert isinstance(ba.get_adapter(net), _NetAdapter)
    assert ba.ADAPTER_REGISTRY.unregister(_Net) is _NetAdapter and ba.adapter_class(net) is None
    # a name not in BasicSR's ARCH_REGISTRY matches the class name or the qualified name
    ba.register_adapter(f'{_Net.__module__}._Net', _NetAdapter)
    assert ba.adapter_class(net) is _NetAdapter
    registry.unregister(f'{_Net.__module__}._Net')
    deco = ba.register_adapter('_Net')  # decorator form returns the class unchanged
    assert deco(_NetAdapter) is _NetAdapter and ba.adapter_class(net) is _NetAdapter


def test_type_name_resolves_through_basicsr_not_by_coincidence(registry):
    """A name BasicSR knows matches only BasicSR's class: another class called 'EDSR' does not."""
    ba.register_adapter('EDSR', ba.EDSRAdapter)
    assert ba.adapter_class(build_network(copy.deepcopy(TINY['EDSR']))) is ba.EDSRAdapter
    other = type('EDSR', (_Net, ), {})
    assert ba.adapter_class(other()) is None


def test_subclass_needs_its_own_registration(registry):
    ba.register_adapter(_Net, _NetAdapter)
    sub = type('SubNet', (_Net, ), {'forward': lambda self, x: 2 * self.conv(x)})
    assert ba.adapter_class(sub()) is None


def test_duplicate_and_bad_registrations(registry):
    ba.register_adapter(_Net, _NetAdapter)
    ba.register_adapter(_Net, _NetAdapter)  # the same again: fine (a module imported twice)
    other = type('OtherAdapter', (_NetAdapter, ), {})
    with pytest.raises(ValueError, match=r"'_Net' already has adapter _NetAdapter.*override=True"):
        ba.register_adapter(_Net, other)
    ba.register_adapter(_Net, other, override=True)
    assert ba.adapter_class(_Net) is other
    with pytest.raises(TypeError, match='StageAdapter subclass'):
        ba.register_adapter('X', object)
    with pytest.raises(TypeError, match='class or a type name'):
        ba.register_adapter(_Net(), _NetAdapter)
    with pytest.raises(ValueError, match='empty'):
        ba.register_adapter(' ', _NetAdapter)


def test_import_adapter_modules_errors_name_the_module(tmp_path):
    with pytest.raises(ValueError, match=r"adapter_modules: cannot import module 'no_such_pkg\.adapters'"):
        ba.import_adapter_modules(['no_such_pkg.adapters'])
    with pytest.raises(ValueError, match=r'no such file .*missing\.py'):
        ba.import_adapter_modules([str(tmp_path / 'missing.py')])
    bad = tmp_path / 'broken_adapter.py'
    bad.write_text('raise RuntimeError("boom")\n')
    with pytest.raises(ValueError, match=r"importing '.*broken_adapter\.py' failed: RuntimeError: boom"):
        ba.import_adapter_modules([str(bad)])
    with pytest.raises(ValueError, match='list of module names'):
        ba.import_adapter_modules([3])
    with pytest.raises(ValueError, match=r'CLSR option adapter_modules: cannot import'):
        CLSR(backbone=TINY['MSRResNet'], adapter_modules=['no_such_pkg.adapters'])


# --- the worked example (docs/adapters.md) --------------------------------------------------------
def test_doc_code_is_the_tested_example_file():
    doc, example = open(DOC).read(), open(EXAMPLE).read()
    blocks = re.findall(r'<!-- from examples/tiny_vdsr_adapter\.py -->\n```python\n(.*?)```', doc, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        assert block in example, block[:200]
    adapter = example[example.index('# --- the adapter'):]
    assert len(adapter.strip().splitlines()) < 30  # "a new backbone adapter in under 30 lines"


def test_example_adapter_reproduces_forward_and_builds_clsr(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(REPO)
    from examples.tiny_vdsr_adapter import TinyVDSR, TinyVDSRAdapter
    torch.manual_seed(0)
    plain = TinyVDSR(num_feat=8, num_block=3).eval()
    adapter = ba.get_adapter(plain)
    assert isinstance(adapter, TinyVDSRAdapter)
    x = torch.rand(2, 3, 11, 13)
    with torch.no_grad():
        assert torch.equal(adapter.run(x), plain(x))
    path = tmp_path / 'plain.pth'
    torch.save({'params': plain.state_dict()}, path)
    net = build_network({'type': 'CLSR', 'backbone': {'type': 'TinyVDSR', 'num_feat': 8, 'num_block': 3},
                         'gcm': GCM, 'pretrain_backbone': str(path)}).eval()
    assert net.roi_pad == 2 and net.gcm_opt['num_windows'] == 6 and net.pim.channels == 1
    context, boxes = torch.rand(1, 3, 20, 22), torch.tensor([[0, 5, 7, 6, 6]])
    with torch.no_grad():  # at init: the plain backbone on the ROI padded by 2 real pixels
        want = plain(context[:, :, 5:15, 3:13])[:, :, 8:32, 8:32]
        assert (net(context, boxes) - want).abs().max() < 1e-5
        perturb_context_modules(net, 0.1)
        assert (net(context, boxes) - want).abs().max() > 1e-3


YAML_ONLY = """
import sys, yaml, torch
import clsr_arch                                   # registers CLSR (clsr_arch/train.py does the same)
from basicsr.archs import build_network
from basicsr.utils.options import ordered_yaml
opt = yaml.load(open(sys.argv[1]), Loader=ordered_yaml()[0])
assert 'examples.tiny_vdsr_adapter' not in sys.modules
net = build_network(opt['network_g']).eval()
print(type(net.base).__name__, type(net.adapter).__name__, tuple(net(torch.rand(1, 3, 16, 16),
      torch.tensor([[0, 4, 4, 6, 6]])).shape))
"""


@pytest.mark.parametrize('how', ['module', 'file'])
def test_yaml_only_path_through_build_network(how, tmp_path):
    """A user's arch and adapter, named in the YAML alone, in a fresh interpreter."""
    if how == 'module':
        modules = ['examples.tiny_vdsr_adapter']
        arch, adapter = 'TinyVDSR', 'TinyVDSRAdapter'
    else:  # a .py file outside any package, registering by class
        mod = tmp_path / 'my_adapter.py'
        mod.write_text(open(EXAMPLE).read().replace('TinyVDSR', 'MyVDSR').replace(
            "@register_adapter('MyVDSR')", '@register_adapter(MyVDSR)'))
        modules = [str(mod)]
        arch, adapter = 'MyVDSR', 'MyVDSRAdapter'
    opt = tmp_path / 'opt.yml'
    opt.write_text(textwrap.dedent(f"""\
        network_g:
          type: CLSR
          adapter_modules: {modules}
          backbone: {{type: {arch}, num_feat: 8, num_block: 2}}
          gcm: {{num_windows: 4, heads: 2}}
        """))
    proc = subprocess.run([sys.executable, '-c', YAML_ONLY, str(opt)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [arch, adapter, '(1,', '3,', '24,', '24)']


# --- BasicSR's EDSR, RRDBNet, SRVGGNetCompact: options the tiny list does not cover --------------
@pytest.mark.parametrize('opt', [
    dict(type='SRVGGNetCompact', num_feat=8, num_conv=4, upscale=4, act_type='relu'),
    dict(type='SRVGGNetCompact', num_feat=8, num_conv=1, upscale=2, act_type='leakyrelu'),
    dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=3, upscale=3, res_scale=0.1),
    dict(type='EDSR', num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1, upscale=2),
])
def test_adapter_variants_reproduce_forward(opt):
    torch.manual_seed(0)
    net = build_network(copy.deepcopy(opt)).eval()
    adapter = ba.get_adapter(net)
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert torch.equal(adapter.run(x), net(x))
    assert adapter.scale == opt['upscale']
    if opt['type'] == 'SRVGGNetCompact':  # stages of 2 convs, the last one shorter
        assert adapter.num_stages == (opt['num_conv'] + 1) // 2


def test_srvgg_inplace_activation_keeps_injections():
    """ReLU/LeakyReLU act in place in SRVGGNetCompact: CLSR's injected feature must not be
    overwritten by the next stage (gradients reach the PIM fusion and the GCM)."""
    torch.manual_seed(0)
    net = CLSR(backbone=dict(type='SRVGGNetCompact', num_feat=8, num_conv=4, upscale=4, act_type='leakyrelu'),
               gcm=GCM)
    perturb_context_modules(net, 0.1)
    net(torch.rand(1, 3, 18, 18), torch.tensor([[0, 3, 3, 6, 6]])).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.pim.fuse.parameters())
    assert net.gcm.to_v.weight.grad.abs().sum() > 0


def test_rrdbnet_other_scales_are_refused_clearly():
    for scale in (1, 2):
        with pytest.raises(ValueError, match=f'RRDBNet with scale 4 only, got scale {scale}'):
            CLSR(backbone=dict(TINY['RRDBNet'], scale=scale))


def test_full_size_defaults_documented():
    """docs/architecture.md's rows of the three (FLOPs: python -m clsr_arch.utils.flops)."""
    from clsr_arch.utils.flops import PAPER_BACKBONES, build_on
    for name, (roi_pad, n, stage, c) in {'EDSR': (2, 48, 1, 6), 'RRDBNet': (2, 64, 0, 6),
                                         'SRVGGNetCompact': (2, 48, 1, 6)}.items():
        net = build_on({'type': 'CLSR', 'backbone': PAPER_BACKBONES[name][0]}, 'meta')
        assert (net.roi_pad, net.gcm_opt['num_windows'], net.gcm_opt['stage'], net.pim.channels) == \
            (roi_pad, n, stage, c), name
