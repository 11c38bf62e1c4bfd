"""Kill-safe CLSR training: SIGKILL at any moment, restart with ``--auto_resume``, continue exactly.

A small CLSR (tiny SRResNet backbone, LocalSR's ROI + lambda-weighted context loss of Sec. 3.5)
is trained through ``clsr_arch/train.py`` as a subprocess (``CLSR_ROOT`` = a tmp dir) and killed
with SIGKILL mid-iteration, mid-checkpoint-save and mid-validation. Each moment is detected
from the run's own log and checkpoint folder and *verified after the kill* (log lines present or
absent, a ``.tmp-*`` file left behind), so a test cannot pass by killing at the wrong moment.
After every kill:

* every ``.pth`` / ``.state`` in the experiment loads with ``safe_load`` (no truncated file);
* the restart logs ``Resuming training from epoch: E, iter: N.`` with N the newest complete
  ``.state`` (and E its epoch), and its first iteration is N + 1;
* every logged lambda equals the schedule (``LambdaSchedule``) and every logged learning rate
  equals BasicSR's ``CosineAnnealingRestartLR`` at that iteration -- before and after resumes;
* the finished run leaves no ``.tmp-*`` behind (stale ones from killed saves are cleared).

Plus the safe-loading contract of training states: a real BasicSR state (Adam + either BasicSR
scheduler) round-trips through ``weights_only=True`` loads, a disallowed pickle is refused.
"""
import glob
import math
import os
import os.path as osp
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from clsr_arch.models.lambda_schedule import LambdaSchedule
from clsr_arch.utils.checkpoint import CheckpointError, atomic_save, safe_load
from conftest import REPO, tiny_clsr_train_opt

TRAIN = osp.join(REPO, 'clsr_arch', 'train.py')
ITER_RE = re.compile(r'\[epoch:\s*(\d+), iter:\s*([\d,]+), lr:\(([^,]+),\)\].*?lambda: (\S+)')
RESUME_RE = re.compile(r'Resuming training from epoch: (\d+), iter: (\d+)\.')
START_TIMEOUT = 240  # seconds for one launch to reach its first iteration on 2 busy cores


