"""Every method on the same boxes, for a comparison (``clsr-infer --compare``, the demo): which
methods run under the memory budget, and each ROI's cost as the LocalSR paper's Table 1 counts it."""
from .budget import SAFETY
from .errors import LocalSRError, MemoryBudgetError
from .methods import bicubic_flops
from .roi_context import local_context_flops
from ..utils.memory import format_bytes


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
        ph, pw = cost.padded_size(h, w, hw)
        return cost.base(ph, pw) / 1e9
    if method == 'post_crop':
        return run_info['gflops']
    return bicubic_flops(h, w, model.scale) / 1e9
