"""Batch clsr-infer killed and rerun, and sharded with torchrun (issue 22).

Kills: a run is SIGKILLed at the moments that matter -- an output written to its temporary file
but not renamed, renamed but without its manifest line, its manifest line half written -- by a
launcher that wraps the manifest module's ``os`` calls and kills its own process there (each
moment verified after the kill from what it left), and once at a random time from outside. Then
a rerun must end with every box's file written exactly once (one manifest record each), no
temporary or partial file, and the same bytes as an uninterrupted run.

Ranks: ``torchrun --nproc_per_node 2`` on the CPU, and two ``torchrun --nnodes 2`` launchers on
127.0.0.1 sharing one job: every box exactly once, one manifest per rank, one merged summary.
"""
import json
import os
import os.path as osp
import random
import signal
import socket
import subprocess
import sys
import time

import cv2
import pytest
import torch
import yaml

from basicsr.archs import build_network

from clsr_arch import infer
from conftest import REPO, perturb_context_modules, shared

TINY = {'type': 'CLSR', 'backbone': {'type': 'MSRResNet', 'num_feat': 8, 'num_block': 1, 'upscale': 4},
        'roi_pad': 2, 'gcm': {'num_windows': 4, 'heads': 2}, 'pim': {'ratio': 0.25}}
NAMES = ('baboon', 'barbara', 'lenna', 'zebra', 'pepper', 'monarch')
BOXES = ((3, 4, 16, 12), (10, 8, 16, 12), (40, 30, 20.5, 16.2), (0, 0, 8, 8), (50, 2, 14, 10))  # 2 overlap
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
TIMEOUT = 300

# runs clsr-infer, killing itself with SIGKILL at the n-th call of the moment asked for
KILLER = r'''
import os, signal, sys
from clsr_arch import infer
from clsr_arch.api import manifest
moment, at = sys.argv[1], int(sys.argv[2])
calls = {'replace': 0, 'write': 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Os:
    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, a, b):
        calls['replace'] += 1
        if moment == 'before-rename' and calls['replace'] == at:
            die()
        os.replace(a, b)
        if moment == 'after-rename' and calls['replace'] == at:
            die()

    def write(self, fd, data):
        calls['write'] += 1
        if moment == 'mid-line' and calls['write'] == at:
            os.write(fd, data[:len(data) // 2])
            die()
        return os.write(fd, data)

manifest.os = Os()
sys.exit(infer.main(sys.argv[3:]))
'''


@pytest.fixture(scope='module')
def job(tmp_path_factory):
    """A tiny CLSR, 6 LR images of 64x48 with 5 boxes each (a CSV), and the files of an
    uninterrupted run (bytes by name)."""
    root = tmp_path_factory.mktemp('batch_job')
    torch.manual_seed(0)
    net = build_network(dict(TINY))
    perturb_context_modules(net, 0.1)
    (root / 'tiny.yml').write_text(yaml.safe_dump({'name': 'tiny', 'network_g': TINY}))
    torch.save({'params': net.state_dict()}, root / 'tiny.pth')
    src = root / 'in'
    src.mkdir()
    lines = ['image,x,y,w,h']
    for k, n in enumerate(NAMES):
        img = cv2.imread(shared('Set14', 'HR', f'{n}.png'), cv2.IMREAD_COLOR)
        cv2.imwrite(str(src / f'{n}.png'), img[30 + k:78 + k, 40:104])
        lines += [f'{n}.png,' + ','.join(f'{v:g}' for v in b) for b in BOXES]
    (root / 'boxes.csv').write_text('\n'.join(lines) + '\n')
    args = [str(src), '--boxes', str(root / 'boxes.csv'), '--opt', str(root / 'tiny.yml'),
            '--weights', str(root / 'tiny.pth'), '--device', 'cpu', '--threads', '1', '--quiet']
    ref = root / 'ref'
    assert infer.main(args + ['-o', str(ref)]) == 0
    files = {p.name: p.read_bytes() for p in ref.iterdir() if p.suffix == '.png'}
    assert len(files) == len(NAMES) * len(BOXES)
    return args, files


def manifest_records(out):
    recs = []
    for f in sorted(os.listdir(out)):
        if f.startswith('manifest.rank'):
            with open(osp.join(out, f), 'rb') as fh:
                recs += [json.loads(line) for line in fh.read().split(b'\n') if line.endswith(b'}')]
    return recs


