"""Benchmarks (LocalSR Table 1 FLOPs, latency, memory): the scripts run end to end on tiny
stand-in backbones (``--quick``) into a tmp markdown file, their bookkeeping is checked against
hand-computed values, and the FLOPs helper against a hand count. Speed is never asserted."""
import json
import os
import os.path as osp
import sys

import pytest
import torch
from torch import nn

import clsr_arch  # noqa: F401
from clsr_arch.utils.flops import count_flops

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
sys.path.insert(0, osp.join(REPO, 'benchmarks'))
import common  # noqa: E402
import flops as flops_bench  # noqa: E402
import latency  # noqa: E402
import memory  # noqa: E402


@pytest.mark.parametrize('cin,cout,k,h,w', [(3, 64, 3, 24, 24), (16, 8, 1, 7, 5), (4, 4, 5, 9, 11)])
def test_flops_helper_matches_hand_count_of_one_conv(cin, cout, k, h, w):
    conv = nn.Conv2d(cin, cout, k, 1, k // 2).to('meta')
    got = count_flops(conv, torch.zeros(1, cin, h, w, device='meta'))
    assert got == 2 * cin * cout * k * k * h * w


def test_flops_helper_counts_real_backbone_like_table1():
    # SRResNet x4 at 24x24 by hand: per LR pixel MACs of conv_first, 32 body convs, upconv1,
    # upconv2 (at 2x), conv_hr and conv_last (at 4x); Table 1 says 2.93 GFLOPs
    px = 24 * 24
    macs = px * (3 * 64 * 9 + 32 * 64 * 64 * 9 + 64 * 256 * 9 + 4 * 64 * 256 * 9 + 16 * 64 * 64 * 9 + 16 * 64 * 3 * 9)
    from basicsr.archs.srresnet_arch import MSRResNet
    net = MSRResNet(num_feat=64, num_block=16, upscale=4).to('meta').eval()
    got = count_flops(net, torch.zeros(1, 3, 24, 24, device='meta'))
    assert got == 2 * macs
    assert abs(got / 1e9 - 2.93) / 2.93 < 0.01


def test_write_section_replaces_only_its_own_block(tmp_path):
    doc = tmp_path / 'b.md'
    doc.write_text('# title\n\nintro\n')
    common.write_section(str(doc), 'a', 'first A')
    common.write_section(str(doc), 'b', 'first B')
    common.write_section(str(doc), 'a', 'second A\n| x |')
    text = doc.read_text()
    assert text.startswith('# title\n\nintro\n')
    assert common.read_section(str(doc), 'a') == 'second A\n| x |'
    assert common.read_section(str(doc), 'b') == 'first B'
    assert 'first A' not in text and text.count('<!-- BEGIN a -->') == 1


def test_roi_grid_and_centre_box():
    g = common.roi_grid((50, 75), (24, 24))  # 2 rows x 3 cols, remainder dropped
    assert g.tolist() == [[0, x, y, 24, 24] for y in (0, 24) for x in (0, 24, 48)]
    assert common.centre_box((144, 216), (24, 24)).tolist() == [[0, 96, 60, 24, 24]]
    with pytest.raises(ValueError, match='larger than context'):
        common.roi_grid((20, 40), (24, 24))


def test_bad_backbone_name_is_a_clear_error():
    with pytest.raises(ValueError, match='unknown backbone'):
        common.parse_backbones('SRResNet,VDSR')


def test_check_targets_against_paper_table1():
    paper = common.PAPER_TABLE1['SRResNet']['BSD100']
    cell = {'pre_crop': paper[0] * 1.015, 'post_crop': paper[1] * 0.97, 'clsr': paper[2] * 1.001,
            'encode': 0.0, 'decode': 0.0}
    rows = flops_bench.check_targets({'SRResNet': {'BSD100': {24: cell}}}, ['BSD100'])
    met = {m: ok for _, _, m, _, _, _, ok in rows}
    assert met == {'pre_crop': True, 'post_crop': False, 'clsr': False}
    text = flops_bench.report({'SRResNet': {'BSD100': {24: cell}}}, {'BSD100': (144, 216)}, [24], 'dev', 'cmd')
    assert 'missed: SRResNet BSD100 post_crop' in text and 'missed: SRResNet BSD100 clsr' in text
    assert '[2.93] 1.015' in text


def test_flops_script_quick(tmp_path):
    out, js = tmp_path / 'bench.md', tmp_path / 'f.json'
    res = flops_bench.main(['--quick', '--backbones', 'SRResNet,CARN_M', '--rois', '8', '--out', str(out),
                            '--json', str(js)])
    for name in ('SRResNet', 'CARN_M'):
        small, large = res[name]['tiny-a'][8], res[name]['tiny-b'][8]
        # pre-crop does not see the context; post-crop scales with context pixels
        assert small['pre_crop'] == large['pre_crop']
        assert large['post_crop'] / small['post_crop'] == pytest.approx((48 * 64) / (32 * 40), rel=1e-6)
        # CLSR = shared context pass + decode, and costs more than pre-crop, less than post-crop here
        assert small['clsr'] == pytest.approx(small['encode'] + small['decode'], rel=1e-9)
        assert small['pre_crop'] < small['clsr'] < large['post_crop']
    section = common.read_section(str(out), 'flops')
    assert section and '| SRResNet | clsr |' in section and 'benchmarks/flops.py' in section
    assert json.loads(js.read_text())['SRResNet']['tiny-a']['8']['pre_crop'] == res['SRResNet']['tiny-a'][8]['pre_crop']


def test_latency_script_quick(tmp_path):
    out, png, js = tmp_path / 'bench.md', tmp_path / 'cost.png', tmp_path / 'lat.json'
    res = latency.main(['--quick', '--backbones', 'SRResNet', '--contexts', 'tiny-a', '--roi', '16',
                        '--repeats', '2', '--post-repeats', '1', '--grid-repeats', '1', '--warmup', '0',
                        '--threads', '1', '--out', str(out), '--plot', str(png), '--json', str(js)])
    assert res['threads'] == 1
    cell = res['roi']['SRResNet']['tiny-a']
    assert [len(cell['raw'][m]) for m in ('pre_crop', 'clsr', 'post_crop')] == [2, 2, 1]
    assert all(t > 0 for ts in cell['raw'].values() for t in ts)
    assert cell['median']['pre_crop'] == pytest.approx(sorted(cell['raw']['pre_crop'])[0] / 2
                                                       + sorted(cell['raw']['pre_crop'])[1] / 2)
    assert res['grid']['SRResNet']['tiny-a']['rois'] == 2 * 2  # 32x40 context, 16x16 ROIs
    roi_sec, grid_sec = common.read_section(str(out), 'latency-roi'), common.read_section(str(out), 'latency-grid')
    assert 'torch.set_num_threads(1)' in roi_sec and '| SRResNet | tiny-a 32x40 |' in roi_sec
    assert 'CLSR shared pass' in grid_sec
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    # the plot can be redrawn from the saved timings without measuring again
    png2 = tmp_path / 'again.png'
    again = latency.main(['--quick', '--replot', str(js), '--plot', str(png2)])
    assert again['roi']['SRResNet']['tiny-a']['median'] == pytest.approx(cell['median'])
    assert png2.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_interleaved_rotates_and_counts():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in 'abc'}
    med, raw = latency.interleaved(fns, {'a': 2, 'b': 2, 'c': 1}, 'cpu', warmup={'a': 1})
    assert calls == ['a', 'a', 'b', 'c', 'b', 'a']  # warm-up a, round 1 a b c, round 2 (rotated) b a
    assert {n: len(v) for n, v in raw.items()} == {'a': 2, 'b': 2, 'c': 1}


