"""Shared helpers of the performance benchmarks (LocalSR paper Table 1 cost columns, Table 2
context sizes, Fig. 1's cost argument): backbone settings, the paper's numbers, the CLSR/pre-crop/
post-crop runners, environment lines and the marked sections of ``docs/benchmarks.md``.

The FLOPs themselves come from :mod:`clsr_arch.utils.flops` (one helper for the whole project).
"""
import copy
import os
import os.path as osp
import platform
import re
import shlex
import sys
import time

import torch

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir))
if REPO not in sys.path:  # scripts run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, REPO)

import clsr_arch  # noqa: E402,F401  (basicsr compat + registries; must precede basicsr use)

from clsr_arch.archs.backbone_adapters import run_backbone  # noqa: E402
from clsr_arch.data.context_roi_dataset import validation_grid  # noqa: E402

DOC = osp.join(REPO, 'docs', 'benchmarks.md')
SCALE = 4

# Paper Table 2: average LR context sizes (H x W) of the evaluation sets. They are ~1.8x (per
# side) the LR size of the standard x4 benchmarks (e.g. BSD100 LR is 80 x 120).
CONTEXTS = {'BSD100': (144, 216), 'Urban100': (384, 480), 'Manga109': (576, 408), 'Test2K': (528, 816)}
QUICK_CONTEXTS = {'tiny-a': (32, 40), 'tiny-b': (48, 64)}

# x4 backbones of the paper (Sec. 4.1) with their standard BasicSR / official settings.
# SwinIR-light: embed_dim 60, depths 4x6 as in the SwinIR paper, but with the `pixelshuffle`
# upsampler (conv_before_upsample + two x2 conv/shuffle + conv_last): that is what the LocalSR
# paper's 2.11 GFLOPs pre-crop cell costs (measured 2.118); the official lightweight model's
# `pixelshuffledirect` costs 1.227 (row SwinIR-light-psd, extra).
BACKBONES = {
    'CARN_M': {'type': 'CARN_M', 'upscale': SCALE},
    'CARN': {'type': 'CARN', 'upscale': SCALE},
    'SRResNet': {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16,
                 'upscale': SCALE},
    'RCAN': {'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_group': 10, 'num_block': 20,
             'squeeze_factor': 16, 'upscale': SCALE, 'res_scale': 1, 'img_range': 255.,
             'rgb_mean': [0.4488, 0.4371, 0.4040]},
    'SwinIR-light': {'type': 'SwinIR', 'upscale': SCALE, 'in_chans': 3, 'img_size': 64, 'window_size': 8,
                     'img_range': 1., 'depths': [6, 6, 6, 6], 'embed_dim': 60, 'num_heads': [6, 6, 6, 6],
                     'mlp_ratio': 2, 'upsampler': 'pixelshuffle', 'resi_connection': '1conv'},
    'SwinIR': {'type': 'SwinIR', 'upscale': SCALE, 'in_chans': 3, 'img_size': 48, 'window_size': 8,
               'img_range': 1., 'depths': [6, 6, 6, 6, 6, 6], 'embed_dim': 180, 'num_heads': [6, 6, 6, 6, 6, 6],
               'mlp_ratio': 2, 'upsampler': 'pixelshuffle', 'resi_connection': '1conv'},
}
EXTRA_BACKBONES = {
    'SwinIR-light-psd': {**BACKBONES['SwinIR-light'], 'upsampler': 'pixelshuffledirect'},
    'IMDN': {'type': 'IMDN', 'upscale': SCALE},  # official x4 layout (not in the paper's Table 1)
}
# paper row each backbone is compared with (CARN's row costs what CARN-M costs)
PAPER_ROW = {'CARN_M': 'CARN', 'SRResNet': 'SRResNet', 'RCAN': 'RCAN', 'SwinIR-light': 'SwinIR (lw)',
             'SwinIR': 'SwinIR'}
