"""Bicubic LR images, MATLAB-compatible (LocalSR paper Sec. 4: bicubic x4 degradation).

Uses ``basicsr.utils.matlab_functions.imresize`` (antialiased bicubic, as MATLAB's imresize)
on the 8-bit HR, rounds back to 8 bits. HR sides must be multiples of the scale; give
``--hr-out`` to crop them (bottom/right) and write the cropped HR there. Resumable, atomic.
Example (DIV2K sub-images, x4, DIV2K's ``0001_s001x4.png`` naming)::

    python data/generate_lr.py datasets/DIV2K/DIV2K_train_HR_sub \
        datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub --scale 4 --filename-tmpl '{}x4'
"""
import argparse
import sys

import clsr_arch  # noqa: F401  (basicsr compat first)
from clsr_arch.data.image_io import DataError
from clsr_arch.data.prep import generate_lr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('hr', help='folder of HR images')
    parser.add_argument('lr', help='output folder for LR PNGs')
    parser.add_argument('--scale', type=int, required=True, choices=(2, 3, 4))
    parser.add_argument('--filename-tmpl', default='{}', help="LR name template, e.g. '{}x4'")
    parser.add_argument('--hr-out', default=None, help='also write HR cropped to a multiple of the scale here')
    parser.add_argument('--compression-level', type=int, default=3)
    args = parser.parse_args(argv)
    try:
        stats = generate_lr(args.hr, args.lr, args.scale, args.filename_tmpl, args.hr_out, args.compression_level)
    except DataError as err:
        sys.exit(f'error: {err}')
    print(f'{stats["written"]} LR images written, {stats["skipped"]} already complete -> {args.lr}')


if __name__ == '__main__':
    main()
