"""Seeded, reproducible degraded test sets (issue 21): HR images -> degraded x``scale`` LR.

Four kinds, each a folder of LR PNGs beside the HR cropped to a multiple of the scale, with a
``manifest.json`` holding every image's seed and parameters:

* ``realesrgan``  Real-ESRGAN's second-order model with its default ranges
  (:func:`clsr_arch.data.degradation.second_order`, batches of one, one seed per image);
* ``jpeg30``      MATLAB bicubic x1/s (BasicSR's ``imresize``), 8-bit, then JPEG quality 30
  (OpenCV's encoder, as a saved photo);
* ``noise10``     MATLAB bicubic x1/s, then Gaussian noise sigma 10 (of 255; colour), 8-bit;
* ``blur1.6``     isotropic Gaussian blur sigma 1.6 (21x21, BasicSR's ``bivariate_Gaussian``)
  on the HR, then MATLAB bicubic x1/s, 8-bit;
* ``bicubic``     (only when asked for) the paper's clean LR: MATLAB bicubic x1/s, 8-bit.

An image's seed is derived from ``--seed``, the kind and the image's name, so a set is the same
whatever other images or kinds are made with it, and byte-for-byte the same on every run
(CPU, single torch thread while degrading). Outputs are written atomically.
"""
import hashlib
import json
import os
import os.path as osp
import random

import cv2
import numpy as np
import torch
from tqdm import tqdm

from basicsr.data.degradations import bivariate_Gaussian
from basicsr.utils.matlab_functions import imresize

from .degradation import Degrader, sample_kernels
from .image_io import DataError, atomic_imwrite, list_images, read_bgr8
from .prep import mod_crop

KINDS = ('realesrgan', 'jpeg30', 'noise10', 'blur1.6')
OPTIONAL = ('bicubic',)  # the paper's clean LR, for the bicubic models' validation and tables


def image_seed(seed, kind, name):
    """Per-image seed from the run seed, the kind and the image name (32 bits)."""
    return int(hashlib.sha256(f'{seed}/{kind}/{name}'.encode()).hexdigest()[:8], 16)


def _seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _bicubic_float(img_bgr8, scale):
    return imresize(img_bgr8.astype(np.float64) / 255., 1 / scale)


def _to8(img):
    return np.clip(np.round(img * 255.), 0, 255).astype(np.uint8)


def degrade_image(hr_bgr8, kind, scale, seed, degrader=None):
    """One HR image (uint8 BGR, a multiple of ``scale``) -> (LR uint8 BGR, params dict)."""
    if kind == 'bicubic':
        return _to8(_bicubic_float(hr_bgr8, scale)), {'resize': 'matlab_bicubic'}
    if kind == 'jpeg30':
        lr8 = _to8(_bicubic_float(hr_bgr8, scale))
        ok, enc = cv2.imencode('.jpg', lr8, [int(cv2.IMWRITE_JPEG_QUALITY), 30])
        if not ok:
            raise DataError('OpenCV could not encode a JPEG')
        return cv2.imdecode(enc, cv2.IMREAD_COLOR), {'resize': 'matlab_bicubic', 'jpeg_quality': 30}
    if kind == 'noise10':
        rng = np.random.RandomState(seed)
        lr = _bicubic_float(hr_bgr8, scale)
        lr = lr + rng.randn(*lr.shape) * (10 / 255.)
        return _to8(np.clip(lr, 0, 1)), {'resize': 'matlab_bicubic', 'noise': 'gaussian', 'sigma': 10, 'seed': seed}
    if kind == 'blur1.6':
        kernel = bivariate_Gaussian(21, 1.6, 1.6, 0, isotropic=True)
        blurred = cv2.filter2D(hr_bgr8.astype(np.float64) / 255., -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        lr = imresize(blurred, 1 / scale)
        return _to8(lr), {'blur': 'gaussian', 'sigma': 1.6, 'kernel_size': 21, 'resize': 'matlab_bicubic'}
    if kind == 'realesrgan':
        degrader = degrader or Degrader(True, scale)
        _seed_all(seed)
        kernels = {k: v.unsqueeze(0) for k, v in sample_kernels(degrader.opt).items()}
        gt = torch.from_numpy(np.ascontiguousarray(hr_bgr8[:, :, ::-1].transpose(2, 0, 1))).float().div(255.)
        lq, params = degrader(gt.unsqueeze(0), kernels)
        lr = (lq[0].numpy().transpose(1, 2, 0)[:, :, ::-1] * 255.).round().astype(np.uint8)
        return np.ascontiguousarray(lr), dict(params[0], seed=seed)
    raise DataError(f'unknown degradation kind {kind!r}; known: {", ".join(KINDS + OPTIONAL)}')


def make_degraded_sets(src_folder, out_folder, kinds=KINDS, scale=4, seed=0, show_progress=True):
    """``src_folder`` of HR images -> ``out_folder/HR/<stem>.png`` (cropped to a multiple of
    ``scale``) and ``out_folder/<kind>/X<scale>/<stem>.png`` + ``out_folder/<kind>/manifest.json``.
    Returns ``{kind: number of images}``."""
    kinds = list(kinds)
    bad = [k for k in kinds if k not in KINDS + OPTIONAL]
    if bad:
        raise DataError(f'unknown degradation kind(s) {bad}; known: {", ".join(KINDS + OPTIONAL)}')
    if not isinstance(scale, int) or scale < 1:
        raise DataError(f'scale must be a positive int, got {scale!r}')
    names = list_images(src_folder, 'input folder')
    stems = [osp.splitext(n)[0] for n in names]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise DataError(f'{src_folder}: several images share a name stem ({", ".join(dup)}): outputs would collide')
    degrader = Degrader(True, scale) if 'realesrgan' in kinds else None
    manifests = {k: {'kind': k, 'scale': scale, 'seed': seed, 'source': osp.abspath(src_folder),
                     'torch': torch.__version__, 'images': {}} for k in kinds}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: float sums in one order, the same bytes on every machine
    try:
        for name, stem in tqdm(list(zip(names, stems)), desc='degraded sets', unit='image', disable=not show_progress):
            path = osp.join(src_folder, name)
            hr = mod_crop(read_bgr8(path), scale)
            if hr.shape[0] < scale or hr.shape[1] < scale:
                raise DataError(f'{path}: {hr.shape[0]}x{hr.shape[1]} is smaller than one LR pixel at scale {scale}')
            atomic_imwrite(hr, osp.join(out_folder, 'HR', f'{stem}.png'))
            for kind in kinds:
                lr, params = degrade_image(hr, kind, scale, image_seed(seed, kind, stem), degrader)
                atomic_imwrite(lr, osp.join(out_folder, kind, f'X{scale}', f'{stem}.png'))
                manifests[kind]['images'][stem] = dict(params, hr_size=list(hr.shape[:2]), lr_size=list(lr.shape[:2]))
    finally:
        torch.set_num_threads(threads)
    for kind, manifest in manifests.items():
        path = osp.join(out_folder, kind, 'manifest.json')
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return {k: len(m['images']) for k, m in manifests.items()}
