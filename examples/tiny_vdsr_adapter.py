"""A backbone BasicSR does not ship, and its CLSR stage adapter (docs/adapters.md; issue 24).

``network_g: {type: CLSR, adapter_modules: [examples.tiny_vdsr_adapter], backbone: {type: TinyVDSR}}``
builds CLSR around it from YAML alone; tests/test_adapters.py runs this file.
"""
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY
from clsr_arch.archs.backbone_adapters import StageAdapter, register_adapter


@ARCH_REGISTRY.register()
class TinyVDSR(nn.Module):
    """conv + ReLU, ``num_block`` x (conv + ReLU), conv to 3 s^2 channels + pixel shuffle, + bilinear input."""

    def __init__(self, num_feat=32, num_block=4, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.first = nn.Sequential(nn.Conv2d(3, num_feat, 3, 1, 1), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.ReLU()) for _ in range(num_block))
        self.last = nn.Sequential(nn.Conv2d(num_feat, 3 * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))

    def forward(self, x):
        feat = self.first(x)
        for block in self.blocks:
            feat = block(feat)
        return self.last(feat) + F.interpolate(x, scale_factor=self.upscale, mode='bilinear', align_corners=False)


# --- the adapter: head -> stages -> tail reproduces TinyVDSR.forward exactly ---------------
@register_adapter('TinyVDSR')  # the BasicSR type name; the class itself works too
class TinyVDSRAdapter(StageAdapter):
    defaults = {'roi_pad': 2, 'gcm': {'num_windows': 48, 'stage': 1}}  # CLSR options it fills in

    def __init__(self, net):
        super().__init__(net)  # self.net = net, held by reference (not a submodule)
        self.num_feat = net.first[0].out_channels  # channels of state['feat']
        self.num_stages = len(net.blocks)  # one PIM block, one fusion per stage

    def head(self, x):  # x: [B, 3, h, w] in [0, 1]
        return {'x': x, 'feat': self.net.first(x)}  # 'feat': what GCM and PIM read and add into

    def stage(self, i, state):
        return {**state, 'feat': self.net.blocks[i](state['feat'])}

    def tail(self, state):  # everything after the last stage, global skips included
        up = F.interpolate(state['x'], scale_factor=self.net.upscale, mode='bilinear', align_corners=False)
        return self.net.last(state['feat']) + up