class Training:
    """One ``clsr_arch/train.py`` subprocess whose merged stdout/stderr goes to ``console``."""

    def __init__(self, opt_path, root, console, auto_resume):
        env = dict(os.environ, CLSR_ROOT=str(root), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
        cmd = [sys.executable, TRAIN, '-opt', str(opt_path)] + (['--auto_resume'] if auto_resume else [])
        self.console = str(console)
        self._out = open(self.console, 'w')
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def text(self):
        with open(self.console) as f:
            return f.read()

    def wait_for(self, predicate, timeout=START_TIMEOUT, interval=0.005):
        """Poll the console until ``predicate(text)``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                text = self.text()
                if predicate(text):
                    return text
                pytest.fail(f'training ended (rc {self.proc.returncode}) before the awaited moment:\n{text[-3000:]}')
            time.sleep(interval)
        self.kill()
        pytest.fail(f'timed out after {timeout} s waiting in:\n{self.text()[-3000:]}')

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._out.close()

    def finish(self, timeout=START_TIMEOUT):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f'training did not finish in {timeout} s:\n{self.text()[-3000:]}')
        self._out.close()
        assert rc == 0, f'training failed (rc {rc}):\n{self.text()[-4000:]}'


def logged_iters(text):
    """``[(epoch, iter, lr, lambda), ...]`` of every iteration line in a console text."""
    return [(int(e), int(i.replace(',', '')), float(lr), float(lam)) for e, i, lr, lam in ITER_RE.findall(text)]


class Experiment:
    """The tiny CLSR experiment under a tmp ``CLSR_ROOT`` and the checks made after each kill."""

    def __init__(self, tmp_path, pairs, total_iter=12, ckpt_freq=2, val_freq=3, name='kill'):
        self.root = tmp_path
        self.opt = tiny_clsr_train_opt(name, pairs, total_iter, ckpt_freq=ckpt_freq, val_freq=val_freq)
        self.opt_path = tmp_path / f'{name}.yml'
        self.opt_path.write_text(yaml.safe_dump(self.opt))
        self.exp = tmp_path / 'experiments' / name
        self.models, self.states = self.exp / 'models', self.exp / 'training_states'
        self.launches = []
        self.lam = LambdaSchedule.from_opt(self.opt['train']['lambda_schedule'], total_iter)
        self.lrs = self._lr_schedule(total_iter)

    def _lr_schedule(self, total_iter):
        """lr logged at iteration t: BasicSR's scheduler stepped t - 1 times (update_learning_rate
        steps it from iteration 2 on); a resume restores the step count from the state."""
        from basicsr.models.lr_scheduler import CosineAnnealingRestartLR
        t_opt = self.opt['train']
        optim = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=t_opt['optim_g']['lr'])
        sched_opt = {k: v for k, v in t_opt['scheduler'].items() if k != 'type'}
        sched = CosineAnnealingRestartLR(optim, **sched_opt)
        lrs = {1: optim.param_groups[0]['lr']}
        for t in range(2, total_iter + 1):
            optim.step()  # (no gradients: only keeps torch from warning about the order)
            sched.step()
            lrs[t] = optim.param_groups[0]['lr']
        return lrs

    def launch(self, auto_resume):
        run = Training(self.opt_path, self.root, self.root / f'console_{len(self.launches)}.txt', auto_resume)
        self.launches.append(run)
        return run

    def newest_complete_state(self):
        """(iter, epoch) of the newest ``.state`` in training_states (all are complete: checked)."""
        if not self.states.is_dir():  # killed before BasicSR made the experiment folders
            return None, None
        states = sorted(int(p[:-len('.state')]) for p in os.listdir(self.states) if p.endswith('.state'))
        if not states:
            return None, None
        return states[-1], safe_load(str(self.states / f'{states[-1]}.state'))['epoch']

    def check_checkpoints_complete(self):
        """No truncated checkpoint: every .pth/.state in the experiment loads weights-only."""
        files = glob.glob(str(self.models / '*.pth')) + glob.glob(str(self.states / '*.state'))
        for path in files:
            try:
                ckpt = safe_load(path)
            except CheckpointError as err:
                pytest.fail(f'a kill left a damaged checkpoint: {err}')
            if path.endswith('.state'):
                it = int(osp.basename(path)[:-len('.state')])
                assert ckpt['iter'] == it and len(ckpt['optimizers']) == 1 and len(ckpt['schedulers']) == 1
                # BasicSR saves net_g_<it>.pth before <it>.state: a complete state has its network
                net = safe_load(str(self.models / f'net_g_{it}.pth'))
                assert set(net) == {'params', 'params_ema'}
        return files

    def stale_tmps(self):
        return sorted(glob.glob(str(self.exp / '**' / '.tmp-*'), recursive=True))

    def check_schedules(self, text):
        """Every logged iteration's lambda and lr equal the schedules at that iteration."""
        rows = logged_iters(text)
        for _, it, lr, lam in rows:
            assert lam == pytest.approx(self.lam(it), rel=2e-4, abs=1e-12), f'iter {it}: lambda {lam}'
            assert lr == pytest.approx(self.lrs[it], rel=2e-3), f'iter {it}: lr {lr} vs {self.lrs[it]}'
        return rows

    def check_resumed(self, run_text, expected):
        """The restart resumed from ``expected`` = (iter, epoch) and went on from iter + 1."""
        it, epoch = expected
        m = RESUME_RE.search(run_text)
        assert m, f'no resume line:\n{run_text[-3000:]}'
        assert (int(m.group(1)), int(m.group(2))) == (epoch, it), (m.group(0), expected)
        rows = logged_iters(run_text)
        if rows:
            assert rows[0][1] == it + 1, f'first iteration after resuming from {it} is {rows[0][1]}'
            assert [r[1] for r in rows] == list(range(it + 1, it + 1 + len(rows)))


def last_iter(text):
    rows = logged_iters(text)
    return rows[-1][1] if rows else 0


def kill_mid_iteration(run, after_iter):
    """Kill right after iteration ``after_iter`` was logged and had neither save nor validation,
    i.e. inside iteration ``after_iter + 1`` (data, forward, backward, step)."""
    run.wait_for(lambda t: last_iter(t) >= after_iter)
    run.kill()
    text = run.text()
    assert last_iter(text) == after_iter, 'killed too late: the next iteration had already been logged'
    return text


