"""Training killed at random moments (and inside a checkpoint save) resumes exactly.

Each run is a real ``sfdfuse train`` process (tiny network, 10 random 32x32 patches, CPU, one
intra-op thread) that is sent SIGKILL, then ``sfdfuse train --resume``; the resumed run must end
with the same weights as an uninterrupted reference run (the schedule, data order and random
states continue from the last complete checkpoint). A checkpoint damaged on disk is detected and
named. ``RELIABILITY_TRAIN_KILLS`` sets the number of random kills (default 2);
``scripts/reliability/run_all.sh`` runs more.
"""
from __future__ import annotations

import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from sfdfuse_core.train.checkpoint import (CheckpointError, load_checkpoint, load_latest,
                                           previous_path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts' / 'reliability'))
import report  # noqa: E402  (scripts/reliability/report.py: records figures for the doc)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / 'training' / 'sfdfuse.yaml'
TINY = ['model.dim=8', 'model.num_heads=1', 'model.encoder_restormer_blocks=1',
        'model.encoder_convformer_blocks=1', 'model.decoder_restormer_blocks=1',
        'model.decoder_convformer_blocks=1', 'model.detail_nodes=1', 'phase1_epochs=2',
        'phase2_epochs=2', 'max_steps_per_epoch=4', 'val_patches=2', 'num_workers=0',
        'batch_size=2', 'log_every=1', 'progress=false', 'save_every_steps=1']
KILLS = int(os.environ.get('RELIABILITY_TRAIN_KILLS', '2'))
STEPS = 16  # 4 epochs of 4 steps
#: Kills the process inside the N-th torch.save, after half of the file was written.
KILL_IN_SAVE = '''
import os, signal, sys
import torch
n_save = int(os.environ['KILL_IN_SAVE'])
real_save = torch.save
calls = []
def save(obj, f, *args, **kwargs):
    calls.append(1)
    real_save(obj, f, *args, **kwargs)
    if len(calls) == n_save:
        f.flush()
        f.truncate(f.tell() // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
from sfdfuse_core.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return env


def _train_args(patches: Path, out: Path) -> list[str]:
    args = ['train', '--config', str(RECIPE), '--data', str(patches), '--out', str(out),
            '--device', 'cpu']
    for item in TINY:
        args += ['--set', item]
    return args


def _run(args: list[str], log: Path, code: str = '', env: dict = None) -> subprocess.Popen:
    prefix = [sys.executable, '-c', code] if code else [sys.executable, '-m', 'sfdfuse_core']
    with open(log, 'ab') as handle:
        return subprocess.Popen(prefix + args, stdout=handle, stderr=subprocess.STDOUT,
                                env=env or _env(), start_new_session=True)


def _resume(out: Path, log: Path) -> int:
    proc = _run(['train', '--out', str(out), '--resume'], log)
    return proc.wait(300)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('data') / 'tiny.h5'
    rng = np.random.default_rng(0)
    with h5py.File(path, 'w') as h5:
        h5['ir'] = rng.integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
        h5['vi'] = rng.integers(0, 256, (10, 1, 32, 32), dtype=np.uint8)
    return path


@pytest.fixture(scope='module')
def reference(patches: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp('ref') / 'run'
    log = out.parent / 'ref.log'
    assert _run(_train_args(patches, out), log).wait(300) == 0, log.read_text()
    state = load_checkpoint(out / 'last.pt')
    assert state['finished'] and state['step'] == STEPS
    return state


def test_kill_during_a_checkpoint_save_resumes_from_the_previous_one(
        patches: Path, reference: dict, tmp_path: Path) -> None:
    out = tmp_path / 'run'
    log = tmp_path / 'train.log'
    env = dict(_env(), KILL_IN_SAVE='5')
    proc = _run(_train_args(patches, out), log,
                code=KILL_IN_SAVE, env=env)
    assert proc.wait(300) == -signal.SIGKILL, log.read_text()
    # The half-written file is the temporary one; last.pt is the previous complete checkpoint.
    partial = list(out.glob('.last.pt.tmp*'))
    assert partial, sorted(p.name for p in out.iterdir())
    before = load_checkpoint(out / 'last.pt')
    assert 0 < before['step'] < STEPS
    assert _resume(out, log) == 0, log.read_text()
    after = load_checkpoint(out / 'last.pt')
    assert after['finished'] and after['step'] == STEPS
    assert _same(after['model'], reference['model']), 'the resumed run diverged'
    report.record('train', test='SIGKILL inside the 5th checkpoint save (half written)',
                  last_complete_step=before['step'], resumed_to=after['step'],
                  equal_to_reference=True, partial_tmp_files=len(partial))


@pytest.mark.slow
def test_random_kills_resume_exactly(patches: Path, reference: dict, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get('RELIABILITY_SEED', '11')))
    for trial in range(KILLS):
        out = tmp_path / f'run{trial}'
        log = tmp_path / f'train{trial}.log'
        proc = _run(_train_args(patches, out), log)
        try:
            deadline = time.monotonic() + 120
            while not (out / 'last.pt').exists() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        if proc.returncode == 0:  # finished before the kill: nothing to resume
            report.record('train', test=f'random SIGKILL {trial}', finished_before_kill=True)
            continue
        step = None
        if (out / 'last.pt').exists():
            step = load_checkpoint(out / 'last.pt')['step']  # never half a file there
        assert _resume(out, log) == 0, log.read_text()
        after = load_checkpoint(out / 'last.pt')
        assert after['finished'] and after['step'] == STEPS
        assert _same(after['model'], reference['model']), f'trial {trial} diverged'
        report.record('train', test=f'random SIGKILL {trial}', last_complete_step=step,
                      resumed_to=after['step'], equal_to_reference=True)


@pytest.mark.parametrize('damage', ['truncated', 'zeroed', 'garbage'])
def test_damaged_checkpoint_is_detected_and_named(reference: dict, tmp_path: Path,
                                                  damage: str) -> None:
    path = tmp_path / 'last.pt'
    torch.save(reference, path)
    raw = bytearray(path.read_bytes())
    if damage == 'truncated':
        raw = raw[:len(raw) * 2 // 3]
    elif damage == 'zeroed':  # the zip directory at the end of the file
        raw[-200:] = bytes(200)
    else:
        raw = bytearray(b'\x00garbage' * 100)
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=str(path)) as info:
        load_checkpoint(path)
    report.record('train', test=f'{damage} checkpoint',
                  message=str(info.value).replace(str(tmp_path), '<tmp>')[:200])


def test_bit_flips_in_tensor_data_are_detected(reference: dict, tmp_path: Path) -> None:
    """Regression: torch.load does not check the zip CRCs; flipped bytes loaded as weights."""
    path = tmp_path / 'last.pt'
    torch.save(reference, path)
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    for i in range(mid, mid + 16):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f'{path}.*CRC-32 mismatch in member') as info:
        state = load_checkpoint(path)
        assert _same(state['model'], reference['model'])  # not reached when detected
    prev = previous_path(path)
    torch.save(reference, prev)  # the fallback is intact: a resume uses it, naming the problem
    state, used, problems = load_latest([path, prev])
    assert used == prev and _same(state['model'], reference['model'])
    assert len(problems) == 1 and str(path) in problems[0] and 'CRC-32' in problems[0]
    report.record('train', test='16 flipped bytes inside tensor data',
                  message=str(info.value).replace(str(tmp_path), '<tmp>')[:200])