DEFAULT_LATENCY = ('SRResNet', 'CARN_M', 'SwinIR-light')
ALL = ('CARN_M', 'CARN', 'SRResNet', 'RCAN', 'SwinIR-light', 'SwinIR')
HEAVY = ('RCAN', 'SwinIR')  # deep models: fewer post-crop repeats on CPU

# Tiny stand-ins for --quick (tests): same types and code paths, a few channels/blocks.
QUICK_BACKBONES = {
    'CARN_M': {'type': 'CARN_M', 'upscale': SCALE, 'num_feat': 16},
    'CARN': {'type': 'CARN', 'upscale': SCALE, 'num_feat': 16},
    'SRResNet': {'type': 'MSRResNet', 'num_feat': 16, 'num_block': 2, 'upscale': SCALE},
    'RCAN': {'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_group': 2, 'num_block': 1,
             'squeeze_factor': 4, 'upscale': SCALE},
    'SwinIR-light': {'type': 'SwinIR', 'upscale': SCALE, 'in_chans': 3, 'img_size': 8, 'window_size': 4,
                     'img_range': 1., 'depths': [1, 1], 'embed_dim': 16, 'num_heads': [2, 2], 'mlp_ratio': 2,
                     'upsampler': 'pixelshuffle', 'resi_connection': '1conv'},
    'SwinIR': {'type': 'SwinIR', 'upscale': SCALE, 'in_chans': 3, 'img_size': 8, 'window_size': 4,
               'img_range': 1., 'depths': [1, 1], 'embed_dim': 24, 'num_heads': [2, 2], 'mlp_ratio': 2,
               'upsampler': 'pixelshuffle', 'resi_connection': '1conv'},
}

# LocalSR paper Table 1 (x4, ROI 24x24): GFLOPs (pre-crop, post-crop, ours) per dataset.
PAPER_TABLE1 = {
    'CARN': {'BSD100': (0.65, 35.37, 1.63), 'Urban100': (0.65, 209.59, 5.65),
             'Manga109': (0.65, 267.23, 6.97), 'Test2K': (0.65, 489.93, 12.11)},
    'SRResNet': {'BSD100': (2.93, 158.19, 5.08), 'Urban100': (2.93, 937.44, 8.94),
                 'Manga109': (2.93, 1195.23, 10.22), 'Test2K': (2.93, 2191.26, 15.15)},
    'RCAN': {'BSD100': (18.38, 992.73, 19.41), 'Urban100': (18.38, 5882.85, 21.50),
             'Manga109': (18.38, 7500.64, 22.19), 'Test2K': (18.38, 13751.17, 24.86)},
    'SwinIR (lw)': {'BSD100': (2.11, 113.70, 3.18), 'Urban100': (2.11, 673.77, 6.74),
                    'Manga109': (2.11, 859.06, 7.92), 'Test2K': (2.11, 1574.94, 12.47)},
    'SwinIR': {'BSD100': (15.08, 814.40, 23.23), 'Urban100': (15.08, 4826.06, 31.02),
               'Manga109': (15.08, 6153.23, 33.60), 'Test2K': (15.08, 11280.91, 43.56)},
}
MODES = ('pre_crop', 'post_crop', 'clsr')


def parse_backbones(value, quick=False):
    """``--backbones`` value (comma list, ``all`` or ``default``) -> list of names."""
    table = {**BACKBONES, **EXTRA_BACKBONES}
    if value == 'all':
        return list(ALL)
    if value == 'default':
        return list(DEFAULT_LATENCY)
    names = [v.strip() for v in value.split(',') if v.strip()]
    for n in names:
        if n not in table or (quick and n not in QUICK_BACKBONES):
            raise ValueError(f'--backbones: unknown backbone {n!r}; choose from {sorted(table)}, all, default')
    return names


