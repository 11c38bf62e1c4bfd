"""clsr-view latency over HTTP (issue 14): the page's requests, timed by the server (``server_ms``
of ``POST /api/images/{id}/sr``) and by the client, on Set14 and on the 2K DIV2K images (all
opened with ``--degrade``: LR = MATLAB bicubic x1/4 of the HR), the default shipped model, CPU.

Per image set: the first 48x48 box on each newly opened image (its context pass included), then
50 random 48x48 boxes with the context cached -- CLSR alone (what the page asks first) and the
comparison request the page sends next (bicubic + pre-crop). Targets: cached 48x48 box <= 100 ms
p50 server time; first box on a new 2K image <= 0.5 s.

    .venv/bin/python benchmarks/viewer_latency.py            # ~1 min
"""
import argparse
import glob
import os.path as osp
import socket
import threading
import time

import numpy as np

import common  # noqa: F401  (repo on sys.path, compat)

import httpx  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402

from clsr_arch.api import DEFAULT_MODEL, LocalSR  # noqa: E402
from clsr_arch.viewer.app import create_app  # noqa: E402
from clsr_arch.viewer.store import ImageStore  # noqa: E402

SHARED = osp.join(common.REPO, '..', 'shared', 'data')
SETS = {'Set14': 'Set14/HR/*.png', 'DIV2K 2K (0004, 0006)': 'DIV2K/HR/*.png'}


def serve(store):
    """uvicorn on a thread; the model's computations are served by this (main) thread, as
    clsr-view does it (clsr_arch/viewer/worker.py)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    app = create_app(store)
    srv = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=port, log_level='warning'))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    return srv, app, f'http://127.0.0.1:{port}'


def pct(values, q):
    return float(np.percentile(values, q))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--boxes', type=int, default=50)
    p.add_argument('--box', type=int, default=48)
    p.add_argument('--quick', action='store_true', help='two Set5 images, 5 boxes (tests)')
    p.add_argument('--out', default=common.DOC)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = LocalSR(device='cpu')
    store = ImageStore(model, cache_bytes=2 ** 31, max_pixels=50e6)
    srv, app, url = serve(store)
    sets = {'Set5 (quick)': 'Set5/HR/b*.png'} if args.quick else SETS
    n_boxes = 5 if args.quick else args.boxes
    rng = np.random.default_rng(0)
    rows = []

    # opened (not encoded) here, on the thread that computes, as clsr-view opens its images
    opened = {label: [store.add(path, degrade=True) for path in sorted(glob.glob(osp.join(SHARED, pattern)))]
              for label, pattern in sets.items()}

    def client_side():
        with httpx.Client(base_url=url, timeout=120) as client:
            b = args.box

            def request(e, methods, box=None):
                """(server ms, client ms, box) of one SR request, at a random box unless given."""
                if box is None:
                    h, w = e.hw
                    box = [int(rng.integers(0, w - b)), int(rng.integers(0, h - b)), b, b]
                t0 = time.perf_counter()
                r = client.post(f'/api/images/{e.id}/sr', json={'box': box, 'methods': methods}).json()
                return r['server_ms'], (time.perf_counter() - t0) * 1e3, box

            for label, entries in opened.items():
                first, first_wall, _ = zip(*(request(e, ['clsr']) for e in entries))
                clsr, clsr_wall, compare = [], [], []
                for i in range(n_boxes):
                    e = entries[i % len(entries)]
                    server, wall, box = request(e, ['clsr'])
                    clsr.append(server)
                    clsr_wall.append(wall)
                    compare.append(request(e, ['bicubic', 'pre_crop'], box)[0])
                sizes = [f'{w}x{h}' for h, w in sorted({e.hw for e in entries}, key=lambda hw: hw[0] * hw[1])]
                lr = sizes[0] if len(sizes) == 1 else f'{len(entries)} images, {sizes[0]} … {sizes[-1]}'
                print(label, np.median(first), max(first), np.median(clsr), pct(clsr, 95), flush=True)
                rows.append([label, lr, f'{np.median(first):.0f} / {max(first):.0f}', f'{np.median(first_wall):.0f}',
                             f'{pct(clsr, 50):.0f} / {pct(clsr, 95):.0f}', f'{pct(clsr_wall, 50):.0f} / {pct(clsr_wall, 95):.0f}',
                             f'{pct(compare, 50):.0f} / {pct(compare, 95):.0f}'])
    client = threading.Thread(target=client_side)
    client.start()
    app.state.worker.serve(lambda: not client.is_alive())
    srv.should_exit = True
    header = ['images (LR WxH)', 'LR', 'first box, server ms (p50 / max)', 'first box, client ms p50',
              f'{args.box}x{args.box} CLSR, server ms p50 / p95', 'same, client ms p50 / p95',
              'bicubic + pre-crop request, server ms p50 / p95']
    body = (f'Produced by `{common.command_line(__file__, argv)}` ({common.env_line("cpu", args.threads)}): uvicorn serving '
            f'clsr-view\'s app in this process, an httpx client over loopback; default shipped model ({DEFAULT_MODEL}); '
            f'{n_boxes} random {args.box}x{args.box} boxes per set after the first box of each image.\n\n'
            + common.markdown_table(header, rows))
    common.write_section(args.out, 'viewer-latency', body)


if __name__ == '__main__':
    main()
