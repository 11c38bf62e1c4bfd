"""Real-world degradations: BasicSR's Real-ESRGAN second-order model, applied to a whole context.

LocalSR's claim on real photos (issue 21) is that a degradation -- blur, noise, JPEG -- is a
property of the whole image, readable from the context and hard to read from a 24x24 ROI. So
the **whole HR context patch is degraded once** and the ROI is cropped from that LR context:
ROI and context share one degradation.

Nothing here is a new degradation model. The pieces are BasicSR's (``basicsr.data.degradations``,
``DiffJPEG``, ``filter2D``), wired exactly as Real-ESRGAN wires them:

* :func:`sample_kernels` is the kernel part of ``RealESRGANDataset.__getitem__`` (blur kernels
  of both orders and the final sinc filter), drawn per training item in the dataloader;
* :func:`second_order` is the degradation part of ``RealESRNetModel.feed_data``, run on the
  model's device (CPU or CUDA) for a whole batch. It makes the same random draws in the same
  order (``tests/test_degradation.py`` checks it against BasicSR's own ``feed_data``, bit for
  bit), but draws every parameter explicitly so that it can report them: the degraded test
  sets (``data/make_degraded_sets.py``) write them into their manifest.

Option names and defaults are Real-ESRGAN's ``train_realesrnet_x4plus.yml``: kernel options in
the training dataset's ``degradation`` block, pipeline options beside them. ``{type: bicubic}``
instead makes the paper's clean LR (MATLAB bicubic, BasicSR's ``imresize``, 8-bit) from the same
HR contexts, so bicubic models train on exactly the same images and crops.
"""
import math
import random

import numpy as np
import torch
from torch.nn import functional as F

from basicsr.data.degradations import (add_gaussian_noise_pt, add_poisson_noise_pt, circular_lowpass_kernel,
                                       random_mixed_kernels)
from basicsr.utils import DiffJPEG
from basicsr.utils.img_process_util import filter2D
from basicsr.utils.matlab_functions import imresize

__all__ = ['DEFAULTS', 'Degrader', 'check_options', 'sample_kernels', 'second_order']

_KINDS = ['iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso']
_KPROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
#: Real-ESRGAN's train_realesrnet_x4plus.yml (both orders, the final sinc filter, the pipeline).
DEFAULTS = {
    # first order, kernels (RealESRGANDataset)
    'blur_kernel_size': 21, 'kernel_list': _KINDS, 'kernel_prob': _KPROB, 'sinc_prob': 0.1,
    'blur_sigma': [0.2, 3], 'betag_range': [0.5, 4], 'betap_range': [1, 2],
    # second order, kernels
    'blur_kernel_size2': 21, 'kernel_list2': _KINDS, 'kernel_prob2': _KPROB, 'sinc_prob2': 0.1,
    'blur_sigma2': [0.2, 1.5], 'betag_range2': [0.5, 4], 'betap_range2': [1, 2],
    'final_sinc_prob': 0.8,
    # pipeline (RealESRNetModel)
    'resize_prob': [0.2, 0.7, 0.1], 'resize_range': [0.15, 1.5], 'gaussian_noise_prob': 0.5,
    'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3], 'gray_noise_prob': 0.4, 'jpeg_range': [30, 95],
    'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3], 'resize_range2': [0.3, 1.2],
    'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25], 'poisson_scale_range2': [0.05, 2.5],
    'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95],
    # ours, default off (Real-ESRGAN has no such path): the share of samples degraded by the
    # first-order blur kernel and MATLAB bicubic x1/s only -- no noise, no JPEG (see Degrader)
    'blur_only_prob': 0.0,
}
_KERNEL_RANGE = [2 * v + 1 for v in range(3, 11)]  # 7..21, hard-coded in RealESRGANDataset too
_MODES = ['area', 'bilinear', 'bicubic']


def check_options(opt, where='degradation'):
    """``DEFAULTS`` updated by ``opt`` (a dict, or True for the defaults); unknown keys are
    errors naming the option, so a typo does not silently train on the default."""
    if opt is True or opt is None:
        opt = {}
    if not isinstance(opt, dict):
        raise ValueError(f'option {where}: expected a mapping of Real-ESRGAN degradation options, got {opt!r}')
    kind = opt.get('type', 'realesrgan')
    if kind == 'bicubic':
        if set(opt) != {'type'}:
            raise ValueError(f'option {where}: type bicubic takes no other keys, got {sorted(set(opt) - {"type"})}')
        return {'type': 'bicubic'}
    if kind != 'realesrgan':
        raise ValueError(f'option {where}.type: expected realesrgan (default) or bicubic, got {kind!r}')
    opt = {k: v for k, v in opt.items() if k != 'type'}
    unknown = sorted(set(opt) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'option {where}: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}')
    out = dict(DEFAULTS, type='realesrgan')
    out.update(opt)
    for key in ('resize_prob', 'resize_prob2'):
        if len(out[key]) != 3 or min(out[key]) < 0 or sum(out[key]) <= 0:
            raise ValueError(f'option {where}.{key}: expected three non-negative [up, down, keep] weights, '
                             f'got {out[key]!r}')
    if not 0 <= out['blur_only_prob'] <= 1:
        raise ValueError(f'option {where}.blur_only_prob: expected a probability in [0, 1], got {out["blur_only_prob"]!r}')
    for key in ('jpeg_range', 'jpeg_range2'):
        lo, hi = out[key]
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f'option {where}.{key}: expected 1 <= low <= high <= 100, got {out[key]!r}')
    return out


