"""Train with BasicSR's own pipeline: ``python clsr_arch/train.py -opt options/train/<yml>``.

Every BasicSR flag works (``--auto_resume``, ``--launcher pytorch``, ``--force_yml``, ``--debug``).
"""
import os
import os.path as osp
import sys

if __package__ in (None, ''):  # run as a script: make the repo importable
    sys.path.insert(0, osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))

import clsr_arch  # noqa: E402,F401  (compat fixes + registrations, before basicsr runs)
from basicsr.train import train_pipeline  # noqa: E402


def main():
    # experiments/, tb_logger/ and results/ go under the repo root, as in BasicSR and HAT;
    # CLSR_ROOT moves them elsewhere (the tests use it to keep the checkout clean).
    root_path = os.environ.get('CLSR_ROOT') or osp.abspath(osp.join(__file__, osp.pardir, osp.pardir))
    train_pipeline(root_path)


if __name__ == '__main__':
    main()
