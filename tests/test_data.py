"""ContextROIDataset: item contract, geometry under augmentation, validation grid, errors."""
import os
import os.path as osp
import random

import cv2
import numpy as np
import pytest
import torch

from basicsr.data import build_dataset
from clsr_arch.data.context_roi_dataset import ContextROIDataset, validation_grid
from clsr_arch.data.image_io import DataError, read_bgr8, to_bgr8
from clsr_arch.data.prep import create_lmdb, prepare_benchmark
from conftest import shared

S = 4


def coded_pair(root, name, lr_h, lr_w, scale=S):
    """LR whose pixel (y, x) stores B=y, G=x, R=7 and HR = nearest x``scale`` of it, so every
    pixel of any crop/flip/rotation says where it came from."""
    yy, xx = np.mgrid[0:lr_h, 0:lr_w]
    lr = np.stack([yy, xx, np.full_like(yy, 7)], axis=2).astype(np.uint8)
    hr = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    for sub, img in (('HR', hr), ('LR', lr)):
        os.makedirs(osp.join(root, sub), exist_ok=True)
        cv2.imwrite(osp.join(root, sub, name), img)
    return lr, hr


def codes(t):
    """[3, H, W] RGB tensor in [0, 1] -> (y, x) int arrays (B=y, G=x in BGR)."""
    a = np.round(t.numpy() * 255).astype(int)
    return a[2], a[1]  # RGB: index 2 is B, 1 is G


def opts(root, phase='train', **kw):
    o = dict(type='ContextROIDataset', name='t', phase=phase, scale=S, io_backend={'type': 'disk'},
             dataroot_gt=osp.join(root, 'HR'), dataroot_lq=osp.join(root, 'LR'))
    o.update(kw)
    return o


