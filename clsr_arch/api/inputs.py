"""What a user hands the API, checked and converted: images (paths or arrays) and boxes; and the
uint8 conversion of what comes back."""
import os

import numpy as np
import torch

from ..data.image_io import DataError, read_bgr8, to_bgr8
from .errors import LocalSRError


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



def degrade(hr, scale):
    """``(lr, hr)`` the paper's way: ``hr`` cropped to a multiple of ``scale``, its LR by MATLAB
    bicubic (uint8 round trip)."""
    from ..data.prep import bicubic_lr, mod_crop
    hr = mod_crop(hr, scale)
    if min(hr.shape[:2]) < scale:
        raise LocalSRError(f'{hr.shape[1]}x{hr.shape[0]} is too small for x{scale}')
    return bicubic_lr(hr, scale), hr


def grid_boxes(hw, size):
    """Every ``size`` x ``size`` box of a non-overlapping grid of an ``hw`` image, row-major (the
    evaluation protocol's grid); LocalSRError when it does not fit."""
    from ..data.context_roi_dataset import validation_grid
    H, W = hw
    if size < 1 or size > min(H, W):
        raise LocalSRError(f'--grid {size}: needs 1 <= size <= {min(H, W)} (the {W}x{H} LR image)')
    return [tuple(r) for r in validation_grid(H, W, size, size)[0].tolist()]
