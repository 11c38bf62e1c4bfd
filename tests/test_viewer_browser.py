"""clsr-view in a real browser: Playwright for Python driving Debian's Chromium (Playwright's own
browser download cannot work here, so it is pointed at the system binary). The page is served by
uvicorn exactly as ``clsr-view`` serves it; the test drags boxes with the mouse (after zooming
with the wheel, and at the image border), clicks a suggested box, waits for the SR image, and
checks its pixel size and pixels against the Python API. It saves a screenshot; with ``CLSR_UPDATE_SCREENSHOT=1`` it also
writes docs/viewer.png (the README's).

Without Chromium the test skips with the reason -- unless ``CLSR_REQUIRE_BROWSER=1`` (set by
.ci/run), where a missing browser is a failure: CI must run it for real.
"""
import base64
import contextlib
import os
import shutil
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from clsr_arch.api import LocalSR
from clsr_arch.viewer.app import create_app
from clsr_arch.viewer.store import ImageStore
from conftest import assert_same_uint8, REPO, shared


def chromium_path():
    path = shutil.which('chromium') or shutil.which('chromium-browser')
    if path:
        return path
    reason = ('no Chromium: `make browser` installs Debian\'s chromium (root with apt-get); '
              'Playwright\'s own browser download cannot work here')
    if os.environ.get('CLSR_REQUIRE_BROWSER'):
        pytest.fail(f'CLSR_REQUIRE_BROWSER is set but {reason}')
    pytest.skip(reason)


@contextlib.contextmanager
def serving(store):
    """clsr-view's app under uvicorn on a free port, as ``clsr-view`` serves it; yields the URL."""
    import uvicorn
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(store), host='127.0.0.1', port=port, log_level='warning'))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield f'http://127.0.0.1:{port}'
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope='module')
def server():
    model = LocalSR(device='cpu')
    store = ImageStore(model, cache_bytes=2 ** 30, max_pixels=50e6)
    zebra = store.add(shared('Set14', 'HR', 'zebra.png'), degrade=True)  # 146x97 LR, ground truth
    store.add(shared('Set5', 'HR', 'butterfly.png'))
    with serving(store) as url:
        yield url, model, zebra


def drag_box(page, box):
    """Drag on the canvas so that the page's box is exactly ``box`` (LR x, y, w, h)."""
    x, y, w, h = box
    view = page.evaluate('({scale: state.scale, ox: state.ox, oy: state.oy})')
    rect = page.locator('#canvas').bounding_box()

    def screen(ix, iy):
        return rect['x'] + view['ox'] + ix * view['scale'], rect['y'] + view['oy'] + iy * view['scale']
    page.mouse.move(*screen(x + 0.25, y + 0.25))
    page.mouse.down()
    page.mouse.move(*screen(x + w / 2, y + h / 2), steps=4)
    page.mouse.move(*screen(x + w - 0.25, y + h - 0.25), steps=4)
    page.mouse.up()


def shown(page, selector, box):
    """``(naturalWidth, naturalHeight, RGB pixels)`` of a result image once it shows ``box``."""
    key = ','.join(map(str, box))
    page.wait_for_selector(f'{selector}[data-box="{key}"]', state='attached', timeout=60000)
    natural = page.evaluate(f"(() => {{ const i = document.querySelector('{selector}'); "
                            "return [i.naturalWidth, i.naturalHeight, i.src]; })()")
    png = base64.b64decode(natural[2].split(',', 1)[1])
    return natural[0], natural[1], cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def shown_sr(page, box):
    return shown(page, '#sr-clsr', box)


PANELS_JS = """[...document.querySelectorAll('#panels .panel')].map((f) => {
  const i = f.querySelector('img.out'), p = f.querySelector('.pane');
  return {method: f.dataset.method, nw: i.naturalWidth, nh: i.naturalHeight, cw: i.clientWidth, ch: i.clientHeight,
          left: i.offsetLeft, top: i.offsetTop, pw: p.clientWidth, ph: p.clientHeight,
          rendering: getComputedStyle(i).imageRendering, styled: i.style.width};
})"""


def panels(page):
    return {p['method']: p for p in page.evaluate(PANELS_JS)}


