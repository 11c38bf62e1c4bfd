"""ContextROIDataset: LR context + ROI boxes + HR targets for CLSR (LocalSR paper, Sec. 3-4).

The paper trains on DIV2K with a 54x54 LR context holding a centred 48x48 ROI (x4, Table 2),
supervising the ROI (``y``) and the whole HR context (``Y``, the PIM target of Eq. 7). It
evaluates with "the context being the original LR image" and ROIs of 24x24 or 48x48, the
images "appropriately cropped" (Sec. 4, Evaluation details). This dataset produces exactly
those items; see ``docs/design.md`` (Datasets) for the item contract and ``docs/data.md``
for the option blocks.

Options (BasicSR conventions; ``phase`` and ``scale`` are filled in by BasicSR's parser):

``dataroot_gt``, ``dataroot_lq``  HR / LR folders, or ``.lmdb`` folders with ``io_backend: lmdb``
``io_backend: {type: disk|lmdb}``
``meta_info_file``   optional: first column = GT file names (relative to ``dataroot_gt``)
                     selecting the images used; with LMDB it selects keys of the LMDB
``filename_tmpl``    LR name = ``filename_tmpl.format(GT stem) + GT extension`` (default ``{}``)
``scale``            s: every GT must be exactly s x its LR (``data/prepare_benchmark.py`` /
                     ``data/generate_lr.py`` crop HR to a multiple of s)
``phase``            ``train``: random context crops; ``val``/``test``: whole images + ROI grid
``context_size``     train: LR context crop, int or [h, w] (paper: 54)
``roi_size``         ROI, int or [h, w] (paper: 48 train; 24 or 48 val/test)
``roi_stride``       val/test: LR pixels between grid ROIs, int or [h, w] (default: roi_size,
                     a non-overlapping grid; smaller strides give more, overlapping ROIs)
``roi_placement``    train: ``center`` (paper) or ``random``
``use_hflip``, ``use_rot``   train: BasicSR's ``augment`` (flips / 90-degree rotation)
``mean``, ``std``    optional normalisation of every image tensor
``check_sizes``      default true: read every image header (or LMDB meta_info) at construction
                     so that size errors surface before training starts
``degradation``      train only (issue 21): true or a mapping of Real-ESRGAN degradation options
                     (:mod:`clsr_arch.data.degradation`). Only HR images are read
                     (``dataroot_lq`` is not used); an item is the HR context crop, its ROI and
                     the blur/sinc kernels; the model degrades the **whole HR context once**
                     on its device and the ROI's LR pixels are the crop of that LR context.
                     HR images smaller than the context are reflect-padded, as
                     RealESRGANDataset pads its crops.

Images are converted to 8-bit 3-channel by :mod:`clsr_arch.data.image_io` (grayscale
replicated, 16-bit scaled, opaque alpha dropped; transparent alpha refused). Every bad input
raises :class:`DataError` (a ``ValueError``) naming the file, option or LMDB key:
unpaired files (checked for the whole folder at construction), LR/GT sizes that disagree
with the scale, images smaller than the context/ROI, unreadable or truncated files, missing
LMDB keys, empty folders.
"""
import os.path as osp
import random
import re

import cv2
import numpy as np
import torch
from torch.utils import data as data
from torchvision.transforms.functional import normalize

from basicsr.data.transforms import augment
from basicsr.utils import FileClient, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from .degradation import check_options, sample_kernels
from .image_io import DataError, decode_bgr8, image_size, list_images

__all__ = ['ContextROIDataset', 'DataError', 'read_lmdb_meta', 'validation_grid']

_META_RE = re.compile(r'^(\S+)\s+\((\d+),(\d+)(?:,(\d+))?\)')


