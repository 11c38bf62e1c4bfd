"""Lazily read images (issue 17): tiled pyramidal TIFFs and .npy through clsr_arch.data.lazy_image,
the converter data/make_tiled_tiff.py, the API / clsr-infer / viewer on such files, and bad input
(an untiled TIFF over the budget, truncated files, ROIs outside, mixed mosaics, non-images)."""
import base64
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from clsr_arch.api import Image, LocalSR, LocalSRError, TiledImage
from clsr_arch.data.image_io import read_bgr8
from clsr_arch.data.lazy_image import LazyImageError, open_lazy
from clsr_arch.viewer.app import create_app
from clsr_arch.viewer.store import TILE, ImageStore
from conftest import assert_same_uint8, REPO, shared

sys.path.insert(0, osp.join(REPO, 'data'))
import make_tiled_tiff as mt  # noqa: E402

ZEBRA = shared('Set14', 'HR', 'zebra.png')  # 586x391, used here as an LR image


@pytest.fixture(scope='module')
def model():
    return LocalSR(device='cpu', threads=2)


@pytest.fixture(scope='module')
def zebra_tif(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('tif') / 'zebra.tif')
    mt.write_tiff(mt.build_mosaic(ZEBRA), path, tile=64, min_size=100, progress=False)
    return path


def zebra_rgb():
    return read_bgr8(ZEBRA)[:, :, ::-1]


def test_converter_writes_a_tiled_pyramid_read_back_exactly(zebra_tif):
    with open_lazy(zebra_tif) as im:
        assert im.random_access and im.hw == (391, 586)
        assert im.levels == [(391, 586), (195, 293), (97, 146)]  # halved while >= --min-size 100
        np.testing.assert_array_equal(im.read(0, 391, 0, 586), zebra_rgb())
        np.testing.assert_array_equal(im.read(100, 170, 300, 333), zebra_rgb()[100:170, 300:333])
        half = cv2.resize(zebra_rgb(), (293, 195), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(im.read(0, 195, 0, 293, level=1), half)
        with pytest.raises(LazyImageError, match='outside the 586x391'):
            im.read(380, 400, 0, 10)
        with pytest.raises(LazyImageError, match='level 3 does not exist'):
            im.read(0, 1, 0, 1, level=3)


def test_mosaic_of_a_folder_and_its_bad_input(tmp_path):
    a = np.full((40, 60, 3), 10, np.uint8)
    b = np.full((40, 60, 3), 200, np.uint8)
    src = tmp_path / 'src'
    src.mkdir()
    cv2.imwrite(str(src / 'a.png'), a)
    cv2.imwrite(str(src / 'b.png'), b)
    out = str(tmp_path / 'm.tif')
    assert mt.main([str(src), out, '--grid', '3x1', '--repeat', '--no-progress']) == 0
    with open_lazy(out) as im:
        assert im.hw == (40, 180)
        np.testing.assert_array_equal(im.read(0, 40, 0, 180)[0, ::60, 0], [10, 200, 10])  # a, b, a again
    # odd cells: every level is exactly the previous one halved (a pyramid readers take whole)
    (tmp_path / 'odd').mkdir()
    odd = str(tmp_path / 'odd' / 'odd.tif')
    mt.write_tiff(mt.build_mosaic(str(src), (3, 1), (25, 13), repeat=True), odd, tile=16, min_size=10, progress=False)
    with open_lazy(odd) as im:
        assert im.levels == [(13, 75), (6, 37), (3, 18)]
        assert im.read(0, 6, 0, 37, level=1)[0, ::12, 0].tolist() == [10, 200, 200, 10]
    cv2.imwrite(str(src / 'c.png'), np.zeros((30, 60, 3), np.uint8))  # another size
    bad = str(tmp_path / 'bad.tif')
    with pytest.raises(mt.MosaicError, match=r'mixed images: .*c\.png is 60x30'):
        mt.build_mosaic(str(src))
    assert mt.main([str(src), bad, '--no-progress']) == 2 and not osp.exists(bad)
    (src / 'c.png').unlink()
    (src / 'notes.txt').write_text('not an image')
    with pytest.raises(mt.MosaicError, match=r'notes\.txt: not an image'):
        mt.build_mosaic(str(src))
    (src / 'notes.txt').unlink()
    with pytest.raises(mt.MosaicError, match='smaller than the --cell 50x50'):
        mt.build_mosaic(str(src), cell=(50, 50))
    with pytest.raises(mt.MosaicError, match='pass --repeat'):
        mt.build_mosaic(str(src), grid=(3, 1))
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tif') and n != 'm.tif']  # nothing half-written


def test_sixteen_bit_gray_and_alpha_tiffs_follow_the_dataset_rules(tmp_path):
    g16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20)
    p = str(tmp_path / 'g16.tif')
    tifffile.imwrite(p, g16, tile=(16, 16))
    with open_lazy(p) as im:
        out = im.read(0, 48, 0, 64)
        assert out.shape == (48, 64, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, :, 1], np.round(g16 / 257.).astype(np.uint8))
    rgba = np.full((32, 32, 4), 255, np.uint8)
    rgba[20, 20, 3] = 0
    p = str(tmp_path / 'rgba.tif')
    tifffile.imwrite(p, rgba, tile=(16, 16), photometric='rgb', extrasamples=('unassalpha', ))
    with open_lazy(p) as im:
        assert im.read(0, 16, 0, 16).shape == (16, 16, 3)  # opaque here: alpha dropped
        with pytest.raises(LazyImageError, match='alpha channel is not fully opaque'):
            im.read(16, 32, 16, 32)  # meets the transparent pixel


