"""Proximity Integration Module branch (LocalSR paper Sec. 3.3, Fig. 5, Eqs. 6-7).

A slim branch with ``c' = round(ratio * c)`` channels (``ratio`` 0.1 as in Sec. 4.1; rounded to a
multiple of the backbone's group count, at least one group) runs over the whole context, one
slim stage per base stage. At base stage ``i`` its feature ``p_i`` is cropped to the (padded)
ROI and fused into the base feature ``z`` (Eq. 6) by adding it to the first ``c'`` channels.

Choices, and why:

* **One slim block per base stage**: a residual block of two 3x3 convs (``c' -> c'``) per
  SRResNet residual block / RCAN residual group / CARN cascading block / SwinIR RSTB. Table 1's
  Urban100-minus-BSD100 FLOPs put the paper's context cost at ~13-50 kFLOPs per context pixel;
  a slim copy of every RCAN block (200 convs) would be ~8 GFLOPs on a BSD100 context alone.
  For SRResNet (16 stages, c' = 6) the branch costs ~21 kFLOPs/pixel; for SwinIR (classic,
  6 stages, c' = 18) ~70 kFLOPs/pixel, which fits its Table 1 budget; a slim transformer
  stage would add attention and MLP costs per pixel for no clear gain on a side branch.
* **Zero-initialised 1x1 fusion**: the paper adds ``crop(p)`` directly; that would change a
  pretrained base at initialisation. Each stage's ``crop(p_i)`` instead passes through a 1x1 conv
  with zero weight and bias, so CLSR on pretrained weights starts exactly at the plain
  backbone, and the conv learns the fusion (it receives gradients from step one).
* **Own HR tail** (``Y_P``, Eq. 7): conv ``c' -> 3 s^2`` + PixelShuffle plus a bilinear upsampled
  context, supervised by the context L1 term during training only; never run at inference.
"""
import torch
from torch import nn
from torch.nn import functional as F

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def slim_channels(num_feat, ratio, group=1):
    """``c'``: ``ratio * num_feat`` rounded to a multiple of ``group`` (>= one group, <= num_feat)."""
    if not 0 < ratio <= 1:
        raise ValueError(f'pim ratio must be in (0, 1], got {ratio}')
    c = int(round(num_feat * ratio / group)) * group
    return min(num_feat, max(group, c))


class SlimBlock(nn.Module):
    """One PIM stage: conv3x3 - LeakyReLU - conv3x3 with an identity skip (c' channels)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class ProximityIntegrationBranch(nn.Module):
    """The PIM branch: ``encode`` the context once, ``fuse`` crops into the base at each stage.

    Args:
        num_feat: base feature channels ``c``.
        num_stages: base stages (one PIM per stage).
        scale: SR factor of the HR context head.
        ratio: ``c' / c`` (paper: 1/10).
        group: channel granularity (the backbone's conv group count).
    """

    def __init__(self, num_feat, num_stages, scale, ratio=0.1, group=1, in_ch=3):
        super().__init__()
        self.num_feat = num_feat
        self.channels = slim_channels(num_feat, ratio, group)
        self.scale = scale
        self.register_buffer('mean', torch.tensor(RGB_MEAN[:in_ch]).view(1, in_ch, 1, 1), persistent=False)
        self.head = nn.Conv2d(in_ch, self.channels, 3, 1, 1)
        self.blocks = nn.ModuleList(SlimBlock(self.channels) for _ in range(num_stages))
        self.fuse = nn.ModuleList(nn.Conv2d(self.channels, self.channels, 1) for _ in range(num_stages))
        for conv in self.fuse:  # base unchanged at init (module docstring)
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.tail = nn.Sequential(
            nn.Conv2d(self.channels, in_ch * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))

    def encode(self, context):
        """``[p_1, ..., p_S]``: the branch's feature after each stage, each ``[B, c', H, W]``."""
        p = self.head(context - self.mean)
        feats = []
        for block in self.blocks:
            p = block(p)
            feats.append(p)
        return feats

    def predict_context(self, feats, context):
        """``Y_P``: the HR context ``[B, 3, sH, sW]`` from the last stage (training loss only)."""
        up = F.interpolate(context, scale_factor=self.scale, mode='bilinear', align_corners=False)
        return self.tail(feats[-1]) + up

    def fuse_into(self, i, z, p_crop):
        """Eq. 6: ``z~ = F(z, crop(p_i))`` = z with ``fuse_i(crop(p_i))`` added to its first c' channels."""
        c = self.channels
        return torch.cat([z[:, :c] + self.fuse[i](p_crop), z[:, c:]], dim=1)
