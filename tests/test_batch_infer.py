"""clsr-infer as a batch tool (issue 22): inputs (files, folders, globs), boxes from a detector
(CSV / COCO JSON, rounded outward), one file per box equal to the API's output, the manifest and
resume, the errors file and exit codes, bad input with its line number, --help without torch.
The kill/rerun and torchrun tests are in test_batch_reliability.py. A tiny CLSR keeps it fast."""
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

from clsr_arch import api, infer
from clsr_arch.api.box_files import Box, read_boxes, to_pixels
from clsr_arch.api.shard import Ranks, split
from conftest import REPO, assert_same_uint8, save_tiny_cli_model, shared


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """(options YAML, weights) of a tiny CLSR with random context modules (they matter)."""
    return save_tiny_cli_model(tmp_path_factory.mktemp('batch_model'), perturb=0.1)


def lr_folder(root, names=('baboon', 'zebra', 'lenna'), size=(64, 48)):
    """LR PNGs: crops of Set14 images, ``size`` = (W, H)."""
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        img = cv2.imread(shared('Set14', 'HR', f'{n}.png'), cv2.IMREAD_COLOR)
        cv2.imwrite(str(root / f'{n}.png'), img[40:40 + size[1], 50:50 + size[0]])
    return root


def cli(capsys, tiny_model, *argv):
    opt, weights = tiny_model
    code = infer.main([str(a) for a in argv] + ['--opt', opt, '--weights', weights, '--device', 'cpu',
                                                '--threads', '1'])
    return code, capsys.readouterr()


def records(out):
    return [json.loads(line) for f in sorted(os.listdir(out)) if f.startswith('manifest.')
            for line in open(osp.join(out, f)) if line.strip()]


def test_help_is_plain_text_and_imports_no_torch():
    r = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'clsr_arch.infer', '--help'],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0
    imported = {line.split('|')[-1].strip() for line in r.stderr.splitlines() if '|' in line}
    assert not {m for m in imported if m.split('.')[0] in ('torch', 'basicsr', 'cv2')}, 'help loads heavy modules'
    for markup in ('``', ':mod:', ':class:', ':func:', '\n.. '):
        assert markup not in r.stdout
    for promised in ('--boxes', '--suffix', '--ext', '--compare', 'default results/infer', 'rounded outward',
                     'manifest.rank<R>.jsonl', 'errors.txt', 'torchrun'):
        assert promised in r.stdout


def test_a_folder_glob_and_files_one_file_per_box_equal_to_the_api(tmp_path, capsys, tiny_model):
    src = lr_folder(tmp_path / 'in')
    out = tmp_path / 'out'
    code, cap = cli(capsys, tiny_model, src, '--roi', '3,4,16,12', '--roi', '40,30,24,18', '-o', out)
    assert code == 0, cap.err
    names = sorted(p.name for p in out.iterdir() if p.suffix == '.png')
    assert names == sorted(f'{n}_x{x}_y{y}_{w}x{h}_clsr.png' for n in ('baboon', 'lenna', 'zebra')
                           for x, y, w, h in ((3, 4, 16, 12), (40, 30, 24, 18)))
    assert '3 images on 1 rank(s): 6 boxes written, 0 skipped (done before), 0 failed' in cap.out
    model = api.LocalSR(*reversed(tiny_model), device='cpu')
    with model.open(str(src / 'zebra.png')) as image:  # the same plan: both boxes in one call
        ref = image.super_resolve([(3, 4, 16, 12), (40, 30, 24, 18)])
    for r, (x, y, w, h) in zip(ref, ((3, 4, 16, 12), (40, 30, 24, 18))):
        got = cv2.imread(str(out / f'zebra_x{x}_y{y}_{w}x{h}_clsr.png'))[:, :, ::-1]
        assert got.shape == (4 * h, 4 * w, 3) and np.array_equal(got, r)
    recs = records(out)
    assert len(recs) == 6 and {r['method'] for r in recs} == {'clsr'}
    for r in recs:
        assert set(r) >= {'image', 'box', 'label', 'file', 'method', 'seconds', 'gflops', 'route'}
        assert osp.isfile(r['file']) and r['seconds'] > 0 and r['gflops'] > 0
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['done'], summary['skipped'], summary['failed'], summary['ranks']) == (6, 0, 0, 1)
    # a glob and two files, --suffix, --ext, another method: the names say so
    out2 = tmp_path / 'out2'
    code, cap = cli(capsys, tiny_model, str(src / 'z*.png'), src / 'lenna.png', '--roi', '3,4,16,12', '-o', out2,
                    '--suffix', 'x4-{method}', '--ext', 'jpg', '--methods', 'clsr,pre_crop')
    assert code == 0, cap.err
    assert sorted(p.name for p in out2.iterdir() if p.suffix == '.jpg') == [
        'lenna_x3_y4_16x12_x4-clsr.jpg', 'lenna_x3_y4_16x12_x4-pre_crop.jpg',
        'zebra_x3_y4_16x12_x4-clsr.jpg', 'zebra_x3_y4_16x12_x4-pre_crop.jpg']