def assert_every_box_once(out, files, ranks=1):
    """Every expected file, with the uninterrupted run's bytes, one manifest record each, no
    temporary file, a summary that counts them all."""
    names = sorted(os.listdir(out))
    assert [n for n in names if n.startswith('.')] == []  # no temporary files
    assert {n: (out / n).read_bytes() for n in names if n.endswith('.png')} == files
    recs = manifest_records(out)
    per_file = {}
    for r in recs:
        per_file[osp.basename(r['file'])] = per_file.get(osp.basename(r['file']), 0) + 1
    assert per_file == {n: 1 for n in files}
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ranks'] == ranks and summary['failed'] == 0
    return recs, summary


def test_killed_at_every_moment_and_rerun_writes_every_box_once(tmp_path, job):
    args, files = job
    out = tmp_path / 'out'
    argv = args + ['-o', str(out)]

    def killed(moment, at):
        r = subprocess.run([sys.executable, '-c', KILLER, moment, str(at)] + argv, cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]

    killed('before-rename', 3)  # the 3rd output is in its temporary file, not renamed
    tmp = [n for n in os.listdir(out) if n.startswith('.') and n.endswith('.png.tmp')]
    assert len(tmp) == 1 and len([n for n in os.listdir(out) if n.endswith('.png')]) == 2
    assert len(manifest_records(out)) == 2
    killed('after-rename', 2)  # 2 skipped, the 2nd output of this run renamed, no line for it
    pngs = [n for n in os.listdir(out) if n.endswith('.png')]
    assert len(pngs) == 4 and len(manifest_records(out)) == 3
    killed('mid-line', 5)  # the 5th line of this run cut in half
    text = (out / 'manifest.rank0.jsonl').read_bytes()
    assert not text.endswith(b'\n') and len(manifest_records(out)) == 3 + 4
    # at a random moment, from outside, once the run is writing
    rng = random.Random(0)
    proc = subprocess.Popen([sys.executable, '-m', 'clsr_arch.infer'] + argv, cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while len(manifest_records(out)) <= 7 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for n in os.listdir(out):
        if n.endswith('.png'):  # a final name is never a partial file
            assert cv2.imread(str(out / n)) is not None
    r = subprocess.run([sys.executable, '-m', 'clsr_arch.infer'] + argv, cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-2000:]
    _, summary = assert_every_box_once(out, files)
    assert summary['done'] + summary['skipped'] == len(files) and summary['done'] >= 1


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rank_images(out):
    recs = manifest_records(out)
    by_rank = {}
    for f in os.listdir(out):
        if f.startswith('manifest.rank'):
            rank = int(f[len('manifest.rank'):-len('.jsonl')])
            with open(out / f) as fh:
                by_rank[rank] = {json.loads(line)['image'] for line in fh if line.strip()}
    return recs, by_rank


def test_two_ranks_on_the_cpu_every_box_once(tmp_path, job):
    args, files = job
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                        '-m', 'clsr_arch.infer'] + args[:-1] + ['-o', str(out)],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('6 images on 2 rank(s): 30 boxes written, 0 skipped (done before), 0 failed') == 1
    _, summary = assert_every_box_once(out, files, ranks=2)
    _, by_rank = rank_images(out)
    assert sorted(by_rank) == [0, 1] and by_rank[0] and by_rank[1] and not by_rank[0] & by_rank[1]
    assert [s['images'] for s in summary['per_rank']] == [len(by_rank[0]), len(by_rank[1])]


def test_two_launchers_of_nnodes_2_share_one_job(tmp_path, job):
    args, files = job
    out = tmp_path / 'out'
    port = free_port()
    procs = [subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank', str(k),
                               '--nproc_per_node', '1', '--master_addr', '127.0.0.1', '--master_port', str(port),
                               '-m', 'clsr_arch.infer'] + args + ['-o', str(out)],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    for p, (o, e) in zip(procs, results):
        assert p.returncode == 0, e[-3000:]
    _, summary = assert_every_box_once(out, files, ranks=2)
    assert summary['done'] == len(files)
    _, by_rank = rank_images(out)
    assert sorted(by_rank) == [0, 1] and not by_rank[0] & by_rank[1]
    assert len(by_rank[0] | by_rank[1]) == len(NAMES)
