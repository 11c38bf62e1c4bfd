"""Many images, each with its boxes (from a detector's file, ``--roi`` or a grid): one PNG per box,
resumable, sharded over torchrun's ranks (issue 22). What ``clsr-infer`` runs by default.

* **Jobs** (:class:`BatchJob`): inputs are files, folders (their images, not recursive) and glob
  patterns, in sorted order; boxes come from :mod:`.box_files` (matched to the inputs by path or
  file name), ``rois`` (every image) or a ``grid``. Everything that cannot run -- an image named
  in the boxes file that is not there, a malformed line, two inputs with the same output name --
  is a problem line, and the rest runs.
* **One plan per image**: all boxes of an image go to one :meth:`Image.super_resolve` call, so the
  planner prices the ROI-local context against the whole frame (and whole-image SR) once for
  them. A plan that turns the boxes into whole-image SR is said before it starts, with its GFLOPs
  and a time estimate from the backbone's measured speed here.
* **Outputs**: ``<stem>_x<X>_y<Y>_<W>x<H>[_<label>][_<suffix>].<ext>`` in ``out`` (suffix default
  the method), written atomically, each followed by a line in this rank's manifest
  (:mod:`.manifest`); a rerun skips every box whose line and file exist.
* **Errors**: an unreadable image, a box outside its image or a bad line is one line in
  ``errors.txt`` (image, box, reason) and counted as failed; the others go on.
* **Ranks** (:mod:`.shard`): each rank takes its share of the images; rank 0 merges the
  summaries (``summary.json``) and the errors.
"""
import glob
import json
import os
import os.path as osp
import re
import time

from ..utils.memory import peak_rss_bytes
from .box_files import Box, images_of, match_images, read_boxes, to_pixels
from .errors import LocalSRError
from .inputs import grid_boxes
from .manifest import Manifest, atomic_write_image
from .methods import METHODS
from .shard import split

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff', '.npy')
EXTENSIONS = ('png', 'jpg', 'webp')  # output formats; 'auto' = the input's when it is one of them


def expand_inputs(specs):
    """``(paths, problems)`` of files, folders (their images, sorted) and glob patterns."""
    paths, problems = [], []
    for spec in specs:
        spec = os.fspath(spec)
        if osp.isdir(spec):
            found = sorted(osp.join(spec, f) for f in os.listdir(spec)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(spec, f)))
            if not found:
                problems.append((spec, f'{spec}: a folder without images ({", ".join(IMAGE_EXTENSIONS)})'))
            paths += found
        elif any(c in spec for c in '*?['):
            found = sorted(p for p in glob.glob(spec) if osp.isfile(p))
            if not found:
                problems.append((spec, f'{spec}: no file matches this pattern'))
            paths += found
        else:
            paths.append(spec)  # a missing or unreadable file fails when opened: one error line
    seen = set()
    return [p for p in paths if not (p in seen or seen.add(p))], problems


def _tag(text):
    return re.sub(r'[^A-Za-z0-9._-]+', '-', str(text)).strip('-.')