def test_a_rerun_skips_what_is_done_and_redoes_a_lost_file(tmp_path, capsys, tiny_model):
    src = lr_folder(tmp_path / 'in', names=('baboon', 'zebra'))
    out = tmp_path / 'out'
    args = (src, '--grid', '16', '-o', out)
    code, cap = cli(capsys, tiny_model, *args)
    assert code == 0 and '24 boxes written' in cap.out  # 4 x 3 per image
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == '.png'}
    lost = sorted(first)[0]
    (out / lost).unlink()
    code, cap = cli(capsys, tiny_model, *args)
    assert code == 0 and '1 boxes written, 23 skipped (done before), 0 failed' in cap.out
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == '.png'} == first
    assert len([r for r in records(out) if osp.basename(r['file']) == lost]) == 2  # the old line, the new one


def test_boxes_from_csv_and_coco_rounded_outward_with_labels(tmp_path, capsys, tiny_model):
    src = lr_folder(tmp_path / 'in', names=('baboon', 'zebra'))
    csv_path = tmp_path / 'dets.csv'
    csv_path.write_text('image,x,y,w,h,label\n'
                        'in/zebra.png,10.4,5.6,20.2,10.1,plate\n'   # -> x 10..31 (ceil 30.6), y 5..16 (ceil 15.7)
                        'baboon.png,0,0,16,16\n'
                        'baboon.png,60.5,40.5,3.5,7.5,face\n')    # 64 x 48 image: ceil(64.0) and ceil(48.0) stay inside
    out = tmp_path / 'out'
    code, cap = cli(capsys, tiny_model, src, '--boxes', csv_path, '-o', out)
    assert code == 0, cap.err
    assert sorted(p.name for p in out.iterdir() if p.suffix == '.png') == [
        'baboon_x0_y0_16x16_clsr.png', 'baboon_x60_y40_4x8_face_clsr.png', 'zebra_x10_y5_21x11_plate_clsr.png']
    coco = {'images': [{'id': 7, 'file_name': 'zebra.png'}],
            'categories': [{'id': 1, 'name': 'licence plate'}],
            'annotations': [{'id': 1, 'image_id': 7, 'bbox': [10.4, 5.6, 20.2, 10.1], 'category_id': 1}]}
    (src / 'dets.json').write_text(json.dumps(coco))
    out2 = tmp_path / 'out2'
    code, cap = cli(capsys, tiny_model, '--boxes', src / 'dets.json', '-o', out2)  # images named by the file
    assert code == 0, cap.err
    assert [p.name for p in out2.iterdir() if p.suffix == '.png'] == ['zebra_x10_y5_21x11_licence-plate_clsr.png']
    assert (out2 / 'zebra_x10_y5_21x11_licence-plate_clsr.png').read_bytes() == \
        (out / 'zebra_x10_y5_21x11_plate_clsr.png').read_bytes()


def test_rounding_outward_and_the_border():
    assert to_pixels(Box(1.2, 2.9, 3.1, 1.0, '', 'f line 2'), (10, 10)) == (1, 2, 4, 2)  # x 1..5 (4.3), y 2..4 (3.9)
    assert to_pixels(Box(8.5, 0, 1.5, 10, '', 'f line 3'), (10, 10)) == (8, 0, 2, 10)
    with pytest.raises(api.LocalSRError, match=r'f line 4: box 8.5,0,1.6,10 is outside the 10x10'):
        to_pixels(Box(8.5, 0, 1.6, 10, '', 'f line 4'), (10, 10))
    with pytest.raises(api.LocalSRError, match=r'f line 5: .* zero-size'):
        to_pixels(Box(1, 1, 0, 3, '', 'f line 5'), (10, 10))


