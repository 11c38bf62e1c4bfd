"""Dataset preparation logic behind ``data/*.py`` (LocalSR paper Sec. 4: DIV2K training,
bicubic x4 LR of BSD100/Urban100/Manga109/Test2K for evaluation).

Each function is what the matching script runs, so tests call the same code a user does:

* :func:`extract_subimages`  DIV2K-style overlapping crops (BasicSR's
  ``scripts/data_preparation/extract_subimages.py`` logic, which the pip package lacks);
* :func:`generate_lr`        MATLAB-compatible bicubic LR (``basicsr...matlab_functions.imresize``);
* :func:`prepare_benchmark`  any folder of HR images -> HR/LR pairs cropped to a multiple of s;
* :func:`create_lmdb`        ``basicsr.utils.lmdb_util.make_lmdb_from_imgs`` into a temporary
  folder, renamed when complete.

All are resumable (an output that exists and is complete - not truncated, right size - is
skipped) and never leave half-written output under a final name (temporary name in the same
folder, then ``os.replace``; temporaries of a killed run are removed by the next run). Outputs
are 8-bit 3-channel PNG (lossless), converted by :mod:`clsr_arch.data.image_io`'s rules.
"""
import os
import os.path as osp
import shutil

import cv2
import numpy as np
from tqdm import tqdm

from basicsr.utils.matlab_functions import imresize

from .image_io import (DataError, atomic_imwrite, image_size, is_complete_file, list_images, read_bgr8,
                       remove_stale_tmp, tmp_name)


# ------------------------------------------------------------------------------ sub-images
def crop_positions(length, crop_size, step, thresh_size):
    """Top/left offsets of the crops along one axis (BasicSR's extract_subimages rule):
    every ``step``, plus one flush with the far edge if more than ``thresh_size`` is left."""
    space = np.arange(0, length - crop_size + 1, step)
    if length - (space[-1] + crop_size) > thresh_size:
        space = np.append(space, length - crop_size)
    return [int(v) for v in space]


def _subimage_plan(path, name, save_folder, crop_size, step, thresh_size):
    h, w = image_size(path)
    if h < crop_size or w < crop_size:
        raise DataError(f'{path} is {h}x{w}, smaller than crop_size {crop_size}')
    stem = osp.splitext(name)[0]
    plan, idx = [], 0
    for y in crop_positions(h, crop_size, step, thresh_size):
        for x in crop_positions(w, crop_size, step, thresh_size):
            idx += 1
            plan.append((y, x, osp.join(save_folder, f'{stem}_s{idx:03d}.png')))
    return plan


def _extract_one(args):
    path, name, save_folder, crop_size, step, thresh_size, level = args
    plan = _subimage_plan(path, name, save_folder, crop_size, step, thresh_size)
    todo = [p for p in plan if not is_complete_file(p[2], (crop_size, crop_size))]
    if todo:
        img = read_bgr8(path)
        for y, x, out in todo:
            atomic_imwrite(img[y:y + crop_size, x:x + crop_size], out, [cv2.IMWRITE_PNG_COMPRESSION, level])
    return len(todo), len(plan) - len(todo)


def extract_subimages(input_folder, save_folder, crop_size=480, step=240, thresh_size=0, compression_level=3,
                      n_thread=1):
    """Crop every image of ``input_folder`` into ``crop_size`` squares, ``step`` apart.

    Output names ``<stem>_sNNN.png`` (BasicSR's). Returns ``{'written': n, 'skipped': n}``.
    """
    if not (crop_size >= 1 and step >= 1 and thresh_size >= 0):
        raise DataError(f'crop_size/step must be >= 1 and thresh_size >= 0, got {crop_size}/{step}/{thresh_size}')
    names = list_images(input_folder, 'input folder')
    os.makedirs(save_folder, exist_ok=True)
    remove_stale_tmp(save_folder)
    jobs = [(osp.join(input_folder, n), n, save_folder, crop_size, step, thresh_size, compression_level)
            for n in names]
    stats = {'written': 0, 'skipped': 0}
    bar = tqdm(total=len(jobs), unit='image', desc='extract')
    if n_thread > 1:
        from multiprocessing import Pool
        with Pool(n_thread) as pool:
            for written, skipped in pool.imap_unordered(_extract_one, jobs):
                stats['written'] += written
                stats['skipped'] += skipped
                bar.update(1)
    else:
        for job in jobs:
            written, skipped = _extract_one(job)
            stats['written'] += written
            stats['skipped'] += skipped
            bar.update(1)
    bar.close()
    return stats


