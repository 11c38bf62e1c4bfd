"""CRAFT x4 through ``LocalSR.from_model`` (issue 24, item 3): does the API reproduce the network's
measured whole-image PSNR, and what does ``pad='auto'`` / ``method='auto'`` calibrate for it?

1. Whole-image PSNR-Y (border 4 cropped, ``basicsr.metrics.calculate_psnr``) of Set5 and Set14:
   HR cropped to a multiple of 4, LR = MATLAB bicubic x1/4 (``clsr_arch.data.prep.bicubic_lr``),
   SR = ``image.super_resolve([whole image], method='post_crop')`` of a model from
   ``LocalSR.from_model(CRAFT_x4.pth, pad=0, method='pre_crop')`` (no calibration needed for
   this). ``../shared/data/README.md`` measured spandrel 0.4.2's CRAFT directly: Set5 32.387,
   Set14 28.828. The API pads to spandrel's multiple of 16 (reflect) before CRAFT's own mirror
   padding, so a few thousandths of a dB of difference at the border are expected.
2. The calibration (``pad='auto'``, ``method='auto'``; :mod:`clsr_arch.api.calibration`) on the
   validation crops, its record printed and cached.

Writes the ``craft-reproduce`` and ``craft-calibration`` sections of docs/spandrel.md (``--sets ''``:
the calibration only, from its cache when there).

    flock -s /tmp/clsr_bench.lock .venv/bin/python benchmarks/craft_reproduce.py   # ~25 min, 2 busy cores
"""
import argparse
import glob
import os.path as osp
import time

import numpy as np
import torch

import common  # noqa: F401  (repo on sys.path, compat)

import cv2  # noqa: E402
from basicsr.metrics import calculate_psnr  # noqa: E402
from clsr_arch.api import LocalSR  # noqa: E402
from clsr_arch.api.calibration import summary  # noqa: E402
from clsr_arch.data.prep import bicubic_lr, mod_crop  # noqa: E402

SHARED = osp.join(common.REPO, '..', 'shared', 'data')
WEIGHTS = osp.join(SHARED, 'weights', 'CRAFT_x4.pth')
DOC = osp.join(common.REPO, 'docs', 'spandrel.md')
REFERENCE = {'Set5': 32.387, 'Set14': 28.828}  # ../shared/data/README.md (spandrel's CRAFT called directly)


def whole_image_psnr(model, path):
    hr = mod_crop(cv2.imread(path, cv2.IMREAD_COLOR), 4)
    lr = bicubic_lr(hr, 4)
    with model.open(np.ascontiguousarray(lr[:, :, ::-1]), osp.basename(path)) as im:
        sr = im.super_resolve([(0, 0, lr.shape[1], lr.shape[0])], method='post_crop')[0]
    return calculate_psnr(sr[:, :, ::-1], hr, 4, test_y_channel=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--sets', default='Set5,Set14')
    p.add_argument('--no-calibration', action='store_true')
    p.add_argument('--out', default=DOC)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = LocalSR.from_model(WEIGHTS, scale=4, pad=0, method='pre_crop', device='cpu')
    rows = []
    for set_name in filter(None, args.sets.split(',')):
        t0 = time.perf_counter()
        vals = []
        for path in sorted(glob.glob(osp.join(SHARED, set_name, 'HR', '*.png'))):
            vals.append(whole_image_psnr(model, path))
            print(f'  {set_name} {osp.basename(path)} {vals[-1]:.3f}', flush=True)
        mean = float(np.mean(vals))
        ref = REFERENCE.get(set_name)
        rows.append([set_name, str(len(vals)), f'{mean:.3f}', f'{ref:.3f}' if ref else '–',
                     f'{mean - ref:+.3f}' if ref else '–', f'{time.perf_counter() - t0:.0f}'])
        print(set_name, rows[-1], flush=True)
    if rows:
        text = (f'Produced by `{common.command_line(__file__, argv)}` ({common.env_line("cpu", args.threads)}).\n\n'
                + common.markdown_table(['set', 'images', 'PSNR-Y through LocalSR.from_model (post-crop of the whole '
                                         'image)', 'measured with spandrel directly (data README)', 'difference',
                                         'seconds'], rows))
        common.write_section(args.out, 'craft-reproduce', text)
    elif common.read_section(args.out, 'craft-reproduce'):  # --sets '': keep the PSNR table, drop an older
        old = common.read_section(args.out, 'craft-reproduce')  # script's calibration paragraph (now its own section)
        common.write_section(args.out, 'craft-reproduce', old.split('\n\nCalibration (')[0])
    if not args.no_calibration:
        t0 = time.perf_counter()
        auto = LocalSR.from_model(WEIGHTS, scale=4, device='cpu',
                                  calibration_progress=lambda d, n: print(f'  calibration {d}/{n}', flush=True))
        rec = auto.calibration
        cal_rows = [[k, f'{v:.3f}', f'{v - rec["psnr"]["post_crop"]:+.3f}', f'{rec["gflops"][k]:.3f}',
                     ', '.join(map(str, rec['same_window'].get(k, [])))]
                    for k, v in sorted(rec['psnr'].items(), key=lambda kv: rec['gflops'][kv[0]])]
        text = (f'Produced by `{common.command_line(__file__, argv)}`: `LocalSR.from_model(CRAFT_x4.pth)`, pad and '
                f'method auto ({time.perf_counter() - t0:.0f} s now; '
                f'{"read from the cache of an earlier run, which measured for " + format(rec["seconds"], ".0f") + " s" if rec["cached"] else "measured"}). '
                f'{summary(rec)}.\n\n'
                + common.markdown_table(['row', 'PSNR-Y (dB)', 'minus post-crop', 'GFLOPs per ROI',
                                         'pads with this same window'], cal_rows))
        common.write_section(args.out, 'craft-calibration', text)
        print(auto.describe(), flush=True)


if __name__ == '__main__':
    main()
