"""Pack image folders into LMDB for fast training reads (BasicSR's format).

Uses ``basicsr.utils.lmdb_util.make_lmdb_from_imgs`` (key = file path without extension,
PNG bytes, ``meta_info.txt`` inside the .lmdb folder), built in a hidden temporary folder and
renamed when complete; an existing complete LMDB is skipped. Pass pairs of folder and
.lmdb path. Example (DIV2K sub-images)::

    python data/create_lmdb.py \
        datasets/DIV2K/DIV2K_train_HR_sub datasets/DIV2K/DIV2K_train_HR_sub.lmdb \
        datasets/DIV2K/DIV2K_train_LR_bicubic/X4_sub datasets/DIV2K/DIV2K_train_LR_bicubic_X4_sub.lmdb

``--meta-info FILE`` instead writes a disk ``meta_info_file`` for the first folder.
"""
import argparse
import sys

import clsr_arch  # noqa: F401  (basicsr compat first)
from clsr_arch.data.image_io import DataError
from clsr_arch.data.prep import create_lmdb, write_meta_info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('pairs', nargs='+', help='FOLDER LMDB_PATH [FOLDER LMDB_PATH ...]')
    parser.add_argument('--compress-level', type=int, default=1, help='PNG compression inside the LMDB')
    parser.add_argument('--n-thread', type=int, default=1, help='>1: read images with a process pool')
    parser.add_argument('--meta-info', default=None, help='write a disk meta_info_file for FOLDER instead')
    args = parser.parse_args(argv)
    try:
        if args.meta_info:
            n = write_meta_info(args.pairs[0], args.meta_info)
            print(f'{n} images listed in {args.meta_info}')
            return
        if len(args.pairs) % 2:
            parser.error('pass FOLDER LMDB_PATH pairs')
        for folder, lmdb_path in zip(args.pairs[::2], args.pairs[1::2]):
            result = create_lmdb(folder, lmdb_path, args.compress_level, args.n_thread)
            print(f'{lmdb_path}: {result}')
    except DataError as err:
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
