"""The clsr Python API: load a CLSR model, open an image once, super-resolve any boxes of it.

    from clsr_arch.api import LocalSR

    model = LocalSR()                          # the shipped CLSR-IMDN x4 ('clsr-carn-m' too), device 'auto'
    with model.open('photo.png') as image:     # a path, or a uint8/uint16 HxW[xC] RGB array
        srs = image.super_resolve([(120, 80, 48, 48), (10, 10, 24, 32)])   # uint8 HxWx3 RGB
        pre = image.super_resolve([(120, 80, 48, 48)], method='pre_crop')
        print(image.last_run)                  # method, seconds, per-box seconds, GFLOPs, the plan

LocalSR (the paper's task, Sec. 1): only the boxes are super-resolved, with the whole image as
context. Methods: ``clsr`` (CLSR, planned over the boxes: :mod:`clsr_arch.planner`),
``pre_crop`` (the plain backbone on the box padded by ``pad`` LR pixels of real context,
default CLSR's ``roi_pad``), ``post_crop`` (whole-image SR with the plain backbone, then
cropped; tiled when it does not fit the memory budget: :mod:`clsr_arch.whole_image`) and
``bicubic`` (MATLAB bicubic of the box alone).

The context pass (Sec. 3.4) runs once per image, on the first CLSR decode that needs it (or
``image.encode()``): over the whole frame, or -- when a plan finds it cheaper -- only the GCM
windows and PIM tiles around the boxes (:mod:`.roi_context`). Memory: ``max_memory`` bounds every
pass (:mod:`.budget`). Errors a user can cause raise :class:`LocalSRError` (a ``ValueError``).
Many images, boxes from a detector, resumable and sharded: :mod:`.batch`.

One concept per module; every public name is re-exported here, loaded on first use (so that
``from clsr_arch.api import SHIPPED`` or ``LocalSRError`` does not import torch):

=================  ==========================================================================
registry           ``SHIPPED``, ``DEFAULT_MODEL`` (plain constants), model paths, ``--model``
errors             ``LocalSRError``, ``MemoryBudgetError``
methods            ``METHODS``, ``LABELS``, ``bicubic_flops``
inputs             ``load_image``, ``normalise_boxes``, ``to_uint8``
networks           ``load_network``, ``load_options``, ``build_base``, ``resolve_base_weights``
budget             ``MemoryBudgets`` (bytes of every pass, tilings), ``SAFETY``, tile sizes
model              ``LocalSR``
image              ``Image``
tiled_image        ``TiledImage`` (tiled TIFF / .npy, read region by region)
roi_context        the ROI-local context of in-memory images, priced against the whole frame
box_files          ``read_boxes``: CSV / COCO JSON boxes of a detector
manifest           ``Manifest``: what a batch run wrote (JSON lines), atomic output writes
batch              ``BatchJob``, ``run_batch``: many images, resumable
shard              ``Ranks``: torchrun's ranks, the split of the images, the merged summary
compare            ``open_compared``, ``run_methods``, ``roi_gflops``: every method on the same boxes
=================  ==========================================================================
"""
import importlib

_WHERE = {
    'registry': ('REPO', 'SHIPPED', 'TRAINED_CLSR', 'DEFAULT_MODEL', 'DEFAULT_WEIGHTS', 'DEFAULT_OPT',
                 'OFFICIAL_CARN_M', 'add_model_args', 'model_paths'),
    'errors': ('LocalSRError', 'MemoryBudgetError'),
    'methods': ('METHODS', 'LABELS', 'bicubic_flops'),
    'inputs': ('load_image', 'normalise_boxes', 'to_uint8', 'degrade', 'grid_boxes'),
    'compare': ('run_methods', 'roi_gflops', 'open_compared'),
    'networks': ('load_options', 'load_network', 'resolve_base_weights', 'build_base'),
    'budget': ('SAFETY', 'CONTEXT_TILES', 'WHOLE_TILES', 'MAX_BATCH', 'MemoryBudgets'),
    'model': ('LocalSR', ),
    'image': ('Image', ),
    'tiled_image': ('TiledImage', ),
    'roi_context': ('ArrayRegions', 'local_context_flops'),
    'box_files': ('read_boxes', 'BoxFileError'),
    'manifest': ('Manifest', 'atomic_write_image'),
    'batch': ('BatchJob', 'run_batch', 'expand_inputs'),
    'shard': ('Ranks', ),
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}
_MODULE_OF['is_lazy_path'] = None  # from clsr_arch.data.lazy_image, as before the split
__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    if name == 'is_lazy_path':
        from ..data.lazy_image import is_lazy_path as value
    else:
        value = getattr(importlib.import_module(f'{__name__}.{_MODULE_OF[name]}'), name)
    globals()[name] = value  # once
    return value


def __dir__():
    return __all__