def pane_pixels(page, method):
    """What the screen shows in a method's panel, RGB: a screenshot of its pane's rectangle as
    Chromium paints it, snapped to whole pixels (a layout position like 970.2 paints at 970)."""
    r = page.locator(f'.panel[data-method="{method}"] .pane').bounding_box()
    png = page.screenshot(clip={'x': round(r['x']), 'y': round(r['y']), 'width': round(r['width']),
                                'height': round(r['height'])})
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_drag_a_box_and_see_its_sr(server, tmp_path):
    from playwright.sync_api import sync_playwright
    executable = chromium_path()
    url, model, zebra = server
    s = 4
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=['--no-sandbox'])
        page = browser.new_page(viewport={'width': 1400, 'height': 860})
        errors, sr_posts = [], []
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.on('request', lambda r: sr_posts.append(r.url) if r.url.endswith('/sr') else None)
        page.goto(url)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Drag')", timeout=30000)
        assert page.locator('#images button').count() == 2

        # a click, or a drag shorter than the minimum, selects nothing (it used to run a 1x1 box)
        rect = page.locator('#canvas').bounding_box()
        page.mouse.click(rect['x'] + rect['width'] / 2, rect['y'] + rect['height'] / 2)
        page.mouse.move(rect['x'] + 100, rect['y'] + 100)
        page.mouse.down()
        page.mouse.move(rect['x'] + 102, rect['y'] + 101, steps=2)
        page.mouse.up()
        assert 'selects nothing' in page.inner_text('#status')
        assert page.evaluate('state.box') is None and page.locator('#compare').is_hidden() and sr_posts == []

        with model.open(zebra.image.rgb) as image:
            box = (34, 14, 40, 30)
            drag_box(page, box)
            w, h, got = shown_sr(page, box)
            assert (w, h) == (s * box[2], s * box[3])
            assert_same_uint8(got, image.super_resolve([box], plan=False)[0])
            page.wait_for_selector('body[data-busy="0"]', timeout=60000)
            # every method side by side at the same scale: 1:1 HR pixels, no CSS scaling
            shown_panels = panels(page)
            assert list(shown_panels) == ['bicubic', 'pre_crop', 'clsr', 'post_crop', 'ground_truth']
            for m, q in shown_panels.items():
                if m == 'post_crop':  # offered (the budget allows it), not run yet
                    continue
                assert (q['nw'], q['nh']) == (160, 120) and (q['cw'], q['ch']) == (160, 120) and q['styled'] == '', m
                assert (q['pw'], q['ph'], q['left'], q['top']) == (160, 120, 0, 0) and q['rendering'] == 'pixelated', m
            # what the screen shows is the SR's pixels, one screen pixel each
            assert_same_uint8(pane_pixels(page, 'clsr'), got)
            truth = zebra.hr[s * 14:s * 44, s * 34:s * 74]
            assert_same_uint8(shown(page, '#out-ground_truth', box)[2], truth)
            assert_same_uint8(pane_pixels(page, 'ground_truth'), truth)
            bic = shown(page, '#out-bicubic', box)[2]
            assert_same_uint8(bic, image.super_resolve([box], method='bicubic')[0])
            assert_same_uint8(pane_pixels(page, 'bicubic'), bic)
            captions = page.locator('#panels figcaption').all_inner_texts()
            assert all('GFLOPs' in c and 'PSNR-Y' in c for c in captions[:3]), captions
            # post-crop: offered with its estimated time before it runs; runs on a click
            run = page.inner_text('#run-post-crop')
            assert run.startswith('Run post-crop: the whole image, once') and 'GFLOPs, estimated' in run, run
            page.click('#run-post-crop')
            _, _, post = shown(page, '#out-post_crop', box)
            assert_same_uint8(post, image.super_resolve([box], method='post_crop')[0])
            page.wait_for_selector('body[data-busy="0"]', timeout=60000)
            assert 'estimated' in page.inner_text('.panel[data-method="post_crop"] figcaption')

            # one zoom for all: the wheel over one panel zooms every panel, pixelated (2x2 blocks)
            pane = page.locator('.panel[data-method="clsr"] .pane').bounding_box()
            page.mouse.move(pane['x'] + 40, pane['y'] + 30)
            page.mouse.wheel(0, -100)
            page.wait_for_function("document.getElementById('panels').dataset.zoom === '2'", timeout=10000)
            z2 = panels(page)
            for m, q in z2.items():
                assert (q['cw'], q['ch']) == (320, 240) and q['rendering'] == 'pixelated', m
                assert (q['left'], q['top'], q['pw'], q['ph']) == (z2['clsr']['left'], z2['clsr']['top'],
                                                                 z2['clsr']['pw'], z2['clsr']['ph']), m
            blocks = np.repeat(np.repeat(post, 2, 0), 2, 1)
            q = z2['post_crop']
            assert_same_uint8(pane_pixels(page, 'post_crop'),
                              blocks[-q['top']:-q['top'] + q['ph'], -q['left']:-q['left'] + q['pw']])
            # zoom once more (panels larger than the pane's room), then one drag pans all
            page.mouse.wheel(0, -100)
            page.wait_for_function("document.getElementById('panels').dataset.zoom === '3'", timeout=10000)
            z3 = panels(page)
            assert z3['clsr']['pw'] < 480 or z3['clsr']['ph'] < 360  # cropped: there is something to pan
            pane = page.locator('.panel[data-method="bicubic"] .pane').bounding_box()
            page.mouse.move(pane['x'] + pane['width'] / 2, pane['y'] + pane['height'] / 2)
            page.mouse.down()
            page.mouse.move(pane['x'] + pane['width'] / 2 + 30, pane['y'] + pane['height'] / 2 + 20, steps=3)
            page.mouse.up()
            moved = panels(page)
            for m, q in moved.items():
                assert (q['cw'], q['left'], q['top']) == (480, moved['clsr']['left'], moved['clsr']['top']), m
            assert (moved['clsr']['left'], moved['clsr']['top']) != (z3['clsr']['left'], z3['clsr']['top'])
            page.click('#zoom-1')
            assert all(q['cw'] == q['nw'] == 160 for q in panels(page).values())

            # the next box gets post-crop at once: the whole image ran once and is cached
            box2 = (70, 50, 48, 40)
            drag_box(page, box2)
            _, _, post2 = shown(page, '#out-post_crop', box2)
            assert_same_uint8(post2, image.super_resolve([box2], method='post_crop')[0])
            page.wait_for_selector('body[data-busy="0"]', timeout=60000)
            assert all((q['cw'], q['ch']) == (192, 160) for q in panels(page).values())
            page.screenshot(path=str(tmp_path / 'viewer.png'))
            if os.environ.get('CLSR_UPDATE_SCREENSHOT'):
                page.screenshot(path=os.path.join(REPO, 'docs', 'viewer.png'))

            # where to look: suggested boxes, and a click inside one super-resolves exactly it
            page.click('#suggest')
            page.wait_for_function('state.suggestions.length > 0', timeout=30000)  # up to 5 fit
            first = page.evaluate('state.suggestions[0]')
            rect = page.locator('#canvas').bounding_box()
            view = page.evaluate('({scale: state.scale, ox: state.ox, oy: state.oy})')
            page.mouse.click(rect['x'] + view['ox'] + (first[0] + first[2] / 2) * view['scale'],
                             rect['y'] + view['oy'] + (first[1] + first[3] / 2) * view['scale'])
            w, h, got = shown_sr(page, tuple(first))
            assert (w, h) == (4 * first[2], 4 * first[3])
            assert_same_uint8(got, image.super_resolve([tuple(first)], plan=False)[0])
            page.wait_for_selector('body[data-busy="0"]', timeout=30000)

            # zoom in with the wheel over the image, then a box at the bottom-right border
            rect = page.locator('#canvas').bounding_box()
            page.mouse.move(rect['x'] + rect['width'] * 0.8, rect['y'] + rect['height'] * 0.8)
            page.mouse.wheel(0, -400)
            assert page.evaluate('state.scale') > 5
            border = (130, 85, 16, 12)  # reaches x = 146 and y = 97: the image's last pixels
            view = page.evaluate('({scale: state.scale, ox: state.ox, oy: state.oy})')
            # pan (shift+drag) so that the border box is on screen
            sx = rect['x'] + view['ox'] + 138 * view['scale']
            sy = rect['y'] + view['oy'] + 91 * view['scale']
            cx, cy = rect['x'] + rect['width'] / 2, rect['y'] + rect['height'] / 2
            page.keyboard.down('Shift')
            page.mouse.move(sx, sy)
            page.mouse.down()
            page.mouse.move(cx, cy, steps=5)
            page.mouse.up()
            page.keyboard.up('Shift')
            drag_box(page, border)
            w, h, got = shown_sr(page, border)
            assert (w, h) == (64, 48)
            assert_same_uint8(got, image.super_resolve([border], plan=False)[0])
        # a bad upload gets a message in the page, and the page keeps working
        page.set_input_files('#file', files=[{'name': 'notes.png', 'mimeType': 'image/png', 'buffer': b'not a png'}])
        page.wait_for_function("document.getElementById('message').textContent.includes('notes.png')", timeout=30000)
        assert errors == []
        browser.close()


