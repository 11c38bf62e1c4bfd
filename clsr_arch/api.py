"""The clsr Python API: load a CLSR model, open an image once, super-resolve any boxes of it.

    from clsr_arch.api import LocalSR

    model = LocalSR()                          # the shipped CLSR-IMDN x4 ('clsr-carn-m' too), device 'auto'
    with model.open('photo.png') as image:     # a path, or a uint8/uint16 HxW[xC] RGB array
        srs = image.super_resolve([(120, 80, 48, 48), (10, 10, 24, 32)])   # uint8 HxWx3 RGB
        pre = image.super_resolve([(120, 80, 48, 48)], method='pre_crop')
        print(image.last_run)                  # method, seconds, GFLOPs, the plan

LocalSR (the paper's task, Sec. 1): only the boxes are super-resolved, with the whole image as
context. Methods: ``clsr`` (CLSR, planned over the boxes: :mod:`clsr_arch.planner`),
``pre_crop`` (the plain backbone on the box padded by ``pad`` LR pixels of real context,
default CLSR's ``roi_pad``), ``post_crop`` (whole-image SR with the plain backbone, then
cropped; tiled when it does not fit the memory budget: :mod:`clsr_arch.whole_image`) and
``bicubic`` (MATLAB bicubic of the box alone).

The context pass (Sec. 3.4) runs once per image, on the first CLSR decode that needs it (or
``image.encode()``), untiled when it fits the memory budget, else over tiles with the PIM's
receptive-field halo (:mod:`clsr_arch.archs.tiling`; features on disk when they do not fit in
memory). It is kept until ``image.release()`` (or the ``with`` block ends).

Memory: ``max_memory`` (default 80 % of the machine's available RAM, or of the GPU's free
memory on CUDA) bounds every pass: estimates come from counting tensors on the meta device
(:mod:`clsr_arch.utils.memory`) times a safety factor. ``tile``: ``'auto'`` (tile only what does
not fit), ``0`` (never tile: too large is a :class:`MemoryBudgetError`) or a tile size in LR
pixels. Errors a user can cause raise :class:`LocalSRError` (a ``ValueError``) naming the thing.
"""
import copy
import os
import os.path as osp
import time

import numpy as np
import torch
import yaml
from tqdm import tqdm

import clsr_arch  # noqa: F401  (compat + registries)
from basicsr.archs import build_network
from basicsr.utils.matlab_functions import imresize

from .archs import roi as roi_ops
from .archs.backbone_adapters import run_backbone
from .archs.clsr_arch import CLSR, backbone_state_dict, checkpoint_params, state_dict_mismatch
from .archs.tiling import DiskFeatures, pim_halo
from .archs.local_context import LazyContext
from .data.image_io import DataError, read_bgr8, to_bgr8
from .data.lazy_image import is_lazy_path, open_lazy
from .planner import composite, plan_boxes
from .utils.checkpoint import CheckpointError, safe_load
from .utils.flops import CostModel
from .utils.memory import available_bytes, format_bytes, linear_peak, parse_bytes, peak_bytes
from .whole_image import tile_layout, touched_tiles, whole_image_flops, whole_image_sr

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
# the shipped models by name: (weights, the YAML whose network_g builds them); docs/results.md
SHIPPED = {
    'clsr-imdn': (osp.join(REPO, 'weights', 'CLSR_IMDN_x4.pth'), osp.join(REPO, 'options', 'train', 'CLSR_IMDN_x4_ship.yml')),
    'clsr-carn-m': (osp.join(REPO, 'weights', 'CLSR_CARN_M_x4.pth'),
                    osp.join(REPO, 'options', 'train', 'CLSR_CARN_M_x4_ship.yml')),
}
DEFAULT_MODEL = 'clsr-imdn'  # the best measured quality per GFLOP (docs/results.md)
DEFAULT_WEIGHTS, DEFAULT_OPT = SHIPPED[DEFAULT_MODEL]
OFFICIAL_CARN_M = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data', 'weights', 'carn_m.pth'))
METHODS = ('bicubic', 'pre_crop', 'clsr', 'post_crop')
SAFETY = 1.5          # estimated tensor bytes x this <= budget (allocator slack, kernel scratch)
CONTEXT_TILES = (1024, 512, 256, 128, 64)  # tried largest first for the tiled context pass
WHOLE_TILES = (2048, 1024, 512, 256, 128, 64, 32)  # tried largest first for tiled whole-image SR
MAX_BATCH = 64        # ROIs per decode call


class LocalSRError(ValueError):
    """A user error (bad input, options, weights, memory budget); the message names the thing."""