class BatchJob:
    """Which boxes of which images to write where (nothing runs here)."""

    def __init__(self, inputs=(), out='results/infer', boxes_file=None, rois=(), grid=None, methods=('clsr',),
                 suffix='{method}', ext='png', plan=True, progress=False, extra_methods=()):
        if ext != 'auto' and ext not in EXTENSIONS:
            raise LocalSRError(f'--ext {ext!r}: expected auto or one of {", ".join(EXTENSIONS)}')
        # extra_methods: what the model itself resolves (a --model-path model's calibrated 'auto')
        known = tuple(extra_methods) + METHODS
        bad = [m for m in methods if m not in known]
        if bad or not methods:
            raise LocalSRError(f'methods {",".join(methods)}: expected some of {", ".join(known)}')
        if len(methods) > 1 and '{method}' not in suffix:
            raise LocalSRError(f'--suffix {suffix!r}: with several methods it must contain {{method}} '
                               '(one file per box and method)')
        if not (inputs or boxes_file):
            raise LocalSRError('no input: give images (files, folders or glob patterns) or --boxes FILE')
        if not (boxes_file or rois or grid):
            raise LocalSRError('no boxes: give --boxes FILE (CSV or COCO JSON), --roi x,y,w,h or --grid N')
        self.out, self.methods, self.suffix, self.ext, self.plan = out, list(methods), suffix, ext, plan
        self.grid, self.progress = grid, progress
        self.problems = []  # (image, box, reason)
        paths, problems = expand_inputs(inputs)
        self.problems += [(image, None, why) for image, why in problems]
        self.boxes = {p: [] for p in paths}
        if boxes_file:
            found, problems = read_boxes(boxes_file)
            self.problems += [(image, None, why) for image, why in problems]
            if not inputs:
                paths = images_of(found, boxes_file)
                self.boxes = {p: [] for p in paths}
            matched, problems = match_images(found, paths, boxes_file)
            self.problems += [(image, None, why) for image, why in problems]
            for p, bs in matched.items():
                self.boxes[p] += bs
        for p in paths:
            self.boxes[p] += [Box(*r, '', f'--roi {",".join(map(str, r))}') for r in rois]
        stems = {}
        for p in paths:
            stems.setdefault(osp.splitext(osp.basename(p))[0], []).append(p)
        for stem, ps in stems.items():
            for p in ps[1:]:  # the outputs would overwrite each other's
                self.problems.append((p, None, f'{p}: its output names would be those of {ps[0]} '
                                               f'(same file name {stem!r}): run it separately or rename it'))
                del self.boxes[p]
        self.images = sorted(p for p, bs in self.boxes.items() if bs or grid)

    def output(self, image, box, label, method):
        stem = osp.splitext(osp.basename(image))[0]
        x, y, w, h = box
        ext = self.ext
        if ext == 'auto':
            ext = osp.splitext(image)[1].lower().lstrip('.').replace('jpeg', 'jpg')
            ext = ext if ext in EXTENSIONS else 'png'
        suffix = self.suffix.format(method=method)
        name = f'{stem}_x{x}_y{y}_{w}x{h}' + (f'_{_tag(label)}' if label else '') + (f'_{suffix}' if suffix else '')
        return osp.join(self.out, f'{name}.{ext}')


def run_batch(job, model, ranks, say=print, progress=None):
    """Run this rank's share of ``job`` with ``model`` (a :class:`~clsr_arch.api.LocalSR`);
    returns the summary merged over the ranks (on every rank; rank 0 writes it to
    ``summary.json`` and the errors to ``errors.txt``). ``progress(done_images, total_images)`` after each image."""
    os.makedirs(job.out, exist_ok=True)
    mine = split(job.images, ranks.rank, ranks.world)
    counts = {'done': 0, 'skipped': 0, 'failed': 0}
    errors = [] if ranks.rank else [_error_line(*p) for p in job.problems]
    counts['failed'] += 0 if ranks.rank else len(job.problems)
    model.prepare()
    t0, busy = time.perf_counter(), 0.
    with Manifest(job.out, ranks.rank) as manifest:
        for k, path in enumerate(mine):
            t_img = time.perf_counter()
            _run_image(job, model, path, manifest, counts, errors, say)
            release_freed_memory()
            busy += time.perf_counter() - t_img
            if progress:
                progress(k + 1, len(mine))
    summary = {'rank': ranks.rank, 'images': len(mine), **counts, 'seconds': time.perf_counter() - t0,
               'busy_seconds': busy, 'peak_rss_bytes': peak_rss_bytes(), 'errors': errors}
    everyone = ranks.gather(summary)
    merged = {'rank': ranks.rank, 'ranks': len(everyone), 'images': sum(s['images'] for s in everyone),
              **{c: sum(s[c] for s in everyone) for c in counts},
              'seconds': max(s['seconds'] for s in everyone),
              'peak_rss_bytes': max(s['peak_rss_bytes'] for s in everyone),
              'per_rank': [{k: v for k, v in s.items() if k != 'errors'} for s in everyone],
              'out': job.out, 'errors_file': None}
    if ranks.rank:
        return merged
    lines = [line for s in everyone for line in s['errors']]
    err_path = osp.join(job.out, 'errors.txt')
    if lines:
        _atomic_text(err_path, ''.join(line + '\n' for line in lines))
        merged['errors_file'] = err_path
    elif osp.exists(err_path):
        os.remove(err_path)  # from an earlier run whose failures are now done
    _atomic_text(osp.join(job.out, 'summary.json'), json.dumps(merged, indent=2) + '\n')
    return merged


