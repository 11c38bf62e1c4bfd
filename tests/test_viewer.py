"""clsr-view's HTTP API (clsr_arch/viewer): every route, bad input as 4xx JSON (never a 500),
the context cache, and two concurrent clients getting the Python API's pixels."""
import base64
import threading

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from clsr_arch.proposals import DEFAULT_ESTIMATOR
from clsr_arch.api import LocalSR
from clsr_arch.viewer import cli
from clsr_arch.viewer.app import create_app
from clsr_arch.viewer.store import ImageStore
from conftest import assert_same_uint8, shared

ZEBRA = shared('Set14', 'HR', 'zebra.png')       # 586x391: an LR image here
BABY = shared('Set5', 'HR', 'baby.png')          # 512x512 HR: --degrade -> 128x128 LR


@pytest.fixture(scope='module')
def model():
    return LocalSR(device='cpu')


@pytest.fixture(scope='module')
def served(model):
    store = ImageStore(model, cache_bytes=2 ** 30, max_pixels=50e6)
    zebra = store.add(ZEBRA)
    baby = store.add(BABY, degrade=True)
    app = create_app(store, max_box=96, max_upload_bytes=2 ** 20)
    return TestClient(app, raise_server_exceptions=False), store, zebra.id, baby.id


def decode_png(b64):
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_page_info_and_image_list(served):
    client, store, zebra, baby = served
    page = client.get('/')
    assert page.status_code == 200 and '<canvas id="canvas">' in page.text and 'viewer.js' in page.text
    assert client.get('/static/viewer.js').status_code == 200
    info = client.get('/api/info').json()
    assert info['scale'] == 4 and info['max_box'] == 96 and info['base'] == 'IMDN'  # the default model
    images = {im['id']: im for im in client.get('/api/images').json()['images']}
    assert images[zebra]['width'] == 586 and images[zebra]['height'] == 391 and not images[zebra]['ground_truth']
    assert images[baby]['width'] == 128 and images[baby]['ground_truth'] and images[baby]['post_crop']
    # post-crop is offered whenever the memory budget allows it (no fixed pixel rule), priced before it runs
    offer = images[zebra]['post_crop_offer']
    assert images[zebra]['post_crop'] and offer['offered'] and offer['tile'] is None and not offer['cached']
    assert offer['gflops'] == pytest.approx(store.model.cost.base(391, 586) / 1e9)
    assert offer['seconds'] == pytest.approx(offer['gflops'] / store.model.gflops_per_second())
    lr = client.get(f'/api/images/{zebra}/lr.png')
    assert lr.headers['content-type'] == 'image/png'
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(lr.content, np.uint8), cv2.IMREAD_COLOR),
                                  cv2.imread(ZEBRA, cv2.IMREAD_COLOR))


def test_sr_equals_the_python_api_and_the_context_is_encoded_once(served, model):
    client, store, zebra, baby = served
    box = [570, 380, 16, 11]  # at the bottom-right border, not square
    r = client.post(f'/api/images/{zebra}/sr', json={'box': box, 'methods': ['clsr']})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body['box'] == box and body['server_ms'] > 0
    got = decode_png(body['results']['clsr']['png'])
    assert got.shape == (44, 64, 3)
    with model.open(ZEBRA) as image:
        ref = image.super_resolve([tuple(box)], plan=False)[0]
    assert_same_uint8(got, ref)
    again = client.post(f'/api/images/{zebra}/sr', json={'box': [0, 0, 48, 48]}).json()
    assert again['context'] is None  # cached: only the decode ran
    assert body['context'] is None or body['context']['ms'] > 0


def test_every_method_with_ground_truth(served, model):
    client, store, zebra, baby = served
    box = [40, 50, 24, 24]
    before = {im['id']: im for im in client.get('/api/images').json()['images']}[baby]['post_crop_offer']
    assert before['offered'] and not before['cached'] and before['seconds'] > 0  # said before it runs
    body = client.post(f'/api/images/{baby}/sr', json={'box': box, 'methods': ['clsr', 'bicubic', 'pre_crop',
                                                                              'post_crop'],
                                                      'ground_truth': True}).json()
    res = body['results']
    entry = store.get(baby)
    assert body['ground_truth']['width'] == 96
    np.testing.assert_array_equal(decode_png(body['ground_truth']['png']), entry.hr[200:296, 160:256])
    # post-crop ran the whole image once (priced as such) and is cached: the next box only crops it
    assert res['post_crop']['estimated_ms'] == pytest.approx(before['seconds'] * 1e3, rel=0.01)
    assert res['post_crop']['gflops'] == pytest.approx(before['gflops'])
    after = body['post_crop_offer']
    assert after['cached'] and after['seconds'] == 0
    again = client.post(f'/api/images/{baby}/sr', json={'box': [0, 0, 8, 8], 'methods': ['post_crop']}).json()
    assert again['results']['post_crop']['estimated_ms'] == 0 and again['results']['post_crop']['ms'] < 1000
    assert set(res) == {'clsr', 'bicubic', 'pre_crop', 'post_crop'}
    for m, r in res.items():
        assert decode_png(r['png']).shape == (96, 96, 3) and r['width'] == 96
        assert r['gflops'] > 0 and r['ms'] >= 0 and 20 < r['psnr_y'] < 50, m
    assert res['bicubic']['psnr_y'] < min(res[m]['psnr_y'] for m in ('clsr', 'pre_crop', 'post_crop'))
    assert res['bicubic']['gflops'] < res['pre_crop']['gflops'] < res['clsr']['gflops'] < res['post_crop']['gflops']
    with model.open(entry.image.rgb) as image:
        post = image.super_resolve([tuple(box), (0, 0, 8, 8)], method='post_crop')
    assert_same_uint8(decode_png(res['post_crop']['png']), post[0])
    assert_same_uint8(decode_png(again['results']['post_crop']['png']), post[1])