def test_memory_growth_bookkeeping():
    pts = [(100, 1000.), (400, 4000.), (1600, 16000.)]
    assert memory.growth_exponents(pts)[1:] == pytest.approx([1.0, 1.0])
    a, b = memory.fit(pts)
    assert a == pytest.approx(0, abs=1e-6) and b == pytest.approx(10)
    quad = [(100, 100.), (200, 400.)]
    assert memory.growth_exponents(quad)[1] == pytest.approx(2.0)


def test_memory_script_quick(tmp_path):
    # one size (one fresh subprocess): the growth bookkeeping is tested above
    out, js = tmp_path / 'bench.md', tmp_path / 'm.json'
    res = memory.main(['--quick', '--backbones', 'CARN_M', '--sizes', '64x80', '--threads', '1',
                       '--out', str(out), '--json', str(js)])
    (cell, ) = res['CARN_M']
    assert cell['pixels'] == 64 * 80 and cell['out'] == [1, 3, 32, 32]  # 8x8 ROI, x4
    # the shared state holds at least the context (12 B/px) and the PIM stage features
    net = common.build_clsr('CARN_M', quick=True)
    pim_bytes = 4 * net.pim.channels * net.adapter.num_stages * cell['pixels']
    assert cell['state'] >= 12 * cell['pixels'] + pim_bytes
    # the pass ran after the baseline (its memory shows up), far below the 4 GiB budget
    assert 0 < cell['peak'] < 4 * 2 ** 30
    section = common.read_section(str(out), 'memory')
    assert '| CARN_M | 64x80 64x80 | 5120 |' in section and 'growth exponent' in section
    assert json.loads(js.read_text())['CARN_M'][0]['peak'] == cell['peak']