def _run_image(job, model, path, manifest, counts, errors, say):
    """Every box (and method) of one image that is not done yet: one plan, written atomically."""
    specs = job.boxes[path]
    try:
        image = model.open(path)
    except LocalSRError as err:
        n = max(1, len(specs)) * len(job.methods)
        counts['failed'] += n
        errors.append(_error_line(path, None, f'{err} ({n} boxes not run)'))
        return
    with image:
        boxes, labels = [], []
        for b in specs:
            try:
                px = to_pixels(b, image.hw)
            except LocalSRError as err:
                counts['failed'] += len(job.methods)
                errors.append(_error_line(path, b, str(err)))
                continue
            boxes.append(px)
            labels.append(b.label)
        if job.grid:
            try:
                boxes += grid_boxes(image.hw, job.grid)
                labels += [''] * (len(boxes) - len(labels))
            except LocalSRError as err:
                counts['failed'] += len(job.methods)
                errors.append(_error_line(path, None, str(err)))
        for method in job.methods:
            files = [job.output(path, b, lab, method) for b, lab in zip(boxes, labels)]
            todo = sorted({f: i for i, f in enumerate(files) if not manifest.is_done(f)}.values())
            counts['skipped'] += len(set(files)) - len(todo)
            if not todo:
                continue
            try:
                estimate = None
                if method == 'clsr' and job.plan:  # one plan for all the boxes, done or not: same pixels
                    plan = image.plan(boxes)
                    if plan.mode == 'whole':
                        gf = plan.flops / 1e9
                        estimate = gf / model.gflops_per_second()
                        say(f'{path}: {len(todo)} boxes -> whole-image SR of the {image.hw[1]}x{image.hw[0]} '
                            f'LR image (the plan: cheaper than CLSR decodes for these boxes), {gf:.1f} GFLOPs, '
                            f'~{estimate:.0f} s estimated')
                with _Ticker(f'{osp.basename(path)}: whole-image SR', estimate if job.progress else None):
                    outs = image.super_resolve(boxes, method=method, plan=job.plan, only=todo)
                run = image.last_run
                gflops = image.box_gflops(boxes, run)
                if run.get('route', '').startswith('whole'):
                    say(f'{path}: whole-image SR done in {run["seconds"]:.1f} s')
            except LocalSRError as err:
                counts['failed'] += len(todo)
                errors.append(_error_line(path, None, f'{method}: {err} ({len(todo)} boxes not run)'))
                continue
            for i in todo:
                out, sec, gf = outs[i], run['box_seconds'][i], gflops[i]
                atomic_write_image(files[i], out)
                manifest.add({'image': path, 'box': list(boxes[i]), 'label': labels[i], 'file': files[i],
                              'method': method, 'route': run.get('route', method),
                              'context': run.get('context'), 'seconds': sec, 'gflops': gf,
                              'peak_rss_bytes': peak_rss_bytes()})  # so far: flat over the images or not
                counts['done'] += 1


class _Ticker:
    """A progress bar of elapsed seconds against an estimate, while one long call runs (an
    untiled whole-image pass has no steps to count); nothing when ``estimate`` is None."""

    def __init__(self, desc, estimate):
        self.desc, self.estimate = desc, estimate

    def __enter__(self):
        if self.estimate is None:
            return self
        import threading

        from tqdm import tqdm
        self.bar = tqdm(total=round(max(self.estimate, 1.), 1), desc=self.desc, unit='s (estimated)',
                        bar_format='{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s estimated')
        self.stop = threading.Event()
        t0 = time.perf_counter()

        def tick():
            while not self.stop.wait(0.5):
                self.bar.n = min(round(time.perf_counter() - t0, 1), self.bar.total)
                self.bar.refresh()
        self.thread = threading.Thread(target=tick, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.estimate is not None:
            self.stop.set()
            self.thread.join()
            self.bar.close()


_LIBC = []


def release_freed_memory():
    """Hand the heap pages freed with an image back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). Without it glibc keeps them and the RSS of a batch over images of many sizes crept
    up ~0.8 MiB an image (200 images: 1,029 -> 1,196 MiB); with it, 976 -> 1,043 MiB, flat after
    ~100 images (docs/benchmarks.md)."""
    if not _LIBC:
        import ctypes
        import ctypes.util
        try:
            libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            _LIBC.append(libc.malloc_trim if hasattr(libc, 'malloc_trim') else None)
        except OSError:
            _LIBC.append(None)
    if _LIBC[0] is not None:
        _LIBC[0](0)


def _error_line(image, box, reason):
    where = f'{image}' if image else '-'
    if box is not None:
        where += f'\tbox {box.x:g},{box.y:g},{box.w:g},{box.h:g}'
    return f'{where}\t{reason}'


def _atomic_text(path, text):
    tmp = osp.join(osp.dirname(path), f'.{osp.basename(path)}.tmp')
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
