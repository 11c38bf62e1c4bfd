"""The viewer's web app: one page and a small JSON API over :mod:`clsr_arch.api` (FastAPI).

Why FastAPI + uvicorn and not Gradio: the page needs pan/zoom and a box dragged on the image,
with the SR shown beside it within ~100 ms -- custom JavaScript over a few JSON routes does that
directly, while Gradio's image components would need the same JavaScript through its custom-
component layer plus its queue in front of every request; FastAPI is also lighter to install and
to test (Starlette's TestClient, no browser needed for the HTTP tests).

Routes (every error is JSON ``{"error": ...}`` with a 4xx status; nothing here takes a file path
from a request -- images are the ones the server was started with or that were uploaded, by id):

* ``GET /`` the page; ``GET /static/...`` its script and style;
* ``GET /api/info`` model, scale, box limit, methods;
* ``GET /api/images``; ``POST /api/images`` (multipart ``file``, optional ``degrade``) -> 201;
  each image says whether post-crop is offered (``post_crop``) and, when it runs the whole
  image, its GFLOPs and estimated seconds before it runs (``post_crop_offer``);
* ``GET /api/images/{id}/lr.png`` the LR image;
* ``POST /api/images/{id}/sr`` ``{"box": [x, y, w, h], "methods": ["clsr", ...],
  "ground_truth": false}`` -> each method's SR as a base64 PNG with its time, GFLOPs and (with
  ground truth) PSNR-Y, the ground truth's crop when asked for, and ``post_crop_offer``: whether
  post-crop of this box fits the memory budget, its GFLOPs and estimated seconds (issue 23);
* ``GET /api/images/{id}/sr.png?box=x,y,w,h`` the CLSR PNG as a download;
* ``GET /api/images/{id}/proposals?n=5&size=48[&estimator=map]`` where to look, with scores
  (:mod:`clsr_arch.proposals`; tiled images too).

The context pass of each image runs once (on its first CLSR box) and stays cached
(:class:`.store.ImageStore`); one computation runs at a time (requests of two tabs queue, and
both get what the Python API gives for the same box).
"""
import base64
import os.path as osp
import threading
import time

import cv2
import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from basicsr.metrics import calculate_psnr

from ..api import METHODS, LocalSRError, MemoryBudgetError, normalise_boxes, to_uint8
from ..utils.memory import format_bytes
from ..whole_image import whole_image_flops
from ..data.image_io import DataError, decode_bgr8
from ..proposals import DEFAULT_ESTIMATOR, ESTIMATORS
from .store import TILE
from .worker import ComputeWorker

STATIC = osp.join(osp.dirname(__file__), 'static')


class ViewerError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class SRRequest(BaseModel):
    box: list
    methods: list = ['clsr']
    ground_truth: bool = False


def png_bytes(rgb):
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ViewerError(500, 'PNG encoding failed')
    return buf.tobytes()


def warm_up(model):
    """Build the cost model and run every method once on a small image, so that the first box a
    user drags is not also the one that loads the kernels (~1 s on a CPU)."""
    rgb = np.zeros((40, 40, 3), np.uint8)
    with model.open(rgb, 'warm-up') as image:
        for method in METHODS:
            image.super_resolve([(4, 4, 24, 24)], method=method, plan=False)
    model.gflops_per_second()  # the basis of post-crop's time estimate


