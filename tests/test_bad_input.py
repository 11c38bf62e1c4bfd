"""Bad input matrix: every wrong input to CLSR gives one clear error naming the file/option/box.

One parametrised test over :data:`CASES` (input -> exception type + message) on tiny real data
(Set5 crops from ``tiny_pairs``), plus images that are converted rather than refused (values
checked), plus the guarantee that a failed training start leaves no half-made experiment
folder. The table in ``docs/reliability.md`` ("Bad input") is generated from the same cases:
``test_doc_table_matches_the_errors`` fails when the doc and the code disagree; regenerate it
with ``.venv/bin/python tests/test_bad_input.py`` (prints the table).

The checks implement the input contracts of docs/design.md (ROI boxes, dataset items, CLSR
options) for the LocalSR paper's setting (Sec. 3.1: ROI + context; Sec. 4: bicubic x4 pairs).
"""
import os
import os.path as osp
import shutil
import sys
from copy import deepcopy

import cv2
import numpy as np
import pytest
import torch
import yaml

if __name__ == '__main__':  # `python tests/test_bad_input.py`: print the doc table
    sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import clsr_arch  # noqa: E402,F401
from basicsr.archs import build_network  # noqa: E402
from clsr_arch.data.context_roi_dataset import ContextROIDataset  # noqa: E402
from clsr_arch.utils.checkpoint import CheckpointError  # noqa: E402
from conftest import REPO, tiny_clsr_train_opt  # noqa: E402

DOC = osp.join(REPO, 'docs', 'reliability.md')
SCALE = 4
TINY_BACKBONE = {'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': SCALE}


# ----------------------------------------------------------------------------- helpers
def copy_pairs(pairs, tmp):
    dst = tmp / 'pairs'
    if not dst.exists():
        shutil.copytree(pairs, dst)
    return dst


def ds_opt(pairs, phase='val', **kw):
    opt = {'name': 'bad', 'type': 'ContextROIDataset', 'phase': phase, 'scale': SCALE,
           'dataroot_gt': str(pairs / 'HR'), 'dataroot_lq': str(pairs / 'LR'), 'io_backend': {'type': 'disk'},
           'roi_size': 12}
    if phase == 'train':
        opt.update(context_size=16)
    opt.update(kw)
    return opt


def tiny_clsr(**kw):
    torch.manual_seed(0)
    return build_network({'type': 'CLSR', 'backbone': dict(TINY_BACKBONE), 'gcm': {'num_windows': 4, 'heads': 2},
                          'pim': {'ratio': 0.25}, **kw})


def decode(boxes):
    """The network on one 16x16 LR context with the given (batch_index, x, y, w, h) boxes."""
    net = tiny_clsr().eval()
    with torch.no_grad():
        return net(torch.rand(1, 3, 16, 16), torch.tensor(boxes))


def lmdb_pairs(pairs, tmp):
    from clsr_arch.data.prep import create_lmdb
    root = tmp / 'lmdb'
    if not root.exists():
        root.mkdir()
        for side in ('HR', 'LR'):
            create_lmdb(str(pairs / side), str(root / f'{side}.lmdb'))
    return root


def lmdb_opt(root):
    return ds_opt(root, io_backend={'type': 'lmdb'}, dataroot_gt=str(root / 'HR.lmdb'),
                  dataroot_lq=str(root / 'LR.lmdb'))


def add_meta_key(lmdb_path, key, shape):
    with open(osp.join(lmdb_path, 'meta_info.txt'), 'a') as f:
        f.write(f'{key}.png ({shape[0]},{shape[1]},3) 1\n')


def run_train_main(tmp, opt, monkeypatch, auto_resume=False):
    """``clsr_arch/train.py -opt <opt>`` in this process (what the script's main() does)."""
    import clsr_arch.train as train
    path = tmp / f'{opt["name"]}.yml'
    path.write_text(yaml.safe_dump(opt))
    monkeypatch.setenv('CLSR_ROOT', str(tmp))
    monkeypatch.setattr(sys, 'argv', ['train.py', '-opt', str(path)] + (['--auto_resume'] if auto_resume else []))
    train.main()


def train_opt(pairs, name, **changes):
    opt = tiny_clsr_train_opt(name, pairs, total_iter=2)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split('.')
        d = opt
        for p in parents:
            d = d[p]
        if value is DELETE:
            del d[leaf]
        else:
            d[leaf] = value
    return opt


