"""data/*.py preparation logic: sub-images -> bicubic LR -> LMDB -> identical dataset items;
resumability and no partial output after an interruption."""
import os
import os.path as osp
import random
import signal
import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest
import torch

import basicsr.utils.lmdb_util as lmdb_util
import clsr_arch.data.image_io as image_io
from clsr_arch.data.context_roi_dataset import ContextROIDataset
from clsr_arch.data.image_io import DataError, is_complete_file
from clsr_arch.data.prep import (bicubic_lr, create_lmdb, crop_positions, extract_subimages, generate_lr,
                                 prepare_benchmark, write_meta_info)
from conftest import REPO, bicubic_lr as reference_bicubic_lr, shared

CROP, STEP, THRESH = 96, 64, 16


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    """Two small HR training images cut from DIV2K and Flickr2K (200x264 and 160x200)."""
    root = tmp_path_factory.mktemp('src')
    a = cv2.imread(shared('DIV2K', 'HR', '0004.png'))[400:600, 600:864]
    b = cv2.imread(shared('Flickr2K', 'HR', '000005.png'))[100:260, 100:300]
    cv2.imwrite(str(root / '0004.png'), a)
    cv2.imwrite(str(root / '000005.png'), b)
    return str(root), {'0004': a, '000005': b}


def snapshot(folder):
    return {n: open(osp.join(folder, n), 'rb').read() for n in sorted(os.listdir(folder))}


def test_crop_positions_basicsr_rule():
    assert crop_positions(200, 96, 64, 16) == [0, 64, 104]  # 40 px left > 16: one more, flush
    assert crop_positions(176, 96, 64, 16) == [0, 64]  # 16 px left: not more than thresh
    assert crop_positions(96, 96, 64, 0) == [0]
    assert crop_positions(2040, 480, 240, 0) == [0, 240, 480, 720, 960, 1200, 1440, 1560]


def test_pipeline_subimages_lr_lmdb_disk_equals_lmdb(src, tmp_path):
    src_dir, imgs = src
    hr, lr = str(tmp_path / 'HR_sub'), str(tmp_path / 'LR_sub')
    assert extract_subimages(src_dir, hr, CROP, STEP, THRESH) == {'written': 12 + 6, 'skipped': 0}
    # sub-image content: rows y in (0, 64, 104), columns x in (0, 64, 128, 168), row-major:
    # 0004_s007 is row 1 (y=64), column 2 (x=128)
    np.testing.assert_array_equal(cv2.imread(osp.join(hr, '0004_s007.png')), imgs['0004'][64:160, 128:224])
    np.testing.assert_array_equal(cv2.imread(osp.join(hr, '0004_s012.png')), imgs['0004'][104:200, 168:264])
    assert generate_lr(hr, lr, 4, filename_tmpl='{}x4') == {'written': 18, 'skipped': 0}
    sub = cv2.imread(osp.join(hr, '000005_s003.png'))
    lr_img = cv2.imread(osp.join(lr, '000005_s003x4.png'))
    np.testing.assert_array_equal(lr_img, reference_bicubic_lr(sub, 4))
    assert create_lmdb(hr, str(tmp_path / 'hr.lmdb')) == 'written'
    assert create_lmdb(lr, str(tmp_path / 'lr.lmdb')) == 'written'
    meta = open(tmp_path / 'lr.lmdb' / 'meta_info.txt').read().splitlines()
    assert len(meta) == 18 and meta[0] == '000005_s001x4.png (24,24,3) 1'

    common = dict(type='ContextROIDataset', scale=4, filename_tmpl='{}x4')
    disk = dict(common, dataroot_gt=hr, dataroot_lq=lr, io_backend={'type': 'disk'})
    lm = dict(common, dataroot_gt=str(tmp_path / 'hr.lmdb'), dataroot_lq=str(tmp_path / 'lr.lmdb'),
              io_backend={'type': 'lmdb'})
    train = dict(phase='train', context_size=20, roi_size=12, roi_placement='random', use_hflip=True, use_rot=True)
    for extra in (train, dict(phase='val', roi_size=8)):
        ds_disk, ds_lmdb = ContextROIDataset(dict(disk, **extra)), ContextROIDataset(dict(lm, **extra))
        assert len(ds_disk) == len(ds_lmdb) == 18
        for i in range(len(ds_disk)):
            random.seed(i)
            a = ds_disk[i]
            random.seed(i)
            b = ds_lmdb[i]
            assert osp.basename(a['gt_path']).startswith(b['gt_path'])
            for k in a:
                if torch.is_tensor(a[k]):
                    assert torch.equal(a[k], b[k]), (i, k)
    # the HR ROI really is the source image region: check one val item against the source
    item = ContextROIDataset(dict(disk, phase='val', roi_size=8))[ds_disk.paths.index(
        next(p for p in ds_disk.paths if p['gt_path'].endswith('0004_s007.png')))]
    ref = imgs['0004'][64:160, 128:224][:, :, ::-1].astype(np.float32) / 255.
    np.testing.assert_allclose(item['gt'].permute(1, 2, 0).numpy(), ref, atol=1e-7)