def test_bad_input_is_a_line_each_and_the_rest_runs(tmp_path, capsys, tiny_model):
    src = lr_folder(tmp_path / 'in', names=('baboon', 'zebra'))
    (src / 'broken.png').write_bytes(b'not a png')
    csv_path = tmp_path / 'dets.csv'
    csv_path.write_text('zebra.png,1,1,8,8\n'
                        'zebra.png,60,1,8,8\n'           # line 2: outside the 64x48 image
                        'missing.png,1,1,8,8\n'          # line 3: no such image
                        'zebra.png,1,1,8\n'              # line 4: four fields
                        'baboon.png,1,one,8,8\n'         # line 5: not a number
                        'broken.png,1,1,8,8\n'           # line 6: unreadable image
                        'baboon.png,2,2,8,8\n')
    out = tmp_path / 'out'
    code, cap = cli(capsys, tiny_model, src, '--boxes', csv_path, '-o', out)
    assert code == 1, cap.err
    assert '2 boxes written, 0 skipped (done before), 5 failed' in cap.out and 'errors.txt' in cap.out
    errors = (out / 'errors.txt').read_text().splitlines()
    assert len(errors) == 5
    text = '\n'.join(errors)
    assert 'dets.csv line 2: box 60,1,8,8 is outside the 64x48 (WxH) LR image' in text
    assert "image 'missing.png' named in dets.csv line 3 (1 boxes): no such file" in text
    assert 'dets.csv line 4: expected image,x,y,w,h[,label], got 4 fields' in text
    assert "dets.csv line 5: x,y,w,h must be numbers (LR pixels), got '1,one,8,8'" in text
    assert 'broken.png: cannot decode image (unreadable or not an image) (1 boxes not run)' in text
    summary = json.loads((out / 'summary.json').read_text())
    assert (summary['done'], summary['failed']) == (2, 5)
    # fixed input, rerun: the failures are gone, what was done is skipped, exit 0
    csv_path.write_text('zebra.png,1,1,8,8\nbaboon.png,2,2,8,8\nzebra.png,56,1,8,8\n')
    code, cap = cli(capsys, tiny_model, src / 'zebra.png', src / 'baboon.png', '--boxes', csv_path, '-o', out)
    assert code == 0 and '1 boxes written, 2 skipped (done before), 0 failed' in cap.out
    assert not (out / 'errors.txt').exists()


def test_malformed_json_and_usage_errors_exit_2(tmp_path, capsys, tiny_model):
    src = lr_folder(tmp_path / 'in', names=('zebra', ))
    bad = tmp_path / 'dets.json'
    bad.write_text('{"images": [{"id": 1, "file_name": "zebra.png"}],\n "annotations": [\n  {"image_id": 1,, }\n]}')
    code, cap = cli(capsys, tiny_model, src, '--boxes', bad, '-o', tmp_path / 'o')
    assert code == 2 and 'not valid JSON at line 3, column' in cap.err and cap.err.count('\n') == 1
    bad.write_text(json.dumps({'images': [{'id': 1, 'file_name': 'zebra.png'}],
                               'annotations': [{'id': 5, 'image_id': 1, 'bbox': [1, 2, 3]},
                                               {'id': 6, 'image_id': 2, 'bbox': [1, 2, 3, 4]},
                                               {'id': 7, 'image_id': 1, 'bbox': [1, 2, 3, 4]}]}))
    boxes, problems = read_boxes(str(bad))
    assert [b[:4] for b in boxes['zebra.png']] == [(1, 2, 3, 4)]
    assert [p[1] for p in problems] == ['dets.json annotations[0] (id 5): bbox must be [x, y, w, h] numbers (LR pixels), '
                                        'got [1, 2, 3]', 'dets.json annotations[1] (id 6): image_id 2 is not among "images"']
    for argv, needle in ((['--roi', '1,1,4,4'], 'no input'), ([src], 'no boxes'),
                         ([src, '--roi', '1,1,4'], "--roi '1,1,4': expected x,y,w,h"),
                         ([src, '--roi', '1,1,4,4', '--methods', 'clsr,bicubic', '--suffix', 'sr'], 'must contain {method}'),
                         ([src, '--roi', '1,1,4,4', '--degrade'], '--degrade goes with --compare')):
        code, cap = cli(capsys, tiny_model, *argv, '-o', tmp_path / 'o')
        assert code == 2 and needle in cap.err, (argv, cap.err)
    assert not (tmp_path / 'o').exists()