def test_params_script_counts_clsr_as_backbone_plus_context_modules(capsys):
    import params
    params.main()
    rows = [r.split('|')[1:-1] for r in capsys.readouterr().out.splitlines()[2:] if r.startswith('|')]
    table = {r[0].strip(): [float(v.strip(' +Mk')) for v in r[1:]] for r in rows}
    assert table['CARN-M'][0] == 0.294  # 294,171: the official CARN-M without its x2/x3 upsamplers
    assert table['IMDN (official x4 layout; not in the paper)'][0] == 0.715  # 715,176 as published
    for plain, clsr, extra in table.values():
        assert abs((clsr - plain) * 1e3 - extra) < 1.0  # CLSR = the backbone + GCM/PIM


def test_large_images_benchmark_runs_and_writes_its_tables(tmp_path):
    """benchmarks/large_images.py --quick: small contexts (each in its own process) and one
    planned grid, the sections written with a row per context/image."""
    import large_images
    out = tmp_path / 'bench.md'
    large_images.main(['--quick', '--parts', 'contexts,grid', '--repeats', '1', '--out', str(out),
                       '--max-memory', '2G'])
    contexts = common.read_section(str(out), 'large-contexts')
    assert contexts.count('| 300x400 (0.12 MP) |') == 1 and '| 500x500 (0.25 MP) |' in contexts
    assert 'untiled, features in memory' in contexts
    grid = common.read_section(str(out), 'large-grid')
    assert '| BSD100 img_001 | 72x120 | 15 | whole |' in grid
    mosaic = large_images.mosaic(300, 2300)  # wider than one 2K image: a second one follows
    assert mosaic.shape == (300, 2300, 3) and mosaic.std() > 10  # real pixels, not a blank canvas
    assert (mosaic[:, 2100:] != mosaic[:, :200]).any()


def test_viewer_latency_benchmark_runs_over_http(tmp_path):
    """benchmarks/viewer_latency.py --quick: a real uvicorn server, an httpx client, the table."""
    import viewer_latency
    out = tmp_path / 'bench.md'
    viewer_latency.main(['--quick', '--out', str(out)])
    table = common.read_section(str(out), 'viewer-latency')
    assert '| Set5 (quick) | 3 images, 64x64 … 128x128 |' in table


def test_selective_benchmark_runs_and_plots(tmp_path):
    """benchmarks/selective.py --quick: one Set5 image, every estimator, the sweep, the plot."""
    import selective as selective_bench
    out, png = tmp_path / 'sel.md', tmp_path / 'sel.png'
    selective_bench.main(['--quick', '--out', str(out), '--plot', str(png)])
    ranking = common.read_section(str(out), 'selective-ranking')
    assert '| learned CNN |' in ranking and '| random (floor) |' in ranking
    sweep = common.read_section(str(out), 'selective-sweep')
    assert sweep.count('| oracle') == 2 and '| post-crop (whole image) |' in sweep
    assert png.stat().st_size > 10000


def test_gigapixel_benchmark_runs_and_writes_its_table(tmp_path):
    """benchmarks/gigapixel.py --quick: a small mosaic and the 2K image written as tiled TIFFs by
    the converter, one subprocess each, the table with the gigapixel / 2K ratio row."""
    import gigapixel
    out = tmp_path / 'bench.md'
    gigapixel.main(['--quick', '--rois', '2', '--threads', '1', '--out', str(out)])
    table = common.read_section(str(out), 'gigapixel')
    assert '| 2400x1800 (4 MP) |' in table and '| 2040x1344 (3 MP) |' in table
    assert '| gigapixel / 2K (p50) |' in table