DELETE = object()


# ----------------------------------------------------------------------------- the cases
def c_roi_outside(tmp, pairs, mp):
    decode([[0, 10, 4, 8, 8]])


def c_roi_larger_than_context(tmp, pairs, mp):
    decode([[0, 0, 0, 20, 20]])


def c_zero_size_roi(tmp, pairs, mp):
    decode([[0, 4, 4, 0, 8]])


def c_train_roi_larger_than_context(tmp, pairs, mp):
    ContextROIDataset(ds_opt(pairs, 'train', context_size=16, roi_size=20))


def c_zero_roi_size_option(tmp, pairs, mp):
    ContextROIDataset(ds_opt(pairs, roi_size=0))


def c_image_smaller_than_roi(tmp, pairs, mp):
    ContextROIDataset(ds_opt(copy_pairs(pairs, tmp), roi_size=32))


def c_scale_mismatch(tmp, pairs, mp):
    p = copy_pairs(pairs, tmp)
    lr = cv2.imread(str(p / 'LR' / 'bird.png'))
    cv2.imwrite(str(p / 'LR' / 'bird.png'), cv2.resize(lr, (20, 20), interpolation=cv2.INTER_AREA))
    ContextROIDataset(ds_opt(p))


def c_missing_pair(tmp, pairs, mp):
    p = copy_pairs(pairs, tmp)
    os.remove(p / 'LR' / 'head.png')
    ContextROIDataset(ds_opt(p))