# ------------------------------------------------------------------------------ bicubic LR
def mod_crop(img, scale):
    """Crop bottom/right so that height and width are multiples of ``scale``."""
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale]


def bicubic_lr(img_bgr8, scale):
    """LR the paper's (and MATLAB's) way: antialiased bicubic ``imresize`` of the uint8 HR,
    rounded back to uint8. ``img_bgr8``'s sides must be multiples of ``scale``."""
    h, w = img_bgr8.shape[:2]
    if h % scale or w % scale:
        raise DataError(f'bicubic_lr: {h}x{w} is not a multiple of scale {scale} (mod_crop first)')
    lr = imresize(img_bgr8.astype(np.float32) / 255., 1. / scale)
    return np.clip(np.round(lr * 255.), 0, 255).astype(np.uint8)


def _check_scale(scale):
    if not isinstance(scale, int) or scale < 2:
        raise DataError(f'scale must be an int >= 2, got {scale!r}')


def _unique_stems(names, folder):
    seen = {}
    for n in names:
        stem = osp.splitext(n)[0]
        if stem in seen:
            raise DataError(f'{osp.join(folder, seen[stem])} and {osp.join(folder, n)} would both be written '
                            f'as {stem}.png; rename one')
        seen[stem] = n


def generate_lr(hr_folder, lr_folder, scale, filename_tmpl='{}', hr_out_folder=None, compression_level=3):
    """Bicubic LR of every image in ``hr_folder`` -> ``lr_folder/<filename_tmpl.format(stem)>.png``.

    The HR is first cropped to a multiple of ``scale``. If an HR is not already a multiple,
    the cropped HR must be written too (``hr_out_folder``), otherwise LR and HR would not pair:
    without it such a file is a :class:`DataError`. With ``hr_out_folder`` every HR is written
    there (cropped, 8-bit 3-channel PNG) so that it pairs with ``lr_folder`` completely.
    Returns ``{'written': n, 'skipped': n}``.
    """
    _check_scale(scale)
    names = list_images(hr_folder, 'HR folder')
    _unique_stems(names, hr_folder)
    for folder in (lr_folder, hr_out_folder):
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            remove_stale_tmp(folder)
    stats = {'written': 0, 'skipped': 0}
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression_level]
    for name in tqdm(names, unit='image', desc=f'bicubic x{scale}'):
        path = osp.join(hr_folder, name)
        h, w = image_size(path)
        hh, ww = h - h % scale, w - w % scale
        if hh == 0 or ww == 0:
            raise DataError(f'{path} is {h}x{w}, smaller than scale {scale}')
        if (hh, ww) != (h, w) and hr_out_folder is None:
            raise DataError(f'{path} is {h}x{w}, not a multiple of scale {scale}: pass hr_out_folder '
                            '(--hr-out) to also write the cropped HR, or use data/prepare_benchmark.py')
        stem = osp.splitext(name)[0]
        lr_path = osp.join(lr_folder, osp.join(osp.dirname(stem), filename_tmpl.format(osp.basename(stem))) + '.png')
        hr_path = None if hr_out_folder is None else osp.join(hr_out_folder, stem + '.png')
        lr_done = is_complete_file(lr_path, (hh // scale, ww // scale))
        if lr_done and (hr_path is None or is_complete_file(hr_path, (hh, ww))):
            stats['skipped'] += 1
            continue
        hr = mod_crop(read_bgr8(path), scale)
        if hr_path is not None:
            atomic_imwrite(hr, hr_path, params)
        atomic_imwrite(bicubic_lr(hr, scale), lr_path, params)
        stats['written'] += 1
    return stats


def prepare_benchmark(src_folder, hr_out_folder, lr_out_folder, scale, compression_level=3):
    """Any folder of HR images (any size, grayscale, 16-bit, opaque alpha, JPEG...) -> paired
    ``hr_out_folder/<stem>.png`` (cropped to a multiple of ``scale``, 8-bit 3-channel) and
    ``lr_out_folder/<stem>.png`` (bicubic). Returns ``{'written': n, 'skipped': n}``."""
    return generate_lr(src_folder, lr_out_folder, scale, hr_out_folder=hr_out_folder,
                       compression_level=compression_level)


# ------------------------------------------------------------------------------ LMDB
def _lmdb_complete(lmdb_path, keys):
    import lmdb
    from .context_roi_dataset import read_lmdb_meta
    try:
        meta = read_lmdb_meta(lmdb_path)
    except DataError:
        return False
    if set(meta) != set(keys):
        return False
    env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            return env.stat()['entries'] == len(keys) and all(txn.get(k.encode('ascii')) is not None for k in keys)
    finally:
        env.close()


def create_lmdb(folder, lmdb_path, compress_level=1, n_thread=1, batch=5000):
    """Pack every image of ``folder`` into ``lmdb_path`` (must end with ``.lmdb``) with
    BasicSR's ``make_lmdb_from_imgs`` (keys = relative path without extension, PNG bytes,
    ``meta_info.txt`` inside). Built in a hidden temporary folder beside it, renamed when
    complete. Returns ``'written'`` or ``'skipped'`` (already complete)."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    lmdb_path = osp.abspath(lmdb_path)
    if not lmdb_path.endswith('.lmdb'):
        raise DataError(f'{lmdb_path}: the LMDB folder name must end with .lmdb')
    names = list_images(folder, 'image folder')
    _unique_stems(names, folder)
    keys = [osp.splitext(n)[0] for n in names]
    bad = [k for k in keys if not k.isascii() or ' ' in k]
    if bad:
        raise DataError(f'{folder}: LMDB keys must be ASCII without spaces, got {bad[:5]}')
    if osp.exists(lmdb_path):
        if _lmdb_complete(lmdb_path, keys):
            return 'skipped'
        raise DataError(f'{lmdb_path} exists but does not hold exactly the images of {folder}; '
                        'remove it to rebuild')
    parent = osp.dirname(lmdb_path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_tmp(parent)
    # map_size: 8 bytes/pixel (16-bit RGBA raw) bounds PNG's size; LMDB only reserves it
    pixels = sum(h * w for h, w in (image_size(osp.join(folder, n)) for n in names))
    map_size = int(pixels * 8 * 1.1) + 65536 * len(names) + (10 << 20)
    tmp = tmp_name(lmdb_path)
    try:
        make_lmdb_from_imgs(folder, tmp, names, keys, batch=batch, compress_level=compress_level,
                            multiprocessing_read=n_thread > 1, n_thread=n_thread, map_size=map_size)
        os.replace(tmp, lmdb_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return 'written'


def write_meta_info(folder, meta_info_file):
    """BasicSR-style ``meta_info_file`` for a disk folder (``<name> (h,w,3)`` per line), for the
    dataset's ``meta_info_file`` option. Written atomically."""
    names = list_images(folder, 'image folder')
    tmp = tmp_name(meta_info_file)
    try:
        with open(tmp, 'w') as f:
            for n in names:
                h, w = image_size(osp.join(folder, n))
                f.write(f'{n} ({h},{w},3)\n')
        os.replace(tmp, meta_info_file)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    return len(names)