def _hw(value, option):
    """int or [h, w] -> (h, w) of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        raise DataError(f'option {option}: expected a positive int or [h, w], got {value!r}')
    return int(value[0]), int(value[1])


def validation_grid(lq_h, lq_w, roi_h, roi_w, stride=None):
    """ROI grid of an LR image: ROIs every ``stride`` (default: the ROI size, a non-overlapping
    grid) LR pixels, the image cropped bottom/right to where the last ROI ends.

    Returns ``(rois, (crop_h, crop_w))``: rois = LongTensor[R, 4] of ``(x, y, w, h)`` in
    row-major order (left to right, then top to bottom); crop_h/crop_w = kept LR size.
    """
    sy, sx = stride if stride is not None else (roi_h, roi_w)
    ny, nx = (lq_h - roi_h) // sy + 1, (lq_w - roi_w) // sx + 1
    crop_h, crop_w = (ny - 1) * sy + roi_h, (nx - 1) * sx + roi_w
    rois = [(x * sx, y * sy, roi_w, roi_h) for y in range(ny) for x in range(nx)]
    return torch.tensor(rois, dtype=torch.long).reshape(-1, 4), (crop_h, crop_w)


def read_lmdb_meta(lmdb_root):
    """``{key: (h, w, c), ...}`` in file order from ``<lmdb_root>/meta_info.txt``.

    Parses names with several dots correctly (basicsr's ``line.split('.')[0]`` does not).
    """
    meta = osp.join(lmdb_root, 'meta_info.txt')
    if not osp.isfile(meta):
        raise DataError(f'LMDB {lmdb_root!r}: no meta_info.txt (build it with data/create_lmdb.py)')
    out = {}
    with open(meta) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _META_RE.match(line.strip())
            if m is None:
                raise DataError(f'{meta} line {n}: expected "<name> (h,w,c) <level>", got {line.strip()!r}')
            key = osp.splitext(m.group(1))[0]
            out[key] = (int(m.group(2)), int(m.group(3)), int(m.group(4) or 1))
    if not out:
        raise DataError(f'LMDB {lmdb_root!r}: meta_info.txt lists no images')
    return out


def _read_meta_info_names(meta_info_file):
    if not osp.isfile(meta_info_file):
        raise DataError(f'meta_info_file {meta_info_file!r} does not exist')
    with open(meta_info_file) as f:
        names = [line.split()[0] for line in f if line.strip()]
    if not names:
        raise DataError(f'meta_info_file {meta_info_file!r} lists no images')
    return names


def _listing(items, limit=5):
    items = list(items)
    more = f' (+{len(items) - limit} more)' if len(items) > limit else ''
    return ', '.join(str(v) for v in items[:limit]) + more


@DATASET_REGISTRY.register()
class ContextROIDataset(data.Dataset):
    """LR context / ROI / HR items for CLSR; see the module docstring for options and rules."""

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.phase = opt.get('phase', 'train')
        if self.phase not in ('train', 'val', 'test'):
            raise DataError(f'option phase: expected train, val or test, got {self.phase!r}')
        if 'scale' not in opt:
            raise DataError('option scale is missing (BasicSR fills it from the top-level scale)')
        self.scale = int(opt['scale'])
        if self.scale < 1:
            raise DataError(f'option scale: expected >= 1, got {opt["scale"]!r}')
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.backend = self.io_backend_opt.get('type', 'disk')
        if self.backend not in ('disk', 'lmdb'):
            raise DataError(f'option io_backend.type: expected disk or lmdb, got {self.backend!r}')
        self.file_client = None
        self.mean, self.std = opt.get('mean'), opt.get('std')
        self.filename_tmpl = opt.get('filename_tmpl', '{}')
        self.degradation = None
        if opt.get('degradation') not in (None, False):  # {} or true: Real-ESRGAN's defaults
            if self.phase != 'train':
                raise DataError(f'option degradation is for the train phase; {self.phase} sets are made once, '
                                'seeded, by data/make_degraded_sets.py')
            try:
                self.degradation = check_options(opt['degradation'], f'datasets.{opt.get("name", "train")}.degradation')
            except ValueError as err:
                raise DataError(str(err)) from None
            if opt.get('mean') is not None or opt.get('std') is not None:
                raise DataError('option degradation works on [0, 1] HR images: remove mean/std')
        for key in ('dataroot_gt',) if self.degradation else ('dataroot_gt', 'dataroot_lq'):
            if not opt.get(key):
                raise DataError(f'dataset {opt.get("name", "?")!r}: option {key} is missing')
        self.gt_folder, self.lq_folder = opt['dataroot_gt'], opt.get('dataroot_lq')

        if self.phase == 'train':
            self.context_size = _hw(opt.get('context_size', 54), 'context_size')
            self.roi_size = _hw(opt.get('roi_size', 48), 'roi_size')
            self.roi_placement = opt.get('roi_placement', 'center')
            if self.roi_placement not in ('center', 'random'):
                raise DataError(f'option roi_placement: expected center or random, got {self.roi_placement!r}')
            (ch, cw), (rh, rw) = self.context_size, self.roi_size
            if rh > ch or rw > cw:
                raise DataError(f'option roi_size {self.roi_size} does not fit in context_size {self.context_size}')
            if opt.get('use_rot', False) and (ch != cw or rh != rw):
                # rot90 transposes the crop: items of two shapes could not be batched
                raise DataError('option use_rot needs a square context_size and roi_size, got '
                                f'context_size {self.context_size}, roi_size {self.roi_size}')
            self.min_lq = self.context_size
        else:
            if 'roi_size' not in opt:
                raise DataError(f'option roi_size is missing for phase {self.phase} (paper: 24 or 48)')
            self.roi_size = _hw(opt['roi_size'], 'roi_size')
            self.roi_stride = _hw(opt.get('roi_stride', list(self.roi_size)), 'roi_stride')
            self.min_lq = self.roi_size
        self._logged = set()

        if self.degradation:
            self.paths = self._gt_only()
        else:
            self.paths = self._pair_lmdb() if self.backend == 'lmdb' else self._pair_disk()
        if opt.get('check_sizes', True) and not self.degradation:
            for p in self.paths:
                self._check_sizes(p, p['lq_hw'], p['gt_hw'])

    # ---------------------------------------------------------------- pairing (up front)
    def _lq_name(self, gt_name):
        stem, ext = osp.splitext(gt_name)
        folder = osp.dirname(stem)
        try:
            lq_stem = self.filename_tmpl.format(osp.basename(stem))
        except (IndexError, KeyError) as err:
            raise DataError(f'option filename_tmpl {self.filename_tmpl!r} is not a "{{}}" template ({err})') from None
        return osp.join(folder, lq_stem + ext)

    def _pair_disk(self):
        # basicsr's paired_paths_from_folder/meta_info_file list non-images, assert instead of
        # raising, and never check that the LR side exists: pair here with explicit errors.
        gt_root, lq_root = self.gt_folder, self.lq_folder
        lq_names = list_images(lq_root, 'dataroot_lq')
        check = self.opt.get('check_sizes', True)
        if self.opt.get('meta_info_file'):
            gt_names = _read_meta_info_names(self.opt['meta_info_file'])
            missing = [n for n in gt_names if not osp.isfile(osp.join(gt_root, n))]
            if missing:
                raise DataError(f'meta_info_file {self.opt["meta_info_file"]!r} lists GT images missing '
                                f'from {gt_root!r}: {_listing(missing)}')
            unpaired_lq = []
        else:
            gt_names = list_images(gt_root, 'dataroot_gt')
            expected = {self._lq_name(n) for n in gt_names}
            unpaired_lq = [osp.join(lq_root, n) for n in lq_names if n not in expected]
        lq_set = set(lq_names)
        unpaired_gt = [osp.join(gt_root, n) for n in gt_names if self._lq_name(n) not in lq_set]
        if unpaired_gt or unpaired_lq:
            parts = []
            if unpaired_gt:
                parts.append(f'{len(unpaired_gt)} GT image(s) without LR (expected '
                             f'filename_tmpl {self.filename_tmpl!r} in {lq_root!r}): {_listing(unpaired_gt)}')
            if unpaired_lq:
                parts.append(f'{len(unpaired_lq)} LR image(s) without GT in {gt_root!r}: {_listing(unpaired_lq)}')
            raise DataError('; '.join(parts))
        paths = []
        for n in gt_names:
            gt_path, lq_path = osp.join(gt_root, n), osp.join(lq_root, self._lq_name(n))
            paths.append({
                'gt_path': gt_path,
                'lq_path': lq_path,
                'gt_hw': image_size(gt_path) if check else None,
                'lq_hw': image_size(lq_path) if check else None,
            })
        return paths

    def _gt_only(self):
        """HR images alone (degradation mode): every listed image, no LR side."""
        if self.backend == 'lmdb':
            if not self.gt_folder.endswith('.lmdb') or not osp.isdir(self.gt_folder):
                raise DataError(f'option dataroot_gt: {self.gt_folder!r} is not an existing .lmdb folder')
            keys = list(read_lmdb_meta(self.gt_folder))
            if self.opt.get('meta_info_file'):
                wanted = [osp.splitext(n)[0] for n in _read_meta_info_names(self.opt['meta_info_file'])]
                missing = [k for k in wanted if k not in set(keys)]
                if missing:
                    raise DataError(f'meta_info_file {self.opt["meta_info_file"]!r} lists keys missing from '
                                    f'LMDB {self.gt_folder!r}: {_listing(missing)}')
                keys = wanted
            return [{'gt_path': k, 'lq_path': None} for k in keys]
        if self.opt.get('meta_info_file'):
            names = _read_meta_info_names(self.opt['meta_info_file'])
            missing = [n for n in names if not osp.isfile(osp.join(self.gt_folder, n))]
            if missing:
                raise DataError(f'meta_info_file {self.opt["meta_info_file"]!r} lists GT images missing '
                                f'from {self.gt_folder!r}: {_listing(missing)}')
        else:
            names = list_images(self.gt_folder, 'dataroot_gt')
        return [{'gt_path': osp.join(self.gt_folder, n), 'lq_path': None} for n in names]

    def _pair_lmdb(self):
        for key, root in (('dataroot_gt', self.gt_folder), ('dataroot_lq', self.lq_folder)):
            if not root.endswith('.lmdb') or not osp.isdir(root):
                raise DataError(f'option {key}: {root!r} is not an existing .lmdb folder')
        gt_meta, lq_meta = read_lmdb_meta(self.gt_folder), read_lmdb_meta(self.lq_folder)
        if self.opt.get('meta_info_file'):
            gt_keys = [osp.splitext(n)[0] for n in _read_meta_info_names(self.opt['meta_info_file'])]
            missing = [k for k in gt_keys if k not in gt_meta]
            if missing:
                raise DataError(f'meta_info_file {self.opt["meta_info_file"]!r} lists keys missing from '
                                f'LMDB {self.gt_folder!r}: {_listing(missing)}')
            unpaired_lq = []
        else:
            gt_keys = list(gt_meta)
            expected = {self.filename_tmpl.format(k) for k in gt_keys}
            unpaired_lq = [k for k in lq_meta if k not in expected]
        unpaired_gt = [k for k in gt_keys if self.filename_tmpl.format(k) not in lq_meta]
        if unpaired_gt or unpaired_lq:
            parts = []
            if unpaired_gt:
                parts.append(f'{len(unpaired_gt)} GT key(s) of {self.gt_folder!r} without LR key in '
                             f'{self.lq_folder!r}: {_listing(unpaired_gt)}')
            if unpaired_lq:
                parts.append(f'{len(unpaired_lq)} LR key(s) of {self.lq_folder!r} without GT: {_listing(unpaired_lq)}')
            raise DataError('; '.join(parts))
        return [{
            'gt_path': k,
            'lq_path': self.filename_tmpl.format(k),
            'gt_hw': gt_meta[k][:2],
            'lq_hw': lq_meta[self.filename_tmpl.format(k)][:2],
        } for k in sorted(gt_keys)]

    # ---------------------------------------------------------------- checks and loading
    def _names(self, p):
        if self.backend == 'lmdb' and self.degradation:
            return (None, f'LMDB {self.gt_folder!r} key {p["gt_path"]!r}')
        if self.backend == 'lmdb':
            return (f'LMDB {self.lq_folder!r} key {p["lq_path"]!r}', f'LMDB {self.gt_folder!r} key {p["gt_path"]!r}')
        return p['lq_path'], p['gt_path']

    def _check_sizes(self, p, lq_hw, gt_hw):
        lq_name, gt_name = self._names(p)
        s = self.scale
        if tuple(gt_hw) != (s * lq_hw[0], s * lq_hw[1]):
            raise DataError(f'{gt_name} is {gt_hw[0]}x{gt_hw[1]} (h x w) but its LR {lq_name} is '
                            f'{lq_hw[0]}x{lq_hw[1]}: with scale {s} the GT must be exactly '
                            f'{s * lq_hw[0]}x{s * lq_hw[1]} (crop HR to a multiple of the scale before '
                            'making LR, e.g. data/prepare_benchmark.py)')
        mh, mw = self.min_lq
        if lq_hw[0] < mh or lq_hw[1] < mw:
            what = 'context_size' if self.phase == 'train' else 'roi_size'
            raise DataError(f'{lq_name} is {lq_hw[0]}x{lq_hw[1]} LR pixels, smaller than {what} {mh}x{mw}')

    def _read(self, p, which):
        path = p[f'{which}_path']
        name = self._names(p)[0 if which == 'lq' else 1]
        try:
            content = self.file_client.get(path, which)
        except OSError as err:
            raise DataError(f'{name}: cannot read ({err})') from None
        if content is None:  # LmdbBackend.get returns None for an absent key
            raise DataError(f'{name}: key not found in the LMDB')
        return decode_bgr8(bytes(content), name)

    def _load(self, index):
        if self.file_client is None:  # opened lazily: one per dataloader worker
            opt = dict(self.io_backend_opt)
            backend = opt.pop('type', 'disk')
            if backend == 'lmdb':
                folders, keys = ([self.gt_folder], ['gt']) if self.degradation else \
                    ([self.lq_folder, self.gt_folder], ['lq', 'gt'])
                opt['db_paths'], opt['client_keys'] = folders, keys
            self.file_client = FileClient(backend, **opt)
        p = self.paths[index]
        if self.degradation:
            return p, None, self._read(p, 'gt')
        img_lq, img_gt = self._read(p, 'lq'), self._read(p, 'gt')
        self._check_sizes(p, img_lq.shape[:2], img_gt.shape[:2])  # files may differ from headers/meta
        return p, img_lq, img_gt

    def _to_tensor(self, img):
        t = img2tensor(np.ascontiguousarray(img), bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(t, self.mean or [0., 0., 0.], self.std or [1., 1., 1.], inplace=True)
        return t

    # ---------------------------------------------------------------- items
    def __getitem__(self, index):
        p, img_lq, img_gt = self._load(index)
        if self.degradation:
            item = self._degradation_item(img_gt)
            item['gt_path'] = p['gt_path']
            return item
        if self.phase == 'train':
            item = self._train_item(img_lq, img_gt)
        else:
            item = self._val_item(index, p, img_lq, img_gt)
        item['lq_path'], item['gt_path'] = p['lq_path'], p['gt_path']
        return item

    def _train_item(self, img_lq, img_gt):
        s = self.scale
        (ch, cw), (rh, rw) = self.context_size, self.roi_size
        h, w = img_lq.shape[:2]
        top, left = random.randint(0, h - ch), random.randint(0, w - cw)
        ctx_lq = img_lq[top:top + ch, left:left + cw].astype(np.float32) / 255.
        ctx_gt = img_gt[s * top:s * (top + ch), s * left:s * (left + cw)].astype(np.float32) / 255.
        ctx_lq, ctx_gt = augment([ctx_lq, ctx_gt], self.opt.get('use_hflip', False), self.opt.get('use_rot', False))
        # The ROI is placed in the already augmented context, so its box needs no transform
        # and the HR ROI is exactly the HR context at s x the box.
        hc, wc = ctx_lq.shape[:2]
        if self.roi_placement == 'center':
            y, x = (hc - rh) // 2, (wc - rw) // 2
        else:
            y, x = random.randint(0, hc - rh), random.randint(0, wc - rw)
        roi_gt = ctx_gt[s * y:s * (y + rh), s * x:s * (x + rw)]
        return {
            'lq': self._to_tensor(ctx_lq),
            'roi': torch.tensor([x, y, rw, rh], dtype=torch.long),
            'gt': self._to_tensor(roi_gt),
            'gt_context': self._to_tensor(ctx_gt),
        }

    def _degradation_item(self, img_gt):
        """HR context crop + ROI + Real-ESRGAN kernels; the LR context is made by the model."""
        s = self.scale
        (ch, cw), (rh, rw) = self.context_size, self.roi_size
        hh, hw = s * ch, s * cw
        h, w = img_gt.shape[:2]
        if h < hh or w < hw:  # RealESRGANDataset's rule for small images: reflect-pad the crop
            img_gt = cv2.copyMakeBorder(img_gt, 0, max(0, hh - h), 0, max(0, hw - w), cv2.BORDER_REFLECT_101)
            h, w = img_gt.shape[:2]
        top, left = random.randint(0, h - hh), random.randint(0, w - hw)
        ctx_gt = img_gt[top:top + hh, left:left + hw].astype(np.float32) / 255.
        ctx_gt = augment(ctx_gt, self.opt.get('use_hflip', False), self.opt.get('use_rot', False))
        if self.roi_placement == 'center':
            y, x = (ch - rh) // 2, (cw - rw) // 2
        else:
            y, x = random.randint(0, ch - rh), random.randint(0, cw - rw)
        item = {
            'roi': torch.tensor([x, y, rw, rh], dtype=torch.long),
            'gt': self._to_tensor(ctx_gt[s * y:s * (y + rh), s * x:s * (x + rw)]),
            'gt_context': self._to_tensor(ctx_gt),
        }
        item.update(sample_kernels(self.degradation))
        return item

    def _val_item(self, index, p, img_lq, img_gt):
        s = self.scale
        h, w = img_lq.shape[:2]
        rois, (kh, kw) = validation_grid(h, w, *self.roi_size, stride=self.roi_stride)
        if index not in self._logged:
            self._logged.add(index)
            get_root_logger().debug(f'{self._names(p)[0]}: LR {h}x{w} cropped to {kh}x{kw} '
                                    f'(ROI grid {self.roi_size[0]}x{self.roi_size[1]}): dropped {h - kh} '
                                    f'bottom rows, {w - kw} right columns')
        return {
            'lq': self._to_tensor(img_lq[:kh, :kw].astype(np.float32) / 255.),
            'gt': self._to_tensor(img_gt[:s * kh, :s * kw].astype(np.float32) / 255.),
            'rois': rois,
            'cropped': torch.tensor([h - kh, w - kw], dtype=torch.long),
        }

    def __len__(self):
        return len(self.paths)