def c_truncated_png(tmp, pairs, mp):
    p = copy_pairs(pairs, tmp)
    data = (p / 'LR' / 'baby.png').read_bytes()
    (p / 'LR' / 'baby.png').write_bytes(data[:len(data) // 2])
    ds = ContextROIDataset(ds_opt(p))  # the header is intact: construction passes
    ds[0]  # baby.png is item 0


def c_transparent_alpha(tmp, pairs, mp):
    p = copy_pairs(pairs, tmp)
    img = cv2.imread(str(p / 'LR' / 'bird.png'))
    alpha = np.full(img.shape[:2] + (1,), 255, np.uint8)
    alpha[0, 0] = 0
    cv2.imwrite(str(p / 'LR' / 'bird.png'), np.concatenate([img, alpha], 2))
    ContextROIDataset(ds_opt(p))[1]


def c_empty_folder(tmp, pairs, mp):
    (tmp / 'HR').mkdir()
    (tmp / 'LR').mkdir()
    ContextROIDataset(ds_opt(tmp))


def c_lmdb_missing_key(tmp, pairs, mp):
    root = lmdb_pairs(pairs, tmp)
    add_meta_key(str(root / 'HR.lmdb'), 'ghost', (96, 96))  # listed, never written
    add_meta_key(str(root / 'LR.lmdb'), 'ghost', (24, 24))
    ds = ContextROIDataset(lmdb_opt(root))
    ds[[p['gt_path'] for p in ds.paths].index('ghost')]


def c_lmdb_corrupt_value(tmp, pairs, mp):
    import lmdb
    root = lmdb_pairs(pairs, tmp)
    env = lmdb.open(str(root / 'LR.lmdb'))
    with env.begin(write=True) as txn:
        txn.put(b'bird', b'\x00garbage, not an image')
    env.close()
    ContextROIDataset(lmdb_opt(root))[1]


def c_yaml_unknown_backbone(tmp, pairs, mp):
    run_train_main(tmp, train_opt(pairs, 'bad_backbone', **{'network_g.backbone.type': 'SRResNetX'}), mp)


def c_yaml_clsr_without_backbone(tmp, pairs, mp):
    run_train_main(tmp, train_opt(pairs, 'no_backbone', **{'network_g.backbone': DELETE}), mp)


def c_yaml_dataset_without_dataroot_lq(tmp, pairs, mp):
    run_train_main(tmp, train_opt(pairs, 'no_lq', **{'datasets.val.dataroot_lq': DELETE}), mp)


def _plain_checkpoint(tmp, net_opt):
    torch.manual_seed(0)
    path = tmp / 'plain_msrresnet.pth'
    torch.save({'params': build_network(deepcopy(net_opt)).state_dict()}, path)
    return str(path)


def c_wrong_arch_pretrain_network_g(tmp, pairs, mp):
    ckpt = _plain_checkpoint(tmp, TINY_BACKBONE)  # a plain MSRResNet, loaded as the whole CLSR
    run_train_main(tmp, train_opt(pairs, 'wrong_arch', **{'path.pretrain_network_g': ckpt}), mp)


def c_wrong_arch_pretrain_backbone(tmp, pairs, mp):
    ckpt = _plain_checkpoint(tmp, dict(TINY_BACKBONE, num_feat=16))  # 16 channels for an 8-channel base
    tiny_clsr(pretrain_backbone=ckpt)


def c_missing_param_key(tmp, pairs, mp):
    path = tmp / 'plain_state_dict.pth'
    torch.save(tiny_clsr().state_dict(), path)  # no 'params' wrapper
    run_train_main(tmp, train_opt(pairs, 'no_param_key', **{'path.pretrain_network_g': str(path)}), mp)


def c_truncated_checkpoint(tmp, pairs, mp):
    path = tmp / 'net_g_4.pth'
    torch.save({'params': tiny_clsr().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    run_train_main(tmp, train_opt(pairs, 'truncated_ckpt', **{'path.pretrain_network_g': str(path)}), mp)


# (id, input, behaviour, case, exception, regex that the message must match)
CASES = [
    ('roi_outside', 'ROI outside the image (box x + w > W)', 'ValueError from `CLSR.decode`',
     c_roi_outside, ValueError, r'box 0 \(batch_index=0, x=10, y=4, w=8, h=8\) is not inside its context .* 16 x 16'),
    ('roi_larger_than_context', 'ROI larger than the context (20x20 box, 16x16 context)',
     'ValueError from `CLSR.decode`', c_roi_larger_than_context, ValueError,
     r'box 0 .*w=20, h=20\) is not inside its context'),
    ('zero_size_roi', 'zero-size ROI (w = 0)', 'ValueError from `CLSR.decode`', c_zero_size_roi, ValueError,
     r'box 0 .*w=0, h=8\): w and h must be >= 1'),
    ('train_roi_larger_than_context', 'training `roi_size` 20 > `context_size` 16',
     'DataError (ValueError) when the dataset is built', c_train_roi_larger_than_context, ValueError,
     r'option roi_size \(20, 20\) does not fit in context_size \(16, 16\)'),
    ('zero_roi_size_option', '`roi_size: 0`', 'DataError when the dataset is built', c_zero_roi_size_option,
     ValueError, r'option roi_size: expected a positive int or \[h, w\], got \(0, 0\)'),
    ('image_smaller_than_roi', 'validation image smaller than `roi_size` (24x24 LR, ROI 32)',
     'DataError when the dataset is built', c_image_smaller_than_roi, ValueError,
     r'LR/baby\.png is 24x24 LR pixels, smaller than roi_size 32x32'),
    ('scale_mismatch', 'LR/GT scale mismatch (96x96 GT, 20x20 LR, x4)', 'DataError when the dataset is built',
     c_scale_mismatch, ValueError, r'HR/bird\.png is 96x96 \(h x w\) but its LR .*LR/bird\.png is 20x20'),
    ('missing_pair', 'missing pair (GT without LR)', 'DataError when the dataset is built', c_missing_pair,
     ValueError, r'1 GT image\(s\) without LR .*HR/head\.png'),
    ('truncated_png', 'truncated PNG (second half cut off)', 'DataError when the item is read',
     c_truncated_png, ValueError, r'LR/baby\.png: truncated PNG \(no IEND chunk at the end\)'),
    ('transparent_alpha', 'RGBA image with a transparent pixel', 'DataError when the item is read',
     c_transparent_alpha, ValueError, r'LR/bird\.png: alpha channel is not fully opaque \(1 transparent'),
    ('empty_folder', 'empty dataset folder', 'DataError when the dataset is built', c_empty_folder, ValueError,
     r"dataroot_lq '.*LR' holds no images"),
    ('lmdb_missing_key', 'LMDB key listed in meta_info.txt but absent from the LMDB',
     'DataError when the item is read', c_lmdb_missing_key, ValueError,
     r"LMDB '.*LR\.lmdb' key 'ghost': key not found in the LMDB"),
    ('lmdb_corrupt_value', 'corrupt LMDB value (not an image)', 'DataError when the item is read',
     c_lmdb_corrupt_value, ValueError, r"LMDB '.*LR\.lmdb' key 'bird': cannot decode image"),
    ('yaml_unknown_backbone', 'YAML: `network_g.backbone.type: SRResNetX`',
     'KeyError at training start; no experiment folder left', c_yaml_unknown_backbone, KeyError,
     r"No object named 'SRResNetX' found in 'arch' registry"),
    ('yaml_clsr_without_backbone', 'YAML: CLSR without `backbone`',
     'TypeError at training start; no experiment folder left', c_yaml_clsr_without_backbone, TypeError,
     r"CLSR.__init__\(\) missing 1 required positional argument: 'backbone'"),
    ('yaml_dataset_without_dataroot_lq', 'YAML: dataset without `dataroot_lq`',
     'DataError at training start; no experiment folder left', c_yaml_dataset_without_dataroot_lq, ValueError,
     r"dataset 'Set5_roi24': option dataroot_lq is missing"),
    ('wrong_arch_pretrain_network_g', 'plain MSRResNet checkpoint as `path.pretrain_network_g` of CLSR '
     '(`strict_load_g: true`)', 'CheckpointError at training start; no experiment folder left',
     c_wrong_arch_pretrain_network_g, CheckpointError,
     r"plain_msrresnet\.pth' does not match network CLSR \(strict load\): 36 missing keys \[.*'base\.conv_first"
     r".*14 unexpected keys \[.*'conv_first.*load it with network_g\.pretrain_backbone"),
    ('wrong_arch_pretrain_backbone', '`network_g.pretrain_backbone` of another width (16 vs 8 channels)',
     'ValueError when CLSR is built', c_wrong_arch_pretrain_backbone, ValueError,
     r"pretrain_backbone '.*plain_msrresnet\.pth' does not match backbone MSRResNet: .*shape mismatches "
     r"\[.*'conv_first\.bias: checkpoint \(16,\) vs backbone \(8,\)"),
    ('missing_param_key', 'checkpoint without `params` (plain state dict) as `pretrain_network_g`',
     'CheckpointError at training start; no experiment folder left', c_missing_param_key, CheckpointError,
     r"plain_state_dict\.pth' has no 'params' entry: it is a plain state dict \(\d+ tensors\); set "
     r"path\.param_key_g: ~"),
    ('truncated_checkpoint', 'truncated `.pth` as `pretrain_network_g`', 'CheckpointError at training start; no '
     'experiment folder left', c_truncated_checkpoint, CheckpointError, r"cannot load checkpoint '.*net_g_4\.pth'"),
]
YAML_CASES = {c[0] for c in CASES if c[0].startswith('yaml_') or c[3] in (
    c_wrong_arch_pretrain_network_g, c_missing_param_key, c_truncated_checkpoint)}


def raise_case(case, tmp, pairs, mp):
    """Run one case; return the exception it raised (fails if none or of the wrong type)."""
    _, _, _, fn, exc, pattern = case
    with pytest.raises(exc, match=pattern) as info:
        fn(tmp, pairs, mp)
    return info.value


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error(case, tiny_pairs, tmp_path, monkeypatch):
    err = raise_case(case, tmp_path, tiny_pairs, monkeypatch)
    msg = str(err)
    assert '\n' not in msg.strip() or isinstance(err, CheckpointError), 'one line, please'
    if case[0] in YAML_CASES:  # a failed start leaves no half-made experiment behind
        assert not (tmp_path / 'experiments').exists() or os.listdir(tmp_path / 'experiments') == []
        assert not (tmp_path / 'tb_logger').exists() or os.listdir(tmp_path / 'tb_logger') == []


def test_failed_start_restores_the_previous_experiment(tiny_pairs, tmp_path, monkeypatch):
    """BasicSR renames an existing experiment to *_archived_<time> before building anything;
    when the start then fails, the previous experiment is put back untouched."""
    prev = tmp_path / 'experiments' / 'no_lq'
    (prev / 'models').mkdir(parents=True)
    (prev / 'models' / 'net_g_1000.pth').write_bytes(b'previous run')
    with pytest.raises(ValueError, match='dataroot_lq'):
        run_train_main(tmp_path, train_opt(tiny_pairs, 'no_lq', **{'datasets.val.dataroot_lq': DELETE}), monkeypatch)
    assert os.listdir(tmp_path / 'experiments') == ['no_lq']
    assert (prev / 'models' / 'net_g_1000.pth').read_bytes() == b'previous run'
    assert sorted(os.listdir(prev)) == ['models']  # nothing of the failed start inside


# ----------------------------------------------------------------------------- converted, not refused
def _write_variants(pairs, tmp):
    """LR files of the same pixels as gray, 16-bit, opaque-alpha; returns {kind: (file, expected BGR)}."""
    p = copy_pairs(pairs, tmp)
    out = {}
    bgr = cv2.imread(str(p / 'LR' / 'baby.png'))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(p / 'LR' / 'baby.png'), gray)
    out['gray'] = (0, np.repeat(gray[:, :, None], 3, 2))
    bird = cv2.imread(str(p / 'LR' / 'bird.png'))
    cv2.imwrite(str(p / 'LR' / 'bird.png'), bird.astype(np.uint16) * 257 + 3)  # 16-bit, not exact multiples
    out['16bit'] = (1, np.round((bird.astype(np.float32) * 257 + 3) / 257).astype(np.uint8))
    fly = cv2.imread(str(p / 'LR' / 'butterfly.png'))
    cv2.imwrite(str(p / 'LR' / 'butterfly.png'), np.concatenate([fly, np.full(fly.shape[:2] + (1,), 255, np.uint8)], 2))
    out['opaque_alpha'] = (2, fly)
    return p, out


def test_gray_16bit_and_opaque_alpha_are_converted(tiny_pairs, tmp_path):
    p, variants = _write_variants(tiny_pairs, tmp_path)
    ds = ContextROIDataset(ds_opt(p))
    assert [osp.basename(q['lq_path']) for q in ds.paths][:3] == ['baby.png', 'bird.png', 'butterfly.png']
    for kind, (index, expected_bgr) in variants.items():
        lq = ds[index]['lq']  # RGB float in [0, 1]
        assert lq.shape == (3, 24, 24), kind
        got = np.round(lq.numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).astype(np.uint8)
        assert np.array_equal(got, expected_bgr), kind
    # gray really is 3 equal channels; the 16-bit file kept its 8-bit content exactly
    assert torch.equal(ds[0]['lq'][0], ds[0]['lq'][2])


# ----------------------------------------------------------------------------- the doc table
def normalise(msg, tmp):
    msg = msg.replace(str(tmp), '<tmp>')
    return ' '.join(msg.split())


def render_table(rows):
    out = ['| input | behaviour | exact error text |', '|---|---|---|']
    for inp, behaviour, type_name, msg in rows:
        short = msg if len(msg) <= 400 else msg[:400] + ' ...'
        out.append(f'| {inp} | {behaviour} | `{type_name}: {short}` |')
    return '\n'.join(out)


def collect_rows(pairs, tmp_root, mp):
    rows = []
    for case in CASES:
        tmp = tmp_root / case[0]
        tmp.mkdir()
        err = raise_case(case, tmp, pairs, mp)
        msg = str(err.args[0]) if isinstance(err, KeyError) else str(err)
        rows.append((case[1], case[2], type(err).__name__, normalise(msg, tmp).replace('|', '\\|')))
    return rows


def test_doc_table_matches_the_errors(tiny_pairs, tmp_path, monkeypatch):
    rows = collect_rows(tiny_pairs, tmp_path, monkeypatch)
    doc = open(DOC).read()
    for line in render_table(rows).splitlines()[2:]:
        assert line in doc, f'docs/reliability.md is out of date (run python tests/test_bad_input.py); missing:\n{line}'


if __name__ == '__main__':
    import tempfile
    from pathlib import Path

    from conftest import bicubic_lr

    class _MP:  # the two monkeypatch methods run_train_main uses, for a script run
        def setenv(self, k, v):
            os.environ[k] = v

        def setattr(self, obj, name, value):
            setattr(obj, name, value)

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        pairs = d / 'tiny_pairs'
        for side in ('HR', 'LR'):
            (pairs / side).mkdir(parents=True)
        src = osp.join(REPO, os.pardir, 'shared', 'data', 'Set5', 'HR')
        for name in sorted(os.listdir(src))[:4]:
            img = cv2.imread(osp.join(src, name), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            crop = img[h // 2 - 48:h // 2 + 48, w // 2 - 48:w // 2 + 48]
            cv2.imwrite(str(pairs / 'HR' / name), crop)
            cv2.imwrite(str(pairs / 'LR' / name), bicubic_lr(crop, 4))
        cases = d / 'cases'
        cases.mkdir()
        print(render_table(collect_rows(pairs, cases, _MP())))