class PostCropOffers:
    """Whether the viewer offers post-crop (the plain backbone on the whole LR image, then the box
    cut out: the LocalSR paper's post-cropping baseline) for an image, and what it will cost, said
    before it runs (issue 23, item 3).

    Offered whenever the model's memory budget allows it (:meth:`LocalSR.whole_tile`: untiled,
    or over tiles when tiling is allowed; refused only with tiling off and the image too large):

    * untiled (``tile`` None): the whole image runs once, on the first post-crop box, and its HR
      output stays cached (uint8) with the image's context, so later boxes only crop it;
    * tiled (and images read region by region): each box runs the whole-image SR tiles it touches
      (``image.super_resolve(method='post_crop')``), priced per box.

    Seconds are estimated from GFLOPs and a speed: the plain backbone's measured GFLOPs/s on a
    small image (:meth:`LocalSR.gflops_per_second`) until a post-crop has run here, then the
    speed of the last post-crop run (a large image runs faster per GFLOP than the small probe).
    """

    def __init__(self, model):
        self.model = model
        self.speed = None  # GFLOPs/s of the last post-crop run here

    def gflops_per_second(self):
        return self.speed or self.model.gflops_per_second()

    def ran(self, gflops, seconds):
        if seconds > 0.05:  # shorter runs say more about overheads than about speed
            self.speed = gflops / seconds

    def offer(self, entry, box=None):
        """``{'offered', 'reason', 'tile', 'gflops', 'seconds', 'cached'}`` for post-crop of
        ``box`` (None: of the image, priced only when it runs untiled and so costs the same for
        every box). Called on the compute thread (it counts tensors on the meta device)."""
        m = self.model
        hw = entry.hw
        try:
            tile = m.whole_tile(hw, [box] if box else None)
        except MemoryBudgetError as err:
            return {'offered': False, 'reason': f'post-crop does not fit: {err}', 'tile': None, 'gflops': None,
                    'seconds': None, 'cached': False}
        if entry.tiled and not tile:  # never the whole of an image read region by region
            tile = _lazy_tile(hw)
        cached = entry.post_crop is not None
        if not tile:
            gflops = m.cost.base(*hw) / 1e9
        elif box is not None:
            gflops = whole_image_flops(m.cost, hw, [box], tile, m.tile_overlap) / 1e9
        else:
            gflops = None  # the tiles a box touches: priced per box
        seconds = None if gflops is None else (0. if cached else gflops / self.gflops_per_second())
        return {'offered': True, 'reason': None, 'tile': tile, 'gflops': gflops, 'seconds': seconds,
                'cached': cached}


def _lazy_tile(hw):
    """The tile :meth:`TiledImage._post_crop` takes when the budget would allow untiled."""
    from ..api.budget import WHOLE_TILES
    return max(WHOLE_TILES[-1], min(WHOLE_TILES[0], max(hw)))