def backbone_opt(name, quick=False):
    table = QUICK_BACKBONES if quick else {**BACKBONES, **EXTRA_BACKBONES}
    if name not in table:
        raise ValueError(f'unknown backbone {name!r}; choose from {sorted(table)}')
    return copy.deepcopy(table[name])


def build_clsr(name, quick=False, device='cpu', seed=0):
    """CLSR (the backbone's default roi_pad/GCM/PIM) around backbone ``name``, eval mode.

    The weights are random (seeded): cost does not depend on them. The GCM/PIM injections are
    zero at initialisation but still run, so CLSR's cost is the trained network's cost.
    """
    from clsr_arch.archs.clsr_arch import CLSR
    torch.manual_seed(seed)
    return CLSR(backbone=backbone_opt(name, quick)).to(device).eval()


def check_device(device):
    if device not in ('cpu', 'cuda'):
        raise ValueError(f'--device must be cpu or cuda, got {device!r}')
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: no CUDA device is available on this machine')
    return torch.device(device)


def plain_run(adapter, x):
    """Plain backbone on ``x`` (padded to the backbone's size multiple, output cropped)."""
    return run_backbone(adapter.run, x, adapter.scale, adapter.multiple)


def centre_box(context_hw, roi_hw):
    (H, W), (h, w) = context_hw, roi_hw
    if h > H or w > W:
        raise ValueError(f'ROI {h}x{w} larger than context {H}x{W}')
    return torch.tensor([[0, (W - w) // 2, (H - h) // 2, w, h]])


def roi_grid(context_hw, roi_hw):
    """The evaluation's non-overlapping ROI grid (row-major) as boxes ``(0, x, y, w, h)``."""
    (H, W), (h, w) = context_hw, roi_hw
    if h > H or w > W:
        raise ValueError(f'ROI {h}x{w} larger than context {H}x{W}')
    rois, _ = validation_grid(H, W, h, w)
    return torch.cat([torch.zeros(len(rois), 1, dtype=torch.long), rois], 1)


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_line(device, threads=None):
    """Which machine produced a table: device, threads, torch version."""
    device = torch.device(device)
    if device.type == 'cuda':
        where = f'cuda ({torch.cuda.get_device_name(device)})'
    else:
        where = f'cpu ({cpu_name()}, {os.cpu_count()} logical cores)'
    t = f', torch.set_num_threads({threads})' if threads is not None else ''
    return f'device {where}{t}, torch {torch.__version__}, python {platform.python_version()}'


def command_line(script_file, argv=None):
    """The exact command that produced a table: the script's path from the repo root and its
    arguments (``argv``; None = this process's command line)."""
    script = osp.relpath(osp.abspath(script_file), REPO)
    args = sys.argv[1:] if argv is None else list(argv)
    return ' '.join(['.venv/bin/python', shlex.quote(script)] + [shlex.quote(a) for a in args])


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def write_section(path, name, body):
    """Replace the text between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in ``path``
    (appended at the end when the markers are missing); other sections stay untouched."""
    begin, end = f'<!-- BEGIN {name} -->', f'<!-- END {name} -->'
    block = f'{begin}\n{body.strip()}\n{end}'
    text = ''
    if osp.exists(path):
        with open(path) as f:
            text = f.read()
    pattern = re.compile(re.escape(begin) + r'.*?' + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = (text.rstrip() + '\n\n' if text.strip() else '') + block + '\n'
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def read_section(path, name):
    """The body of a marked section, or None."""
    if not osp.exists(path):
        return None
    with open(path) as f:
        m = re.search(re.escape(f'<!-- BEGIN {name} -->') + r'\n(.*?)\n' + re.escape(f'<!-- END {name} -->'),
                      f.read(), re.S)
    return m.group(1) if m else None


def add_common_args(parser):
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--quick', action='store_true',
                        help='tiny backbones and contexts (seconds; used by the tests)')
    parser.add_argument('--out', default=DOC, help='markdown file whose marked section is (re)written')
    return parser
