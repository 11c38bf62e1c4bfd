"""Proof that our IMDN (clsr_arch/archs/imdn_arch.py) with the official x4 weights reproduces its
published results, through our own pipeline (the protocol of benchmarks/carn_m_official.py: HR
cropped to a multiple of 4, LR = MATLAB bicubic x1/4 rounded to uint8, SR rounded, PSNR/SSIM on
Y with a 4-pixel border, averaged over images). Published (IMDN paper, Table 3, x4): Set5
32.21 / 0.8948, Set14 28.58 / 0.7811, B100 27.56 / 0.7353. Writes docs/imdn_official.md.

    .venv/bin/python benchmarks/imdn_official.py [--sets Set5 Set14 BSD100] [--no-doc]
"""
import argparse
import os.path as osp
import sys
import time

import torch

import carn_m_official as protocol  # the same reading, degradation and metrics as for CARN-M

from clsr_arch.archs.clsr_arch import backbone_state_dict
from clsr_arch.archs.imdn_arch import IMDN

WEIGHTS = osp.join(protocol.SHARED_DATA, 'weights', 'IMDN_x4.pth')
PUBLISHED = {'Set5': (32.21, 0.8948), 'Set14': (28.58, 0.7811), 'BSD100': (27.56, 0.7353)}
DOC = osp.join(protocol.REPO, 'docs', 'imdn_official.md')


def load_official_imdn(path=WEIGHTS):
    """Our ``IMDN(upscale=4)`` with the official weights (``module.`` stripped, strict), eval."""
    net = IMDN(upscale=4)
    net.load_state_dict(backbone_state_dict(path, net), strict=True)
    return net.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sets', nargs='+', default=['Set5', 'Set14', 'BSD100'])
    p.add_argument('--no-doc', action='store_true')
    p.add_argument('--threads', type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_official_imdn()
    rows = []
    with torch.no_grad():
        for name in args.sets:
            t0 = time.time()
            psnr, ssim, per = protocol.evaluate_set(net, osp.join(protocol.SHARED_DATA, name, 'HR'))
            pub = PUBLISHED[name]
            rows.append((name, len(per), psnr, ssim, pub, time.time() - t0))
            print(f'{name}: {psnr:.3f} / {ssim:.4f} (published {pub[0]} / {pub[1]})', flush=True)
    gflops = protocol.count_gflops(net, (24, 24))
    params = protocol.n_params(net)
    if args.no_doc:
        return rows
    lines = ['# Official IMDN x4 through our pipeline', '',
             f'Produced by `{" ".join([".venv/bin/python benchmarks/imdn_official.py"] + sys.argv[1:])}`.',
             'Weights: `../shared/data/weights/IMDN_x4.pth` (official, `nn.DataParallel` keys: `module.` stripped, '
             'loaded strictly with `weights_only=True` into `clsr_arch.archs.imdn_arch.IMDN`). Protocol: that of '
             '[carn_m_official.md](carn_m_official.md) (MATLAB bicubic LR, Y channel, 4-pixel border).', '',
             '| set | images | PSNR-Y (ours) | SSIM-Y (ours) | published | PSNR diff |', '|---|---|---|---|---|---|']
    for name, n, psnr, ssim, pub, _ in rows:
        lines.append(f'| {protocol.PAPER_NAME[name]} | {n} | {psnr:.3f} | {ssim:.4f} | {pub[0]:.2f} / {pub[1]:.4f} | '
                     f'{psnr - pub[0]:+.3f} |')
    lines += ['', f'Parameters: {params:,} (the data README: 715,176). GFLOPs at a 24x24 LR input, x4: {gflops:.3f} '
              '(2 x MACs, `torch.utils.flop_counter`).', '']
    with open(DOC, 'w') as f:
        f.write('\n'.join(lines))
    return rows


if __name__ == '__main__':
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
    main()
