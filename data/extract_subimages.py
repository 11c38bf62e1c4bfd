"""Crop DIV2K-style training images into overlapping sub-images (LocalSR paper Sec. 4: DIV2K).

BasicSR's pip package lacks its ``scripts/`` folder; this is the same rule (crops every
``--step`` pixels plus one flush with the far edge when more than ``--thresh-size`` is left),
resumable and atomic. Example (DIV2K HR, BasicSR's settings)::

    python data/extract_subimages.py datasets/DIV2K/DIV2K_train_HR datasets/DIV2K/DIV2K_train_HR_sub \
        --crop-size 480 --step 240 --thresh-size 0

Then make LR from the sub-images with ``data/generate_lr.py`` (480 is a multiple of 2, 3, 4).
"""
import argparse
import sys

import clsr_arch  # noqa: F401  (basicsr compat first)
from clsr_arch.data.image_io import DataError
from clsr_arch.data.prep import extract_subimages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('input', help='folder of HR images')
    parser.add_argument('output', help='folder for <stem>_sNNN.png sub-images')
    parser.add_argument('--crop-size', type=int, default=480)
    parser.add_argument('--step', type=int, default=240)
    parser.add_argument('--thresh-size', type=int, default=0)
    parser.add_argument('--compression-level', type=int, default=3, help='PNG compression 0-9')
    parser.add_argument('--n-thread', type=int, default=1)
    args = parser.parse_args(argv)
    try:
        stats = extract_subimages(args.input, args.output, args.crop_size, args.step, args.thresh_size,
                                  args.compression_level, args.n_thread)
    except DataError as err:
        sys.exit(f'error: {err}')
    print(f'{stats["written"]} sub-images written, {stats["skipped"]} already complete -> {args.output}')


if __name__ == '__main__':
    main()