class MemoryBudgetError(LocalSRError):
    """A pass does not fit the memory budget and tiling is disabled (or cannot help)."""


# ------------------------------------------------------------------------------- networks
def add_model_args(parser):
    """``--model`` (a shipped model by name) and ``--weights``/``--opt`` (any checkpoint), for
    the command-line tools; :func:`model_paths` resolves them."""
    parser.add_argument('--model', choices=sorted(SHIPPED), default=DEFAULT_MODEL,
                        help=f'shipped model (default {DEFAULT_MODEL}: the best quality per GFLOP in docs/results.md)')
    parser.add_argument('--weights', help='a CLSR checkpoint instead of --model')
    parser.add_argument('--opt', help="YAML whose network_g builds --weights' network (default: --model's)")


def model_paths(args):
    """(weights, opt) of ``add_model_args``'s options."""
    weights, opt = SHIPPED[args.model]
    return (args.weights or weights), (args.opt or opt)


def load_options(path):
    """A YAML options file with a ``network_g`` of type CLSR."""
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except OSError as err:
        raise LocalSRError(f'opt {path}: cannot read ({err.strerror})') from None
    except yaml.YAMLError as err:
        raise LocalSRError(f'opt {path}: not valid YAML ({str(err).splitlines()[0]})') from None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise LocalSRError(f'opt {path}: no network_g section')
    if opt['network_g'].get('type') != 'CLSR':
        raise LocalSRError(f'opt {path}: network_g.type is {opt["network_g"].get("type")!r}, expected CLSR')
    return opt


def load_network(opt_path=DEFAULT_OPT, weights_path=DEFAULT_WEIGHTS):
    """The CLSR network of ``opt_path``'s ``network_g`` with ``weights_path`` loaded strictly
    (eval mode, CPU); a mismatch names the missing/unexpected keys and shapes."""
    opt = load_options(opt_path)
    net_opt = copy.deepcopy(opt['network_g'])
    net_opt['pretrain_backbone'] = None  # every weight comes from weights_path
    try:
        net = build_network(net_opt)
    except ValueError as err:
        raise LocalSRError(f'opt {opt_path}: network_g: {err}') from None
    try:
        ckpt = safe_load(weights_path)
    except (CheckpointError, ValueError) as err:
        raise LocalSRError(f'weights: {err}') from None
    sd = checkpoint_params(ckpt)
    if sd is None:
        raise LocalSRError(f'weights {weights_path}: no params_ema/params state dict in the checkpoint')
    missing, unexpected, shapes = state_dict_mismatch(net.state_dict(), sd)
    shapes = [f'{k} {a} vs {b}' for k, a, b in shapes]
    if missing or unexpected or shapes:
        def few(keys):
            return '[' + ', '.join(keys[:4]) + (f', ... {len(keys) - 4} more' if len(keys) > 4 else '') + ']'
        raise LocalSRError(f'weights {weights_path} do not match the network of opt {opt_path}: '
                           f'missing {few(missing)}, unexpected {few(unexpected)}, shape mismatches {few(shapes)}')
    net.load_state_dict(sd, strict=True)
    return net.eval()


def resolve_base_weights(net, base_weights):
    """The plain backbone checkpoint of pre-/post-crop, or None for the CLSR's own base.

    ``'official'``: the official CARN-M (``../shared/data/weights/carn_m.pth``) when the base is
    CARN-M -- the baselines the paper compares with -- else the CLSR's own base (an error if the
    file is missing); ``'auto'``: the same, but the CLSR's own base when the file is missing;
    ``'clsr'`` or None: the CLSR's own base; anything else: a plain-backbone checkpoint path."""
    if base_weights in (None, 'clsr'):
        return None
    if base_weights in ('official', 'auto'):
        if type(net.base).__name__ != 'CARN_M':
            return None
        if not osp.isfile(OFFICIAL_CARN_M):
            if base_weights == 'auto':
                return None
            raise LocalSRError(f'base weights official: {OFFICIAL_CARN_M} missing (../shared/data must sit beside '
                               'the repository; or use the CLSR base (clsr) or a checkpoint path)')
        return OFFICIAL_CARN_M
    return base_weights


def build_base(net, base_weights):
    """The plain backbone of pre-/post-crop: a copy of the CLSR's base with ``base_weights``
    loaded (official multi-scale CARN-M files are mapped), or the base itself."""
    if not base_weights:
        return net.base
    base = copy.deepcopy(net.base)
    try:
        base.load_state_dict(backbone_state_dict(base_weights, base), strict=True)
    except (CheckpointError, ValueError) as err:
        raise LocalSRError(f'base weights: {err}') from None
    return base.eval()


