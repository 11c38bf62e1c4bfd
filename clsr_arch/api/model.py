"""The model: :class:`LocalSR`, a CLSR network loaded once, with its device, threads, memory budget
and tiling options; it opens images (:class:`~clsr_arch.api.image.Image`, or
:class:`~clsr_arch.api.tiled_image.TiledImage` for files read region by region)."""
import os

import numpy as np
import torch

from ..archs.backbone_adapters import run_backbone
from ..archs.clsr_arch import CLSR
from ..data.image_io import DataError
from ..data.lazy_image import is_lazy_path, open_lazy
from ..utils.memory import available_bytes, parse_bytes
from .budget import SAFETY, MemoryBudgets
from .errors import LocalSRError
from .image import Image
from .inputs import load_image
from .networks import build_base, load_network, resolve_base_weights
from .registry import DEFAULT_OPT, DEFAULT_WEIGHTS, SHIPPED
from .tiled_image import TiledImage


class LocalSR(MemoryBudgets):
    """A CLSR model ready for local SR of any image (module docstring).

    Args:
        weights, opt: CLSR checkpoint and the YAML whose ``network_g`` builds it, or ``weights``
            a shipped model's name (``SHIPPED``: ``'clsr-imdn'``, ``'clsr-carn-m'``) and no
            ``opt``; default ``DEFAULT_MODEL``. ``net``: an already built CLSR module instead.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...
        threads: CPU threads for torch (``torch.set_num_threads``; process-wide); None: torch's.
        max_memory: bytes or ``'8G'``-style budget; None: 80 % of what is available now.
        tile: ``'auto'``, ``0`` (never tile) or a tile size in LR pixels (context pass and
            whole-image SR). ``tile_overlap``: LR pixels around whole-image SR tiles.
        base_weights: plain backbone of ``pre_crop``/``post_crop`` (:func:`resolve_base_weights`;
            default ``'auto'``: the official CARN-M when the base is CARN-M).
        cache_dir: where context features go when they do not fit in memory (default: temp).
        progress: tqdm bars for tiled passes and many-box decodes.
        pim_tile, pim_cache: images read region by region (:class:`TiledImage`): the PIM tile
            size in LR pixels and the bytes of PIM tiles kept per image (LRU).
    """

    def __init__(self, weights=None, opt=None, net=None, device='auto', threads=None, max_memory=None,
                 tile='auto', tile_overlap=16, base_weights='auto', cache_dir=None, progress=False,
                 pim_tile=128, pim_cache='256M'):
        if threads is not None:
            if int(threads) < 1:
                raise LocalSRError(f'threads must be >= 1, got {threads}')
            torch.set_num_threads(int(threads))
        self.device = self._device(device)
        if net is None:
            if weights is None and opt is None:
                weights, opt = DEFAULT_WEIGHTS, DEFAULT_OPT
            elif isinstance(weights, str) and weights in SHIPPED and opt is None:
                weights, opt = SHIPPED[weights]
            elif weights is None or opt is None:
                raise LocalSRError('give both weights and opt (the YAML whose network_g builds the weights), '
                                   'or neither for the shipped model')
            net = load_network(opt, weights)
        elif not isinstance(net, CLSR):
            raise LocalSRError(f'net must be a CLSR network, got {type(net).__name__}')
        self.weights, self.opt = weights, opt
        self.net = net.eval().to(self.device)
        self.base_weights = resolve_base_weights(self.net, base_weights)
        self.base = build_base(self.net, self.base_weights).to(self.device)
        self.scale = self.net.scale
        self.multiple = self.net.adapter.multiple
        if tile not in ('auto', None) and (not isinstance(tile, (int, np.integer)) or tile < 0):
            raise LocalSRError(f"tile must be 'auto', 0 (no tiling) or a tile size in LR pixels, got {tile!r}")
        self.tile = 0 if tile is None else tile
        if int(tile_overlap) < 0:
            raise LocalSRError(f'tile_overlap must be >= 0, got {tile_overlap}')
        self.tile_overlap = int(tile_overlap)
        try:
            self.max_memory = parse_bytes(max_memory) if max_memory is not None else int(0.8 * self._free_memory())
        except ValueError as err:
            raise LocalSRError(f'max_memory: {err}') from None
        self.cache_dir = cache_dir
        self.progress = progress
        if not isinstance(pim_tile, (int, np.integer)) or pim_tile < 8:
            raise LocalSRError(f'pim_tile must be an integer >= 8 (LR pixels), got {pim_tile!r}')
        self.pim_tile = int(pim_tile)
        try:
            self.pim_cache = parse_bytes(pim_cache)
        except ValueError as err:
            raise LocalSRError(f'pim_cache: {err}') from None
        self._meta = None
        self._cost = None
        self._estimates = {}
        self._speed = None

    @classmethod
    def from_model(cls, path, scale=None, pad='auto', method='auto', clsr=None, **kwargs):
        """LocalSR of any single-image SR network file spandrel recognises (issue 24;
        :class:`~clsr_arch.api.spandrel_model.SpandrelLocalSR`, docs/spandrel.md): ``pre_crop``,
        ``post_crop`` and the planner with it, ``clsr`` when a stage adapter exists for its class.
        ``pad='auto'``: the smallest real-context pad at which pre-crop is within 0.005 dB PSNR-Y of
        post-crop on validation crops, measured once and cached by the weights' SHA-256
        (:mod:`.calibration`); ``method='auto'`` (the images' default): CLSR where it validates above
        padded pre-crop at equal or lower cost, else padded pre-crop (``last_run['auto']`` says why).
        ``scale``: the scale asked for; ``clsr``: ``(weights, opt)`` of a CLSR trained over it."""
        from .spandrel_model import SpandrelLocalSR
        return SpandrelLocalSR(path, scale=scale, pad=pad, method=method, clsr=clsr, **kwargs)

    @staticmethod
    def _device(device):
        if device == 'auto':
            return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise LocalSRError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise LocalSRError(f'device {device!r}: CUDA is not available on this machine')
        if dev.type not in ('cpu', 'cuda'):
            raise LocalSRError(f"device {device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return dev

    def _free_memory(self):
        if self.device.type == 'cuda':
            return torch.cuda.mem_get_info(self.device)[0]
        return available_bytes()

    def prepare(self):
        """Build now what every image needs once per process (the FLOPs model, the decode and the
        bounded whole/context memory estimates), so that a batch's clock measures images only."""
        self.cost
        self.decode_capacity()
        for kind in ('context', 'whole'):
            self._fits_bounded(kind, (1, 1))
        return self

    def gflops_per_second(self):
        """The plain backbone's measured speed here (GFLOPs/s of a small whole-image pass, once):
        the basis of the time estimates said before a long run."""
        if self._speed is None:
            import time
            x = torch.zeros(1, 3, 64, 64, dtype=torch.uint8, device=self.device)
            run = lambda: run_backbone(self.base, x.float().div(255.), self.scale, self.multiple)  # noqa: E731
            with torch.no_grad():
                run()
                t0 = time.perf_counter()
                run()
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
            self._speed = self.cost.base(64, 64) / 1e9 / max(time.perf_counter() - t0, 1e-6)
        return self._speed

    # --- images
    def open(self, image, name=None):
        """An :class:`Image` for ``image`` (path or array); the context pass runs on first need.

        A tiled TIFF or a ``.npy`` opens as a :class:`TiledImage`, read region by region; a TIFF
        that is not tiled is read whole when it fits the memory budget, and refused when not."""
        if is_lazy_path(image):
            try:
                lazy = open_lazy(image, max_bytes=int(self.max_memory / SAFETY))
            except DataError as err:
                raise LocalSRError(f'image {err}') from None
            if lazy.random_access:
                return TiledImage(self, lazy, name or os.fspath(image))
            with lazy:  # striped TIFF under the budget: an ordinary image
                try:
                    rgb = lazy.read_all()
                except DataError as err:
                    raise LocalSRError(f'image {err}') from None
            return Image(self, rgb, name or os.fspath(image))
        return Image(self, *load_image(image, name))

    def encode(self, image, name=None):
        """:meth:`open` and run the context pass now."""
        return self.open(image, name).encode()