@pytest.fixture(scope='module')
def tiled_server(tmp_path_factory):
    """A 3600x2400 tiled pyramidal TIFF (levels 3600, 1800, 900 px wide), served by clsr-view."""
    import sys
    sys.path.insert(0, os.path.join(REPO, 'data'))
    import make_tiled_tiff as mt
    path = str(tmp_path_factory.mktemp('tiled') / 'mosaic.tif')
    mt.write_tiff(mt.build_mosaic(shared('DIV2K', 'HR'), (3, 2), (1200, 1200), repeat=True), path,
                  min_size=512, progress=False)
    model = LocalSR(device='cpu')
    store = ImageStore(model, cache_bytes=2 ** 30, max_pixels=1)  # the pixel limit is for images read whole
    entry = store.add(path)
    with serving(store) as url:
        yield url, model, entry, path


def test_a_tiled_image_pans_and_zooms_over_its_pyramid(tiled_server):
    from playwright.sync_api import sync_playwright
    executable = chromium_path()
    url, model, entry, path = tiled_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=['--no-sandbox'])
        page = browser.new_page(viewport={'width': 1400, 'height': 860})
        errors, tiles = [], []
        page.on('pageerror', lambda e: errors.append(str(e)))
        page.on('request', lambda r: tiles.append(r.url.split('/tiles/')[1]) if '/tiles/' in r.url else None)
        page.goto(url)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Drag')", timeout=30000)
        page.wait_for_timeout(500)
        # fitted: the coarsest level whose pixel is at most one screen pixel; only its tiles
        scale = page.evaluate('state.scale')
        assert scale < 0.5
        want = max(k for k, f in enumerate((1, 2, 4)) if f <= 1 / scale)
        assert page.evaluate('canvas.dataset.level') == str(want)
        assert tiles and all(t.startswith(f'{want}/') for t in tiles)
        rect = page.locator('#canvas').bounding_box()
        page.mouse.move(rect['x'] + rect['width'] * 0.5, rect['y'] + rect['height'] * 0.5)
        for _ in range(3):
            page.mouse.wheel(0, -400)
        assert page.evaluate('state.scale') > 1
        page.wait_for_timeout(500)
        assert page.evaluate('canvas.dataset.level') == '0'
        level0 = {t for t in tiles if t.startswith('0/')}
        assert 0 < len(level0) <= 30  # only the tiles in view (level 0 has 15 x 10 = 150)
        view = page.evaluate('({scale: state.scale, ox: state.ox, oy: state.oy})')
        cx = int((rect['width'] / 2 - view['ox']) / view['scale'])
        cy = int((rect['height'] / 2 - view['oy']) / view['scale'])
        drag_box(page, (cx - 20, cy - 12, 40, 24))
        box = tuple(page.evaluate('state.box'))  # at a fractional zoom the drag may round a pixel wider
        assert abs(box[0] - (cx - 20)) <= 1 and abs(box[2] - 40) <= 1 and abs(box[3] - 24) <= 1
        w, h, got = shown_sr(page, box)
        assert (w, h) == (4 * box[2], 4 * box[3])
        with model.open(path) as image:
            assert_same_uint8(got, image.super_resolve([box], plan=False)[0])
        page.wait_for_selector('body[data-busy="0"]', timeout=30000)
        assert errors == []
        browser.close()
