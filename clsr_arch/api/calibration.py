"""``pad='auto'`` and ``method='auto'`` of :meth:`LocalSR.from_model
<clsr_arch.api.LocalSR.from_model>`: measured once per model on validation crops, cached on disk
by the weights' SHA-256 (issue 24, item 3).

How much real context does pre-crop need before it is as good as post-crop? The LocalSR paper's
Table 5 asks it with padding; docs/padding_ablation.md answers it per network on the test sets.
A network nobody measured gets it here, on data that is **not** a test set: the validation split
of the 497 training images (every 20th of the sorted list, exactly ``data/prepare_real_data.sh``'s
``split/val``: 24 images, read from ``../shared/data`` so that a fresh clone needs no prepared
data). Each image is cropped to a multiple of 4, made LR by MATLAB bicubic x1/4
(``clsr_arch.data.prep.bicubic_lr``), and the central ``64 x 64`` LR crop is the context; its four
24x24 ROIs at (8, 8), (32, 8), (8, 32), (32, 32) are the validation ROIs (80: the 20 images
whose LR is at least 64 px).

* ``pad``: the smallest of ``PADS`` at which pre-crop (through the API, padded with real context
  and to the network's size multiple) is within ``TOLERANCE`` (0.005 dB) of post-crop in mean
  PSNR-Y (no border crop), else the best pad (``reached`` False). With a size multiple the extra
  goes to the right/bottom (``roi.padding_for``; CRAFT: pad 0 crops 24 + 8 there), so every pad
  is its own window (identical windows would be measured once).
* ``method``: ``'clsr'`` where CLSR (its GCM + PIM trained) validates above the best padded
  pre-crop that costs no more FLOPs per ROI than CLSR does (its decode plus its share of the
  context pass over the four ROIs); ``'pre_crop'`` (with ``pad``) otherwise -- always for a network
  without a stage adapter, or whose context modules are untrained (zero-initialised CLSR *is*
  padded pre-crop, at a higher cost). ``reason`` says which and why.
"""
import json
import os
import os.path as osp
import time

import numpy as np

from .errors import LocalSRError
from .registry import REPO

SHARED = osp.abspath(osp.join(REPO, os.pardir, 'shared', 'data'))
VAL_SOURCES = ('BSDS500/train', 'BSDS500/test', 'DIV2K/HR', 'Flickr2K/HR', 'T91')  # prepare_real_data.sh's order
VAL_EVERY = 20
CONTEXT, ROI = 64, 24
ROI_OFFSETS = ((8, 8), (32, 8), (8, 32), (32, 32))
PADS = (0, 2, 4, 8, 12, 16)
TOLERANCE = 0.005
PROTOCOL = 'val25-ctx64-roi24x4-v1'  # in the cache file: a changed protocol recalibrates
DEFAULT_CACHE = osp.join(osp.expanduser('~'), '.cache', 'clsr', 'calibration')


def validation_paths(shared=SHARED):
    """The 24 validation images of the 497 (497 // 20) (``data/prepare_real_data.sh``: every 20th of the
    sorted list over BSDS500 train, test, DIV2K, Flickr2K, T91)."""
    paths, i = [], 0
    for src in VAL_SOURCES:
        folder = osp.join(shared, src)
        if not osp.isdir(folder):
            raise LocalSRError(f'calibration: {folder} missing (../shared/data must sit beside the repository; '
                               'or give pad=N and method explicitly)')
        for f in sorted(os.listdir(folder)):
            i += 1
            if i % VAL_EVERY == 0:
                paths.append(osp.join(folder, f))
    return paths


