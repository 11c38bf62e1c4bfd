"""Any single-image SR network for LocalSR, loaded through spandrel (issue 24, item 3).

People bring a ``.pth``/``.safetensors`` from a model zoo (ESRGAN, SwinIR, HAT, CRAFT, SPAN, ...)
and load it with `spandrel <https://github.com/chaiNNer-org/spandrel>`_, as chaiNNer and ComfyUI
do. :func:`load_sr_model` reads such a file into a :class:`SpandrelSR` module -- the plain
network behind the LocalSR paper's *pre-crop* and *post-crop* baselines (Sec. 1, Table 1) -- that
respects spandrel's size requirements (``minimum``, ``multiple_of``): an input smaller than the
minimum or not a multiple is padded at the bottom/right (reflect, replicate for tiny inputs) and
the output cropped back, as :func:`clsr_arch.archs.backbone_adapters.run_backbone` does for
SwinIR's window. Pre-crop asks for the multiple with real context first (``roi.padding_for``),
so the padding inside only ever meets the image border.

Bad files are :class:`~clsr_arch.api.errors.LocalSRError` naming the file: one spandrel does not
recognise, a network that is not single-image SR (scale 1, inpainting, other channel counts),
a checkpoint for another scale than asked.
"""
import hashlib
import os
import os.path as osp

import torch
from torch import nn
from torch.nn import functional as F

from .errors import LocalSRError


def weights_hash(path, chunk=1 << 20):
    """SHA-256 of a weights file (hex): the key of everything calibrated for it."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


class SpandrelSR(nn.Module):
    """A spandrel-loaded SR network as a plain backbone: RGB ``[B, 3, h, w]`` in [0, 1] to
    ``[B, 3, s*h, s*w]``, any ``h, w >= 1`` (padded to spandrel's ``minimum``/``multiple_of``
    inside, output cropped back).

    Attributes: ``model`` (the spandrel network, a submodule: its parameters keep their names
    under ``model.``), ``upscale``, ``minimum``, ``multiple``, ``architecture`` (spandrel's id,
    e.g. ``'CRAFT'``), ``path`` and ``sha256`` of the file."""

    def __init__(self, model, scale, minimum=0, multiple=1, architecture='?', path=None, sha256=None, square=False):
        super().__init__()
        self.model = model
        self.upscale = int(scale)
        self.minimum = int(minimum or 0)
        self.multiple = max(1, int(multiple or 1))
        self.architecture = architecture
        self.path, self.sha256 = path, sha256
        self.square = bool(square)

    def forward(self, x):
        h, w = x.shape[-2:]
        m = self.multiple
        th, tw = max(h, self.minimum), max(w, self.minimum)
        if self.square:
            th = tw = max(th, tw)
        th, tw = th + (-th) % m, tw + (-tw) % m
        if (th, tw) != (h, w):
            mode = 'reflect' if th - h < h and tw - w < w else 'replicate'
            x = F.pad(x, (0, tw - w, 0, th - h), mode=mode)
        out = self.model(x)
        s = self.upscale
        return out[..., :s * h, :s * w]


def load_sr_model(path, scale=None, device='cpu'):
    """The SR network in ``path`` (any file spandrel recognises) as a :class:`SpandrelSR` in eval
    mode; ``scale``: the scale asked for (None: the file's). LocalSRError naming the file when it
    cannot be read, spandrel does not recognise it, it is not single-image RGB SR, or its scale
    is not ``scale``."""
    try:
        import spandrel
    except ImportError:  # pragma: no cover - setup.py installs it
        raise LocalSRError('loading a model file needs spandrel: pip install spandrel') from None
    path = os.fspath(path)
    if not osp.isfile(path):
        raise LocalSRError(f'model {path}: no such file')
    try:
        desc = spandrel.ModelLoader().load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise LocalSRError(f'model {path}: not a network spandrel {spandrel.__version__} recognises (its state dict '
                           'matches none of spandrel\'s architectures)') from None
    except ValueError as err:  # spandrel: unsupported extension
        raise LocalSRError(f'model {path}: {err}') from None
    except Exception as err:  # unreadable pickle / safetensors / zip, truncated file, ...
        raise LocalSRError(f'model {path}: cannot be read as a model file ({type(err).__name__}: '
                           f'{str(err).splitlines()[0] if str(err) else ""})') from None
    arch = desc.architecture.id
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise LocalSRError(f'model {path}: a {arch} network of kind {type(desc).__name__} (purpose {desc.purpose}), '
                           'not single-image super-resolution')
    if desc.scale == 1 or desc.purpose != 'SR':
        raise LocalSRError(f'model {path}: a x{desc.scale} {arch} network (purpose {desc.purpose}), not '
                           'super-resolution: LocalSR needs a network that upscales')
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise LocalSRError(f'model {path}: a {arch} network with {desc.input_channels} input and '
                           f'{desc.output_channels} output channels; LocalSR needs RGB in and out')
    if scale is not None and int(scale) != desc.scale:
        raise LocalSRError(f'model {path}: a x{desc.scale} {arch} checkpoint, but x{int(scale)} was asked for')
    req = desc.size_requirements
    net = SpandrelSR(desc.model, desc.scale, req.minimum, req.multiple_of, arch, path, weights_hash(path), req.square)
    return net.eval().to(device)
