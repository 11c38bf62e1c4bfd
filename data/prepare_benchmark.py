"""Any folder of HR images -> paired HR/LR benchmark folders (LocalSR paper Sec. 4:
BSD100, Urban100, Manga109, Test2K at x4).

HR images are converted to 8-bit 3-channel (grayscale replicated, 16-bit scaled, opaque alpha
dropped; transparent alpha refused), cropped bottom/right to a multiple of the scale and
written as PNG; LR = MATLAB-compatible bicubic of that HR. Same file stem on both sides.
Resumable, atomic. Example::

    python data/prepare_benchmark.py /path/to/Manga109 datasets/Manga109/HR \
        datasets/Manga109/LR_bicubic/X4 --scale 4
"""
import argparse
import sys

import clsr_arch  # noqa: F401  (basicsr compat first)
from clsr_arch.data.image_io import DataError
from clsr_arch.data.prep import prepare_benchmark


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='folder of HR images (any size / format)')
    parser.add_argument('hr_out', help='output folder for cropped HR PNGs')
    parser.add_argument('lr_out', help='output folder for bicubic LR PNGs')
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4))
    parser.add_argument('--compression-level', type=int, default=3)
    args = parser.parse_args(argv)
    try:
        stats = prepare_benchmark(args.src, args.hr_out, args.lr_out, args.scale, args.compression_level)
    except DataError as err:
        sys.exit(f'error: {err}')
    print(f'{stats["written"]} pairs written, {stats["skipped"]} already complete -> {args.hr_out}, {args.lr_out}')


if __name__ == '__main__':
    main()
