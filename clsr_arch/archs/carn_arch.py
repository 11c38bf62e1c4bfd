"""CARN and CARN-M backbones (Ahn et al., ECCV 2018, "Fast, Accurate, and Lightweight
Super-Resolution with Cascading Residual Network"), registered as plain BasicSR archs.

The LocalSR paper (Sec. 4.1 "Architecture", Table 1 row "CARN") applies CLSR to CARN; its
reported cost (0.65 GFLOPs for a 24x24 LR ROI at x4) is that of the mobile variant CARN-M.
Both variants follow the official implementation (github.com/nmhkahn/CARN-pytorch,
``model/ops.py``, ``model/carn.py``, ``model/carn_m.py``) layer for layer and keep its
module names, so the official CARN-M weights load after a key mapping that only picks one
upsampler branch (:func:`official_carn_m_to_single_scale`), or directly with
``multi_scale=True``.
"""
import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K RGB mean used by the official CARN code


class MeanShift(nn.Module):
    """Adds (``sub=False``) or subtracts (``sub=True``) a per-channel mean.

    Kept as a frozen 1x1 convolution named ``shifter`` (identity weight, +-mean bias) because
    that is how the official checkpoints store it; its parameters never train.
    """

    def __init__(self, mean, sub):
        super().__init__()
        sign = -1.0 if sub else 1.0
        n = len(mean)
        self.shifter = nn.Conv2d(n, n, 1, 1, 0)
        with torch.no_grad():
            self.shifter.weight.copy_(torch.eye(n).view(n, n, 1, 1))
            self.shifter.bias.copy_(sign * torch.tensor(mean, dtype=torch.float32))
        for p in self.shifter.parameters():
            p.requires_grad = False

    def forward(self, x):
        return self.shifter(x)


class BasicBlock(nn.Module):
    """conv (1x1 in every use here) + ReLU: the cascading fusion unit ``c_i`` of the paper."""

    def __init__(self, in_ch, out_ch, ksize=1, stride=1, pad=0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_ch, out_ch, ksize, stride, pad), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.body(x)