def test_npy_is_memory_mapped(tmp_path, model):
    p = str(tmp_path / 'z.npy')
    np.save(p, zebra_rgb())
    with open_lazy(p) as im:
        assert isinstance(im._arrays[0], np.memmap) and im.hw == (391, 586) and im.random_access
    with model.open(p) as image, model.open(ZEBRA) as whole:
        assert isinstance(image, TiledImage)
        a = image.super_resolve([(200, 100, 24, 24)], output='tensor')[0]
        assert (a - whole.super_resolve([(200, 100, 24, 24)], output='tensor')[0]).abs().max() <= 1e-5


def test_untiled_tiff_read_whole_under_the_budget_refused_over_it(tmp_path):
    p = str(tmp_path / 'striped.tif')
    tifffile.imwrite(p, zebra_rgb(), photometric='rgb')  # strips, not tiles
    small = LocalSR(device='cpu', max_memory='600K')
    with pytest.raises(LocalSRError, match=r'not tiled .* over the memory budget .*make_tiled_tiff'):
        small.open(p)
    image = LocalSR(device='cpu').open(p)
    assert type(image) is Image and image.hw == (391, 586)  # read whole: an ordinary image


def test_truncated_files_are_clear_errors(tmp_path, zebra_tif, model):
    data = open(zebra_tif, 'rb').read()
    head = str(tmp_path / 'head.tif')
    open(head, 'wb').write(data[:200])
    with pytest.raises(LocalSRError, match=r'head\.tif: cannot'):
        model.open(head)
    cut = str(tmp_path / 'cut.tif')
    open(cut, 'wb').write(data[:len(data) // 3])  # the directory survives, late tiles are gone
    try:
        image = model.open(cut)
    except LocalSRError as err:
        assert 'cut.tif' in str(err)
    else:
        with pytest.raises(LocalSRError, match=r'cut\.tif'):
            image.super_resolve([(500, 350, 24, 24)], method='bicubic')
    npy = str(tmp_path / 'cut.npy')
    np.save(npy, zebra_rgb())
    open(npy, 'r+b').truncate(1000)
    with pytest.raises(LocalSRError, match=r'cut\.npy: cannot open'):
        model.open(npy)


def test_api_on_a_tiled_tiff_equals_the_api_on_the_png(model, zebra_tif):
    boxes = [(0, 0, 24, 24), (562, 367, 24, 24), (300, 150, 48, 32), (0, 200, 17, 40)]
    with model.open(zebra_tif) as lazy, model.open(ZEBRA) as whole:
        assert isinstance(lazy, TiledImage)
        for method in ('clsr', 'pre_crop', 'bicubic'):
            a = lazy.super_resolve(boxes, method=method, output='tensor')
            b = whole.super_resolve(boxes, method=method, output='tensor')
            assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-5, method
        run = lazy.last_run
        lazy.super_resolve(boxes[:1])
        assert lazy.last_run['pim_tiles'] == 0  # its tiles are cached
        assert lazy.context_info['mode'] == 'roi-local'
        with pytest.raises(LocalSRError, match=r'outside the 586x391'):
            lazy.super_resolve([(580, 380, 24, 24)])
        boxes, scores = lazy.propose(3, 24, 'gradient')  # issue 23: proposed, not refused (test_proposals.py)
        assert boxes == whole.propose(3, 24, 'gradient')[0]  # 586x391 fits in memory: level 0, read whole
        assert run['method'] == 'bicubic'


def test_clsr_infer_on_a_tiled_tiff(tmp_path, zebra_tif):
    out = str(tmp_path / 'out')
    r = subprocess.run([sys.executable, '-m', 'clsr_arch.infer', zebra_tif, '--compare', '--roi', '100,100,24,24',
                        '--methods', 'clsr,pre_crop', '--out', out, '--quiet', '--threads', '1'],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    res = json.load(open(osp.join(out, 'zebra_metrics.json')))
    assert res['lr_size'] == [586, 391] and res['context_pass']['mode'] == 'roi-local'
    assert res['rois'][0]['methods']['clsr']['gflops'] < 5  # GCM windows + its PIM tiles + decode
    assert osp.isfile(osp.join(out, 'zebra_compare.png'))


def test_viewer_serves_pyramid_tiles_and_sr_of_a_tiled_image(model, zebra_tif):
    store = ImageStore(model, cache_bytes=2 ** 30, max_pixels=1)  # pixel limit: only for images read whole
    entry = store.add(zebra_tif)
    client = TestClient(create_app(store, max_box=96), raise_server_exceptions=False)
    info = client.get('/api/images').json()['images'][0]
    assert info['tiled'] and info['levels'] == [[586, 391], [293, 195], [146, 97]] and info['tile'] == TILE
    t = client.get(f'/api/images/{entry.id}/tiles/1/1/0.png')
    assert t.status_code == 200
    tile = cv2.imdecode(np.frombuffer(t.content, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(tile, entry.image.read(0, 195, 256, 293, level=1))
    assert client.get(f'/api/images/{entry.id}/tiles/0/9/0.png').status_code == 404
    assert client.get(f'/api/images/{entry.id}/tiles/5/0/0.png').status_code == 404
    assert client.get(f'/api/images/{entry.id}/lr.png').status_code == 400
    r = client.post(f'/api/images/{entry.id}/sr', json={'box': [10, 10, 24, 24], 'methods': ['clsr']})
    assert r.status_code == 200 and r.json()['context']['roi_local']
    b64 = r.json()['results']['clsr']['png']
    got = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    with model.open(ZEBRA) as whole:
        assert_same_uint8(got, whole.super_resolve([(10, 10, 24, 24)], plan=False)[0])
    assert client.get(f'/api/images/{entry.id}/proposals').status_code == 200  # issue 23: not refused
