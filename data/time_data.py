"""Time the data pipeline on ../shared/data (numbers quoted in docs/data.md, section 6).

BSD100 -> benchmark pairs -> validation items at ROI 24/48 (paper Table 1 / Fig. 6 setting);
DIV2K -> 480/240 sub-images -> bicubic x4 -> LMDB -> training items (paper Table 2: 54/48).
Everything is written under ``--work`` (default: a fresh temporary folder, removed after)::

    OMP_NUM_THREADS=2 .venv/bin/python data/time_data.py
"""
import argparse
import collections
import os.path as osp
import random
import shutil
import tempfile
import time

import clsr_arch  # noqa: F401  (basicsr compat first)
from clsr_arch.data.context_roi_dataset import ContextROIDataset
from clsr_arch.data.prep import create_lmdb, extract_subimages, generate_lr, prepare_benchmark

SHARED = osp.abspath(osp.join(osp.dirname(__file__), '..', '..', 'shared', 'data'))


def timed(label, fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    print(f'{label}: {out} in {time.perf_counter() - t:.2f} s', flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--shared', default=SHARED)
    parser.add_argument('--work', default=None, help='keep outputs here (default: temporary, removed)')
    parser.add_argument('--items', type=int, default=100, help='training items to time per backend')
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix='clsr_time_data_')
    try:
        b = osp.join(work, 'BSD100')
        for label in ('prepare_benchmark BSD100', 'rerun (resume)'):
            timed(label, prepare_benchmark, osp.join(args.shared, 'BSD100', 'HR'), osp.join(b, 'HR'),
                  osp.join(b, 'LR'), 4)
        for roi in (24, 48):
            ds = ContextROIDataset(dict(phase='test', scale=4, roi_size=roi, dataroot_gt=osp.join(b, 'HR'),
                                        dataroot_lq=osp.join(b, 'LR')))
            t = time.perf_counter()
            items = [ds[i] for i in range(len(ds))]
            dt = (time.perf_counter() - t) / len(ds)
            crops = collections.Counter(tuple(it['cropped'].tolist()) for it in items)
            print(f'BSD100 roi {roi}: {len(ds)} images, {sum(len(it["rois"]) for it in items)} ROIs, '
                  f'cropped (rows, cols): {dict(crops)}, {dt * 1e3:.1f} ms/item', flush=True)
        d = osp.join(work, 'DIV2K')
        hr, lr = osp.join(d, 'HR_sub'), osp.join(d, 'LR_sub')
        timed('extract_subimages DIV2K 480/240', extract_subimages, osp.join(args.shared, 'DIV2K', 'HR'), hr,
              480, 240, 0)
        timed('generate_lr x4', generate_lr, hr, lr, 4, '{}x4')
        timed('create_lmdb HR', create_lmdb, hr, osp.join(d, 'hr.lmdb'))
        timed('create_lmdb LR', create_lmdb, lr, osp.join(d, 'lr.lmdb'))
        for backend, g, q in (('disk', hr, lr), ('lmdb', osp.join(d, 'hr.lmdb'), osp.join(d, 'lr.lmdb'))):
            ds = ContextROIDataset(dict(phase='train', scale=4, context_size=54, roi_size=48, use_hflip=True,
                                        use_rot=True, filename_tmpl='{}x4', io_backend={'type': backend},
                                        dataroot_gt=g, dataroot_lq=q))
            random.seed(0)
            t = time.perf_counter()
            for i in range(args.items):
                ds[i % len(ds)]
            print(f'train items ({backend}, {len(ds)} sub-images): '
                  f'{(time.perf_counter() - t) / args.items * 1e3:.1f} ms/item', flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
