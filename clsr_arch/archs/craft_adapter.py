"""CLSR over CRAFT (issue 24, item 4): spandrel's CRAFT as a BasicSR arch and its stage adapter.

CRAFT (Li et al., ICCV 2023, "Cross-Refinement Adaptive Feature modulation Transformer") is a
CNN-transformer hybrid: ``conv_first`` -> residual cross-refinement fusion groups (``layers``;
each: shifted rectangle-window attention, high-frequency enhancement convs and a *transposed*
channel attention, Restormer-style, whose ``C x C`` attention map is pooled over every pixel of
its input) -> LayerNorm ``norm`` -> ``conv_after_body`` + long skip -> one-step pixel-shuffle
upsampler, with a mean shift around it. The network is spandrel's (``spandrel.architectures.CRAFT``,
the class ``spandrel.ModelLoader`` builds for ``CRAFT_x4.pth``), registered here into BasicSR's
ARCH_REGISTRY as ``CRAFT`` so a YAML ``backbone: {type: CRAFT}`` builds it, and its official
weights (BasicSR ``{'params': ...}``) load strictly through ``pretrain_backbone``.

The adapter (LocalSR paper Sec. 3.1: the base branch as head -> stages -> tail):

* ``head``: CRAFT's own input padding -- its forward *always* appends a mirrored strip at the
  bottom/right up to the next multiple of the 16-pixel window strictly above the size (16 px on
  an input that already is a multiple) -- then the mean shift and ``conv_first``. ``state['full']``
  is the padded feature map the groups run on; ``state['feat']`` its top-left ``h x w`` crop on
  the input's LR pixel grid, the tensor CLSR's GCM and PIM read and add into.
* ``stage(i)``: one group on the padded map, after writing a replaced ``state['feat']`` (CLSR's
  injections) back into its top-left corner; the mirrored strip keeps what the group computed.
* ``tail``: the same write-back, ``norm``, ``conv_after_body`` + shallow skip, upsampler, mean,
  cropped to ``s*h x s*w``.

With nothing injected this is spandrel's ``CRAFT.forward`` operation for operation
(``torch.equal``, tests/test_spandrel.py), so CLSR-CRAFT loaded from the official weights with
its zero-initialised GCM value projection and PIM fusions equals the plain CRAFT on the padded
ROI. Import this module (YAML: ``network_g.adapter_modules: [clsr_arch.archs.craft_adapter]``)
for both registrations; :func:`clsr_arch.api.LocalSR.from_model` imports it itself.
"""
import torch
from spandrel.architectures.CRAFT import CRAFT

from basicsr.utils.registry import ARCH_REGISTRY

from .backbone_adapters import StageAdapter, register_adapter

if 'CRAFT' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(CRAFT)


@register_adapter(CRAFT)
class CRAFTAdapter(StageAdapter):
    """spandrel's CRAFT seen as head -> ``len(layers)`` groups -> tail (module docstring).

    ``multiple`` = the attention window (16): CLSR pads the ROI to it with real context, as for
    SwinIR. Defaults: ``roi_pad 4`` (24 + 8 = 32, a multiple of 16: all real context, and the pad
    at which pre-crop meets post-crop, docs/padding_ablation.md) and the GCM after the head
    (``gcm.stage 0``: a group on 64 windows would cost more than the ROI's whole base pass)."""

    defaults = {'roi_pad': 4, 'gcm': {'num_windows': 64, 'stage': 0}}

    def __init__(self, net):
        super().__init__(net)
        self.num_feat = net.embed_dim
        self.num_stages = len(net.layers)
        self.multiple = net.window_size

    def head(self, x):
        n = self.net
        h, w = x.shape[-2:]
        ws = n.window_size
        # CRAFT.forward's padding, verbatim (inference_CRAFT.py): always at least one row/column
        h_pad = (h // ws + 1) * ws - h
        w_pad = (w // ws + 1) * ws - w
        x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :h + h_pad, :]
        x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, :w + w_pad]
        shallow = n.conv_first((x - n.mean.type_as(x)) * n.img_range)
        feat = shallow[..., :h, :w]
        return {'hw': (h, w), 'shallow': shallow, 'full': shallow, 'feat': feat, 'view': feat}

    @staticmethod
    def _full(state):
        """The padded map with ``state['feat']`` in its top-left corner (a new tensor only when
        CLSR replaced ``feat``)."""
        if state['feat'] is state['view']:
            return state['full']
        h, w = state['hw']
        full = state['full'].clone()
        full[..., :h, :w] = state['feat']
        return full

    def _params(self):
        n = self.net
        return {'attn_mask': (None, None), 'rpi_sa_h': n.relative_position_index_h,
                'rpi_sa_v': n.relative_position_index_v, 'biases_v': n.biases_v, 'biases_h': n.biases_h}

    def stage(self, i, state):
        full = self._full(state)
        full = self.net.layers[i](full, tuple(full.shape[2:]), self._params())
        h, w = state['hw']
        feat = full[..., :h, :w]
        return {**state, 'full': full, 'feat': feat, 'view': feat}

    def tail(self, state):
        n = self.net
        h, w = state['hw']
        x = n.conv_after_body(n.norm(self._full(state))) + state['shallow']
        x = n.upsample(x)
        x = x / n.img_range + n.mean.type_as(x)
        return x[..., :h * n.upscale, :w * n.upscale]
