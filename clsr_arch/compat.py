"""Fixes for basicsr 1.4.2 on today's torch/torchvision and on CPU, applied at import time.

Nothing in site-packages is edited: each fix replaces one name in one basicsr module, and each is
tested in ``tests/test_compat.py`` by a test that fails without it. They are applied

* by ``import clsr_arch`` (``clsr_arch/__init__.py`` imports this module before anything from
  basicsr), and
* **when any program imports basicsr** in an environment where clsr is installed (issue 24):
  ``clsr_basicsr_hook.pth``, which setup.py puts into site-packages (``pip install -e`` too),
  registers two meta-path finders at interpreter start (:mod:`clsr_basicsr_hook`: no torch, no
  basicsr import; 0.24 ms measured with ``-X importtime``): one serves fix 1's alias module when
  torchvision lacks it, the other imports this module right after the ``basicsr`` package has
  executed. So ``python -c "import basicsr"``, a user's own BasicSR scripts and BasicSR's own
  ``basicsr/train.py`` (also ``python -m basicsr.train``, which runs as ``__main__``: fix 2b)
  work unchanged, with clsr's archs/datasets/models registered. ``CLSR_BASICSR_HOOK=0`` turns
  the hook off.

Why a startup hook and not the alternatives the issue lists: another torchvision pin cannot
help -- ``transforms.functional_tensor`` was removed in torchvision 0.17 and each torchvision
pins its torch, so none that has it installs beside the fixed torch 2.14.1; a fork on PyPI
(``basicsr-fixed`` 1.4.2, say) fixes only the import, not resuming on CPU (fix 2) nor the
others, and would replace the basicsr 1.4.2 every measurement and shipped checkpoint of this
project was made with (its code not reviewed here). The hook changes nothing until basicsr is
imported, then applies the same, already tested, patches as ``import clsr_arch``: the pinned
packages and their files stay as they are, and every other test keeps its behaviour.

1. ``import basicsr`` fails with ``ModuleNotFoundError: torchvision.transforms.functional_tensor``
   (torchvision removed that private module; basicsr.data.degradations imports
   ``rgb_to_grayscale`` from it). Fix: register a tiny alias module exposing that function.
2. Resuming (``--auto_resume`` or ``path.resume_state``) crashes without CUDA:
   ``load_resume_state`` calls ``torch.cuda.current_device()`` and maps storages to CUDA; and
   auto-resume looks for ``experiments/<name>`` relative to the current directory rather than
   the project root. Fix: :func:`load_resume_state` below, which also loads with
   ``weights_only=True`` and skips a damaged newest state instead of crashing on it.
   2b. ``python -m basicsr.train`` / ``python basicsr/train.py`` run train.py's code as
   ``__main__``, with its own copy of ``load_resume_state``: ``basicsr.utils.options.
   parse_options`` (which that code imports after this module ran) becomes a wrapper that
   swaps BasicSR's copy in its caller's globals for :func:`load_resume_state`.
3. The pytorch DDP launcher calls ``torch.cuda.set_device`` and uses nccl, and
   ``BaseModel.model_to_device`` passes ``device_ids=[torch.cuda.current_device()]``: both fail
   on a CPU machine. Fix: gloo and no device ids when CUDA is absent, so
   ``torchrun --nproc_per_node=2 clsr_arch/train.py --launcher pytorch`` works on CPU.
4. Network (``.pth``) and training-state (``.state``) checkpoints are written in place, so a
   kill during a save leaves a truncated file that auto-resume then picks. Fix: basicsr's
   ``base_model`` module sees a ``torch`` whose ``save`` is :func:`atomic_save` (temp file,
   fsync, rename) and whose ``load`` is :func:`safe_load` (``weights_only=True``, clear errors);
   resuming removes the ``.tmp-*`` a killed save left; ``load_network`` failures (wrong
   architecture with ``strict_load_g``, missing param key) name the file and the differing keys.
5. ``filter2D`` (``basicsr.utils.img_process_util``, the blur of Real-ESRGAN's degradation model)
   calls ``.view`` on its input; on torch 2.14 ``DiffJPEG`` returns a non-contiguous tensor, so
   ``RealESRNetModel.feed_data`` (and clsr's degradation, issue 21) crash on the second blur.
   Fix: the same function on ``.contiguous()`` input (values unchanged), in every basicsr module
   that imported it by name.
"""
import logging
import os
import os.path as osp
import sys
import types

import torch
import torchvision.transforms.functional as _tv_functional

from clsr_arch.utils.checkpoint import TMP_PREFIX, CheckpointError, atomic_save, is_loadable, safe_load


