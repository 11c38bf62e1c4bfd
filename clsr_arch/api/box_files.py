"""Boxes from a detector: a CSV (``image,x,y,w,h[,label]``, an optional header row) or a COCO JSON
(``images`` with ``id``/``file_name``, ``annotations`` with ``image_id``/``bbox`` = ``[x, y, w, h]``,
optional ``categories`` naming ``category_id``), in LR pixels of each image.

Detectors write float boxes; a box is rounded **outward** to whole pixels -- left and top down
(``floor``), right and bottom up (``ceil(x + w)``, ``ceil(y + h)``) -- so the SR covers every pixel
the detector marked; the rounded box is then clipped to the image only where rounding alone
crossed the border (a float box that itself leaves the image is an error, see :func:`to_pixels`).

A malformed line is not fatal: it comes back as a problem naming the file and line, and the
other lines are used (a COCO file that is not valid JSON is fatal: nothing can be trusted).
"""
import csv
import json
import math
import os
import os.path as osp
from collections import namedtuple

from .errors import LocalSRError


class BoxFileError(LocalSRError):
    """A boxes file that cannot be used at all (unreadable, not CSV/JSON, not COCO)."""


# one box as a detector gave it: floats, an optional label, where it came from ('dets.csv:12')
Box = namedtuple('Box', 'x y w h label source')


def read_boxes(path):
    """``(boxes, problems)``: ``{image name as written: [Box, ...]}`` in file order, and
    ``[(image name or None, message), ...]`` for lines that could not be used."""
    try:
        with open(path, newline='') as f:
            text = f.read()
    except OSError as err:
        raise BoxFileError(f'--boxes {path}: cannot read ({err.strerror})') from None
    except UnicodeDecodeError:
        raise BoxFileError(f'--boxes {path}: not a text file (expected CSV or COCO JSON)') from None
    if path.lower().endswith('.json') or text.lstrip().startswith('{'):
        return _coco(path, text)
    return _csv(path, text)


def _number(text):
    v = float(text)
    if not math.isfinite(v):
        raise ValueError
    return v


def _csv(path, text):
    boxes, problems = {}, []
    name = osp.basename(path)
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith('#'):
            continue
        row = [c.strip() for c in row]
        if n == 1 and len(row) >= 5 and row[1].lower() == 'x':
            continue  # header
        image = row[0] or None
        if len(row) not in (5, 6) or not row[0]:
            problems.append((image, f'{name} line {n}: expected image,x,y,w,h[,label], got {len(row)} fields: '
                                    f'{",".join(row)!r}'))
            continue
        try:
            x, y, w, h = (_number(v) for v in row[1:5])
        except ValueError:
            problems.append((image, f'{name} line {n}: x,y,w,h must be numbers (LR pixels), got {",".join(row[1:5])!r}'))
            continue
        boxes.setdefault(image, []).append(Box(x, y, w, h, row[5] if len(row) == 6 else '', f'{name} line {n}'))
    return boxes, problems


def _coco(path, text):
    name = osp.basename(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BoxFileError(f'--boxes {path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}') from None
    if not isinstance(data, dict) or not isinstance(data.get('images'), list) or \
            not isinstance(data.get('annotations'), list):
        raise BoxFileError(f'--boxes {path}: expected COCO JSON (an object with "images" and "annotations" lists)')
    files, problems, boxes = {}, [], {}
    for i, im in enumerate(data['images']):
        if not isinstance(im, dict) or 'id' not in im or not isinstance(im.get('file_name'), str):
            problems.append((None, f'{name} images[{i}]: expected {{"id": ..., "file_name": "..."}}'))
            continue
        files[im['id']] = im['file_name']
    categories = {c.get('id'): str(c.get('name', c.get('id'))) for c in data.get('categories') or []
                  if isinstance(c, dict)}
    for i, a in enumerate(data['annotations']):
        where = f'{name} annotations[{i}]' + (f' (id {a["id"]})' if isinstance(a, dict) and 'id' in a else '')
        if not isinstance(a, dict) or a.get('image_id') not in files:
            problems.append((None, f'{where}: image_id {a.get("image_id") if isinstance(a, dict) else None!r} '
                                   'is not among "images"'))
            continue
        image = files[a['image_id']]
        bbox = a.get('bbox')
        try:
            if not isinstance(bbox, list) or len(bbox) != 4 or any(isinstance(v, bool) for v in bbox):
                raise ValueError
            x, y, w, h = (_number(v) for v in bbox)
        except (TypeError, ValueError):
            problems.append((image, f'{where}: bbox must be [x, y, w, h] numbers (LR pixels), got {bbox!r}'))
            continue
        label = categories.get(a.get('category_id'), '' if a.get('category_id') is None else str(a['category_id']))
        boxes.setdefault(image, []).append(Box(x, y, w, h, label, where))
    return boxes, problems


def to_pixels(box, hw):
    """``(x, y, w, h)`` ints of a float ``Box`` in an image of ``hw`` = (H, W): rounded outward,
    clipped where the rounding alone crossed the border; LocalSRError naming the box's source when
    the box is empty or leaves the image."""
    H, W = hw
    if box.w <= 0 or box.h <= 0:
        raise LocalSRError(f'{box.source}: box {_fmt(box)} has w or h <= 0 (a zero-size box)')
    if box.x < 0 or box.y < 0 or box.x + box.w > W or box.y + box.h > H:
        raise LocalSRError(f'{box.source}: box {_fmt(box)} is outside the {W}x{H} (WxH) LR image: '
                           f'need 0 <= x, x+w <= {W}, 0 <= y, y+h <= {H}')
    x0, y0 = math.floor(box.x), math.floor(box.y)
    x1, y1 = min(W, math.ceil(box.x + box.w)), min(H, math.ceil(box.y + box.h))
    return x0, y0, x1 - x0, y1 - y0


def _fmt(box):
    return ','.join(f'{v:g}' for v in (box.x, box.y, box.w, box.h))


def match_images(boxes, inputs, boxes_path):
    """``({input path: [Box]}, problems)``: every image name of a boxes file matched to an input
    path -- the same path, a path relative to the boxes file's folder, or a unique file name.
    A name that matches no input is left out when the file exists (the inputs are a selection),
    and a problem (``(name, message)``) when it does not."""
    by_path = {osp.normpath(osp.abspath(p)): p for p in inputs}
    by_name = {}
    for p in inputs:
        by_name.setdefault(osp.basename(p), []).append(p)
    base = osp.dirname(osp.abspath(boxes_path))
    out, problems = {}, []
    for name, bs in boxes.items():
        cands = [osp.normpath(osp.abspath(name)), osp.normpath(osp.join(base, name))]
        hit = next((by_path[c] for c in cands if c in by_path), None)
        if hit is None and len(by_name.get(osp.basename(name), [])) == 1:
            hit = by_name[osp.basename(name)][0]
        if hit is None:
            if not any(osp.exists(c) for c in cands):  # an image that exists but was not asked for is left out
                problems.append((name, f'image {name!r} named in {bs[0].source} ({len(bs)} boxes): no such file'))
            continue
        out.setdefault(hit, []).extend(bs)
    return out, problems


def images_of(boxes, boxes_path):
    """The image paths a boxes file names (relative to its folder), for a run given no inputs."""
    base = osp.dirname(osp.abspath(boxes_path))
    return sorted({name if osp.isabs(name) else osp.normpath(osp.join(base, name)) for name in boxes},
                  key=lambda p: os.fspath(p))