def test_post_crop_is_offered_by_the_memory_budget(model):
    """No fixed pixel rule: post-crop is refused only when the budget refuses it (tiling off and
    the whole image too large), runs over the tiles a box touches when only tiles fit, and is
    priced per box then."""
    need = model.whole_bytes((128, 128)) * 1.5  # the budget's SAFETY
    strict = LocalSR(net=model.net, device='cpu', tile=0, max_memory=int(need * 0.9))
    strict._speed = model.gflops_per_second()  # the same network here: spare measuring it again
    store = ImageStore(strict, cache_bytes=2 ** 30, max_pixels=50e6)
    baby = store.add(BABY, degrade=True)
    bird = store.add(shared('Set5', 'HR', 'bird.png'), degrade=True)  # 72x72 LR: fits
    client = TestClient(create_app(store))
    images = {im['id']: im for im in client.get('/api/images').json()['images']}
    assert not images[baby.id]['post_crop'] and images[bird.id]['post_crop']
    assert 'tiling is disabled' in images[baby.id]['post_crop_offer']['reason']
    r = client.post(f'/api/images/{baby.id}/sr', json={'box': [0, 0, 8, 8], 'methods': ['bicubic']})
    assert r.status_code == 200 and not r.json()['post_crop_offer']['offered']
    r = client.post(f'/api/images/{baby.id}/sr', json={'box': [0, 0, 8, 8], 'methods': ['post_crop']})
    assert r.status_code == 400 and 'post-crop does not fit' in r.json()['error']

    tiled = LocalSR(net=model.net, device='cpu', tile=32, tile_overlap=4)
    tiled._speed = model.gflops_per_second()
    store = ImageStore(tiled, cache_bytes=2 ** 30, max_pixels=50e6)
    baby = store.add(BABY, degrade=True)
    client = TestClient(create_app(store))
    offer = client.get('/api/images').json()['images'][0]['post_crop_offer']
    assert offer['offered'] and offer['tile'] == 32 and offer['gflops'] is None  # priced per box
    body = client.post(f'/api/images/{baby.id}/sr', json={'box': [40, 50, 8, 8], 'methods': ['post_crop']}).json()
    one_tile = tiled.cost.base(40, 40) / 1e9  # the box's tile grown by the overlap
    assert body['results']['post_crop']['gflops'] == pytest.approx(one_tile)
    assert body['post_crop_offer']['gflops'] == pytest.approx(one_tile) and not body['post_crop_offer']['cached']
    with tiled.open(baby.image.rgb) as image:
        assert_same_uint8(decode_png(body['results']['post_crop']['png']),
                          image.super_resolve([(40, 50, 8, 8)], method='post_crop')[0])


def test_download_is_the_clsr_png(served):
    client, store, zebra, baby = served
    r = client.get(f'/api/images/{zebra}/sr.png', params={'box': '10,20,30,12'})
    assert r.status_code == 200 and r.headers['content-type'] == 'image/png'
    assert 'attachment; filename="zebra_x10_y20_30x12_clsr_x4.png"' == r.headers['content-disposition']
    shown = client.post(f'/api/images/{zebra}/sr', json={'box': [10, 20, 30, 12]}).json()['results']['clsr']['png']
    assert base64.b64decode(shown) == r.content


def test_upload_and_its_limits(served, tmp_path):
    client, store, zebra, baby = served
    with open(shared('Set5', 'HR', 'bird.png'), 'rb') as f:
        content = f.read()
    r = client.post('/api/images', files={'file': ('../../etc/bird.png', content, 'image/png')},
                    data={'degrade': 'true'})
    assert r.status_code == 201, r.text
    up = r.json()
    assert up['name'] == 'bird.png' and up['width'] == 72 and up['ground_truth']  # 288x288 HR
    assert client.post(f'/api/images/{up["id"]}/sr', json={'box': [0, 0, 8, 8]}).status_code == 200
    bad = client.post('/api/images', files={'file': ('notes.png', b'not an image at all', 'image/png')})
    assert bad.status_code == 400 and 'notes.png' in bad.json()['error']
    big = client.post('/api/images', files={'file': ('big.png', b'\0' * (2 ** 20 + 1), 'image/png')})
    assert big.status_code == 413 and 'limit of 1 MiB' in big.json()['error']
    assert client.post('/api/images').status_code == 422


