"""Parameters of every CLSR variant next to its plain backbone (x4, per-backbone defaults).

The table in README.md is this script's output: ``python benchmarks/params.py``. Networks are
built on the meta device (no memory, no weights), from the same configs as the FLOPs table.
"""
import copy
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

import clsr_arch  # noqa: E402,F401  (compat + registries)
from clsr_arch.utils.flops import PAPER_BACKBONES, build_on  # noqa: E402


def count(net):
    return sum(p.numel() for p in net.parameters())


def main():
    variants = []
    for name, (opt, _) in PAPER_BACKBONES.items():
        if name == 'SwinIR-light':
            name = 'SwinIR-light (`pixelshuffledirect`, the official light model)'
        variants.append((name, opt))
    variants.append(('IMDN (official x4 layout; not in the paper)', {'type': 'IMDN', 'upscale': 4}))
    print('| backbone | plain backbone | CLSR | GCM + PIM |\n|---|---|---|---|')
    for name, opt in variants:
        plain = count(build_on(copy.deepcopy(opt), 'meta'))
        clsr = count(build_on({'type': 'CLSR', 'backbone': copy.deepcopy(opt)}, 'meta'))
        print(f'| {name} | {plain / 1e6:.3f} M | {clsr / 1e6:.3f} M | +{(clsr - plain) / 1e3:.1f} k |')


if __name__ == '__main__':
    main()