# --- fix 1: torchvision.transforms.functional_tensor ----------------------------------------
def _install_functional_tensor_alias():
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        __import__(name)  # an old torchvision still has it
        return
    except ImportError:
        pass
    alias = types.ModuleType(name)
    alias.rgb_to_grayscale = _tv_functional.rgb_to_grayscale
    alias.__doc__ = 'clsr_arch.compat alias: the module torchvision removed, for basicsr 1.4.2.'
    sys.modules[name] = alias


_install_functional_tensor_alias()

import basicsr.models.base_model as _base_model  # noqa: E402  (needs fix 1 first)
import basicsr.train as _bsr_train  # noqa: E402
import basicsr.utils.dist_util as _dist_util  # noqa: E402
import basicsr.utils.options as _bsr_options  # noqa: E402
from basicsr.utils import check_resume, scandir  # noqa: E402


# --- fix 2: resuming without CUDA, from the project root ----------------------------------
_log = logging.getLogger('basicsr.compat')


def _state_dir(opt):
    if opt['path'].get('training_states'):  # set by parse_options for training
        return opt['path']['training_states']
    root = opt.get('root_path') or os.getcwd()
    return osp.join(root, 'experiments', opt['name'], 'training_states')


def latest_resume_state(state_dir):
    """Path of the newest ``<iter>.state`` in ``state_dir`` that loads completely, or None."""
    if not osp.isdir(state_dir):
        return None
    iters = sorted((int(v[:-len('.state')]) for v in scandir(state_dir, suffix='.state', recursive=False)
                    if v[:-len('.state')].isdigit()),
                   reverse=True)
    for it in iters:
        path = osp.join(state_dir, f'{it}.state')
        if is_loadable(path):
            return path
        # not get_root_logger(): initialising basicsr's logger before train_pipeline does would
        # leave the run without its log file; a child logger reaches stderr and nothing else
        _log.warning(f'Skipping damaged training state {path}')
    return None


def remove_stale_tmp(opt):
    """Delete the ``.tmp-*`` files of saves killed mid-way in models/ and training_states/
    (rank 0 only); returns their paths. Complete checkpoints are never touched."""
    removed = []
    if opt.get('rank', 0) != 0:
        return removed
    for key in ('models', 'training_states'):
        folder = opt['path'].get(key)
        if not folder or not osp.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith(TMP_PREFIX):
                try:
                    os.remove(osp.join(folder, name))
                except FileNotFoundError:
                    continue
                removed.append(osp.join(folder, name))
    if removed:
        _log.warning(f'Removed {len(removed)} temporary file(s) of interrupted checkpoint saves: {removed}')
    return removed


def load_resume_state(opt):
    """Drop-in for ``basicsr.train.load_resume_state`` that works on CPU and from any cwd."""
    if opt['auto_resume']:
        resume_state_path = latest_resume_state(_state_dir(opt))
        if resume_state_path is not None:
            opt['path']['resume_state'] = resume_state_path
    else:
        resume_state_path = opt['path'].get('resume_state')
    if resume_state_path is None:
        return None
    remove_stale_tmp(opt)
    device = torch.device('cuda', torch.cuda.current_device()) if torch.cuda.is_available() else 'cpu'
    resume_state = safe_load(resume_state_path, map_location=device)
    check_resume(opt, resume_state['iter'])
    return resume_state


_orig_load_resume_state = _bsr_train.load_resume_state
_bsr_train.load_resume_state = load_resume_state

# --- fix 2b: BasicSR's train.py run as __main__ ----------------------------------------------
_orig_parse_options = _bsr_options.parse_options


def parse_options(root_path, is_train=True):
    """``basicsr.utils.options.parse_options``; called from a copy of basicsr's train.py running
    as ``__main__`` (``python -m basicsr.train``, ``python basicsr/train.py``), it first replaces
    that copy's ``load_resume_state`` with :func:`load_resume_state`."""
    caller = sys._getframe(1).f_globals
    theirs = caller.get('load_resume_state')
    if (caller is not vars(_bsr_train) and isinstance(theirs, types.FunctionType)
            and theirs.__code__.co_code == _orig_load_resume_state.__code__.co_code):
        caller['load_resume_state'] = load_resume_state
    return _orig_parse_options(root_path, is_train)


_bsr_options.parse_options = parse_options


# --- fix 3: DDP on CPU (gloo) ------------------------------------------------------------------
_orig_init_dist = _dist_util.init_dist