def validation_crops(scale=4, shared=SHARED, limit=None):
    """``[(name, lr_rgb [64, 64, 3] uint8, hr_bgr [64s, 64s, 3] uint8)]`` of the validation images
    (``limit``: the first few, for tests)."""
    import cv2

    from ..data.prep import bicubic_lr, mod_crop
    out = []
    for path in validation_paths(shared)[:limit]:
        hr = cv2.imread(path, cv2.IMREAD_COLOR)
        if hr is None:
            raise LocalSRError(f'calibration: cannot read validation image {path}')
        hr = mod_crop(hr, scale)
        lr = bicubic_lr(hr, scale)
        h, w = lr.shape[:2]
        if min(h, w) < CONTEXT:
            continue
        y, x = (h - CONTEXT) // 2, (w - CONTEXT) // 2
        lr_c = lr[y:y + CONTEXT, x:x + CONTEXT]
        hr_c = hr[scale * y:scale * (y + CONTEXT), scale * x:scale * (x + CONTEXT)]
        out.append((osp.basename(path), np.ascontiguousarray(lr_c[:, :, ::-1]), hr_c))
    return out


def _psnrs(outs, hr_bgr, boxes, scale):
    from basicsr.metrics import calculate_psnr
    vals = []
    for o, (x, y, w, h) in zip(outs, boxes):
        gt = hr_bgr[scale * y:scale * (y + h), scale * x:scale * (x + w)]
        vals.append(calculate_psnr(o[:, :, ::-1], gt, 0, test_y_channel=True))
    return vals


def measure(model, clsr=True, limit=None, progress=None):
    """Mean PSNR-Y of every row on the validation ROIs: ``{'post_crop', 'pre pad p' ..., 'clsr'}``
    with per-ROI FLOPs; ROIs infinite in some row are dropped from every row."""
    from ..archs.roi import padding_for
    from .image import roi_ops_padded
    crops = validation_crops(model.scale, limit=limit)
    if not crops:
        raise LocalSRError('calibration: no validation image is large enough')
    boxes = [(x, y, ROI, ROI) for x, y in ROI_OFFSETS]
    # pads that give the same padded window are one measurement
    windows = {}
    for p in PADS:
        windows.setdefault(padding_for(ROI, ROI, p, model.multiple), []).append(p)
    rows = {'post_crop': []}
    rows.update({f'pre pad {ps[0]}': [] for ps in windows.values()})
    if clsr:
        rows['clsr'] = []
    for k, (name, lr, hr) in enumerate(crops):
        with model.open(lr, name) as im:
            rows['post_crop'] += _psnrs(im.super_resolve(boxes, method='post_crop'), hr, boxes, model.scale)
            for ps in windows.values():
                rows[f'pre pad {ps[0]}'] += _psnrs(im.super_resolve(boxes, method='pre_crop', pad=ps[0]), hr, boxes,
                                                   model.scale)
            if clsr:
                rows['clsr'] += _psnrs(im.super_resolve(boxes, method='clsr', plan=False), hr, boxes, model.scale)
        if progress:
            progress(k + 1, len(crops))
    arr = {k: np.array(v) for k, v in rows.items()}
    finite = np.all([np.isfinite(v) for v in arr.values()], axis=0)
    cost = model.cost
    gflops = {f'pre pad {ps[0]}': cost.base(*roi_ops_padded(ROI, ROI, ps[0], model.multiple)) / 1e9
              for ps in windows.values()}
    gflops['post_crop'] = cost.base(CONTEXT, CONTEXT) / 1e9 / len(boxes)
    if clsr:
        gflops['clsr'] = (cost.decode(ROI, ROI, (CONTEXT, CONTEXT)) + cost.context(CONTEXT, CONTEXT) / len(boxes)) / 1e9
    return {'psnr': {k: float(v[finite].mean()) for k, v in arr.items()}, 'gflops': gflops,
            'rois': int(finite.sum()), 'dropped': int((~finite).sum()), 'images': len(crops),
            'same_window': {f'pre pad {ps[0]}': ps for ps in windows.values()}}


