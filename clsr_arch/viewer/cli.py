"""``clsr-view IMAGE [IMAGE ...]``: open images in the browser, drag a box, see it super-resolved.

    clsr-view photo.png                        # LR images; http://127.0.0.1:8000
    clsr-view --degrade ../shared/data/Set14/HR/*.png   # HR images made LR: PSNR is shown
    clsr-view --port 8080 --host 0.0.0.0 big.png       # other machines may connect (warned)

A local web app (:mod:`.app`) on uvicorn over the Python API (:mod:`clsr_arch.api`): the model
is loaded once, each image's context pass runs once and stays cached (``--cache-memory``).
"""
import argparse
import sys

from ..api import LocalSR, LocalSRError, add_model_args, model_paths
from ..infer import parse_pad, parse_tile
from ..utils.memory import parse_bytes
from .app import create_app
from .store import ImageStore

LOCAL_HOSTS = ('127.0.0.1', 'localhost', '::1')


def build_parser():
    p = argparse.ArgumentParser(prog='clsr-view', description=__doc__.split('\n\n')[0])
    p.add_argument('images', nargs='*', help='images to open (more can be uploaded in the page)')
    p.add_argument('--degrade', action='store_true',
                   help='the images are HR: show their MATLAB-bicubic LR and PSNR against the HR')
    p.add_argument('--host', default='127.0.0.1', help='address to bind (default 127.0.0.1: this machine only)')
    p.add_argument('--port', type=int, default=8000)
    add_model_args(p)
    p.add_argument('--model-path', metavar='FILE',
                   help='any single-image SR network file spandrel recognises instead of --model; the main pane then '
                        'shows what method auto runs with it (CLSR or padded pre-crop, docs/spandrel.md)')
    p.add_argument('--scale', type=int, help='--model-path: the scale you expect (an error if the file is another)')
    p.add_argument('--pad', default='auto', metavar='auto|N', help="--model-path: pre-crop's real-context pad "
                   '(default auto: calibrated once per model, cached)')
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int)
    p.add_argument('--max-box', type=int, default=256, help='largest box side in LR pixels (default 256)')
    p.add_argument('--max-upload', default='20M', help='largest upload (default 20M)')
    p.add_argument('--max-pixels', type=float, default=50e6, help='largest LR image in pixels (default 50e6)')
    p.add_argument('--cache-memory', default='2G', help='memory for cached context passes (default 2G)')
    p.add_argument('--max-memory', metavar='BYTES',
                   help='memory budget of every pass, e.g. 8G (default: 80%% of the available RAM); post-crop is '
                        'offered whenever it fits it, untiled or over tiles')
    p.add_argument('--tile', default='auto', metavar='auto|0|N',
                   help='LR tile size of passes that do not fit the budget (default auto; 0: never tile, so '
                        'post-crop of an image too large for the budget is not offered)')
    return p


def make_app(args):
    """The app for parsed ``args`` (raises LocalSRError on bad images/options)."""
    for name, value in (('--max-box', args.max_box), ('--port', args.port)):
        if value < 1:
            raise LocalSRError(f'{name} must be >= 1, got {value}')
    try:
        upload, cache = parse_bytes(args.max_upload), parse_bytes(args.cache_memory)
    except ValueError as err:
        raise LocalSRError(str(err)) from None
    tile = parse_tile(args.tile)
    model = load_model(args, tile)
    store = ImageStore(model, cache_bytes=cache, max_pixels=args.max_pixels)
    for path in args.images:
        store.add(path, degrade=args.degrade)
    return create_app(store, max_box=args.max_box, max_upload_bytes=upload)


def load_model(args, tile='auto'):
    """The LocalSR of ``--model``/``--weights``/``--opt``, or of ``--model-path`` (any spandrel
    network; the viewer's main pane runs its calibrated method auto)."""
    if not getattr(args, 'model_path', None):
        return LocalSR(*model_paths(args), device=args.device, threads=args.threads, max_memory=args.max_memory,
                       tile=tile)
    pad = parse_pad(args.pad)
    model = LocalSR.from_model(args.model_path, scale=args.scale, pad=pad, device=args.device, threads=args.threads,
                               max_memory=args.max_memory, tile=tile)
    model.clsr_alias = 'auto'
    print(f'clsr-view: {model.describe()}', file=sys.stderr, flush=True)
    return model


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        app = make_app(args)
    except LocalSRError as err:
        print(f'clsr-view: error: {err}', file=sys.stderr)
        return 2
    if args.host not in LOCAL_HOSTS:
        print(f'clsr-view: warning: binding {args.host}: other machines can reach this viewer and upload images to '
              'it; it has no authentication', file=sys.stderr)
    print(f'clsr-view: http://{"127.0.0.1" if args.host in LOCAL_HOSTS else args.host}:{args.port}/', flush=True)
    serve(app, args.host, args.port)
    return 0


def serve(app, host, port):
    """uvicorn on a thread, the model's computations on this (main) thread (:mod:`.worker`),
    until the server stops (Ctrl-C stops both)."""
    import signal
    import threading

    import uvicorn

    def stop(signum, frame):  # SIGTERM (kill, systemd): stop like Ctrl-C
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level='warning'))
    server.install_signal_handlers = lambda: None  # Ctrl-C reaches this thread as KeyboardInterrupt
    thread = threading.Thread(target=server.run, name='uvicorn', daemon=True)
    thread.start()
    try:
        app.state.worker.serve(lambda: not thread.is_alive())
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == '__main__':
    sys.exit(main())