def kill_mid_save(run, exp, max_saves=6):
    """Poll models/ and training_states/ for the ``.tmp-*`` of an atomic save and kill while it
    exists; verified afterwards by the temporary file the kill left behind."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and run.proc.poll() is None:
        for folder in (exp.models, exp.states):
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                names = []
            if any(n.startswith('.tmp-') for n in names):
                run.kill()
                left = exp.stale_tmps()
                if left:
                    return run.text(), left
                # the rename won the race: this was a kill between saves; the caller retries
                return run.text(), []
        time.sleep(0.0005)
    run.kill()
    pytest.fail(f'no checkpoint save observed:\n{run.text()[-3000:]}')


def kill_mid_validation(run, val_iter):
    """Kill right after iteration ``val_iter`` (a validation iteration without a save) was
    logged: the validation has started but its result line has not been written."""
    run.wait_for(lambda t: last_iter(t) >= val_iter)
    run.kill()
    text = run.text()
    tail = text[text.rfind(f'iter:{val_iter:8,d}'):]
    assert last_iter(text) == val_iter and 'Validation' not in tail, 'validation had already finished'
    return text


def test_kill_mid_iteration_mid_save_mid_validation_then_resume(tiny_pairs, tmp_path):
    exp = Experiment(tmp_path, tiny_pairs, total_iter=12, ckpt_freq=2, val_freq=3)

    # 1) fresh run, killed inside iteration 6 (5 is logged; 5 has no save and no validation)
    text = kill_mid_iteration(exp.launch(auto_resume=False), after_iter=5)
    exp.check_schedules(text)
    exp.check_checkpoints_complete()
    resume_from = exp.newest_complete_state()
    assert resume_from[0] == 4

    # 2) resumed, killed while an atomic save has its temporary file open
    for _ in range(3):  # a save may finish between seeing its temporary and the kill: retry
        run = exp.launch(auto_resume=True)
        text, left = kill_mid_save(run, exp)
        exp.check_resumed(text, resume_from)
        exp.check_schedules(text)
        exp.check_checkpoints_complete()
        resume_from = exp.newest_complete_state()
        if left:
            break
    assert left, 'never killed during a save'
    # the interrupted save's target does not exist as a complete newer state
    assert all(osp.basename(p).split('.')[2] in ('pth', 'state') for p in left), left

    # 3) resumed, killed during the validation at iteration 9 (no save at 9)
    run = exp.launch(auto_resume=True)
    text = kill_mid_validation(run, val_iter=9)
    exp.check_resumed(text, resume_from)
    exp.check_schedules(text)
    exp.check_checkpoints_complete()
    resume_from = exp.newest_complete_state()
    assert resume_from[0] == 8

    # 4) resumed to the end -- past a damaged newer state (as a disk error or an old in-place
    # save would leave), which auto-resume skips with a warning; the run still writes its log file
    (exp.states / '9.state').write_bytes(b'PK\x03\x04truncated')
    run = exp.launch(auto_resume=True)
    run.finish()
    text = run.text()
    assert f'Skipping damaged training state {exp.states / "9.state"}' in text
    (exp.states / '9.state').unlink()
    exp.check_resumed(text, resume_from)
    log = max(glob.glob(str(exp.exp / 'train_kill_*.log')), key=os.path.getmtime)
    assert RESUME_RE.search(open(log).read()).group(2) == '8'
    rows = exp.check_schedules(text)
    assert rows[-1][1] == 12 and rows[-1][3] == 0.0  # cosine lambda reaches exactly 0 at the end
    exp.check_checkpoints_complete()
    assert (exp.models / 'net_g_latest.pth').is_file() and (exp.states / '12.state').is_file()
    assert exp.stale_tmps() == [], 'temporaries of the killed save were not cleared on resume'
    # the final launch validated at 9 (again: 9 came after the resumed state 8), 12 and at the end
    psnrs = [float(v) for v in re.findall(r'# psnr: ([\d.]+)', text)]
    assert len(psnrs) == 3 and all(15 < p < 45 for p in psnrs), psnrs


@pytest.mark.slow
@pytest.mark.parametrize('seed', [0, 1])
def test_randomised_kills_resume_exactly(tiny_pairs, tmp_path, seed):
    """8 kills at seeded random moments: a random iteration 1-3 past the resumed one, then a
    random 0-0.2 s (inside that iteration's save or validation, or a later iteration); every
    restart continues exactly, and the run completes."""
    rng = random.Random(seed)
    total, num_kills = 50, 8
    exp = Experiment(tmp_path, tiny_pairs, total_iter=total, ckpt_freq=2, val_freq=3, name=f'rand{seed}')
    resume_from, kills = (None, None), 0
    while True:
        run = exp.launch(auto_resume=kills > 0)
        target = (resume_from[0] or 0) + rng.randint(1, 3)
        if kills < num_kills and target < total:
            run.wait_for(lambda t: last_iter(t) >= target)
            time.sleep(rng.uniform(0.0, 0.2))
            run.kill()
            kills += 1
        else:
            run.finish()
        text = run.text()
        if resume_from[0] is not None:
            exp.check_resumed(text, resume_from)
        exp.check_schedules(text)
        exp.check_checkpoints_complete()
        if run.proc.returncode == 0:
            break
        resume_from = exp.newest_complete_state()  # (None, None): killed before any checkpoint
    assert kills == num_kills
    assert (exp.states / f'{total}.state').is_file() and 'End of training' in text
    assert exp.stale_tmps() == []


# --------------------------------------------------------------------------- safe loading
def _basicsr_state(scheduler_opt):
    """A real BasicSR training state: Adam + one of its schedulers, after a few steps."""
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3)
    optim = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    cls = {'MultiStepRestartLR': MultiStepRestartLR, 'CosineAnnealingRestartLR': CosineAnnealingRestartLR}
    sched = cls[scheduler_opt.pop('type')](optim, **scheduler_opt)
    for _ in range(5):
        optim.zero_grad()
        net(torch.rand(1, 3, 8, 8)).square().mean().backward()
        optim.step()
        sched.step()
    return {'epoch': 1, 'iter': 5, 'optimizers': [optim.state_dict()], 'schedulers': [sched.state_dict()]}, optim, sched


@pytest.mark.parametrize('scheduler_opt', [
    {'type': 'MultiStepRestartLR', 'milestones': [2, 4, 8], 'gamma': 0.5, 'restarts': [6], 'restart_weights': [0.5]},
    {'type': 'CosineAnnealingRestartLR', 'periods': [4, 6], 'restart_weights': [1, 0.5], 'eta_min': 1e-7},
])
def test_basicsr_training_state_round_trips_weights_only(tmp_path, scheduler_opt):
    import collections
    state, optim, sched = _basicsr_state(dict(scheduler_opt))
    path = str(tmp_path / '5.state')
    atomic_save(state, path)
    loaded = safe_load(path)  # torch.load(weights_only=True) with clsr's allow-list
    s = loaded['schedulers'][0]
    if scheduler_opt['type'] == 'MultiStepRestartLR':
        assert isinstance(s['milestones'], collections.Counter)  # the reason for the allow-list
        assert s['milestones'] == collections.Counter([2, 4, 8])
    assert s['last_epoch'] == 5 and s['_last_lr'] == sched.get_last_lr()
    # and it restores: a fresh optimizer/scheduler pair continues with the same lr and moments
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR
    net2 = torch.nn.Conv2d(3, 4, 3)
    optim2 = torch.optim.Adam(net2.parameters(), lr=1e-3, betas=(0.9, 0.99))
    opt = dict(scheduler_opt)
    cls = {'MultiStepRestartLR': MultiStepRestartLR, 'CosineAnnealingRestartLR': CosineAnnealingRestartLR}
    sched2 = cls[opt.pop('type')](optim2, **opt)
    optim2.load_state_dict(loaded['optimizers'][0])
    sched2.load_state_dict(s)
    for a, b in zip(optim.state.values(), optim2.state.values()):
        assert torch.equal(a['exp_avg'], b['exp_avg']) and torch.equal(a['exp_avg_sq'], b['exp_avg_sq'])
    sched.step()
    sched2.step()
    assert optim2.param_groups[0]['lr'] == optim.param_groups[0]['lr']


def test_training_state_with_disallowed_global_is_refused_naming_the_file(tmp_path):
    state, _, _ = _basicsr_state({'type': 'CosineAnnealingRestartLR', 'periods': [10]})
    state['schedulers'][0]['hook'] = math.floor  # a global outside the allow-list
    path = tmp_path / 'evil' / '7.state'
    path.parent.mkdir()
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"(?s)evil/7\.state.*Unsupported global: GLOBAL math\.floor"):
        safe_load(str(path))