class ResidualBlock(nn.Module):
    """CARN residual block (paper Fig. 3b): conv3x3-ReLU-conv3x3, identity add, then ReLU."""

    def __init__(self, num_feat):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class EResidualBlock(nn.Module):
    """Efficient residual block of CARN-M (paper Fig. 3c): grouped conv3x3-ReLU-grouped
    conv3x3-ReLU-pointwise conv1x1, identity add, then ReLU."""

    def __init__(self, num_feat, group):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, 1, 1, 0))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class _UpsampleBranch(nn.Module):
    """One scale's sub-pixel upsampler: (conv3x3 to r^2 C, ReLU, PixelShuffle(r)) per step,
    r = 2 repeated log2(s) times for s in {2, 4}, one r = 3 step for s = 3 (official layout,
    so x4 has its convs at ``body.0`` and ``body.3``)."""

    def __init__(self, num_feat, scale, group):
        if scale in (2, 4, 8):
            steps = [2] * int(math.log2(scale))
        elif scale == 3:
            steps = [3]
        else:
            raise ValueError(f'CARN upsampler: upscale must be 2, 3, 4 or 8, got {scale!r}')
        super().__init__()
        layers = []
        for r in steps:
            layers += [nn.Conv2d(num_feat, r * r * num_feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
                       nn.PixelShuffle(r)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class UpsampleBlock(nn.Module):
    """Single-scale (``up``) or multi-scale (``up2``, ``up3``, ``up4``) upsampler.

    ``forward(x, scale=None)``: ``scale`` picks the branch of a multi-scale block and defaults
    to the network's ``upscale``; a single-scale block only accepts its own scale.
    """

    def __init__(self, num_feat, scale, multi_scale, group):
        super().__init__()
        self.scale = scale
        self.multi_scale = multi_scale
        if multi_scale:
            if scale not in (2, 3, 4):
                raise ValueError(f'CARN multi_scale=True: upscale must be 2, 3 or 4, got {scale!r}')
            self.up2 = _UpsampleBranch(num_feat, 2, group)
            self.up3 = _UpsampleBranch(num_feat, 3, group)
            self.up4 = _UpsampleBranch(num_feat, 4, group)
        else:
            self.up = _UpsampleBranch(num_feat, scale, group)

    def forward(self, x, scale=None):
        scale = self.scale if scale is None else scale
        if self.multi_scale:
            if scale not in (2, 3, 4):
                raise ValueError(f'CARN multi-scale upsampler: scale must be 2, 3 or 4, got {scale!r}')
            return getattr(self, f'up{scale}')(x)
        if scale != self.scale:
            raise ValueError(f'CARN single-scale upsampler was built for x{self.scale}, asked for x{scale}')
        return self.up(x)


class CascadingBlock(nn.Module):
    """Local cascading block (paper Fig. 2b/3): three residual units, each followed by a 1x1
    fusion of the concatenation of everything before it.

    ``shared=False`` (CARN): three residual blocks ``b1, b2, b3``. ``shared=True`` (CARN-M):
    one efficient residual block ``b1`` applied three times (recursive, shared weights).
    """

    def __init__(self, num_feat, shared, group):
        super().__init__()
        self.shared = shared
        if shared:
            self.b1 = EResidualBlock(num_feat, group)
        else:
            self.b1 = ResidualBlock(num_feat)
            self.b2 = ResidualBlock(num_feat)
            self.b3 = ResidualBlock(num_feat)
        self.c1 = BasicBlock(num_feat * 2, num_feat)
        self.c2 = BasicBlock(num_feat * 3, num_feat)
        self.c3 = BasicBlock(num_feat * 4, num_feat)

    def forward(self, x):
        b1, b2, b3 = (self.b1, self.b1, self.b1) if self.shared else (self.b1, self.b2, self.b3)
        c0 = o0 = x
        c1 = torch.cat([c0, b1(o0)], dim=1)
        o1 = self.c1(c1)
        c2 = torch.cat([c1, b2(o1)], dim=1)
        o2 = self.c2(c2)
        c3 = torch.cat([c2, b3(o2)], dim=1)
        return self.c3(c3)


_STRUCTURE_DOC = """

    Forward, in the steps a CLSR stage adapter uses (head / stages / tail)::

        x  = sub_mean(x)                          # head: RGB in [0, 1] minus the DIV2K mean
        x  = entry(x)                             # head: conv3x3, 3 -> C
        c0 = o0 = x
        c1 = cat(c0, b1(o0));  o1 = c1(c1)        # stage 1: cascading block + global 1x1 (2C -> C)
        c2 = cat(c1, b2(o1));  o2 = c2(c2)        # stage 2: (3C -> C)
        c3 = cat(c2, b3(o2));  o3 = c3(c3)        # stage 3: (4C -> C)
        y  = add_mean(exit(upsample(o3)))         # tail: sub-pixel xN, conv3x3 C -> 3, plus mean

    Note the global cascade carries the concatenation ``c_i`` (not only ``o_i``) into the next
    stage; an adapter's stage state is therefore the pair ``(c_i, o_i)``.

    Args:
        num_in_ch, num_out_ch: must both equal ``len(rgb_mean)`` (3): the mean shift is per
            channel, in and out.
        num_feat: channels C (official: 64).
        upscale: 2, 3, 4 (or 8 single-scale).
        multi_scale: build the official multi-scale upsampler (``up2/up3/up4``; ``forward``
            then takes an optional ``scale``) instead of only the ``upscale`` branch ``up``.
        group: groups of the upsampler convs (and of CARN-M's efficient residual blocks).
        rgb_mean: mean subtracted at the input and added back at the output.
    """


class _CARNBase(nn.Module):
    __doc__ = """Shared body of CARN / CARN-M (paper Fig. 2b).""" + _STRUCTURE_DOC

    _shared = False

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, upscale=4, multi_scale=False, group=1,
                 rgb_mean=RGB_MEAN):
        super().__init__()
        name = type(self).__name__
        if num_in_ch != len(rgb_mean) or num_out_ch != len(rgb_mean):
            raise ValueError(f'{name}: num_in_ch ({num_in_ch}) and num_out_ch ({num_out_ch}) must equal '
                             f'len(rgb_mean) ({len(rgb_mean)}): the mean shift is per channel')
        if num_feat % group:
            raise ValueError(f'{name}: num_feat ({num_feat}) must be divisible by group ({group})')
        self.upscale = upscale
        self.multi_scale = multi_scale
        self.sub_mean = MeanShift(rgb_mean, sub=True)
        self.add_mean = MeanShift(rgb_mean, sub=False)
        self.entry = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.b1 = CascadingBlock(num_feat, self._shared, group)
        self.b2 = CascadingBlock(num_feat, self._shared, group)
        self.b3 = CascadingBlock(num_feat, self._shared, group)
        self.c1 = BasicBlock(num_feat * 2, num_feat)
        self.c2 = BasicBlock(num_feat * 3, num_feat)
        self.c3 = BasicBlock(num_feat * 4, num_feat)
        self.upsample = UpsampleBlock(num_feat, upscale, multi_scale, group)
        self.exit = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x, scale=None):
        x = self.sub_mean(x)
        x = self.entry(x)
        c0 = o0 = x
        c1 = torch.cat([c0, self.b1(o0)], dim=1)
        o1 = self.c1(c1)
        c2 = torch.cat([c1, self.b2(o1)], dim=1)
        o2 = self.c2(c2)
        c3 = torch.cat([c2, self.b3(o2)], dim=1)
        o3 = self.c3(c3)
        out = self.upsample(o3, scale)
        out = self.exit(out)
        return self.add_mean(out)