def _one_kernel(opt, suffix):
    """One blur kernel of order ``suffix`` ('' or '2'), padded to 21x21 (RealESRGANDataset)."""
    size = random.choice(_KERNEL_RANGE)
    if np.random.uniform() < opt['sinc_prob' + suffix]:
        omega_c = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
        kernel = circular_lowpass_kernel(omega_c, size, pad_to=False)
    else:
        sigma = opt['blur_sigma' + suffix]
        kernel = random_mixed_kernels(opt['kernel_list' + suffix], opt['kernel_prob' + suffix], size, sigma, sigma,
                                      [-math.pi, math.pi], opt['betag_range' + suffix], opt['betap_range' + suffix],
                                      noise_range=None)
    pad = (21 - size) // 2
    return torch.FloatTensor(np.pad(kernel, ((pad, pad), (pad, pad))))


def sample_kernels(opt):
    """``{'kernel1', 'kernel2', 'sinc_kernel'}`` (21x21 float tensors) for one training item,
    with RealESRGANDataset's draws in its order; ``{}`` for the bicubic type."""
    if opt.get('type') == 'bicubic':
        return {}
    kernel1 = _one_kernel(opt, '')
    kernel2 = _one_kernel(opt, '2')
    if np.random.uniform() < opt['final_sinc_prob']:
        size = random.choice(_KERNEL_RANGE)
        omega_c = np.random.uniform(np.pi / 3, np.pi)
        sinc = torch.FloatTensor(circular_lowpass_kernel(omega_c, size, pad_to=21))
    else:  # a pulse: no filtering
        sinc = torch.zeros(21, 21)
        sinc[10, 10] = 1
    return {'kernel1': kernel1, 'kernel2': kernel2, 'sinc_kernel': sinc}


def _kernel_sigma(kernel):
    """Equivalent Gaussian sigma (px) of a kernel's spread, for manifests: sqrt of half the
    trace of its second-moment matrix; 0 for a pulse."""
    k = kernel.double()
    k = k / k.sum()
    r = torch.arange(k.shape[-1], dtype=torch.float64) - (k.shape[-1] - 1) / 2
    var_y = (k.sum(1) * r ** 2).sum()
    var_x = (k.sum(0) * r ** 2).sum()
    return float(((var_x + var_y) / 2).clamp(min=0).sqrt())


def _resize_draw(opt, suffix):
    updown = random.choices(['up', 'down', 'keep'], opt['resize_prob' + suffix])[0]
    lo, hi = opt['resize_range' + suffix]
    factor = np.random.uniform(1, hi) if updown == 'up' else np.random.uniform(lo, 1) if updown == 'down' else 1
    return float(factor), random.choice(_MODES)


def _noise(out, opt, suffix):
    """Gaussian or Poisson noise with per-sample strength and grey/colour draw, as
    ``random_add_{gaussian,poisson}_noise_pt`` draw them."""
    b = out.size(0)
    gray_prob = opt['gray_noise_prob' + suffix]
    if np.random.uniform() < opt['gaussian_noise_prob' + suffix]:
        lo, hi = opt['noise_range' + suffix]
        level = torch.rand(b, dtype=out.dtype, device=out.device) * (hi - lo) + lo
        gray = (torch.rand(b, dtype=out.dtype, device=out.device) < gray_prob).float()
        return add_gaussian_noise_pt(out, level, gray, clip=True, rounds=False), 'gaussian', level, gray
    lo, hi = opt['poisson_scale_range' + suffix]
    level = torch.rand(b, dtype=out.dtype, device=out.device) * (hi - lo) + lo
    gray = (torch.rand(b, dtype=out.dtype, device=out.device) < gray_prob).float()
    return add_poisson_noise_pt(out, level, clip=True, rounds=False, gray_noise=gray), 'poisson', level, gray