def test_real_world_tables_compare_rows_over_the_same_rois(tmp_path, monkeypatch):
    """benchmarks/real_world.py's bookkeeping on hand-made per-ROI CSVs: an ROI with an infinite
    PSNR in any row leaves every row, means and per-ROI wins are over the rest."""
    import cv2
    import numpy as np
    import real_world
    monkeypatch.setattr(real_world, 'SETS', ('S',))
    monkeypatch.setattr(real_world, 'ROIS', (24,))
    kinds = (('k', 'kind'),)
    lr = tmp_path / 'data' / 'S' / 'k' / 'X4'
    lr.mkdir(parents=True)
    cv2.imwrite(str(lr / 'a.png'), np.zeros((48, 48, 3), np.uint8))
    base = {'type': 'IMDN', 'upscale': 4}
    clsr = {'type': 'CLSR', 'backbone': base, 'roi_pad': 4}
    rows = [('ref', 'reference', base, None, {'mode': 'pre_crop', 'pre_crop_pad': 4}),
            ('ours', 'ours', clsr, None, {'mode': 'clsr'})]
    values = {'ref': [30.0, 20.0, float('inf'), 25.0], 'ours': [31.0, 19.0, 40.0, 26.0]}
    for row, vals in values.items():
        d = tmp_path / 'results' / f'real_world_{row}'
        d.mkdir(parents=True)
        with open(d / 'rois_S_k_roi24.csv', 'w') as f:
            f.write('image,roi,x,y,w,h,psnr,psnr_y,ssim_y\n')
            for i, v in enumerate(vals):
                f.write(f'a,{i},0,0,24,24,{v},{v},0.5\n')
    md = real_world.tables(str(tmp_path / 'results'), str(tmp_path / 'data'), kinds, rows,
                           {'ours': (('ref', 'ref row'), ('ref', 'ref row'))})
    assert '— 3 ROIs (1 dropped: infinite PSNR in some row)' in md
    assert '| reference | 25.000 |' in md and '| ours | 25.333 |' in md   # means over the 3 finite ROIs
    assert '| S | kind | 24 | +0.333 | +0.333 |' in md and '| 2 / 3 |' in md   # ours wins 2 of the 3


@pytest.mark.parametrize('suite', ['real', 'bicubic', 'craft'])
def test_real_world_suites_build_every_row_and_name_missing_weights(suite, tmp_path, monkeypatch):
    """Every row of each suite of benchmarks/real_world.py builds its network from the training
    options it names (CLSR-CRAFT through its adapter module), and a missing checkpoint -- e.g. the
    issue-13 weights that now live in git history -- stops the run before any row runs, naming
    the file (and, for those, how to get it)."""
    import importlib

    import real_world
    from basicsr.utils.registry import ARCH_REGISTRY
    monkeypatch.setattr(real_world, 'SETS', real_world.SETS)  # main() rebinds them: restored afterwards
    monkeypatch.setattr(real_world, 'ROIS', real_world.ROIS)
    paths = {k: str(tmp_path / f'{k}.pth') for k in ('default_weights', 'base_weights', 'clsr_weights', 'imdn_497',
                                                     'carn_m_497', 'imdn_before', 'carn_m_before', 'craft_weights')}
    kinds, rows, targets = real_world.SUITES[suite][0](type('Args', (), paths))
    assert set(targets) <= {r[0] for r in rows}
    for _, _, net, _, _ in rows:
        opt = dict(net)
        for module in opt.pop('adapter_modules', []):
            importlib.import_module(module)
        if opt['type'] == 'CLSR':
            opt['pretrain_backbone'] = None
        ARCH_REGISTRY.get(opt.pop('type'))(**opt)
    for kind, _ in kinds:
        (tmp_path / 'Set5' / kind).mkdir(parents=True)
    missing = str(tmp_path / ('CLSR_CRAFT_x4_bicubic497.pth' if suite == 'craft' else 'CLSR_IMDN_x4_issue13.pth'))
    with pytest.raises(SystemExit) as err:
        real_world.main(['--suite', suite, '--data', str(tmp_path), '--sets', 'Set5', '--results', str(tmp_path / 'r'),
                         '--default-weights', missing, '--imdn-before', missing, '--craft-weights', missing])
    assert f'weights {missing} missing' in str(err.value)
    assert ('git show a1b1075:weights/' in str(err.value)) == (suite != 'craft')  # how to get the issue-13 ones
    assert not (tmp_path / 'r').exists()