def test_roi_local_context_of_an_in_memory_frame_same_pixels_fewer_flops():
    """Five plates on a 2K frame: the plan takes the ROI-local context (GCM windows + PIM tiles
    around the boxes), not the whole frame, and the pixels are those of the whole-frame pass."""
    frame = cv2.imread(shared('DIV2K', 'HR', sorted(os.listdir(shared('DIV2K', 'HR')))[0]))[:, :, ::-1].copy()
    model = api.LocalSR(device='cpu')
    plates = [(100, 200, 48, 16), (900, 700, 40, 14), (1500, 300, 52, 18), (30, 1300, 44, 16), (1990, 1320, 50, 20)]
    with model.open(frame) as image:
        plan = image.plan(plates)
        assert plan.mode == 'pieces' and plan.context == 'roi-local'
        assert plan.context_flops < 0.1 * model.cost.context(*image.hw)  # a few tiles, not the frame
        local = image.super_resolve(plates, output='tensor')
        assert image.context_info['mode'] == 'roi-local' and not image.encoded
        assert image.last_run['context'] == 'roi-local' and len(image.last_run['box_seconds']) == 5
        assert image.state['pim'].computed <= 5 * 4  # at most 4 tiles per box
        image.encode()  # the whole-frame pass replaces it
        assert image.encoded and image.context_info['mode'] == 'whole'
        whole = image.super_resolve(plates, output='tensor')
        assert image.last_run['context'] == 'done'
    for a, b in zip(local, whole):
        assert (a - b).abs().max() <= 1e-5
        assert_same_uint8(api.to_uint8(a), api.to_uint8(b))
    small = cv2.imread(shared('Set14', 'HR', 'zebra.png'))[:96, :128, ::-1].copy()
    with model.open(small) as image:  # one PIM tile covers it: the whole frame is no dearer
        assert image.plan([(4, 4, 24, 24)]).context == 'whole'


def test_per_box_seconds_are_each_boxes_own(tiny_model):
    model = api.LocalSR(*reversed(tiny_model), device='cpu')
    img = cv2.imread(shared('Set14', 'HR', 'baboon.png'))[:200, :300, ::-1].copy()
    boxes = [(0, 0, 8, 8), (100, 100, 64, 64), (200, 20, 16, 16)]
    with model.open(img) as image:
        for method in ('clsr', 'pre_crop', 'bicubic'):
            image.super_resolve(boxes, method=method, plan=False)
            sec = image.last_run['box_seconds']
            assert len(sec) == 3 and all(s > 0 for s in sec) and sum(sec) <= image.last_run['seconds']
        image.super_resolve(boxes, method='post_crop')
        assert image.last_run['box_seconds'] == [image.last_run['seconds']] * 3  # the whole image, for any box
        gf = image.box_gflops(boxes, dict(image.last_run, method='clsr', route='clsr', gflops=10.))
        own = [model.cost.decode(h, w, image.hw) / 1e9 for _, _, w, h in boxes]
        assert gf == pytest.approx([o + (10. - sum(own)) / 3 for o in own])


def test_a_plan_of_whole_image_sr_is_said_before_it_runs(tmp_path, capsys, tiny_model):
    src = lr_folder(tmp_path / 'in', names=('zebra', ))
    code, cap = cli(capsys, tiny_model, src, '--grid', '8', '-o', tmp_path / 'out')  # 8 x 6 boxes tile the frame
    assert code == 0, cap.err
    said = [ln for ln in cap.err.splitlines() if 'whole-image SR' in ln]
    assert 'boxes -> whole-image SR of the 64x48 LR image' in said[0] and 'GFLOPs' in said[0] and 'estimated' in said[0]
    assert any(ln.startswith('zebra.png: whole-image SR: ') and 's estimated' in ln for ln in said[1:-1])  # its bar
    assert 'whole-image SR done in' in said[-1]
    assert {r['route'] for r in records(tmp_path / 'out')} == {'whole-image SR (plain backbone: cheaper than CLSR '
                                                                 'for these boxes)'}