@ARCH_REGISTRY.register()
class CARN(_CARNBase):
    __doc__ = """CARN (Ahn et al. 2018): three cascading blocks of three residual blocks each.

    ``CARN(num_in_ch=3, num_out_ch=3, num_feat=64, upscale=4, multi_scale=False, group=1)``.
    Parameters: 1,591,963 multi-scale (the paper's 1,592K; 24 of them the frozen mean shift),
    1,111,899 single-scale x4.""" + _STRUCTURE_DOC
    _shared = False


@ARCH_REGISTRY.register()
class CARN_M(_CARNBase):  # noqa: N801  (official name)
    __doc__ = """CARN-M (Ahn et al. 2018, mobile): each cascading block holds one efficient
    residual block (grouped convs, group 4) applied three times with shared weights.

    ``CARN_M(num_in_ch=3, num_out_ch=3, num_feat=64, upscale=4, multi_scale=False, group=4)``.
    Parameters: 414,811 multi-scale (= the official checkpoint; the paper's 412K; 24 of them the
    frozen mean shift), 294,171 single-scale x4.""" + _STRUCTURE_DOC
    _shared = True

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, upscale=4, multi_scale=False, group=4,
                 rgb_mean=RGB_MEAN):
        super().__init__(num_in_ch, num_out_ch, num_feat, upscale, multi_scale, group, rgb_mean)


def official_carn_m_to_single_scale(state_dict, scale=4):
    """Map an official multi-scale CARN(-M) state dict to our single-scale ``upscale=scale`` one.

    Every key keeps its name (ours are the official ones) except the upsampler:
    ``upsample.up{scale}.body.*`` -> ``upsample.up.body.*``; the other scales' branches
    ``upsample.up{2,3,4}.*`` are dropped. A ``module.`` prefix (DataParallel) is stripped.
    Raises ValueError if the dict has no ``upsample.up{scale}`` branch.
    """
    if scale not in (2, 3, 4):
        raise ValueError(f'official CARN checkpoints hold x2, x3 and x4 upsamplers; got scale={scale!r}')
    src = f'upsample.up{scale}.'
    out = OrderedDict()
    found = False
    for key, value in state_dict.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith(src):
            out['upsample.up.' + key[len(src):]] = value
            found = True
        elif key.startswith(('upsample.up2.', 'upsample.up3.', 'upsample.up4.')):
            continue  # another scale's branch
        else:
            out[key] = value
    if not found:
        raise ValueError(f'state dict has no {src}* keys: not an official multi-scale CARN checkpoint '
                         f'(upsampler keys: {sorted(k for k in state_dict if "upsample" in k)[:6]})')
    return out