@pytest.fixture(scope='module')
def coded(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coded'))
    lr, hr = coded_pair(root, 'c.png', 60, 70)
    return root, lr, hr


@pytest.mark.parametrize('hflip,vflip,rot90', [(h, v, r) for h in (0, 1) for v in (0, 1) for r in (0, 1)])
@pytest.mark.parametrize('placement', ['center', 'random'])
def test_train_geometry_under_every_augmentation(coded, monkeypatch, hflip, vflip, rot90, placement):
    root, lr, _ = coded
    # basicsr's augment draws hflip, vflip, rot90 from random.random() in that order
    draws = iter([0.0 if v else 0.9 for v in (hflip, vflip, rot90)])
    monkeypatch.setattr(random, 'random', lambda: next(draws))
    random.seed(3)
    ds = ContextROIDataset(opts(root, context_size=54, roi_size=48, roi_placement=placement, use_hflip=True,
                                use_rot=True))
    item = ds[0]
    assert item['lq'].shape == (3, 54, 54) and item['gt_context'].shape == (3, 216, 216)
    assert item['gt'].shape == (3, 192, 192) and item['roi'].dtype == torch.long
    x, y, w, h = item['roi'].tolist()
    assert (w, h) == (48, 48) and 0 <= x and x + w <= 54 and 0 <= y and y + h <= 54
    if placement == 'center':
        assert (x, y) == (3, 3)  # paper: 48x48 ROI centred in the 54x54 context
    # the context is one 54x54 block of the LR, flipped/rotated as drawn
    ly, lx = codes(item['lq'])
    top, left = ly.min(), lx.min()
    block_y, block_x = np.mgrid[top:top + 54, left:left + 54]
    if hflip:
        block_y, block_x = block_y[:, ::-1], block_x[:, ::-1]
    if vflip:
        block_y, block_x = block_y[::-1], block_x[::-1]
    if rot90:
        block_y, block_x = block_y.T, block_x.T
    np.testing.assert_array_equal(ly, block_y)
    np.testing.assert_array_equal(lx, block_x)
    # HR context pixel (Y, X) came from LR pixel (Y // s, X // s) of the same context
    gy, gx = codes(item['gt_context'])
    np.testing.assert_array_equal(gy, np.repeat(np.repeat(ly, S, 0), S, 1))
    np.testing.assert_array_equal(gx, np.repeat(np.repeat(lx, S, 0), S, 1))
    # HR ROI = HR context at s x box, and matches the LR ROI pixel for pixel
    assert torch.equal(item['gt'], item['gt_context'][:, S * y:S * (y + h), S * x:S * (x + w)])
    ry, rx = codes(item['gt'])
    np.testing.assert_array_equal(ry[::S, ::S], ly[y:y + h, x:x + w])
    np.testing.assert_array_equal(rx[::S, ::S], lx[y:y + h, x:x + w])
    # a known pixel: the ROI's top-left LR pixel sits at block (y, x)
    assert (ry[0, 0], rx[0, 0]) == (block_y[y, x], block_x[y, x])


def test_random_placement_and_crops_vary(coded):
    root, _, _ = coded
    random.seed(0)
    ds = ContextROIDataset(opts(root, context_size=30, roi_size=12, roi_placement='random'))
    boxes = {tuple(ds[0]['roi'].tolist()) for _ in range(20)}
    assert len(boxes) > 5 and all(0 <= bx <= 18 and 0 <= by <= 18 for bx, by, _, _ in boxes)


def test_validation_grid_covers_cropped_image_once(tmp_path, monkeypatch):
    import clsr_arch.data.context_roi_dataset as crd
    root = str(tmp_path)
    lr, hr = coded_pair(root, 'v.png', 70, 62)
    ds = build_dataset(opts(root, phase='val', roi_size=24))  # through BasicSR's registry
    msgs = []

    class Recorder:  # basicsr's logger keeps handlers across tests; record the calls themselves
        def debug(self, msg):
            msgs.append(msg)

    monkeypatch.setattr(crd, 'get_root_logger', lambda *a, **k: Recorder())
    item = ds[0]
    ds[0]
    msgs = [m for m in msgs if 'v.png' in m]
    assert len(msgs) == 1 and 'dropped 22 bottom rows, 14 right columns' in msgs[0]
    assert item['cropped'].tolist() == [22, 14]
    assert item['lq'].shape == (3, 48, 48) and item['gt'].shape == (3, 192, 192)
    ly, lx = codes(item['lq'])
    np.testing.assert_array_equal(ly, lr[:48, :48, 0])
    np.testing.assert_array_equal(lx, lr[:48, :48, 1])
    np.testing.assert_array_equal(codes(item['gt'])[1], hr[:192, :192, 1])
    assert item['rois'].tolist() == [[0, 0, 24, 24], [24, 0, 24, 24], [0, 24, 24, 24], [24, 24, 24, 24]]
    assert item['lq_path'].endswith('LR/v.png') and item['gt_path'].endswith('HR/v.png')


@pytest.mark.parametrize('h,w,rh,rw', [(80, 120, 24, 24), (120, 80, 48, 48), (50, 77, 24, 16), (24, 24, 24, 24)])
def test_validation_grid_counts(h, w, rh, rw):
    rois, (kh, kw) = validation_grid(h, w, rh, rw)
    assert (kh, kw) == (h // rh * rh, w // rw * rw)
    cover = np.zeros((h, w), int)
    for x, y, bw, bh in rois.tolist():
        cover[y:y + bh, x:x + bw] += 1
    assert (cover[:kh, :kw] == 1).all() and cover.sum() == kh * kw
    # row-major: y never decreases, and within a row x increases
    keys = [(y, x) for x, y, _, _ in rois.tolist()]
    assert keys == sorted(keys)


def test_real_pairs_val_and_normalisation(tiny_pairs):
    root = str(tiny_pairs)
    ds = ContextROIDataset(opts(root, phase='test', roi_size=24))
    names = sorted(os.listdir(osp.join(root, 'HR')))
    assert len(ds) == len(names)
    item = ds[1]
    ref = cv2.imread(osp.join(root, 'HR', names[1]))[:, :, ::-1].astype(np.float32) / 255.
    np.testing.assert_allclose(item['gt'].permute(1, 2, 0).numpy(), ref, atol=1e-7)
    assert item['cropped'].tolist() == [0, 0] and item['rois'].tolist() == [[0, 0, 24, 24]]
    mean, std = [0.4488, 0.4371, 0.4040], [0.5, 0.25, 1.0]
    norm = ContextROIDataset(opts(root, phase='test', roi_size=24, mean=mean, std=std))[1]
    expect = (item['lq'] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(norm['lq'], expect, atol=1e-6)


def test_filename_tmpl_and_meta_info(tmp_path):
    root = str(tmp_path)
    for n in ('a', 'b', 'c'):
        coded_pair(root, f'{n}.png', 30, 30)
        os.rename(osp.join(root, 'LR', f'{n}.png'), osp.join(root, 'LR', f'{n}x4.png'))
    ds = ContextROIDataset(opts(root, phase='val', roi_size=24, filename_tmpl='{}x4'))
    assert [osp.basename(p['lq_path']) for p in ds.paths] == ['ax4.png', 'bx4.png', 'cx4.png']
    meta = tmp_path / 'meta.txt'
    meta.write_text('c.png (120,120,3)\na.png (120,120,3)\n')
    ds = ContextROIDataset(opts(root, phase='val', roi_size=24, filename_tmpl='{}x4', meta_info_file=str(meta)))
    assert [osp.basename(p['gt_path']) for p in ds.paths] == ['c.png', 'a.png']
    meta.write_text('a.png (120,120,3)\nzz.png (120,120,3)\n')
    with pytest.raises(DataError, match='zz.png'):
        ContextROIDataset(opts(root, phase='val', roi_size=24, filename_tmpl='{}x4', meta_info_file=str(meta)))


# ---------------------------------------------------------------------------- bad input
@pytest.fixture
def three(tmp_path):
    root = str(tmp_path)
    for n in ('a', 'b', 'c'):
        coded_pair(root, f'{n}.png', 30, 30)
    return root


def test_error_gt_without_lr_and_lr_without_gt(three):
    os.remove(osp.join(three, 'LR', 'b.png'))
    with pytest.raises(DataError, match=r'GT image\(s\) without LR.*HR/b\.png'):
        ContextROIDataset(opts(three, phase='val', roi_size=24))
    os.remove(osp.join(three, 'HR', 'c.png'))
    coded_pair(three, 'b.png', 30, 30)
    with pytest.raises(DataError, match=r'LR image\(s\) without GT.*LR/c\.png'):
        ContextROIDataset(opts(three, phase='val', roi_size=24))


def test_error_size_disagrees_with_scale(three):
    cv2.imwrite(osp.join(three, 'HR', 'b.png'), np.zeros((121, 120, 3), np.uint8))
    with pytest.raises(DataError, match=r'HR/b\.png is 121x120.*LR/b\.png is 30x30.*scale 4'):
        ContextROIDataset(opts(three, phase='val', roi_size=24))
    # the same check at read time when headers are not checked up front
    ds = ContextROIDataset(opts(three, phase='val', roi_size=24, check_sizes=False))
    with pytest.raises(DataError, match=r'HR/b\.png'):
        ds[1]


def test_error_smaller_than_context_or_roi(three):
    with pytest.raises(DataError, match=r'a\.png is 30x30 LR pixels, smaller than context_size 54x54'):
        ContextROIDataset(opts(three, context_size=54, roi_size=48))
    with pytest.raises(DataError, match=r'smaller than roi_size 48x48'):
        ContextROIDataset(opts(three, phase='test', roi_size=48))


def test_error_unreadable_and_truncated(three):
    with open(osp.join(three, 'LR', 'c.png'), 'wb') as f:
        f.write(b'this is not a png')
    with pytest.raises(DataError, match=r'LR/c\.png: cannot read image header'):
        ContextROIDataset(opts(three, phase='val', roi_size=24))
    data = open(osp.join(three, 'HR', 'a.png'), 'rb').read()
    coded_pair(three, 'c.png', 30, 30)
    with open(osp.join(three, 'HR', 'c.png'), 'wb') as f:
        f.write(data[:len(data) // 2])  # header intact, pixels cut
    ds = ContextROIDataset(opts(three, phase='val', roi_size=24))
    with pytest.raises(DataError, match=r'HR/c\.png: truncated PNG'):
        ds[2]
    ok = cv2.imencode('.jpg', np.full((8, 8, 3), 90, np.uint8))[1].tobytes()
    path = osp.join(three, 'cut.jpg')
    with open(path, 'wb') as f:
        f.write(ok[:-40])
    with pytest.raises(DataError, match=r'cut\.jpg: truncated JPEG'):
        read_bgr8(path)


def test_error_empty_folder_and_bad_options(three, tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match=r"dataroot_lq '.*empty' holds no images"):
        ContextROIDataset(opts(three, phase='val', roi_size=24, dataroot_lq=str(tmp_path / 'empty')))
    with pytest.raises(DataError, match='use_rot needs a square'):
        ContextROIDataset(opts(three, context_size=[30, 20], roi_size=12, use_rot=True))
    with pytest.raises(DataError, match='does not fit'):
        ContextROIDataset(opts(three, context_size=20, roi_size=24))
    with pytest.raises(DataError, match='roi_size is missing'):
        ContextROIDataset(opts(three, phase='val'))
    with pytest.raises(DataError, match='io_backend.type'):
        ContextROIDataset(opts(three, phase='val', roi_size=8, io_backend={'type': 'memcached'}))
    assert issubclass(DataError, ValueError)


def test_lmdb_missing_key_and_unpaired_keys(three, tmp_path):
    create_lmdb(osp.join(three, 'HR'), str(tmp_path / 'hr.lmdb'))
    create_lmdb(osp.join(three, 'LR'), str(tmp_path / 'lr.lmdb'))
    o = opts(three, phase='val', roi_size=24, io_backend={'type': 'lmdb'}, dataroot_gt=str(tmp_path / 'hr.lmdb'),
             dataroot_lq=str(tmp_path / 'lr.lmdb'))
    disk = ContextROIDataset(opts(three, phase='val', roi_size=24))
    assert torch.equal(ContextROIDataset(o)[2]['gt'], disk[2]['gt'])
    meta = tmp_path / 'subset.txt'
    meta.write_text('c.png (120,120,3)\n')  # meta_info_file selects LMDB keys
    sub = ContextROIDataset(dict(o, meta_info_file=str(meta)))
    assert len(sub) == 1 and sub[0]['gt_path'] == 'c' and torch.equal(sub[0]['lq'], disk[2]['lq'])
    for sub in ('hr', 'lr'):  # a key the meta_info promises but the LMDB lacks
        with open(tmp_path / f'{sub}.lmdb' / 'meta_info.txt', 'a') as f:
            f.write(f'ghost.png ({120 if sub == "hr" else 30},{120 if sub == "hr" else 30},3) 1\n')
    ds = ContextROIDataset(o)
    with pytest.raises(DataError, match=r"lr\.lmdb' key 'ghost': key not found"):
        ds[[p['gt_path'] for p in ds.paths].index('ghost')]
    with open(tmp_path / 'hr.lmdb' / 'meta_info.txt', 'a') as f:
        f.write('extra.png (120,120,3) 1\n')
    with pytest.raises(DataError, match=r'GT key\(s\).*without LR key.*extra'):
        ContextROIDataset(o)


# ---------------------------------------------------------------------------- conversions
def test_conversion_rules(tmp_path):
    bgr = cv2.imread(shared('Set5', 'HR', 'baby.png'))[100:140, 100:160]
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    # grayscale -> replicated
    np.testing.assert_array_equal(to_bgr8(gray, 'g'), np.repeat(gray[:, :, None], 3, 2))
    # 16-bit -> 8-bit exactly (v * 257 is how 8-bit widens to 16-bit)
    cv2.imwrite(str(tmp_path / 'b16.png'), bgr.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_bgr8(str(tmp_path / 'b16.png')), bgr)
    # opaque alpha dropped (4 and 2 channels)
    bgra = np.dstack([bgr, np.full(gray.shape, 255, np.uint8)])
    cv2.imwrite(str(tmp_path / 'a.png'), bgra)
    np.testing.assert_array_equal(read_bgr8(str(tmp_path / 'a.png')), bgr)
    np.testing.assert_array_equal(to_bgr8(np.dstack([gray, np.full(gray.shape, 255, np.uint8)]), 'ga'),
                                  np.repeat(gray[:, :, None], 3, 2))
    # transparent alpha refused, naming the file
    bgra[5, 7, 3] = 0
    cv2.imwrite(str(tmp_path / 't.png'), bgra)
    with pytest.raises(DataError, match=r't\.png: alpha channel is not fully opaque \(1 transparent'):
        read_bgr8(str(tmp_path / 't.png'))
    with pytest.raises(DataError, match='unsupported pixel type float32'):
        to_bgr8(bgr.astype(np.float32), 'f')


def test_grayscale_benchmark_image_through_dataset(tmp_path):
    # Set14 bridge.png is single-channel: prepared pairs and the dataset give equal RGB channels
    src = tmp_path / 'src'
    src.mkdir()
    bridge = cv2.imread(shared('Set14', 'HR', 'bridge.png'), cv2.IMREAD_UNCHANGED)
    assert bridge.ndim == 2
    cv2.imwrite(str(src / 'bridge.png'), bridge[:100, :104])
    prepare_benchmark(str(src), str(tmp_path / 'HR'), str(tmp_path / 'LR'), 4)
    item = ContextROIDataset(opts(str(tmp_path), phase='test', roi_size=24))[0]
    assert item['lq'].shape == (3, 24, 24) and item['cropped'].tolist() == [1, 2]
    assert torch.equal(item['gt'][0], item['gt'][1]) and torch.equal(item['gt'][0], item['gt'][2])


def test_basicsr_train_dataloader_batches(three):
    from basicsr.data import build_dataloader
    opt = opts(three, context_size=24, roi_size=12, roi_placement='random', use_hflip=True, use_rot=True,
               batch_size_per_gpu=3, num_worker_per_gpu=0, use_shuffle=True, dataset_enlarge_ratio=1)
    ds = build_dataset(opt)
    loader = build_dataloader(ds, opt, num_gpu=0, dist=False, sampler=None, seed=0)
    batch = next(iter(loader))
    assert batch['lq'].shape == (3, 3, 24, 24) and batch['roi'].shape == (3, 4) and len(batch['lq_path']) == 3
    assert batch['gt'].shape == (3, 3, 48, 48) and batch['gt_context'].shape == (3, 3, 96, 96)
    for i in range(3):
        x, y, w, h = batch['roi'][i].tolist()
        assert torch.equal(batch['gt'][i], batch['gt_context'][i, :, 4 * y:4 * (y + h), 4 * x:4 * (x + w)])


def test_validation_grid_with_a_stride_gives_overlapping_rois():
    """roi_stride (the issue-13 validation split: 24x24 ROIs every 16 px) -- the default stride is
    the ROI size, the non-overlapping grid."""
    rois, (kh, kw) = validation_grid(40, 50, 24, 24, stride=(16, 16))
    assert rois.tolist() == [[0, 0, 24, 24], [16, 0, 24, 24], [0, 16, 24, 24], [16, 16, 24, 24]]
    assert (kh, kw) == (40, 40)
    assert validation_grid(48, 50, 24, 24)[0].tolist() == validation_grid(48, 50, 24, 24, stride=(24, 24))[0].tolist()
