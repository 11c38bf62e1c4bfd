"""Global Context Module (LocalSR paper Sec. 3.2, Fig. 4, Eqs. 2-5).

The context is partitioned into ``r x r`` windows, ``N`` of them subsampled uniformly
(:func:`clsr_arch.archs.roi.window_grid`) and encoded by ``G`` (the backbone's own head and first
``stage`` stages, run by CLSR). This module then

* downsamples the ROI feature ``z`` and every window feature ``m_i`` by a "scale module"
  (Eq. 4): a zero-initialised stride-2 conv plus a bilinear residual (:class:`ScaleDown`);
* projects them with multi-head ``W_Q``, ``W_K``, ``W_V`` (Eq. 2, c x c, no bias);
* aggregates with ``g = softmax(alpha + beta * Q K^T / sqrt(c_h) + b) V`` (Eq. 3), where
  ``b = -gamma_h * d`` and ``d`` is the LR-pixel distance between the query token and the key
  token (both positions in context coordinates), ``gamma_h`` a learnable per-head scale (so the
  proximity bias receives gradients);
* upsamples ``g`` back to ``z``'s size (Eq. 5): zero-initialised transposed conv plus a bilinear
  residual (:class:`ScaleUp`). CLSR adds the result to ``z`` once, after stage ``stage``.

Two choices the paper leaves open, documented here:

1. ``alpha``: a scalar added to every logit cancels in a plain softmax. We give it meaning with a
   *null key*: one extra logit fixed at 0 whose value is 0. ``alpha`` then sets how much of the
   attention mass goes to the context at all (``alpha -> -inf`` switches the GCM off, large
   ``alpha`` is plain softmax attention over the windows).
2. Initialisation: ``W_V`` is zero-initialised (as are the scale convs, per the paper), so the
   GCM's output is exactly 0 at initialisation and a pretrained backbone's output is unchanged
   when CLSR is built on it. ``W_V`` receives a gradient at the first step (its input, the
   attention-weighted window features, is non-zero); from the second step on ``W_Q``, ``W_K``,
   ``alpha``, ``beta`` and ``gamma`` do too.

Keys and values do not depend on the ROI: :meth:`GlobalContextModule.encode_keys` computes them
once per context (the shared context pass) and :meth:`GlobalContextModule.forward` serves any
number of ROIs.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from .roi import token_positions


class ScaleDown(nn.Module):
    """Eq. 4: ``z_down = S_down(z; theta_down) + bilinear_down(z)`` with ``S_down`` a single
    stride-2 3x3 conv initialised to zero (ControlNet-style), so it starts as bilinear."""

    def __init__(self, num_feat):
        super().__init__()
        self.conv = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        y = self.conv(x)  # ceil(h / 2) x ceil(w / 2)
        return y + F.interpolate(x, size=y.shape[2:], mode='bilinear', align_corners=False)


class ScaleUp(nn.Module):
    """Eq. 5: ``g_up = S_up(g; theta_up) + bilinear_up(g)`` with ``S_up`` a single stride-2
    transposed conv initialised to zero; ``size`` picks the output (2n or 2n - 1)."""

    def __init__(self, num_feat):
        super().__init__()
        self.conv = nn.ConvTranspose2d(num_feat, num_feat, 3, 2, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, g, size):
        y = self.conv(g, output_size=list(size))
        return y + F.interpolate(g, size=size, mode='bilinear', align_corners=False)


class GlobalContextModule(nn.Module):
    """Cross-attention from the ROI feature to N encoded context windows (paper Sec. 3.2).

    Args:
        num_feat: channels ``c`` of the backbone feature at the injection stage.
        heads: attention heads (``num_feat`` must be divisible by it).
        dist_scale_init: initial ``gamma`` of the distance bias ``b = -gamma * d`` (d in LR
            pixels); 0.01 makes a window 100 px away lose one logit unit.
    """

    def __init__(self, num_feat, heads=4, dist_scale_init=0.01):
        super().__init__()
        if num_feat % heads:
            raise ValueError(f'gcm: heads ({heads}) must divide the backbone feature channels ({num_feat})')
        self.num_feat, self.heads = num_feat, heads
        self.head_dim = num_feat // heads
        self.down_q = ScaleDown(num_feat)
        self.down_kv = ScaleDown(num_feat)
        self.to_q = nn.Linear(num_feat, num_feat, bias=False)
        self.to_k = nn.Linear(num_feat, num_feat, bias=False)
        self.to_v = nn.Linear(num_feat, num_feat, bias=False)
        nn.init.zeros_(self.to_v.weight)  # GCM output exactly 0 at init (see module docstring)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.beta = nn.Parameter(torch.ones(()))
        self.dist_scale = nn.Parameter(torch.full((heads, ), float(dist_scale_init)))
        self.up = ScaleUp(num_feat)

    def _split(self, t):
        # [..., L, C] -> [..., heads, L, head_dim]
        *lead, length, _ = t.shape
        return t.view(*lead, length, self.heads, self.head_dim).transpose(-3, -2)

    def encode_keys(self, windows, corners):
        """Keys/values of the context, once per context.

        Args:
            windows: ``[B, N, C, r, r]`` features ``m_i`` of the N windows from ``G``.
            corners: ``LongTensor[N, 2]`` (x, y) of each window's top-left LR pixel.
        Returns a dict with ``k``, ``v`` ``[B, heads, N*t, head_dim]`` and ``pos`` ``[N*t, 2]``.
        """
        b, n, c, r, r2 = windows.shape
        m = self.down_kv(windows.reshape(b * n, c, r, r2))  # M_down
        hq, wq = m.shape[2:]
        tokens = m.flatten(2).transpose(1, 2).reshape(b, n * hq * wq, c)
        pos = token_positions(corners[:, 0], corners[:, 1], hq, wq).reshape(n * hq * wq, 2)
        return {'k': self._split(self.to_k(tokens)), 'v': self._split(self.to_v(tokens)),
                'pos': pos.to(windows.device)}

    def forward(self, z, origins, batch_index, keys):
        """GCM output ``g_up`` for ROI features.

        Args:
            z: ``[R, C, h, w]`` base-branch feature of the (padded) ROIs.
            origins: ``LongTensor[R, 2]`` (x, y) LR context pixel of ``z``'s top-left.
            batch_index: ``LongTensor[R]`` context of each ROI.
            keys: :meth:`encode_keys`'s dict.
        Returns ``[R, C, h, w]``, to be added to ``z``.
        """
        zd = self.down_q(z)
        r, c, hq, wq = zd.shape
        q = self._split(self.to_q(zd.flatten(2).transpose(1, 2)))  # [R, heads, Q, d]
        k, v = keys['k'][batch_index], keys['v'][batch_index]  # [R, heads, L, d]
        logits = torch.matmul(q, k.transpose(-1, -2)) * (self.beta / math.sqrt(self.head_dim))
        qpos = token_positions(origins[:, 0].to(z.device), origins[:, 1].to(z.device), hq, wq)  # [R, Q, 2]
        dist = torch.cdist(qpos, keys['pos'].unsqueeze(0).expand(r, -1, -1))  # [R, Q, L] LR pixels
        bias = -self.dist_scale.view(1, -1, 1, 1) * dist.unsqueeze(1)
        logits = logits + bias + self.alpha
        # null key: logit 0, value 0 -> alpha controls how much context is attended
        null = logits.new_zeros(logits.shape[:-1] + (1, ))
        attn = torch.softmax(torch.cat([logits, null], dim=-1), dim=-1)[..., :-1]
        g = torch.matmul(attn, v)  # [R, heads, Q, d]
        g = g.transpose(1, 2).reshape(r, hq * wq, c).transpose(1, 2).reshape(r, c, hq, wq)
        return self.up(g, z.shape[2:])