def decide(m, clsr_trained):
    """``(pad, reached, method, reason)`` from :func:`measure`'s result ``m``."""
    psnr, gflops = m['psnr'], m['gflops']
    post = psnr['post_crop']
    pre = sorted((int(k.split()[-1]), v) for k, v in psnr.items() if k.startswith('pre pad'))
    within = [p for p, v in pre if v >= post - TOLERANCE]
    reached = bool(within)
    pad = within[0] if within else max(pre, key=lambda pv: pv[1])[0]
    if 'clsr' not in psnr:
        why = 'no stage adapter for this network' if not clsr_trained else 'CLSR not measured'
        if clsr_trained is None:
            why = 'no stage adapter for this network (CLSR needs one: docs/adapters.md)'
        elif not clsr_trained:
            why = ('its GCM and PIM are untrained (zero-initialised CLSR equals pre-crop with the same padding, at a '
                   'higher cost); train them (docs/spandrel.md) to let CLSR compete')
        return pad, reached, 'pre_crop', f'pre-crop with {pad} px of real context: {why}'
    c, cg = psnr['clsr'], gflops['clsr']
    rivals = [(v, p) for p, v in pre if gflops[f'pre pad {p}'] <= cg]
    best_v, best_p = max(rivals) if rivals else (pre[0][1], pre[0][0])
    if c > best_v:
        return pad, reached, 'clsr', (f'CLSR validates at {c:.3f} dB for {cg:.3f} GFLOPs per ROI, above the best '
                                      f'pre-crop that costs no more (pad {best_p}: {best_v:.3f} dB)')
    return pad, reached, 'pre_crop', (f'pre-crop with {pad} px: CLSR validates at {c:.3f} dB for {cg:.3f} GFLOPs per '
                                      f'ROI, not above pre-crop at equal or lower cost (pad {best_p}: {best_v:.3f} dB)')


def calibrate(model, key, clsr_trained, cache_dir=None, limit=None, progress=None, refresh=False):
    """The calibration record of ``model`` (a :class:`~clsr_arch.api.LocalSR` of a spandrel
    network), from ``cache_dir/<key>.json`` when there, else measured and written there.
    ``clsr_trained``: None (no stage adapter), False (untrained GCM/PIM: CLSR not measured),
    True (measured)."""
    cache_dir = cache_dir or os.environ.get('CLSR_CACHE') or DEFAULT_CACHE
    tag = f'{key}-{PROTOCOL}' + (f'-limit{limit}' if limit else '')
    path = osp.join(cache_dir, f'{tag}.json')
    if not refresh and osp.exists(path):
        try:
            with open(path) as f:
                rec = json.load(f)
            if rec.get('protocol') == PROTOCOL:
                rec['cached'] = path
                return rec
        except (OSError, ValueError):
            pass  # unreadable cache: measure again
    t0 = time.perf_counter()
    m = measure(model, clsr=bool(clsr_trained), limit=limit, progress=progress)
    pad, reached, method, reason = decide(m, clsr_trained)
    rec = {'protocol': PROTOCOL, 'key': key, 'pad': pad, 'reached': reached, 'tolerance_db': TOLERANCE,
           'method': method, 'reason': reason, 'seconds': time.perf_counter() - t0, **m}
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, path)
    rec['cached'] = None
    return rec


def summary(rec):
    """One paragraph for people: the pad, the rows, the method and why."""
    psnr = rec['psnr']
    order = sorted(psnr, key=lambda k: (k != 'post_crop', k == 'clsr', int(k.split()[-1]) if k.startswith('pre') else 0))
    rows = ', '.join(f'{k} {psnr[k]:.3f}' for k in order)
    reach = (f'within {rec["tolerance_db"]} dB of post-crop' if rec['reached']
             else f'the best pad (none came within {rec["tolerance_db"]} dB of post-crop)')
    return (f'pad {rec["pad"]} ({reach}) on {rec["rois"]} validation ROIs of {rec["images"]} images; PSNR-Y: {rows}; '
            f'method {rec["method"]}: {rec["reason"]}')
