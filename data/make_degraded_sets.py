"""Seeded degraded test sets from HR images (issue 21): Real-ESRGAN second order + three single factors.

Writes OUTPUT/HR/<stem>.png (HR cropped to a multiple of the scale) and, per kind,
OUTPUT/<kind>/X<scale>/<stem>.png and OUTPUT/<kind>/manifest.json (each image's seed and
parameters). Byte-for-byte reproducible from --seed. Example::

    python data/make_degraded_sets.py ../shared/data/Set14/HR datasets/real/Set14 --seed 0

Kinds: realesrgan (BasicSR's Real-ESRGAN second-order model, default ranges), jpeg30 (bicubic
x1/4 then JPEG q30), noise10 (bicubic then Gaussian noise sigma 10), blur1.6 (Gaussian blur
sigma 1.6 then bicubic); bicubic (the clean LR) on request; see clsr_arch/data/degraded_sets.py.
"""
import argparse
import sys

import clsr_arch  # noqa: F401  (basicsr compat first)
from clsr_arch.data.degraded_sets import KINDS, OPTIONAL, make_degraded_sets
from clsr_arch.data.image_io import DataError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('input', help='folder of HR images')
    parser.add_argument('output', help='output folder (HR/ and one folder per kind)')
    parser.add_argument('--kinds', default=','.join(KINDS), help=f'comma-separated subset of {",".join(KINDS + OPTIONAL)}')
    parser.add_argument('--scale', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        counts = make_degraded_sets(args.input, args.output, [k for k in args.kinds.split(',') if k], args.scale,
                                    args.seed)
    except DataError as err:
        sys.exit(f'error: {err}')
    print(', '.join(f'{k}: {n} images' for k, n in counts.items()) + f' -> {args.output}')


if __name__ == '__main__':
    main()
