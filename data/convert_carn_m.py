"""Convert the official multi-scale CARN-M checkpoint into a BasicSR single-scale one.

The official file (nmhkahn/CARN-pytorch ``checkpoint/carn_m.pth``) is a plain state dict
holding x2, x3 and x4 upsamplers. This keeps the ``--scale`` branch
(:func:`clsr_arch.archs.carn_arch.official_carn_m_to_single_scale`), checks that the result
loads strictly into ``CARN_M(upscale=scale)``, and writes ``{'params': state_dict}`` atomically
(``network_g: {type: CARN_M, upscale: 4}`` + ``path.pretrain_network_g`` then load it; it is
also the ``pretrain_backbone`` of a CLSR network on CARN-M).

    .venv/bin/python data/convert_carn_m.py \\
        --input ../shared/data/weights/carn_m.pth \\
        --output experiments/pretrained_models/CARN_M_x4.pth --scale 4
"""
import argparse
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), os.pardir)))

import clsr_arch  # noqa: E402,F401  (compat + registries)
from clsr_arch.archs.carn_arch import CARN_M, official_carn_m_to_single_scale  # noqa: E402
from clsr_arch.utils.checkpoint import atomic_save  # noqa: E402


def convert(input_path, output_path, scale=4):
    """Write the BasicSR checkpoint; returns the converted state dict."""
    if not osp.isfile(input_path):
        raise ValueError(f'--input {input_path!r} does not exist')
    try:
        state = torch.load(input_path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise ValueError(f'--input {input_path!r} is not a loadable state dict: {err}') from err
    if isinstance(state, dict) and 'params' in state and isinstance(state['params'], dict):
        raise ValueError(f'--input {input_path!r} is already a BasicSR checkpoint (has "params")')
    params = official_carn_m_to_single_scale(state, scale)
    net = CARN_M(upscale=scale)
    try:
        net.load_state_dict(params, strict=True)
    except RuntimeError as err:
        raise ValueError(f'--input {input_path!r} does not match CARN_M(upscale={scale}): {err}') from err
    # Save what the network holds (contiguous, in its key order), not the raw loaded tensors.
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    os.makedirs(osp.dirname(osp.abspath(output_path)), exist_ok=True)
    atomic_save({'params': params}, output_path)
    return params


def main(argv=None):
    parser = argparse.ArgumentParser(description='Official CARN-M weights -> BasicSR single-scale checkpoint')
    parser.add_argument('--input', default=osp.join('..', 'shared', 'data', 'weights', 'carn_m.pth'))
    parser.add_argument('--output', default=osp.join('experiments', 'pretrained_models', 'CARN_M_x4.pth'))
    parser.add_argument('--scale', type=int, default=4, choices=(2, 3, 4))
    args = parser.parse_args(argv)
    params = convert(args.input, args.output, args.scale)
    n = sum(v.numel() for v in params.values())
    print(f'wrote {args.output}: CARN_M(upscale={args.scale}), {len(params)} tensors, {n:,} parameters')


if __name__ == '__main__':
    main()
