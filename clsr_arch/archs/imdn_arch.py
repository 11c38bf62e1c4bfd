"""IMDN (Hui et al., ACM MM 2019, "Lightweight Image Super-Resolution with Information
Multi-distillation Network"), registered as a plain BasicSR arch ``IMDN``.

Written from the layout of the official x4 checkpoint (``../shared/data/weights/IMDN_x4.pth``,
described in ``../shared/data/README.md``) with its parameter names, so that checkpoint loads
strictly once the ``module.`` prefix of ``nn.DataParallel`` is stripped
(:func:`clsr_arch.archs.clsr_arch.backbone_state_dict` does that):

* ``fea_conv``: 3x3, 3 -> 64 (RGB in [0, 1], no mean shift);
* ``IMDB1..6`` (:class:`IMDBlock`): ``c1..c3`` 3x3 convolutions each followed by LeakyReLU(0.05)
  whose first 16 channels are *distilled* (kept) and the other 48 refined by the next one,
  ``c4`` 3x3 (48 -> 16), the four distilled parts concatenated (64), a contrast-aware channel
  attention ``cca`` and a 1x1 ``c5``, plus the block's input;
* ``c``: 1x1 over the six blocks' outputs concatenated (384 -> 64) + LeakyReLU(0.05);
  ``LR_conv`` 3x3 plus a long skip from ``fea_conv``; ``upsampler``: 3x3 to 3 s^2 channels +
  PixelShuffle(s).

The contrast-aware attention pools the mean and the standard deviation of each channel over the
*whole input*: IMDN's output on a region depends on how much image it is given, not only through
its receptive field. CLSR's base keeps that as it is -- the statistics come from the padded ROI
the base runs on, exactly as pre-cropping with the same padding (docs/imdn_official.md says why).
"""
import torch
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY


class ContrastChannelAttention(nn.Module):
    """CCA: per channel, ``sigmoid(W2 relu(W1 (std + mean)))`` over the spatial extent, times x."""

    def __init__(self, channels, reduction=16):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()  # population std
        return x * self.conv_du(std + mean)


class IMDBlock(nn.Module):
    """One information multi-distillation block (names ``c1..c5``, ``cca`` as the checkpoint)."""

    def __init__(self, channels=64, distill=0.25, slope=0.05):
        super().__init__()
        self.kept = int(channels * distill)
        self.rest = channels - self.kept
        self.c1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.c2 = nn.Conv2d(self.rest, channels, 3, 1, 1)
        self.c3 = nn.Conv2d(self.rest, channels, 3, 1, 1)
        self.c4 = nn.Conv2d(self.rest, self.kept, 3, 1, 1)
        self.c5 = nn.Conv2d(self.kept * 4, channels, 1)
        self.cca = ContrastChannelAttention(self.kept * 4)
        self.act = nn.LeakyReLU(slope)

    def forward(self, x):
        kept, rest = [], x
        for conv in (self.c1, self.c2, self.c3):
            d, rest = torch.split(self.act(conv(rest)), (self.kept, self.rest), dim=1)
            kept.append(d)
        kept.append(self.c4(rest))
        return self.c5(self.cca(torch.cat(kept, dim=1))) + x


@ARCH_REGISTRY.register()
class IMDN(nn.Module):
    """IMDN for x``upscale`` SR (official x4 model: ``num_feat=64, num_block=6``)."""

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=6, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.fea_conv = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        for i in range(num_block):
            self.add_module(f'IMDB{i + 1}', IMDBlock(num_feat))
        self.num_block = num_block
        self.c = nn.Sequential(nn.Conv2d(num_feat * num_block, num_feat, 1), nn.LeakyReLU(0.05))
        self.LR_conv = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(num_feat, num_out_ch * upscale ** 2, 3, 1, 1),
                                       nn.PixelShuffle(upscale))

    def blocks(self):
        return [getattr(self, f'IMDB{i + 1}') for i in range(self.num_block)]

    def forward(self, x):
        fea = self.fea_conv(x)
        outs, h = [], fea
        for block in self.blocks():
            h = block(h)
            outs.append(h)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea)