# ------------------------------------------------------------------------------- inputs
def load_image(image, name=None):
    """``(rgb uint8 [H, W, 3], name)`` from a path or an array, by the dataset's rules
    (:mod:`clsr_arch.data.image_io`: grayscale replicated, 16-bit scaled, opaque alpha dropped,
    transparent alpha refused). Arrays are RGB (or gray, RGBA); files are decoded by OpenCV."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            return read_bgr8(path)[:, :, ::-1].copy(), name or path
        except DataError as err:
            raise LocalSRError(f'image {err}') from None
    name = name or 'image array'
    if torch.is_tensor(image):
        raise LocalSRError(f'{name}: pass a numpy array (H x W x C, RGB) or a path, not a torch tensor')
    if not isinstance(image, np.ndarray):
        raise LocalSRError(f'{name}: expected a path or a numpy array, got {type(image).__name__}')
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise LocalSRError(f'{name}: expected an H x W or H x W x C image array, got shape {image.shape}')
    try:
        # the conversion rules do not depend on the channel order (alpha is last in RGBA and BGRA)
        return to_bgr8(np.ascontiguousarray(image), name), name
    except DataError as err:
        raise LocalSRError(str(err)) from None


def normalise_boxes(boxes, hw, what='box'):
    """``[(x, y, w, h), ...]`` ints, checked against an image of ``hw`` = (H, W) LR pixels."""
    if isinstance(boxes, np.ndarray) or torch.is_tensor(boxes):
        boxes = boxes.tolist()
    if isinstance(boxes, (list, tuple)) and len(boxes) == 4 and all(isinstance(v, (int, np.integer)) for v in boxes):
        boxes = [boxes]  # one box
    if not isinstance(boxes, (list, tuple)) or len(boxes) == 0:
        raise LocalSRError(f'no boxes given: pass a list of (x, y, w, h) boxes in LR pixels, got {boxes!r}')
    H, W = hw
    out = []
    for i, b in enumerate(boxes):
        try:
            x, y, w, h = (int(v) for v in b)
            if any(int(v) != v for v in b):
                raise ValueError
        except (TypeError, ValueError):
            raise LocalSRError(f'{what} {i} {b!r}: expected (x, y, w, h), four integers in LR pixels') from None
        if w < 1 or h < 1:
            raise LocalSRError(f'{what} {i} ({x}, {y}, {w}, {h}): w and h must be >= 1 (a zero-size box)')
        if x < 0 or y < 0 or x + w > W or y + h > H:
            raise LocalSRError(f'{what} {i} ({x}, {y}, {w}, {h}) is outside the {W}x{H} (WxH) LR image: '
                               f'need 0 <= x, x+w <= {W}, 0 <= y, y+h <= {H}')
        out.append((x, y, w, h))
    return out


def to_uint8(t):
    """``[3, H, W]`` float RGB in [0, 1] -> uint8 ``[H, W, 3]`` (BasicSR ``tensor2img`` rounding)."""
    return (t.detach().float().cpu().clamp(0, 1) * 255.).round().to(torch.uint8).permute(1, 2, 0).numpy()


def bicubic_flops(h, w, scale):
    """FLOPs of separable bicubic upscaling of an ``h x w`` RGB box: per output pixel and
    channel 4 taps x 2 passes, a multiply and an add each (MATLAB's kernel, upscaling)."""
    return 3 * (scale * h) * (scale * w) * 4 * 2 * 2


# ------------------------------------------------------------------------------- the model
class LocalSR:
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

    # --- cost and memory models
    @property
    def cost(self):
        """The FLOPs model (:class:`clsr_arch.utils.flops.CostModel`), built on first use."""
        if self._cost is None:
            self._cost = CostModel(self.net)
        return self._cost

    def _meta_nets(self):
        if self._meta is None:
            self._meta = copy.deepcopy(self.net).to('meta'), copy.deepcopy(self.base).to('meta')
        return self._meta

    def _memo(self, key, fn):
        if key not in self._estimates:
            self._estimates[key] = fn()
        return self._estimates[key]

    def context_bytes(self, hw):
        """Estimated peak bytes of the untiled context pass over an ``hw`` LR image."""
        net = self._meta_nets()[0]
        return self._memo(('context', tuple(hw)), lambda: linear_peak(
            lambda h, w: peak_bytes(net.encode_context, torch.zeros(1, 3, h, w, dtype=torch.uint8, device='meta')),
            hw))

    def feature_bytes(self, hw):
        """Bytes of the PIM features the context pass keeps for an ``hw`` LR image."""
        if self.net.pim is None:
            return 0
        return hw[0] * hw[1] * self.net.pim.channels * len(self.net.pim.blocks) * 4

    def whole_bytes(self, hw):
        """Estimated peak bytes of whole-image SR with the plain backbone on ``hw`` LR pixels."""
        base = self._meta_nets()[1]

        def run(h, w):
            return peak_bytes(lambda x: run_backbone(base, x.float().div(255.), self.scale, self.multiple),
                              torch.zeros(1, 3, h, w, dtype=torch.uint8, device='meta'))
        return self._memo(('whole', tuple(hw)), lambda: linear_peak(run, hw))

    def decode_bytes(self, pixels):
        """Estimated peak bytes of decoding ROIs of ``pixels`` LR pixels in all (padded)."""
        if not hasattr(self, '_decode_fit'):
            net = self._meta_nets()[0]
            state = net.encode_context(torch.zeros(1, 3, 96, 96, dtype=torch.uint8, device='meta'))
            p = [peak_bytes(net.decode, state, torch.tensor([[0, 8, 8, s, s]])) for s in (16, 48)]
            a = (p[1] - p[0]) / ((48 + 2 * self.net.roi_pad) ** 2 - (16 + 2 * self.net.roi_pad) ** 2)
            self._decode_fit = (a, max(0., p[0] - a * (16 + 2 * self.net.roi_pad) ** 2))
        a, b = self._decode_fit
        return int(a * pixels + b)

    def fits(self, nbytes):
        return nbytes * SAFETY <= self.max_memory

    def decode_capacity(self):
        """LR pixels (padded, all ROIs together) one decode call may hold within the budget:
        the bound on a batch, on a merged piece and on a single box."""
        a = max(self.decode_bytes(1) - self.decode_bytes(0), 1)
        return int((self.max_memory / SAFETY - self.decode_bytes(0)) // a)

    def context_tile_bytes(self, hw, tile, store):
        """Estimated peak bytes of the tiled context pass: one tile grown by the PIM's halo (and
        for the disk store the band of tile rows waiting to be written)."""
        halo = pim_halo(self.net.pim) if self.net.pim is not None else 0
        grown = (min(hw[0], tile + 2 * halo), min(hw[1], tile + 2 * halo))
        band = self.feature_bytes((min(hw[0], tile), hw[1])) if store == 'disk' else 0
        return self.context_bytes(grown) + band

    def context_tiling(self, hw, name='image'):
        """``(tile, store)`` of the context pass over ``hw``: ``(None, 'memory')`` when the
        untiled pass fits; else the largest tile whose pass fits beside the features in memory,
        else (features on disk) beside nothing; tile ``0`` and too large: MemoryBudgetError."""
        features = self.feature_bytes(hw)
        if isinstance(self.tile, (int, np.integer)) and self.tile > 0:
            t = int(self.tile)
            return t, 'memory' if self.fits(features + self.context_tile_bytes(hw, t, 'memory')) else 'disk'
        need = self.context_bytes(hw)
        if self.fits(need):
            return None, 'memory'
        if self.tile == 0:
            raise MemoryBudgetError(
                f'{name}: the context pass over the {hw[1]}x{hw[0]} LR image needs ~{format_bytes(need * SAFETY)} '
                f'(estimate x{SAFETY}), over the memory budget of {format_bytes(self.max_memory)}, and tiling '
                'is disabled (tile=0): allow tiling or raise max_memory')
        for store, extra in (('memory', features), ('disk', 0)):
            for t in CONTEXT_TILES:
                if self.fits(extra + self.context_tile_bytes(hw, t, store)):
                    return t, store
        raise MemoryBudgetError(f'{name}: not even a {CONTEXT_TILES[-1]}-pixel tile of the context pass fits '
                                f'the memory budget of {format_bytes(self.max_memory)}')

    def whole_tile(self, hw, boxes=None):
        """Tile of whole-image SR of ``hw`` for ``boxes``: None when untiled fits; else, of the
        tile sizes that fit, the one whose touched tiles cost the fewest FLOPs (few boxes: small
        tiles, a full grid: large ones, less overlap); MemoryBudgetError with tiling off."""
        if isinstance(self.tile, (int, np.integer)) and self.tile > 0:
            return int(self.tile)
        need = self.whole_bytes(hw)
        if self.fits(need):
            return None
        if self.tile == 0:
            raise MemoryBudgetError(
                f'whole-image SR of the {hw[1]}x{hw[0]} LR image needs ~{format_bytes(need * SAFETY)} '
                f'(estimate x{SAFETY}), over the memory budget of {format_bytes(self.max_memory)}, and tiling '
                'is disabled (tile=0): allow tiling or raise max_memory')
        o = self.tile_overlap
        fitting = [t for t in WHOLE_TILES if self.fits(self.whole_bytes((min(hw[0], t + 2 * o), min(hw[1], t + 2 * o))))]
        if not fitting:
            raise MemoryBudgetError(f'whole-image SR: not even a {WHOLE_TILES[-1]}-pixel tile fits the memory '
                                    f'budget of {format_bytes(self.max_memory)}')
        if boxes is None:
            return fitting[0]
        return min(fitting, key=lambda t: (whole_image_flops(self.cost, hw, boxes, t, o), -t))


class Image:
    """One image opened by :meth:`LocalSR.open`: its pixels, and its context pass once run."""

    def __init__(self, model, rgb, name):
        self.model, self.rgb, self.name = model, rgb, name
        self.hw = rgb.shape[:2]
        # uint8 [1, 3, H, W] view of the HWC array: a quarter of a float copy; crops convert
        self.tensor = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).to(model.device)
        self.state = None
        self.context_info = None
        self.last_run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def _check_open(self):
        if self.tensor is None:
            raise LocalSRError(f'{self.name}: this image was released; open it again')

    @property
    def encoded(self):
        return self.state is not None

    def encode(self):
        """Run the context pass now (untiled, or tiled under the memory budget); returns self."""
        self._check_open()
        if self.state is not None:
            return self
        m, hw = self.model, self.hw
        t0 = time.perf_counter()
        need, features = m.context_bytes(hw), m.feature_bytes(hw)
        tile, store = m.context_tiling(hw, self.name)
        bar = None
        if tile and m.progress:
            bar = tqdm(total=-(-hw[0] // tile) * -(-hw[1] // tile), desc='context tiles', unit='tile')

        def progress(done, total):
            bar.update(done - bar.n)
        with torch.no_grad():
            self.state = m.net.encode_context(self.tensor, tile=tile, store=store, folder=m.cache_dir,
                                              progress=progress if bar is not None else None)
        if bar is not None:
            bar.close()
        if m.device.type == 'cuda':
            torch.cuda.synchronize(m.device)
        self.context_info = {'seconds': time.perf_counter() - t0, 'tile': tile, 'store': store,
                             'estimated_bytes': need, 'feature_bytes': features}
        return self

    def forget_context(self):
        """Free the context pass (and its feature file) but keep the pixels: the next CLSR box
        runs it again (a cache evicting contexts, e.g. the viewer's)."""
        if self.state is not None and isinstance(self.state.get('pim'), DiskFeatures):
            self.state['pim'].close()
        self.state = None

    def release(self):
        """Free the context pass (and its feature file) and the pixels; the image is unusable."""
        self.forget_context()
        self.tensor = None

    def propose(self, n, size=48, estimator='pim'):
        """Where to look: the ``n`` non-overlapping ``size`` (or ``(w, h)``) boxes with the
        highest estimated SR gain (:func:`clsr_arch.selective.propose`; ``estimator``:
        ``'pim'`` -- from the context pass, ``'gradient'`` or ``'learned'``). Returns
        ``(boxes, scores)``, best first."""
        from .selective import propose
        self._check_open()
        return propose(self, n, size, estimator)

    # --- how this image's pixels are read (TiledImage reads them region by region)
    def _source(self):
        """The context as whole-image SR and the context pass take it."""
        return self.tensor

    def _crop(self, boxes):
        """uint8 ``[R, 3, h, w]`` crops of ``LongTensor[R, 5]`` boxes (``roi.crop`` semantics)."""
        return roi_ops.crop(self.tensor, boxes)

    def _pixels(self, x, y, w, h):
        """RGB uint8 ``[h, w, 3]`` of a box inside the image."""
        return self.rgb[y:y + h, x:x + w]

    def _context_paid(self):
        """Whether a CLSR plan can count the context pass as done (no FLOPs left to pay)."""
        return self.encoded

    def _whole_option(self):
        """``(tile, flops)`` of whole-image SR for the planner (flops None: not an option).
        Whole-image SR is priced as a whole image (every tile): it is chosen only when the boxes
        want about as much as the image; running just the touched tiles then saves more."""
        m = self.model
        try:
            tile = m.whole_tile(self.hw)
            return tile, whole_image_flops(m.cost, self.hw, [(0, 0, self.hw[1], self.hw[0])], tile, m.tile_overlap)
        except MemoryBudgetError:
            return None, None

    # --- local SR
    def super_resolve(self, boxes, method='clsr', output='uint8', plan=True, pad=None):
        """SR of ``boxes`` (``[(x, y, w, h), ...]`` LR pixels, any sizes, may overlap).

        Args:
            method: ``'clsr'``, ``'pre_crop'``, ``'post_crop'`` or ``'bicubic'``.
            output: ``'uint8'`` (``[s*h, s*w, 3]`` RGB arrays) or ``'tensor'`` (float ``[3, s*h,
                s*w]`` RGB on the CPU, not clamped).
            plan: CLSR only: plan the boxes (merge, or whole-image SR when cheaper; overlapping
                boxes agree pixel for pixel); False decodes every box on its own, exactly as a
                one-box call would (overlapping boxes may then differ slightly where they meet).
            pad: pre-crop only: LR pixels of real context (default: CLSR's ``roi_pad``).
        Returns the list of outputs, in the order of ``boxes``; ``self.last_run`` tells how.
        """
        self._check_open()
        if method not in METHODS:
            raise LocalSRError(f'method {method!r}: expected one of {", ".join(METHODS)}')
        if output not in ('uint8', 'tensor'):
            raise LocalSRError(f"output {output!r}: expected 'uint8' or 'tensor'")
        boxes = normalise_boxes(boxes, self.hw)
        self.model.cost  # built once per model (~0.5 s), not charged to the first call's time
        t0 = time.perf_counter()
        info = {'method': method, 'boxes': len(boxes)}
        with torch.no_grad():
            if method == 'clsr':
                outs = self._clsr(boxes, plan, info)
            elif method == 'pre_crop':
                outs = self._pre_crop(boxes, self.model.net.roi_pad if pad is None else int(pad), info)
            elif method == 'post_crop':
                outs = self._post_crop(boxes, info)
            else:
                outs = self._bicubic(boxes, info)
        if self.model.device.type == 'cuda':
            torch.cuda.synchronize(self.model.device)
        info['seconds'] = time.perf_counter() - t0
        self.last_run = info
        if output == 'tensor':
            return [o.float().cpu() for o in outs]
        return [to_uint8(o) for o in outs]

    def _whole(self, run, boxes, info, tile):
        """Whole-image SR of ``run`` (untiled, or only the tiles the boxes touch), into ``info``:
        the tile, the tiles run, and their FLOPs (``gflops``); ``gflops_full`` is every tile."""
        m = self.model
        info['tile'] = tile
        info['gflops'] = whole_image_flops(m.cost, self.hw, boxes, tile, m.tile_overlap) / 1e9
        info['gflops_full'] = whole_image_flops(m.cost, self.hw, [(0, 0, self.hw[1], self.hw[0])], tile,
                                                m.tile_overlap) / 1e9
        if tile:
            info['tiles'] = (len(touched_tiles(self.hw, tile, m.tile_overlap, boxes)),
                             len(tile_layout(self.hw, tile, m.tile_overlap)))
        bar = None
        if tile and m.progress:
            bar = tqdm(desc='whole-image tiles', unit='tile')

        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)
        outs = whole_image_sr(run, self._source(), m.scale, boxes, m.multiple, tile, m.tile_overlap,
                              progress if bar is not None else None)
        if bar is not None:
            bar.close()
        return outs

    def _post_crop(self, boxes, info):
        return self._whole(self.model.base, boxes, info, self.model.whole_tile(self.hw, boxes))

    def _bicubic(self, boxes, info):
        s = self.model.scale
        info['gflops'] = sum(bicubic_flops(h, w, s) for _, _, w, h in boxes) / 1e9
        outs = []
        for x, y, w, h in boxes:
            up = imresize(self._pixels(x, y, w, h).astype(np.float32) / 255., s)  # of the box alone
            outs.append(torch.from_numpy(np.ascontiguousarray(up.transpose(2, 0, 1))))
        return outs

    def _pre_crop(self, boxes, pad, info):
        m = self.model
        if pad < 0:
            raise LocalSRError(f'pad must be >= 0, got {pad}')
        outs = [None] * len(boxes)
        gflops = 0.
        for (w, h), idx in _by_size(boxes).items():
            pads = roi_ops.padding_for(h, w, pad, m.multiple)
            for chunk in _chunks(idx, m, (h + pads[1] + pads[3]) * (w + pads[0] + pads[2])):
                b = torch.tensor([[0, *boxes[i]] for i in chunk])
                # the same padded window as CLSR's base branch (real context, shifted inward at borders)
                pb, offsets = roi_ops.place_inside(roi_ops.pad_boxes(b, pads), b, self.hw, m.multiple)
                crops = self._crop(pb).float().div_(255.)
                sr = roi_ops.crop_outputs(run_backbone(m.base, crops, m.scale), offsets, h, w, m.scale)
                gflops += len(chunk) * m.cost.base(int(pb[0, 4]), int(pb[0, 3])) / 1e9
                for i, o in zip(chunk, sr):
                    outs[i] = o
        info['gflops'] = gflops
        info['pad'] = pad
        return outs

    def _clsr(self, boxes, plan, info):
        m = self.model
        if plan:
            tile, whole = self._whole_option()
            p = plan_boxes(m.cost, boxes, self.hw, context_done=self._context_paid(), whole_flops=whole,
                           max_pixels=max(1, m.decode_capacity()))
            info['plan'] = p.summary()
            info['gflops'] = p.flops / 1e9
            if p.mode == 'whole':
                info['route'] = 'whole-image SR (plain backbone: cheaper than CLSR for these boxes)'
                return self._whole(m.net.base, boxes, info, tile)
            pieces = p.pieces
        else:
            from .planner import Piece
            pieces = [Piece(*b, boxes=[i]) for i, b in enumerate(boxes)]
            info['gflops'] = ((0 if self._context_paid() else m.cost.context(*self.hw))
                              + sum(m.cost.decode(h, w, self.hw) for _, _, w, h in boxes)) / 1e9
        info['route'] = 'clsr'
        self.encode()
        piece_boxes = [(p.x, p.y, p.w, p.h) for p in pieces]
        outputs = [None] * len(pieces)
        groups = _by_size(piece_boxes)
        bar = tqdm(total=len(pieces), desc='CLSR decodes', unit='roi', disable=not m.progress or len(pieces) < 8)
        for (w, h), idx in groups.items():
            ph, pw = m.cost.padded_size(h, w, self.hw)
            if ph * pw > m.decode_capacity():  # one box too large to decode at once: say so, not run out of memory
                need = m.decode_bytes(ph * pw)
                raise MemoryBudgetError(
                    f'box {piece_boxes[idx[0]]}: one CLSR decode of {w}x{h} LR pixels needs ~{format_bytes(need * SAFETY)} '
                    f'(estimate x{SAFETY}), over the memory budget of {format_bytes(m.max_memory)}: use smaller boxes, '
                    'or plan=True (a box this large goes to tiled whole-image SR)')
            for chunk in _chunks(idx, m, ph * pw):
                b = torch.tensor([[0, *piece_boxes[i]] for i in chunk])
                sr = m.net.decode(self.state, b.to(m.device)).cpu()
                for i, o in zip(chunk, sr):
                    outputs[i] = o
                bar.update(len(chunk))
        bar.close()
        info['pieces'] = len(pieces)
        if not plan or (len(pieces) == len(boxes) and not _overlapping(boxes)):
            return outputs  # one piece per box, in box order (plan=False: no merging, no compositing)
        return [composite(b, pieces, outputs, m.scale, self.hw) for b in boxes]


class TiledImage(Image):
    """An image read region by region (a tiled, possibly pyramidal TIFF or a ``.npy``:
    :mod:`clsr_arch.data.lazy_image`), never whole in memory; opened by :meth:`LocalSR.open`.

    CLSR runs on the ROI-local context (issue 17, :mod:`clsr_arch.archs.local_context`): opening
    reads nothing; the first CLSR box reads and encodes the GCM's N windows; every box then reads
    its padded region and the PIM tiles its crop meets (``pim_tile`` LR pixels, computed with the
    PIM's receptive-field halo and kept in an LRU cache of ``pim_cache`` bytes shared by every
    box). The pixels equal those of the whole-context pass. ``pre_crop`` and ``bicubic`` read their
    boxes; ``post_crop`` runs the plain backbone over the whole-image SR tiles the boxes touch.
    """

    def __init__(self, model, lazy, name):
        self.model, self.lazy, self.name = model, lazy, name
        self.hw = lazy.hw
        self.levels = lazy.levels
        self.rgb = self.tensor = None
        self.state = None
        self.context_info = None
        self.last_run = None

    def _check_open(self):
        if self.lazy is None:
            raise LocalSRError(f'{self.name}: this image was released; open it again')

    def encode(self):
        """Read and encode the GCM's windows now (the PIM's tiles follow the boxes); returns self."""
        self._check_open()
        if self.state is not None:
            return self
        m = self.model
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                self.state = m.net.encode_local(self.lazy, m.pim_tile, m.pim_cache, m.device)
        except DataError as err:
            raise LocalSRError(str(err)) from None
        self.context_info = {'seconds': time.perf_counter() - t0, 'mode': 'roi-local', 'pim_tile': m.pim_tile,
                             'pim_cache_bytes': m.pim_cache, 'gflops': m.cost.gcm(self.hw) / 1e9}
        return self

    def forget_context(self):
        self.state = None

    def release(self):
        self.forget_context()
        if self.lazy is not None:
            self.lazy.close()
        self.lazy = None

    def propose(self, n, size=48, estimator='pim'):
        raise LocalSRError(f'{self.name}: proposals score every tile of the image, which a lazily read '
                           f'{self.hw[1]}x{self.hw[0]} image is opened to avoid; propose on a level of '
                           'its pyramid opened as an ordinary image, or on a crop')

    def read(self, y0, y1, x0, x1, level=0):
        """RGB uint8 pixels of a region of a level (the viewer's pyramid tiles)."""
        self._check_open()
        try:
            return self.lazy.read(y0, y1, x0, x1, level)
        except DataError as err:
            raise LocalSRError(str(err)) from None

    def roi_context_pixels(self, box):
        """PIM input pixels (its tiles grown by the halo) that one CLSR box needs on its own."""
        m = self.model
        if m.net.pim is None:
            return 0
        self.encode()
        x, y, w, h = box
        b = torch.tensor([[0, x, y, w, h]])
        pb, _ = roi_ops.place_inside(roi_ops.pad_boxes(b, roi_ops.padding_for(h, w, m.net.roi_pad, m.multiple)), b,
                                     self.hw, m.multiple)
        pim = self.state['pim']
        _, px, py, pw, ph = pb[0].tolist()
        return pim.input_pixels(pim.tiles_for([(px, py, pw, ph)]))

    def overview(self, boxes, max_side=1200):
        """``(rgb, scale, origin)`` for a picture of the image with ``boxes`` on it, read without
        reading the image: the smallest pyramid level whose longest side is at least
        ``max_side`` (``scale`` = level-0 pixels per pixel), or, when no level is that small,
        the level-0 region around the boxes (``origin`` = its top-left)."""
        self._check_open()
        for k in reversed(range(len(self.levels))):
            lh, lw = self.levels[k]
            if max(lh, lw) >= max_side or k == 0:
                if max(lh, lw) <= 4 * max_side:
                    return self.read(0, lh, 0, lw, k), self.hw[1] / lw, (0, 0)
                break
        H, W = self.hw
        x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
        x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
        m = max(64, (x1 - x0) // 2, (y1 - y0) // 2)
        x0, y0, x1, y1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
        if max(x1 - x0, y1 - y0) > 4 * max_side:  # boxes far apart: one crop would be huge
            return np.full((max_side, max_side * W // max(H, 1) or 1, 3), 128, np.uint8), max(H, W) / max_side, (0, 0)
        return self.read(y0, y1, x0, x1), 1.0, (x0, y0)

    def _source(self):
        return LazyContext(self.lazy, self.model.device)

    def _crop(self, boxes):
        return self._source().crop(boxes)

    def _pixels(self, x, y, w, h):
        return self.read(y, y + h, x, x + w)

    def _context_paid(self):
        return True  # the context is paid per box, inside its decode (PIM tiles below)

    def _whole_option(self):
        return None, None  # never whole-image SR of an image opened not to be read whole

    def _post_crop(self, boxes, info):
        m = self.model
        tile = m.whole_tile(self.hw, boxes) or max(WHOLE_TILES[-1], min(WHOLE_TILES[0], max(self.hw)))
        return self._whole(m.base, boxes, info, tile)

    def super_resolve(self, boxes, method='clsr', output='uint8', plan=True, pad=None):
        try:
            return super().super_resolve(boxes, method, output, plan, pad)
        except DataError as err:  # a damaged tile found while reading
            raise LocalSRError(str(err)) from None

    def _clsr(self, boxes, plan, info):
        self.encode()
        pim = self.state.get('pim')
        before = (pim.computed, pim.pim_pixels) if pim is not None else (0, 0)
        outs = super()._clsr(boxes, plan, info)
        if pim is not None:  # the PIM tiles this call computed are its share of the context pass
            info['pim_tiles'] = pim.computed - before[0]
            info['gflops'] += self.model.cost.pim(pim.pim_pixels - before[1]) / 1e9
        return outs


def _by_size(boxes):
    groups = {}
    for i, (_, _, w, h) in enumerate(boxes):
        groups.setdefault((w, h), []).append(i)
    return groups


def _chunks(idx, model, pixels_each):
    """Batches of ``idx`` whose decode fits the memory budget (at most MAX_BATCH)."""
    n = max(1, min(MAX_BATCH, model.decode_capacity() // max(pixels_each, 1)))
    return [idx[i:i + n] for i in range(0, len(idx), n)]


def _overlapping(boxes):
    s = sorted(boxes)
    for i, (x, y, w, h) in enumerate(s):
        for x2, y2, w2, h2 in s[i + 1:]:
            if x2 >= x + w:
                break
            if y2 < y + h and y < y2 + h2:
                return True
    return False
