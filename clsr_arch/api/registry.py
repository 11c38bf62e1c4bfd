"""The shipped models by name, and the command-line options that pick one.

``SHIPPED`` and ``DEFAULT_MODEL`` are plain module-level constants (add a model here: a name,
its weights and the YAML whose ``network_g`` builds them). A leaf module without torch, so that
``clsr-infer --help`` can list the models without loading anything.
"""
import os
import os.path as osp

REPO = osp.abspath(osp.join(osp.dirname(__file__), os.pardir, os.pardir))
# the shipped models by name: (weights, the YAML whose network_g builds them); docs/results.md
SHIPPED = {
    # real photos (compressed, noisy, soft): IMDN fine-tuned on Real-ESRGAN degradations + CLSR (issue 21)
    'clsr-imdn-real': (osp.join(REPO, 'weights', 'CLSR_IMDN_real_x4.pth'),
                       osp.join(REPO, 'options', 'train', 'CLSR_IMDN_real_x4.yml')),
    # clean MATLAB-bicubic LR (the paper's benchmarks): the official bases + GCM/PIM trained on the 497 images
    'clsr-imdn': (osp.join(REPO, 'weights', 'CLSR_IMDN_x4.pth'),
                  osp.join(REPO, 'options', 'train', 'CLSR_IMDN_x4_bicubic497.yml')),
    'clsr-carn-m': (osp.join(REPO, 'weights', 'CLSR_CARN_M_x4.pth'),
                    osp.join(REPO, 'options', 'train', 'CLSR_CARN_M_x4_bicubic497.yml')),
}
# CLSRs trained over a network people load by file (LocalSR.from_model / --model-path), keyed by the
# SHA-256 of that network's weights file: their base is those weights, frozen, bit for bit, so the
# CLSR and the user's pre-/post-crop run the same network (issue 24, item 4; weights/README.md)
TRAINED_CLSR = {
    # CRAFT x4 (../shared/data/weights/CRAFT_x4.pth): GCM + PIM on the 497 images, bicubic LR
    'a3d57001df7e856be6b4e3553d77be3b038609f34db5d41b43c3e6c67756a381': (
        osp.join(REPO, 'weights', 'CLSR_CRAFT_x4.pth'), osp.join(REPO, 'options', 'train', 'CLSR_CRAFT_x4_bicubic497.yml')),
}
# the model for a person's real photo: what people bring is JPEG-compressed and noisy, where the
# bicubic models sharpen blocks and noise (docs/results.md, real-world section)
DEFAULT_MODEL = 'clsr-imdn-real'
DEFAULT_WEIGHTS, DEFAULT_OPT = SHIPPED[DEFAULT_MODEL]
OFFICIAL_CARN_M = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data', 'weights', 'carn_m.pth'))


def add_model_args(parser):
    """``--model`` (a shipped model by name) and ``--weights``/``--opt`` (any checkpoint), for
    the command-line tools; :func:`model_paths` resolves them."""
    parser.add_argument('--model', choices=sorted(SHIPPED), default=DEFAULT_MODEL,
                        help=f'shipped model (default {DEFAULT_MODEL}: for real photos; clsr-imdn / clsr-carn-m: for clean '
                             'bicubic LR; docs/results.md)')
    parser.add_argument('--weights', help='a CLSR checkpoint instead of --model')
    parser.add_argument('--opt', help="YAML whose network_g builds --weights' network (default: --model's)")


def auto_or_count(text, flag, expected):
    """A command-line value that is ``'auto'`` or an integer >= 0 (``--pad``, ``--tile``);
    ``LocalSRError`` naming ``flag`` and what was ``expected`` otherwise."""
    if text == 'auto':
        return 'auto'
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        from .errors import LocalSRError
        raise LocalSRError(f'{flag} {text!r}: expected {expected}')
    return value


def model_paths(args):
    """(weights, opt) of ``add_model_args``'s options."""
    weights, opt = SHIPPED[args.model]
    return (args.weights or weights), (args.opt or opt)