def create_app(store, max_box=256, max_upload_bytes=20 * 2 ** 20, worker=None):
    """The FastAPI app serving ``store``'s images.

    Args:
        store: :class:`.store.ImageStore` (its model does the SR).
        max_box: largest box side in LR pixels (stated in the page).
        max_upload_bytes: largest upload accepted.
        worker: a :class:`.worker.ComputeWorker` that runs the computations (None: inline).
    """
    model = store.model
    warm_up(model)
    app = FastAPI(title='clsr viewer', docs_url=None, redoc_url=None)
    app.mount('/static', StaticFiles(directory=STATIC), name='static')
    app.state.worker = worker or ComputeWorker()
    compute = threading.Lock()
    worker = app.state.worker
    offers = PostCropOffers(model)

    def error(status, message):
        return JSONResponse({'error': message}, status_code=status)

    @app.exception_handler(ViewerError)
    def _viewer_error(request, exc):
        return error(exc.status, str(exc))

    @app.exception_handler(LocalSRError)
    def _user_error(request, exc):
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    def _validation(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = '.'.join(str(p) for p in first.get('loc', ()) if p != 'body')
        return error(422, f'bad request: {where or "body"}: {first.get("msg", "invalid")}')

    @app.exception_handler(StarletteHTTPException)
    def _http(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    def _internal(request, exc):  # a bug: still JSON, and the server keeps serving
        return error(500, f'internal error: {type(exc).__name__}: {exc}')

    def entry_of(image_id):
        try:
            return store.get(image_id)
        except KeyError:
            raise ViewerError(404, f'no image {image_id!r} (GET /api/images lists them)') from None

    def box_of(entry, box):
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise ViewerError(400, f'box {box!r}: expected [x, y, w, h] in LR pixels')
        (box, ) = normalise_boxes([box], entry.hw)
        if max(box[2], box[3]) > max_box:
            raise ViewerError(400, f'box {box[2]}x{box[3]}: the viewer takes boxes up to {max_box}x{max_box} LR pixels')
        return box

    def image_offer(entry):
        """Post-crop's offer for ``entry`` before any box (under the compute lock: the budget's
        meta-device counts and the speed probe are torch work)."""
        with compute:
            return worker.call(offers.offer, entry)

    def listed(entry_summary):
        offer = image_offer(entry_of(entry_summary['id']))
        return dict(entry_summary, post_crop=offer['offered'], post_crop_offer=offer)

    @app.get('/')
    def index():
        return FileResponse(osp.join(STATIC, 'index.html'))

    @app.get('/api/info')
    def info():
        return {'model': osp.basename(model.weights) if model.weights else type(model.net.base).__name__,
                'base': type(model.net.base).__name__, 'scale': model.scale, 'max_box': max_box,
                'methods': list(METHODS), 'max_upload_bytes': max_upload_bytes,
                'max_memory': format_bytes(model.max_memory)}

    @app.get('/api/images')
    def images():
        return {'images': [listed(e) for e in store.list()]}

    @app.post('/api/images', status_code=201)
    def upload(file: UploadFile = File(...), degrade: bool = Form(False)):
        content = file.file.read(max_upload_bytes + 1)
        if len(content) > max_upload_bytes:
            raise ViewerError(413, f'upload over the limit of {max_upload_bytes / 2 ** 20:.0f} MiB')
        name = osp.basename(file.filename or 'upload')
        try:
            bgr = decode_bgr8(content, name)
        except DataError as err:
            raise ViewerError(400, str(err)) from None
        entry = worker.call(store.add, bgr[:, :, ::-1].copy(), name=name, degrade=degrade)
        return listed(entry.summary())

    @app.get('/api/images/{image_id}/lr.png')
    def lr_png(image_id: str):
        entry = entry_of(image_id)
        if entry.tiled:
            raise ViewerError(400, f'{entry.name} is read region by region: ask for its pyramid tiles '
                                   f'(/api/images/{image_id}/tiles/LEVEL/COL/ROW.png)')
        return Response(png_bytes(entry.image.rgb), media_type='image/png')

    @app.get('/api/images/{image_id}/tiles/{level}/{col}/{row}.png')
    def pyramid_tile(image_id: str, level: int, col: int, row: int):
        """A ``TILE x TILE`` tile of a pyramid level (smaller at the right/bottom edge) of an
        image read region by region: the page pans and zooms over these, reading only them."""
        entry = entry_of(image_id)
        if not entry.tiled:
            raise ViewerError(400, f'{entry.name} is not a tiled image: GET /api/images/{image_id}/lr.png')
        levels = entry.image.levels
        if not 0 <= level < len(levels):
            raise ViewerError(404, f'level {level}: {entry.name} has levels 0..{len(levels) - 1}')
        lh, lw = levels[level]
        y0, x0 = row * TILE, col * TILE
        if not (0 <= y0 < lh and 0 <= x0 < lw):
            raise ViewerError(404, f'tile {col},{row} is outside level {level} ({lw}x{lh})')
        rgb = entry.image.read(y0, min(lh, y0 + TILE), x0, min(lw, x0 + TILE), level)  # no torch: any thread
        return Response(png_bytes(rgb), media_type='image/png')

    def run(entry, box, method, offer=None):
        """(HR RGB uint8 [sh, sw, 3], GFLOPs) of one method on one box (under entry.lock +
        compute). Post-crop (``offer``: :meth:`PostCropOffers.offer` of the box) runs the whole
        image once and crops the cached output when it runs untiled, else the tiles the box
        touches; either way the GFLOPs are those of the run it needed."""
        x, y, w, h = box
        s = model.scale
        if method == 'post_crop' and not offer['tile']:
            if entry.post_crop is None:
                t0 = time.perf_counter()
                whole = entry.image.super_resolve([(0, 0, entry.hw[1], entry.hw[0])], method='post_crop',
                                                  output='tensor')[0]
                entry.post_crop = to_uint8(whole)  # uint8 HR: a quarter of the float output's bytes
                offers.ran(offer['gflops'], time.perf_counter() - t0)
            return entry.post_crop[s * y:s * (y + h), s * x:s * (x + w)], offer['gflops']
        t0 = time.perf_counter()
        out = entry.image.super_resolve([box], method=method, output='tensor', plan=False)[0]
        # the API prices what it ran (CLSR: the decode alone, the context pass being cached)
        gflops = entry.image.last_run['gflops']
        if method == 'post_crop':
            offers.ran(gflops, time.perf_counter() - t0)
        return to_uint8(out), gflops

    @app.post('/api/images/{image_id}/sr')
    def sr(image_id: str, req: SRRequest):
        t_start = time.perf_counter()
        entry = entry_of(image_id)
        box = box_of(entry, req.box)
        methods = list(dict.fromkeys(req.methods))
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ViewerError(400, f'methods {req.methods!r}: expected some of {", ".join(METHODS)}')
        if req.ground_truth and entry.hr is None:
            raise ViewerError(400, f'{entry.name} has no ground truth (open it as HR: clsr-view --degrade, '
                                   'or "it is HR" when uploading)')
        results, context, offer = {}, None, None

        @torch.no_grad()  # on the worker's thread (grad mode is per thread)
        def work():
            nonlocal context, offer
            offer = offers.offer(entry, box)  # before anything runs: what post-crop would cost now
            if 'post_crop' in methods and not offer['offered']:
                raise ViewerError(400, offer['reason'])
            if 'clsr' in methods:
                seconds = store.touch_encoded(entry)
                if seconds:
                    gflops = (entry.image.context_info['gflops'] if entry.tiled  # the GCM windows alone
                              else model.cost.context(*entry.hw) / 1e9)
                    context = {'ms': seconds * 1e3, 'gflops': gflops, 'roi_local': entry.tiled}
            gt = None if entry.hr is None else gt_crop(entry, box)
            for m in methods:
                t0 = time.perf_counter()
                rgb, gflops = run(entry, box, m, offer)
                rec = {'ms': (time.perf_counter() - t0) * 1e3, 'gflops': gflops,
                       'width': rgb.shape[1], 'height': rgb.shape[0]}
                if m == 'post_crop':  # what was said before it ran, beside what it took
                    rec['estimated_ms'] = None if offer['seconds'] is None else offer['seconds'] * 1e3
                    rec['cached'] = offer['cached']  # a crop of the whole-image SR run for an earlier box
                if gt is not None:
                    rec['psnr_y'] = float(calculate_psnr(rgb[:, :, ::-1], gt[:, :, ::-1], 0, test_y_channel=True))
                rec['png'] = base64.b64encode(png_bytes(rgb)).decode('ascii')
                results[m] = rec
            if 'post_crop' in methods:
                offer = offers.offer(entry, box)  # now cached (untiled), or the next box's price
        with entry.lock, compute:
            worker.call(work)
        truth = None
        if req.ground_truth:
            truth = {'png': base64.b64encode(png_bytes(gt_crop(entry, box))).decode('ascii'),
                     'width': box[2] * model.scale, 'height': box[3] * model.scale}
        return {'image': image_id, 'box': list(box), 'results': results, 'context': context,
                'post_crop_offer': offer, 'ground_truth': truth, 'server_ms': (time.perf_counter() - t_start) * 1e3}

    def gt_crop(entry, box):
        s = model.scale
        x, y, w, h = box
        return entry.hr[s * y:s * (y + h), s * x:s * (x + w)]

    @app.get('/api/images/{image_id}/proposals')
    def proposals(image_id: str, n: int = 5, size: int = 48, estimator: str = DEFAULT_ESTIMATOR):
        """Where to look (issue 23): ``n`` disjoint ``size``-pixel boxes of highest estimated SR
        gain with their scores (:func:`clsr_arch.proposals.propose`; default the gain map). An
        image read region by region is proposed on a pyramid level, then refined on its
        full-resolution tiles around what was found (``level`` in the answer)."""
        entry = entry_of(image_id)
        if not 1 <= n <= 50:
            raise ViewerError(400, f'n={n}: ask for 1 to 50 proposals')
        if not 1 <= size <= min(max_box, *entry.hw):
            raise ViewerError(400, f'size={size}: must be 1..{min(max_box, *entry.hw)} for this image')
        if estimator not in ESTIMATORS:
            raise ViewerError(400, f'estimator={estimator!r}: expected one of {", ".join(ESTIMATORS)}')

        @torch.no_grad()
        def work():
            if estimator.startswith('pim') and not entry.tiled:
                store.touch_encoded(entry)  # the context pass, cached for the boxes that follow
            return entry.image.propose(n, size, estimator)
        with entry.lock, compute:
            boxes, scores = worker.call(work)
        out = {'image': image_id, 'estimator': estimator, 'boxes': [list(b) for b in boxes], 'scores': scores}
        if entry.tiled:
            out['level'] = entry.image.last_proposal
        return out

    @app.get('/api/images/{image_id}/sr.png')
    def sr_png(image_id: str, box: str):
        entry = entry_of(image_id)
        try:
            parts = [int(v) for v in box.split(',')]
        except ValueError:
            raise ViewerError(400, f'box {box!r}: expected x,y,w,h (four integers, LR pixels)') from None
        b = box_of(entry, parts)
        @torch.no_grad()
        def work():
            store.touch_encoded(entry)
            return run(entry, b, 'clsr')[0]
        with entry.lock, compute:
            rgb = worker.call(work)
        stem = osp.splitext(entry.name)[0]
        filename = f'{stem}_x{b[0]}_y{b[1]}_{b[2]}x{b[3]}_clsr_x{model.scale}.png'
        return Response(png_bytes(rgb), media_type='image/png',
                        headers={'Content-Disposition': f'attachment; filename="{filename}"'})

    @app.middleware('http')
    async def _no_cache_for_api(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.startswith('/api/'):
            response.headers['Cache-Control'] = 'no-store'
        return response

    return app
