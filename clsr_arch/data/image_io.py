"""Image decoding, checking and atomic writing shared by ContextROIDataset and ``data/*.py``.

Supports the data side of the LocalSR paper's experiments (Sec. 4, "Training details" /
"Evaluation details": DIV2K crops for training, BSD100/Urban100/Manga109/Test2K with
bicubic x4 LR for evaluation). Everything a network sees is 8-bit, 3-channel BGR (OpenCV
order; the dataset converts to RGB tensors), obtained from the file by these documented rules:

* grayscale (1 channel) -> replicated to 3 channels;
* 16-bit -> scaled to 8 bits (``round(v / 257)``, so 65535 -> 255 exactly);
* alpha (gray+alpha 2 channels, BGRA 4 channels) -> dropped, **only if fully opaque**. A pixel
  with alpha below the maximum has colour values that are undefined or pre-multiplied, and
  compositing it on an invented background would make HR and LR disagree with what the
  network should learn, so such a file raises :class:`DataError` naming it;
* any other dtype (float TIFF/EXR, 32-bit ints) or channel count -> :class:`DataError`.

An unreadable, empty or truncated file raises :class:`DataError` naming it. OpenCV decodes a
truncated JPEG into a partly grey image without failing, so PNG and JPEG files are also
checked for their end marker (``IEND`` chunk / ``FFD9``) before decoding.
"""
import os
import os.path as osp
import re

import cv2
import numpy as np

from basicsr.utils import imwrite, scandir

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

_PNG_SIG = b'\x89PNG\r\n\x1a\n'
_PNG_END = b'IEND\xaeB`\x82'
_TMP_RE = re.compile(r'^\..+\.clsrtmp\d+(\.[A-Za-z0-9]+)?$')


class DataError(ValueError):
    """A dataset file or option that cannot be used as asked; the message names it."""


def is_image_file(name):
    """Image file by extension; hidden files (dot-names, incl. our temporaries) are not."""
    base = osp.basename(name)
    return not base.startswith('.') and base.lower().endswith(IMG_EXTENSIONS)


def list_images(folder, what='folder'):
    """Sorted relative paths of the images in ``folder`` (recursive); errors if none/missing."""
    if not osp.isdir(folder):
        raise DataError(f'{what} {folder!r} does not exist or is not a folder')
    names = sorted(p for p in scandir(folder, recursive=True) if is_image_file(p))
    if not names:
        raise DataError(f'{what} {folder!r} holds no images (extensions {", ".join(IMG_EXTENSIONS)})')
    return names


def check_complete(content, name):
    """Raise DataError if ``content`` (file bytes) is empty or a visibly truncated PNG/JPEG."""
    if content is None or len(content) == 0:
        raise DataError(f'{name}: empty file')
    if content[:8] == _PNG_SIG:
        # IEND is the last chunk; search the whole file since some writers append bytes after it
        if content.rfind(_PNG_END) < 0:
            raise DataError(f'{name}: truncated PNG (no IEND chunk at the end)')
    elif content[:2] == b'\xff\xd8':
        # some writers pad after the end-of-image marker
        if not content.rstrip(b'\x00\r\n ').endswith(b'\xff\xd9'):
            raise DataError(f'{name}: truncated JPEG (no end-of-image marker)')


def to_bgr8(img, name):
    """Apply the conversion rules of this module: any decoded image -> uint8 [H, W, 3] BGR."""
    if img is None:
        raise DataError(f'{name}: cannot decode image (unreadable or not an image)')
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.).astype(np.uint8)
        amax = 255
    elif img.dtype == np.uint8:
        amax = 255
    else:
        raise DataError(f'{name}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)')
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c in (2, 4):
        if img[:, :, -1].min() < amax:
            raise DataError(f'{name}: alpha channel is not fully opaque '
                            f'({int((img[:, :, -1] < amax).sum())} transparent pixels); '
                            'flatten it onto a background yourself, clsr will not guess one')
        img = img[:, :, :-1]
        c -= 1
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    elif c != 3:
        raise DataError(f'{name}: unsupported channel count {c}')
    return np.ascontiguousarray(img)


def decode_bgr8(content, name):
    """File bytes -> uint8 [H, W, 3] BGR by the module's rules; DataError naming ``name``."""
    check_complete(content, name)
    try:
        img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise DataError(f'{name}: cannot decode image ({err})') from None
    return to_bgr8(img, name)


def read_bytes(path):
    """A file's bytes; DataError naming the file when it cannot be read."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as err:
        raise DataError(f'{path}: cannot read ({err.strerror})') from None


def read_bgr8(path):
    """Read a file from disk -> uint8 [H, W, 3] BGR; DataError naming the file."""
    return decode_bgr8(read_bytes(path), path)


def image_size(path):
    """``(h, w)`` from the file header only (PIL reads it lazily); DataError if unreadable."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as err:  # PIL raises many types for garbage files
        raise DataError(f'{path}: cannot read image header ({err})') from None
    return h, w


def tmp_name(path):
    """Temporary name in the same folder: hidden, same extension (encoders pick by it)."""
    folder, base = osp.split(path)
    stem, ext = osp.splitext(base)
    return osp.join(folder, f'.{stem}.clsrtmp{os.getpid()}{ext}')


def atomic_imwrite(img, path, params=None):
    """Write with basicsr's ``imwrite`` to a temporary name, then ``os.replace``.

    A kill or an error mid-way never leaves a partial file under ``path``; the temporary
    is removed on error (a hard kill may leave a hidden ``.*.clsrtmp<pid>.*`` that
    :func:`remove_stale_tmp` clears on the next run).
    """
    tmp = tmp_name(path)
    try:
        imwrite(img, tmp, params)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_tmp(folder):
    """Remove temporaries left by a killed run of the preparation scripts in ``folder``."""
    if not osp.isdir(folder):
        return 0
    stale = [osp.join(folder, n) for n in os.listdir(folder) if _TMP_RE.match(n)]
    for p in stale:
        if osp.isdir(p):
            import shutil
            shutil.rmtree(p)
        else:
            os.remove(p)
    return len(stale)


def is_complete_file(path, shape_hw=None):
    """True if ``path`` exists, is not truncated and (if given) has height/width ``shape_hw``.

    Cheap: reads the bytes and the header, does not decode pixels.
    """
    if not osp.isfile(path):
        return False
    try:
        with open(path, 'rb') as f:
            check_complete(f.read(), path)
        hw = image_size(path)
    except DataError:
        return False
    return shape_hw is None or tuple(hw) == tuple(shape_hw)