def test_resume_skips_complete_and_redoes_truncated(src, tmp_path):
    src_dir, _ = src
    hr = str(tmp_path / 'HR_sub')
    extract_subimages(src_dir, hr, CROP, STEP, THRESH)
    before = snapshot(hr)
    assert extract_subimages(src_dir, hr, CROP, STEP, THRESH) == {'written': 0, 'skipped': 18}
    victim = osp.join(hr, '0004_s003.png')
    data = open(victim, 'rb').read()
    with open(victim, 'wb') as f:
        f.write(data[:len(data) // 3])
    assert not is_complete_file(victim, (CROP, CROP))
    assert extract_subimages(src_dir, hr, CROP, STEP, THRESH) == {'written': 1, 'skipped': 17}
    assert snapshot(hr) == before
    lr = str(tmp_path / 'LR')
    generate_lr(hr, lr, 4)
    assert generate_lr(hr, lr, 4) == {'written': 0, 'skipped': 18}
    lmdb_path = str(tmp_path / 'lr.lmdb')
    create_lmdb(lr, lmdb_path)
    assert create_lmdb(lr, lmdb_path) == 'skipped'
    os.remove(osp.join(lr, '0004_s001.png'))  # folder no longer matches: refuse, do not overwrite
    with pytest.raises(DataError, match=r'lr\.lmdb exists but does not hold exactly'):
        create_lmdb(lr, lmdb_path)


def test_interrupted_extract_leaves_no_partial_file(src, tmp_path, monkeypatch):
    src_dir, _ = src
    clean = str(tmp_path / 'clean')
    extract_subimages(src_dir, clean, CROP, STEP, THRESH)
    out = str(tmp_path / 'out')
    real_imwrite, calls = image_io.imwrite, []

    def dying_imwrite(img, path, params=None):
        calls.append(path)
        if len(calls) == 7:  # the disk fills up half-way through the 7th file
            real_imwrite(img, path, params)
            with open(path, 'r+b') as f:
                f.truncate(100)
            raise OSError('No space left on device')
        real_imwrite(img, path, params)

    monkeypatch.setattr(image_io, 'imwrite', dying_imwrite)
    with pytest.raises(OSError, match='No space'):
        extract_subimages(src_dir, out, CROP, STEP, THRESH)
    monkeypatch.setattr(image_io, 'imwrite', real_imwrite)
    left = sorted(os.listdir(out))
    assert len(left) == 6 and not any(n.startswith('.') for n in left)  # 6 complete, no temporaries
    assert all(is_complete_file(osp.join(out, n), (CROP, CROP)) for n in left)
    assert extract_subimages(src_dir, out, CROP, STEP, THRESH) == {'written': 12, 'skipped': 6}
    assert snapshot(out) == snapshot(clean)


def test_interrupted_lmdb_leaves_nothing(src, tmp_path, monkeypatch):
    src_dir, _ = src
    hr = str(tmp_path / 'HR_sub')
    extract_subimages(src_dir, hr, CROP, STEP, THRESH)
    real, calls = lmdb_util.read_img_worker, []

    def dying(path, key, level):
        calls.append(key)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(path, key, level)

    monkeypatch.setattr(lmdb_util, 'read_img_worker', dying)
    target = str(tmp_path / 'hr.lmdb')
    with pytest.raises(KeyboardInterrupt):
        create_lmdb(hr, target)
    assert not osp.exists(target) and not [n for n in os.listdir(tmp_path) if n.endswith('.lmdb')]
    monkeypatch.setattr(lmdb_util, 'read_img_worker', real)
    assert create_lmdb(hr, target) == 'written'
    env = lmdb.open(target, readonly=True, lock=False)
    assert env.stat()['entries'] == 18
    env.close()


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
@pytest.mark.parametrize('die_in', ['imwrite', 'replace'])
def test_hard_killed_extract_leaves_no_partial_file(src, tmp_path, die_in):
    """A forked child dies (os._exit: no except/finally runs, like SIGKILL) half-way through
    writing its 4th file, or right before renaming it: final names hold complete files only."""
    src_dir, _ = src
    out = str(tmp_path / 'out')
    pid = os.fork()
    if pid == 0:  # child
        try:
            n = [0]
            if die_in == 'imwrite':
                real = image_io.imwrite

                def imwrite(img, path, params=None):
                    n[0] += 1
                    real(img, path, params)
                    if n[0] == 4:
                        with open(path, 'r+b') as f:
                            f.truncate(200)
                        os._exit(9)

                image_io.imwrite = imwrite
            else:
                real_replace = os.replace

                def replace(a, b):
                    n[0] += 1
                    if n[0] == 4:
                        os._exit(9)
                    real_replace(a, b)

                os.replace = replace
            extract_subimages(src_dir, out, CROP, STEP, THRESH)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 9
    names = sorted(os.listdir(out))
    final = [n for n in names if not n.startswith('.')]
    assert len(final) == 3 and len(names) == 4  # one stale hidden temporary, never a final name
    assert all(is_complete_file(osp.join(out, n), (CROP, CROP)) for n in final)
    assert extract_subimages(src_dir, out, CROP, STEP, THRESH) == {'written': 15, 'skipped': 3}
    assert len(os.listdir(out)) == 18 and all(is_complete_file(osp.join(out, n), (CROP, CROP))
                                              for n in os.listdir(out))


@pytest.mark.slow
def test_killed_cli_leaves_no_partial_file(src, tmp_path):
    """SIGKILL the real CLI right before its 4th rename: only complete files under final names,
    and the next run clears the stale temporary and finishes."""
    src_dir, _ = src
    out = str(tmp_path / 'out')
    script = osp.join(REPO, 'data', 'extract_subimages.py')
    code = ('import os, signal, sys, runpy\n'
            'real, n = os.replace, [0]\n'
            'def replace(a, b):\n'
            '    n[0] += 1\n'
            '    if n[0] == 4: os.kill(os.getpid(), signal.SIGKILL)\n'
            '    real(a, b)\n'
            'os.replace = replace\n'
            f'sys.argv = [{script!r}, {src_dir!r}, {out!r}, "--crop-size", "{CROP}", "--step", "{STEP}",'
            f' "--thresh-size", "{THRESH}"]\n'
            f'runpy.run_path({script!r}, run_name="__main__")\n')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    names = sorted(os.listdir(out))
    final = [n for n in names if not n.startswith('.')]
    assert len(final) == 3 and len(names) == 4  # one stale hidden temporary
    assert all(is_complete_file(osp.join(out, n), (CROP, CROP)) for n in final)
    assert extract_subimages(src_dir, out, CROP, STEP, THRESH) == {'written': 15, 'skipped': 3}
    assert len(os.listdir(out)) == 18


def test_generate_lr_needs_multiple_of_scale(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    cv2.imwrite(str(src / 'comic.png'), cv2.imread(shared('Set14', 'HR', 'comic.png'))[:50, :61])
    with pytest.raises(DataError, match=r'comic\.png is 50x61, not a multiple of scale 4'):
        generate_lr(str(src), str(tmp_path / 'LR'), 4)
    generate_lr(str(src), str(tmp_path / 'LR'), 4, hr_out_folder=str(tmp_path / 'HR'))
    assert cv2.imread(str(tmp_path / 'HR' / 'comic.png')).shape == (48, 60, 3)
    assert cv2.imread(str(tmp_path / 'LR' / 'comic.png')).shape == (12, 15, 3)
    with pytest.raises(DataError, match='multiple of scale 3'):
        bicubic_lr(np.zeros((10, 9, 3), np.uint8), 3)


def test_prepare_benchmark_formats(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    comic = cv2.imread(shared('Set14', 'HR', 'comic.png'))[:70, :66]  # not a multiple of 4
    bridge = cv2.imread(shared('Set14', 'HR', 'bridge.png'), cv2.IMREAD_UNCHANGED)[:64, :64]
    assert bridge.ndim == 2
    cv2.imwrite(str(src / 'comic.png'), comic)
    cv2.imwrite(str(src / 'bridge16.png'), bridge.astype(np.uint16) * 257)
    cv2.imwrite(str(src / 'alpha.png'), np.dstack([comic, np.full(comic.shape[:2], 255, np.uint8)]))
    cv2.imwrite(str(src / 'photo.jpg'), comic)
    stats = prepare_benchmark(str(src), str(tmp_path / 'HR'), str(tmp_path / 'LR'), 4)
    assert stats == {'written': 4, 'skipped': 0}
    hr = {n: cv2.imread(str(tmp_path / 'HR' / n), cv2.IMREAD_UNCHANGED) for n in os.listdir(tmp_path / 'HR')}
    assert sorted(hr) == ['alpha.png', 'bridge16.png', 'comic.png', 'photo.png']
    np.testing.assert_array_equal(hr['comic.png'], comic[:68, :64])
    np.testing.assert_array_equal(hr['alpha.png'], comic[:68, :64])
    np.testing.assert_array_equal(hr['bridge16.png'], np.repeat(bridge[:, :, None], 3, 2))
    lr = cv2.imread(str(tmp_path / 'LR' / 'comic.png'))
    np.testing.assert_array_equal(lr, reference_bicubic_lr(comic[:68, :64], 4))
    ds = ContextROIDataset(dict(phase='test', scale=4, roi_size=16, dataroot_gt=str(tmp_path / 'HR'),
                                dataroot_lq=str(tmp_path / 'LR')))
    assert len(ds) == 4 and ds[2]['cropped'].tolist() == [1, 0]  # comic: LR 17x16
    # refusals name the file
    bad = np.dstack([comic, np.full(comic.shape[:2], 255, np.uint8)])
    bad[0, 0, 3] = 10
    cv2.imwrite(str(src / 'see_through.png'), bad)
    with pytest.raises(DataError, match=r'see_through\.png: alpha channel is not fully opaque'):
        prepare_benchmark(str(src), str(tmp_path / 'HR2'), str(tmp_path / 'LR2'), 4)
    os.remove(src / 'see_through.png')
    cv2.imwrite(str(src / 'comic.jpg'), comic)
    with pytest.raises(DataError, match=r'comic\.jpg and .*comic\.png would both be written as comic\.png'):
        prepare_benchmark(str(src), str(tmp_path / 'HR2'), str(tmp_path / 'LR2'), 4)


def test_write_meta_info_feeds_dataset(tiny_pairs, tmp_path):
    meta = str(tmp_path / 'meta_info.txt')
    assert write_meta_info(str(tiny_pairs / 'HR'), meta) == 4
    lines = open(meta).read().splitlines()
    assert lines[0].endswith(' (96,96,3)')
    ds = ContextROIDataset(dict(phase='val', scale=4, roi_size=24, meta_info_file=meta,
                                dataroot_gt=str(tiny_pairs / 'HR'), dataroot_lq=str(tiny_pairs / 'LR')))
    assert [osp.basename(p['gt_path']) for p in ds.paths] == [ln.split()[0] for ln in lines]
