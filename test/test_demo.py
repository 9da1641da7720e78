"""End-to-end test of ``sfdfuse demo``: scene -> bag -> the real fuse_node -> PNGs + contact sheet.

The demo runs as a child process of this venv (as ``scripts/demo.sh`` runs it) on a tiny
generated scene with the ``mean`` method, so it finishes in seconds on two CPU cores.
"""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfdfuse_core import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_demo(args: list, env: dict, timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sfdfuse_core', 'demo', *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ros_env():
    pytest.importorskip('rclpy')
    from rosutil import ros_test_env
    return ros_test_env()


@pytest.mark.ros
@pytest.mark.slow
def test_demo_end_to_end_writes_frames_and_contact_sheet(tmp_path, ros_env):
    out = tmp_path / 'demo'
    res = _run_demo(['--method', 'mean', '--frames', '24', '--size', '64x48', '--out', str(out),
                     '--columns', '4'], ros_env)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['method'] == 'mean'
    assert summary['rgb_in'] == 24 and summary['thermal_in'] == 7
    assert summary['pairs_expected'] == 7
    assert 1 <= summary['fused'] <= 7
    assert summary['fused'] + summary['dropped'] == summary['pairs_expected']
    assert summary['latency_ms_mean'] > 0
    pngs = sorted((out / 'fused').glob('fused_*.png'))
    assert len(pngs) == summary['fused']
    frame = cv2.imread(str(pngs[0]))
    assert frame.shape == (48, 64, 3)
    sheet = cv2.imread(str(out / 'contact_sheet.png'))
    assert sheet is not None
    assert sheet.shape[0] == 3 * 48 + 2 * 4          # rows: thermal, RGB, fused
    assert sheet.shape[1] > min(4, summary['fused']) * 64
    assert str(out) in res.stdout and 'fused' in res.stdout and 'dropped' in res.stdout
    assert (out / 'scene_bag' / 'metadata.yaml').is_file()
    assert 'fusing' in (out / 'node.log').read_text()


@pytest.mark.ros
def test_demo_reports_a_node_that_cannot_start(tmp_path, ros_env):
    res = _run_demo(['--method', 'sfdfuse', '--weights', str(tmp_path / 'missing.safetensors'),
                     '--frames', '6', '--size', '32x24', '--out', str(tmp_path / 'o')],
                    ros_env)
    assert res.returncode == 1
    assert 'fuse_node exited' in res.stderr
    assert 'missing.safetensors' in res.stderr  # the node's own log line is shown


def test_demo_bag_only_from_image_folders(tmp_path, capsys):
    for side in ('ir', 'vi'):
        (tmp_path / side).mkdir()
    rng = np.random.default_rng(0)
    for name in ('p1.png', 'p2.png'):
        cv2.imwrite(str(tmp_path / 'ir' / name), rng.integers(0, 255, (50, 70), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / 'vi' / name),
                    rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    out = tmp_path / 'o'
    args = ['demo', '--bag-only', '--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'),
            '--frames', '12', '--out', str(out)]
    assert cli.main(args) == 0
    assert '4 thermal, 12 RGB' in capsys.readouterr().out
    assert cli.main(args) == 2  # never overwrites
    assert 'exists' in capsys.readouterr().err
    assert cli.main(['demo', '--bag-only', '--ir', str(tmp_path / 'ir'), '--out',
                     str(tmp_path / 'x')]) == 2


def test_demo_script_runs_setup_then_the_command():
    text = (REPO_ROOT / 'scripts' / 'demo.sh').read_text()
    assert 'scripts/setup_venv.sh' in text and 'sfdfuse" demo "$@"' in text
    assert subprocess.run(['bash', '-n', str(REPO_ROOT / 'scripts' / 'demo.sh')]).returncode == 0
