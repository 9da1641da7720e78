"""Tests of :mod:`sfdfuse_core.progress`: a bar on a terminal, a line every few seconds elsewhere.

Regression: ``sfdfuse prepare`` with its output in a file (CI, ``nohup``, ``ros2 launch``
logs) wrote a tqdm redraw with a carriage return for every pair, thousands per run.
"""
import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sfdfuse_core.progress import LineProgress, progress


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_a_line_every_interval_and_a_summary() -> None:
    out, clock = io.StringIO(), _Clock()
    bar = LineProgress(total=10_000, desc='pairs', unit='pair', file=out, interval=10.0,
                       clock=clock)
    for _ in range(10_000):  # 10 000 updates over 60 s of (fake) time
        clock.t += 0.006
        bar.update(1)
    bar.set_postfix(loss='0.1234')
    bar.close()
    bar.close()  # a second close writes nothing more
    text = out.getvalue()
    lines = text.splitlines()
    assert '\r' not in text
    assert 5 <= len(lines) <= 7, lines  # one per 10 s, plus the summary
    assert lines[0].startswith('pairs: ') and '%' in lines[0] and 'pair/s' in lines[0]
    assert 'left' in lines[0]
    assert lines[-1].startswith('pairs: done 10000/10000 pair in 1 min 00 s')
    assert 'loss=0.1234' in lines[-1]


def test_iteration_counts_and_an_early_stop_is_said() -> None:
    out = io.StringIO()
    items = list(range(5))
    seen = [x for x in progress(items, desc='fusing', file=out)]
    assert seen == items
    assert out.getvalue().strip().startswith('fusing: done 5/5 it in')
    out = io.StringIO()
    bar = progress(total=8, desc='fusing', unit='msg', file=out)
    bar.update(3)
    bar.close()
    assert 'fusing: stopped at 3/8 msg' in out.getvalue()


def test_a_terminal_gets_a_tqdm_bar_and_disable_writes_nothing() -> None:
    bar = progress(total=3, file=_Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    out = io.StringIO()
    quiet = progress(range(4), file=out, disable=True)
    assert list(quiet) == [0, 1, 2, 3] and out.getvalue() == ''


def test_prepare_into_a_pipe_writes_lines_not_carriage_returns(tmp_path: Path,
                                                               rng: np.random.Generator
                                                               ) -> None:
    """``sfdfuse prepare`` with stderr in a pipe: no carriage returns, a summary at the end."""
    ir_dir, vi_dir = tmp_path / 'ir', tmp_path / 'vi'
    ir_dir.mkdir()
    vi_dir.mkdir()
    for k in range(30):
        cv2.imwrite(str(ir_dir / f'{k:03d}.png'), rng.integers(0, 255, (140, 140), np.uint8))
        cv2.imwrite(str(vi_dir / f'{k:03d}.png'), rng.integers(0, 255, (140, 140, 3), np.uint8))
    proc = subprocess.run(
        [sys.executable, '-m', 'sfdfuse_core', 'prepare', '--ir', str(ir_dir), '--vi',
         str(vi_dir), '--out', str(tmp_path / 'p.h5'), '--compression', 'none'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '\r' not in proc.stderr, proc.stderr
    progress_lines = [line for line in proc.stderr.splitlines() if line.startswith('pairs:')]
    assert progress_lines and progress_lines[-1].startswith('pairs: done 30/30 pair'), \
        proc.stderr
    assert len(progress_lines) <= 3, proc.stderr