@torch.no_grad()
def second_order(gt, kernel1, kernel2, sinc_kernel, opt, scale, jpeger):
    """Real-ESRGAN's second-order degradation of HR batch ``gt`` [B, 3, H, W] in [0, 1] ->
    ``(lq [B, 3, H/scale, W/scale] rounded to 8 bits, params)``; ``params`` is one dict per
    sample with every drawn value (resize factors and modes, noise kind/level/grey, JPEG
    qualities, the order of the final steps, the kernels' equivalent sigmas).

    Like ``RealESRNetModel.feed_data``: resize factors/modes and the noise kind are drawn once
    per batch, noise levels and JPEG qualities per sample; use batches of one for fully
    independent degradations (the test-set script does)."""
    b = gt.size(0)
    ori_h, ori_w = gt.shape[2:]
    out = filter2D(gt, kernel1)
    f1, mode1 = _resize_draw(opt, '')
    out = F.interpolate(out, scale_factor=f1, mode=mode1)
    out, noise1, level1, gray1 = _noise(out, opt, '')
    q1 = out.new_zeros(b).uniform_(*opt['jpeg_range'])
    # DiffJPEG turns the quality tensor into factors in place: it gets a clone, q1 stays for params
    out = jpeger(torch.clamp(out, 0, 1), quality=q1.clone())

    blur2 = bool(np.random.uniform() < opt['second_blur_prob'])
    if blur2:
        out = filter2D(out, kernel2)
    f2, mode2 = _resize_draw(opt, '2')
    out = F.interpolate(out, size=(int(ori_h / scale * f2), int(ori_w / scale * f2)), mode=mode2)
    out, noise2, level2, gray2 = _noise(out, opt, '2')

    lr_size = (ori_h // scale, ori_w // scale)
    sinc_first = bool(np.random.uniform() < 0.5)
    if sinc_first:  # resize + sinc, then JPEG
        mode3 = random.choice(_MODES)
        out = filter2D(F.interpolate(out, size=lr_size, mode=mode3), sinc_kernel)
        q2 = out.new_zeros(b).uniform_(*opt['jpeg_range2'])
        out = jpeger(torch.clamp(out, 0, 1), quality=q2.clone())
    else:  # JPEG, then resize + sinc
        q2 = out.new_zeros(b).uniform_(*opt['jpeg_range2'])
        out = jpeger(torch.clamp(out, 0, 1), quality=q2.clone())
        mode3 = random.choice(_MODES)
        out = filter2D(F.interpolate(out, size=lr_size, mode=mode3), sinc_kernel)
    lq = torch.clamp((out * 255.0).round(), 0, 255) / 255.

    params = []
    for i in range(b):
        params.append({
            'blur1_sigma': round(_kernel_sigma(kernel1[i].cpu()), 4),
            'resize1': [round(f1, 4), mode1], 'noise1': [noise1, round(float(level1[i]), 4), bool(gray1[i] > 0)],
            'jpeg1': round(float(q1[i]), 2),
            'blur2_sigma': round(_kernel_sigma(kernel2[i].cpu()), 4) if blur2 else 0.0,
            'resize2': [round(f2, 4), mode2], 'noise2': [noise2, round(float(level2[i]), 4), bool(gray2[i] > 0)],
            'final': ['sinc', 'jpeg'] if sinc_first else ['jpeg', 'sinc'], 'final_resize_mode': mode3,
            'sinc_sigma': round(_kernel_sigma(sinc_kernel[i].cpu()), 4), 'jpeg2': round(float(q2[i]), 2),
        })
    return lq, params


class Degrader:
    """Second-order degradation on one device: the DiffJPEG module made once per device."""

    def __init__(self, opt, scale):
        self.opt = check_options(opt)
        self.scale = int(scale)
        self._jpeger = {}

    def jpeger(self, device):
        key = str(device)
        if key not in self._jpeger:
            self._jpeger[key] = DiffJPEG(differentiable=False).to(device)
        return self._jpeger[key]

    def __call__(self, gt, kernels):
        """``gt`` [B, 3, H, W] and ``kernels`` (dict of [B, 21, 21]; unused for bicubic) on one
        device -> (lq, params)."""
        dev = gt.device
        h, w = gt.shape[2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f'degradation: HR context {h}x{w} is not a multiple of scale {self.scale}')
        if self.opt['type'] == 'bicubic':
            lq = torch.stack([imresize(g.cpu(), 1 / self.scale) for g in gt]).clamp_(0, 1)
            return (lq * 255.).round_().div_(255.).to(dev), [{'resize': 'matlab_bicubic'}] * gt.size(0)
        k = [kernels[n].to(dev) for n in ('kernel1', 'kernel2', 'sinc_kernel')]
        lq, params = second_order(gt, *k, self.opt, self.scale, self.jpeger(dev))
        if self.opt['blur_only_prob'] > 0:
            # Real-ESRGAN's pipeline always adds noise and JPEG, so a network trained on it alone
            # smooths clean-but-soft photos as if they were noisy (measured: -0.6 dB on blur
            # sigma 1.6 + bicubic). This share of samples gets the same first-order blur kernel
            # and a plain bicubic x1/s instead, as a blurry but clean camera image would.
            only = [i for i in range(gt.size(0)) if np.random.uniform() < self.opt['blur_only_prob']]
            if only:
                blurred = filter2D(gt[only], k[0][only]).clamp_(0, 1).cpu()
                small = torch.stack([imresize(b, 1 / self.scale) for b in blurred]).clamp_(0, 1)
                lq = lq.clone()
                lq[only] = (small * 255.).round_().div_(255.).to(dev)
                for i in only:
                    params[i] = {'blur_only': True, 'blur1_sigma': params[i]['blur1_sigma'], 'resize': 'matlab_bicubic'}
        return lq, params