@pytest.mark.parametrize('path, body, status, needle', [
    ('/api/images/nope/sr', {'box': [0, 0, 8, 8]}, 404, "no image 'nope'"),
    ('/api/images/{z}/sr', {'box': [580, 0, 8, 8]}, 400, 'is outside the 586x391 (WxH) LR image'),
    ('/api/images/{z}/sr', {'box': [0, 0, 0, 8]}, 400, 'zero-size box'),
    ('/api/images/{z}/sr', {'box': [0, 0, 8]}, 400, 'expected [x, y, w, h]'),
    ('/api/images/{z}/sr', {'box': 'everything'}, 422, 'bad request: box'),
    ('/api/images/{z}/sr', {'box': [0, 0, 97, 8]}, 400, 'boxes up to 96x96'),
    ('/api/images/{z}/sr', {'box': [0, 0, 8, 8], 'methods': ['sharpen']}, 400, "methods ['sharpen']"),
    ('/api/images/{z}/sr', {'box': [0, 0, 8, 8], 'ground_truth': True}, 400, 'zebra.png has no ground truth'),
    ('/api/images/{z}/sr', None, 422, 'bad request'),
])
def test_bad_requests_are_4xx_json(served, path, body, status, needle):
    client, store, zebra, baby = served
    r = client.post(path.format(z=zebra), json=body)
    assert r.status_code == status and needle in r.json()['error'], r.text


def test_proposals_are_boxes_inside_the_image(served):
    client, store, zebra, baby = served
    body = client.get(f'/api/images/{zebra}/proposals', params={'n': 4, 'size': 32}).json()
    assert body['estimator'] == DEFAULT_ESTIMATOR and len(body['boxes']) == 4 and body['scores'] == sorted(body['scores'])[::-1]
    for x, y, w, h in body['boxes']:
        assert (w, h) == (32, 32) and 0 <= x <= 586 - 32 and 0 <= y <= 391 - 32
    assert client.get(f'/api/images/{zebra}/proposals', params={'n': 0}).status_code == 400
    r = client.get(f'/api/images/{zebra}/proposals', params={'size': 97})
    assert r.status_code == 400 and 'size=97' in r.json()['error']


def test_bad_download_and_unknown_routes(served):
    client, store, zebra, baby = served
    r = client.get(f'/api/images/{zebra}/sr.png', params={'box': '1,2,three,4'})
    assert r.status_code == 400 and 'four integers' in r.json()['error']
    assert client.get('/api/images/img999/lr.png').status_code == 404
    r = client.get('/etc/passwd')
    assert r.status_code == 404 and 'error' in r.json()
    assert client.get('/static/../../setup.py').status_code == 404


def test_two_clients_at_once_get_the_python_api_pixels(served, model):
    client, store, zebra, baby = served
    rng = np.random.default_rng(0)
    jobs = {k: [] for k in ('a', 'b')}
    for k in jobs:
        for _ in range(20):
            w, h = int(rng.integers(4, 40)), int(rng.integers(4, 40))
            jobs[k].append([int(rng.integers(0, 586 - w)), int(rng.integers(0, 391 - h)), w, h])
    got = {k: [] for k in jobs}

    def work(k):
        for box in jobs[k]:
            r = client.post(f'/api/images/{zebra}/sr', json={'box': box, 'methods': ['clsr', 'bicubic']})
            got[k].append((r.status_code, r.json()))
    threads = [threading.Thread(target=work, args=(k, )) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with model.open(ZEBRA) as image:
        for k in jobs:
            assert len(got[k]) == 20
            for box, (code, body) in zip(jobs[k], got[k]):
                assert code == 200 and body['box'] == box
                ref = image.super_resolve([tuple(box)], plan=False)[0]
                assert_same_uint8(decode_png(body['results']['clsr']['png']), ref)


def test_the_context_cache_is_bounded_lru(model):
    store = ImageStore(model, cache_bytes=1, max_pixels=50e6)  # room for one context only
    a, b = store.add(BABY, degrade=True), store.add(shared('Set5', 'HR', 'head.png'), degrade=True)
    client = TestClient(create_app(store))
    for image_id in (a.id, b.id, a.id):
        assert client.post(f'/api/images/{image_id}/sr', json={'box': [0, 0, 8, 8]}).status_code == 200
    assert a.image.encoded and not b.image.encoded and store.evictions == 2
    too_big = ImageStore(model, cache_bytes=2 ** 30, max_pixels=1000)
    with pytest.raises(Exception, match='over the viewer.s limit of 0 megapixels'):
        too_big.add(BABY)


def test_cli_builds_the_app_and_refuses_bad_images(tmp_path, capsys):
    junk = tmp_path / 'junk.png'
    junk.write_text('nope')
    assert cli.main([str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('clsr-view: error: ') and 'junk.png' in err and err.count('\n') == 1
    app = cli.make_app(cli.build_parser().parse_args([ZEBRA, '--max-box', '64']))
    assert TestClient(app).get('/api/info').json()['max_box'] == 64