def test_split_is_deterministic_balanced_and_covers_every_image(tmp_path):
    paths = []
    for i, size in enumerate([5000, 100, 100, 2500, 2500, 10, 7000, 300]):
        p = tmp_path / f'im{i}.png'
        p.write_bytes(b'x' * size)
        paths.append(str(p))
    shares = [split(paths, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == sorted(paths)  # each image on exactly one rank
    assert shares == [split(list(reversed(paths)), r, 3) for r in range(3)]  # order of the inputs does not matter
    loads = [sum(osp.getsize(p) for p in s) for s in shares]
    assert max(loads) <= 7000 + 100  # the largest image alone bounds the busiest rank here
    ranks = Ranks({'RANK': '1', 'WORLD_SIZE': '4', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'})
    assert (ranks.rank, ranks.world) == (1, 4) and ranks.threads() == max(1, (os.cpu_count() or 1) // 2)
    assert ranks.threads(3) == 3 and ranks.device('cpu') == 'cpu'


def test_the_api_names_of_before_the_split_and_no_import_cycle():
    for name in ('LocalSR', 'Image', 'TiledImage', 'SHIPPED', 'DEFAULT_MODEL', 'DEFAULT_WEIGHTS', 'DEFAULT_OPT',
                 'LocalSRError', 'MemoryBudgetError', 'METHODS', 'SAFETY', 'REPO', 'load_image', 'load_network',
                 'normalise_boxes', 'to_uint8', 'bicubic_flops', 'add_model_args', 'model_paths', 'is_lazy_path'):
        assert getattr(api, name) is not None
    from clsr_arch.api import registry
    assert api.SHIPPED is registry.SHIPPED and api.DEFAULT_MODEL == registry.DEFAULT_MODEL
    for first, second in (('clsr_arch.selective', 'clsr_arch.api.image'), ('clsr_arch.api.image', 'clsr_arch.selective')):
        r = subprocess.run([sys.executable, '-c', f'import {first}, {second}'], capture_output=True, text=True,
                           cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert r.returncode == 0, r.stderr


def test_only_some_boxes_get_the_pixels_of_a_run_of_all(tiny_model):
    """A resumed batch runs only the boxes not done, planned with all of them: the same pixels."""
    model = api.LocalSR(*reversed(tiny_model), device='cpu')
    img = cv2.imread(shared('Set14', 'HR', 'zebra.png'))[:64, :96, ::-1].copy()
    boxes = [(3, 4, 16, 12), (10, 8, 16, 12), (60, 30, 20, 16), (0, 0, 96, 64)]  # overlaps, one the whole frame
    for some in ([1], [0, 2], [3]):
        with model.open(img) as image:
            every = image.super_resolve(boxes)
        with model.open(img) as image:
            part = image.super_resolve(boxes, only=some)
            assert [i for i, o in enumerate(part) if o is not None] == some
            assert len(image.last_run['box_seconds']) == 4
        for i in some:
            assert np.array_equal(part[i], every[i])
    with model.open(img) as image, pytest.raises(api.LocalSRError, match=r'only: box indices must be in 0..3'):
        image.super_resolve(boxes, only=[4])


def test_batch_benchmark_quick_writes_its_table(tmp_path):
    sys.path.insert(0, osp.join(REPO, 'benchmarks'))
    import batch as batch_bench
    out = tmp_path / 'b.md'
    results = batch_bench.main(['--quick', '--configs', '1x1', '--out', str(out)])
    assert [(r['method'], r['what'], r['boxes']) for r in results] == [
        ('clsr', 'all 6 images', 30), ('clsr', '2K frames', 10), ('post_crop', '2K frames', 5)]
    text = out.read_text()
    assert '<!-- BEGIN batch -->' in text and '| CLSR | 2K frames | 1 x 1 | 2 | 10 |' in text
    assert 'CLSR, peak RSS after' in text and 'on the 2K frames: **' in text
    assert results[0]['contexts'] == ['roi-local', 'whole']  # 2K frames: around the boxes; small: the frame
