"""Every method on the same boxes, for a comparison (``clsr-infer --compare``, the demo): the
image opened with its ground truth, the boxes, which methods run under the memory budget, and
each ROI's cost as the LocalSR paper's Table 1 counts it."""
from ..data.lazy_image import is_lazy_path
from ..utils.memory import format_bytes
from .budget import SAFETY
from .errors import LocalSRError, MemoryBudgetError
from .inputs import degrade as degrade_hr
from .inputs import load_image
from .methods import bicubic_flops
from .roi_context import local_context_flops


def open_compared(model, path, degrade=False, hr=None):
    """``(image, lr, hr)`` for a comparison: ``path`` an LR image (``hr``: the path of its ground
    truth, checked to be x``scale`` of it), or with ``degrade`` an HR image whose LR is made the
    paper's way (the crop is then the ground truth). ``lr`` (RGB uint8) is None for a tiled TIFF /
    ``.npy`` read region by region; ``hr`` None without ground truth."""
    s = model.scale
    if degrade and hr:
        raise LocalSRError('--hr and --degrade exclude each other (with --degrade the input is the HR)')
    if is_lazy_path(path) and not degrade:
        image = model.open(path)
        return image, None, load_ground_truth(hr, s, image.hw)
    img, _ = load_image(path)
    if degrade:
        try:
            lr, gt = degrade_hr(img, s)
        except LocalSRError as err:
            raise LocalSRError(f'image {path}: {err}') from None
    else:
        lr, gt = img, load_ground_truth(hr, s, img.shape[:2])
    return model.open(lr, name=path), lr, gt


def load_ground_truth(path, scale, lr_hw):
    """The HR image at ``path`` checked against the LR size, or None without a path."""
    if not path:
        return None
    try:
        hr, _ = load_image(path)
    except LocalSRError as err:
        raise LocalSRError(f'--hr {str(err)[len("image "):]}') from None
    want = (scale * lr_hw[0], scale * lr_hw[1])
    if hr.shape[:2] != want:
        raise LocalSRError(f'--hr {path}: {hr.shape[1]}x{hr.shape[0]} is not x{scale} of the '
                           f'{lr_hw[1]}x{lr_hw[0]} LR image (expected {want[1]}x{want[0]})')
    return hr


def run_methods(image, boxes, methods, explicit, plan=True, say=print):
    """``{method: (outputs, run_info)}`` for the methods that run; one that does not fit the
    budget is skipped with a line saying why (asked for by name -- ``explicit`` -- it raises)."""
    results = {}
    for m in methods:
        try:
            outs = image.super_resolve(boxes, method=m, plan=plan)
        except MemoryBudgetError as err:
            if explicit:
                raise
            say(f'{m} skipped: {err}')
            continue
        results[m] = (outs, dict(image.last_run))
        if image.last_run.get('tile'):
            run, whole = image.last_run['tiles'], image.model.whole_bytes(image.hw)
            say(f'{m}: whole-image SR tiled ({image.last_run["tile"]}-pixel LR tiles, overlap '
                f'{image.model.tile_overlap}; the {run[0]} of {run[1]} tiles the ROIs touch): untiled it needs '
                f'~{format_bytes(whole * SAFETY)}, over the memory budget of {format_bytes(image.model.max_memory)}')
    if not results:
        raise LocalSRError('no method fits the memory budget (see the lines above); raise --max-memory or allow tiling')
    return results


def roi_gflops(image, method, box, run_info):
    """GFLOPs charged to one ROI as Table 1 charges it: CLSR = its context (the whole-frame pass,
    or on the ROI-local path the GCM's windows and the PIM tiles this ROI meets) + its decode;
    pre-crop = the backbone on the padded ROI; post-crop = whole-image SR as run; bicubic = its
    separable filter."""
    x, y, w, h = box
    model = image.model
    cost, hw = model.cost, image.hw
    if method == 'clsr':
        local = run_info.get('context') == 'roi-local' or hasattr(image, 'lazy')
        context = local_context_flops(model, hw, [box]) if local else cost.context(*hw)
        return (context + cost.decode(h, w, hw)) / 1e9
    if method == 'pre_crop':
        ph, pw = cost.padded_size(h, w, hw, run_info.get('pad'))  # the pad that ran
        return cost.base(ph, pw) / 1e9
    if method == 'post_crop':
        return run_info['gflops']
    return bicubic_flops(h, w, model.scale) / 1e9