def init_dist(launcher, backend='nccl', **kwargs):
    """``basicsr.utils.dist_util.init_dist`` that falls back to gloo when CUDA is absent."""
    if not torch.cuda.is_available():
        if launcher != 'pytorch':
            raise RuntimeError(f'launcher {launcher!r} needs CUDA; use --launcher pytorch on CPU')
        import torch.distributed as dist
        dist.init_process_group(backend='gloo', **kwargs)
        return
    _orig_init_dist(launcher, backend, **kwargs)


_dist_util.init_dist = init_dist
_bsr_options.init_dist = init_dist  # options.py bound the name at import time

_orig_model_to_device = _base_model.BaseModel.model_to_device


def model_to_device(self, net):
    """``BaseModel.model_to_device`` without ``torch.cuda.current_device()`` on CPU."""
    if self.opt['dist'] and self.device.type == 'cpu':
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(
            net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
    return _orig_model_to_device(self, net)


_base_model.BaseModel.model_to_device = model_to_device


# --- fix 4: atomic checkpoint writes, safe loads ------------------------------------------
class _TorchForBaseModel(types.ModuleType):
    """``torch`` as basicsr's base_model sees it: atomic ``save``, weights-only ``load``."""

    def __init__(self):
        super().__init__('torch')

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def save(obj, f, *args, **kwargs):
        atomic_save(obj, f)

    @staticmethod
    def load(f, map_location=None, **kwargs):
        return safe_load(f, map_location=map_location or 'cpu')


_base_model.torch = _TorchForBaseModel()


def describe_load_failure(net, load_path, param_key, err):
    """Why ``load_path`` does not load into ``net``: a missing param key, or the keys that differ."""
    name = type(net).__name__
    ckpt = safe_load(load_path)
    if param_key is not None:
        if not isinstance(ckpt, dict) or (param_key not in ckpt and 'params' not in ckpt):
            if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
                return (f'checkpoint {load_path!r} has no {param_key!r} entry: it is a plain state dict '
                        f'({len(ckpt)} tensors); set path.param_key_g: ~')
            found = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            return (f'checkpoint {load_path!r} has no {param_key!r} entry (top-level keys: {found}); set '
                    'path.param_key_g to one of them')
        ckpt = ckpt[param_key if param_key in ckpt else 'params']
    sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in ckpt.items()}
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    shapes = sorted(f'{k}: checkpoint {tuple(sd[k].shape)} vs network {tuple(own[k].shape)}'
                    for k in set(sd) & set(own) if torch.is_tensor(sd[k]) and sd[k].shape != own[k].shape)
    if not (missing or unexpected or shapes):
        return f'cannot load checkpoint {load_path!r} into {name}: {type(err).__name__}: {err}'
    msg = (f'checkpoint {load_path!r} does not match network {name} (strict load): '
           f'{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}, '
           f'{len(shapes)} shape mismatches {shapes[:8]}')
    if missing and hasattr(net, 'base') and {f'base.{k}' for k in sd} <= set(own):
        msg += ('; it holds a plain backbone: load it with network_g.pretrain_backbone, not '
                'path.pretrain_network_g')
    return msg


_orig_load_network = _base_model.BaseModel.load_network


def load_network(self, net, load_path, strict=True, param_key='params'):
    """``BaseModel.load_network`` whose failures name the file and the keys that differ (basicsr
    raises a bare ``KeyError: 'params'`` or torch's unnamed state-dict error)."""
    try:
        return _orig_load_network(self, net, load_path, strict, param_key)
    except CheckpointError:
        raise
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(describe_load_failure(self.get_bare_model(net), load_path, param_key, err)) from None


_base_model.BaseModel.load_network = load_network


# --- fix 5: filter2D on non-contiguous input ------------------------------------------------
import basicsr.utils.img_process_util as _img_process_util  # noqa: E402
import basicsr.models.realesrgan_model as _realesrgan_model  # noqa: E402
import basicsr.models.realesrnet_model as _realesrnet_model  # noqa: E402

_orig_filter2D = _img_process_util.filter2D


def filter2D(img, kernel):
    """basicsr's ``filter2D`` on a contiguous copy of ``img`` when it is not contiguous."""
    return _orig_filter2D(img.contiguous(), kernel)


for _mod in (_img_process_util, _realesrgan_model, _realesrnet_model):
    _mod.filter2D = filter2D

APPLIED = ('functional_tensor alias', 'load_resume_state on CPU from root', "basicsr's train.py as __main__ resumes",
           'gloo DDP on CPU',
           'atomic checkpoints + weights_only loads', 'filter2D on non-contiguous input')
