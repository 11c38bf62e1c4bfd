"""Building the networks of a :class:`~clsr_arch.api.LocalSR`: the CLSR from its options and
checkpoint (strictly), and the plain backbone that pre-/post-crop run."""
import copy
import os.path as osp

import yaml

import clsr_arch  # noqa: F401  (compat + registries)
from basicsr.archs import build_network

from ..archs.clsr_arch import backbone_state_dict, checkpoint_params, state_dict_mismatch
from ..utils.checkpoint import CheckpointError, safe_load
from .errors import LocalSRError
from .registry import DEFAULT_OPT, DEFAULT_WEIGHTS, OFFICIAL_CARN_M


def load_options(path):
    """A YAML options file with a ``network_g`` of type CLSR."""
    try:
        with open(path) as f:
            opt = yaml.safe_load(f)
    except OSError as err:
        raise LocalSRError(f'opt {path}: cannot read ({err.strerror})') from None
    except yaml.YAMLError as err:
        raise LocalSRError(f'opt {path}: not valid YAML ({str(err).splitlines()[0]})') from None
    if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
        raise LocalSRError(f'opt {path}: no network_g section')
    if opt['network_g'].get('type') != 'CLSR':
        raise LocalSRError(f'opt {path}: network_g.type is {opt["network_g"].get("type")!r}, expected CLSR')
    return opt


def load_network(opt_path=DEFAULT_OPT, weights_path=DEFAULT_WEIGHTS):
    """The CLSR network of ``opt_path``'s ``network_g`` with ``weights_path`` loaded strictly
    (eval mode, CPU); a mismatch names the missing/unexpected keys and shapes."""
    opt = load_options(opt_path)
    net_opt = copy.deepcopy(opt['network_g'])
    net_opt['pretrain_backbone'] = None  # every weight comes from weights_path
    try:
        net = build_network(net_opt)
    except ValueError as err:
        raise LocalSRError(f'opt {opt_path}: network_g: {err}') from None
    try:
        ckpt = safe_load(weights_path)
    except (CheckpointError, ValueError) as err:
        raise LocalSRError(f'weights: {err}') from None
    sd = checkpoint_params(ckpt)
    if sd is None:
        raise LocalSRError(f'weights {weights_path}: no params_ema/params state dict in the checkpoint')
    missing, unexpected, shapes = state_dict_mismatch(net.state_dict(), sd)
    shapes = [f'{k} {a} vs {b}' for k, a, b in shapes]
    if missing or unexpected or shapes:
        def few(keys):
            return '[' + ', '.join(keys[:4]) + (f', ... {len(keys) - 4} more' if len(keys) > 4 else '') + ']'
        raise LocalSRError(f'weights {weights_path} do not match the network of opt {opt_path}: '
                           f'missing {few(missing)}, unexpected {few(unexpected)}, shape mismatches {few(shapes)}')
    net.load_state_dict(sd, strict=True)
    return net.eval()


def resolve_base_weights(net, base_weights):
    """The plain backbone checkpoint of pre-/post-crop, or None for the CLSR's own base.

    ``'official'``: the official CARN-M (``../shared/data/weights/carn_m.pth``) when the base is
    CARN-M -- the baselines the paper compares with -- else the CLSR's own base (an error if the
    file is missing); ``'auto'``: the same, but the CLSR's own base when the file is missing;
    ``'clsr'`` or None: the CLSR's own base; anything else: a plain-backbone checkpoint path."""
    if base_weights in (None, 'clsr'):
        return None
    if base_weights in ('official', 'auto'):
        if type(net.base).__name__ != 'CARN_M':
            return None
        if not osp.isfile(OFFICIAL_CARN_M):
            if base_weights == 'auto':
                return None
            raise LocalSRError(f'base weights official: {OFFICIAL_CARN_M} missing (../shared/data must sit beside '
                               'the repository; or use the CLSR base (clsr) or a checkpoint path)')
        return OFFICIAL_CARN_M
    return base_weights


def build_base(net, base_weights):
    """The plain backbone of pre-/post-crop: a copy of the CLSR's base with ``base_weights``
    loaded (official multi-scale CARN-M files are mapped), or the base itself."""
    if not base_weights:
        return net.base
    base = copy.deepcopy(net.base)
    try:
        base.load_state_dict(backbone_state_dict(base_weights, base), strict=True)
    except (CheckpointError, ValueError) as err:
        raise LocalSRError(f'base weights: {err}') from None
    return base.eval()

