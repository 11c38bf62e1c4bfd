"""How good the viewer's post-crop time estimate is (issue 23, item 3): the seconds clsr-view
shows before post-crop runs (``PostCropOffers`` in clsr_arch/viewer/app.py: GFLOPs over a speed
-- the plain backbone's measured GFLOPs/s on a 64x64 image until a post-crop has run, then the
last post-crop's) against the time the run then took, on crops of the two DIV2K images of
../shared/data (never a test set), opened as LR, the default shipped model, CPU.

One app serves all images in order: the first estimate is the small probe's, the next ones use
the speed of the run before. Each request is the page's "Run post-crop" (one 24x24 box).

    flock /tmp/clsr_bench.lock .venv/bin/python benchmarks/viewer_post_crop.py     # ~2 min on 2 cores
"""
import argparse
import os.path as osp

import common  # noqa: F401  (repo on sys.path, compat)

import cv2  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from clsr_arch.api import LocalSR  # noqa: E402
from clsr_arch.viewer.app import create_app  # noqa: E402
from clsr_arch.viewer.store import ImageStore  # noqa: E402

SHARED = osp.join(common.REPO, '..', 'shared', 'data')
SIZES = ((64, 64), (96, 128), (128, 160), (160, 192))  # LR h, w


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args()
    model = LocalSR(device='cpu', threads=args.threads)
    store = ImageStore(model, cache_bytes=2 ** 30, max_pixels=50e6)
    entries = []
    for k, (h, w) in enumerate(SIZES):
        name = ('0004.png', '0006.png')[k % 2]
        bgr = cv2.imread(osp.join(SHARED, 'DIV2K', 'HR', name), cv2.IMREAD_COLOR)
        entries.append(store.add(bgr[200:200 + h, 300:300 + w, ::-1].copy(), name=f'{name}[{h}x{w}]'))
    client = TestClient(create_app(store))
    print(f'probe speed (64x64 whole pass): {model.gflops_per_second():.2f} GFLOPs/s, {args.threads} threads\n')
    print('| LR crop | GFLOPs | estimated s | took s | took / estimated | speed basis |')
    print('|---|---|---|---|---|---|')
    basis = 'the 64x64 probe'
    for e in entries:
        body = client.post(f'/api/images/{e.id}/sr', json={'box': [8, 8, 24, 24], 'methods': ['post_crop']}).json()
        r = body['results']['post_crop']
        est, took = r['estimated_ms'] / 1e3, r['ms'] / 1e3
        print(f'| {e.name} | {r["gflops"]:.1f} | {est:.1f} | {took:.1f} | {took / est:.2f} | {basis} |', flush=True)
        basis = 'the run above'


if __name__ == '__main__':
    main()
