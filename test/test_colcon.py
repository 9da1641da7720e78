"""The install a ROS user gets: ``colcon build`` of a fresh copy, then the installed node.

A copy of the package (the files git would ship: tracked and untracked-but-not-ignored) is
built with colcon from PyPI (``colcon-common-extensions``, in the ``dev`` extra) in a temporary
workspace. The test checks what is installed, as ``ros2 run`` / ``ros2 launch`` and
``get_package_share_directory`` find it:

* ``share/sfdfuse_ros/package.xml``, ``launch/``, ``config/``;
* the ament index marker ``share/ament_index/resource_index/packages/sfdfuse_ros``;
* the executable ``lib/sfdfuse_ros/fuse_node``;
* every ``sfdfuse_core/weights/*.safetensors`` of the source tree inside the installed
  ``sfdfuse_core``, and at least one (the shipped weights);

then sources ``install/setup.bash``, starts the installed ``fuse_node`` from that environment
(its modules come from the install, not from this checkout) and receives a fused frame over DDS.
``ros2 launch`` cannot be installed from PyPI; the launch file keeps its own test.
"""
from __future__ import annotations

from pathlib import Path
import shutil
import subprocess
import sys

import pytest
from rosutil import (FixtureNode, PairPublisher, read_log, REPO_ROOT, ros_test_env, start_node,
                     stop_process, write_params)
from sensor_msgs.msg import Image

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PACKAGE = 'sfdfuse_ros'
#: Start-up of a node process (imports torch) on a loaded 2-core machine.
START_TIMEOUT = 60.0


def _colcon() -> Path:
    colcon = Path(sys.executable).parent / 'colcon'
    if not colcon.is_file():
        pytest.fail(f'colcon not found at {colcon}: install the dev tools '
                    "(pip install -e '.[dev]', which brings colcon-common-extensions)")
    return colcon


def _shipped_files() -> list[Path]:
    """Files git would ship (tracked, or untracked and not ignored), relative to the root."""
    proc = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                          cwd=REPO_ROOT, capture_output=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f'cannot list the files of {REPO_ROOT}: {proc.stderr.decode()}')
    names = [Path(n) for n in proc.stdout.decode().split('\0') if n]
    return [n for n in names if (REPO_ROOT / n).is_file()]


def _sourced_env(setup: Path, base: dict[str, str]) -> dict[str, str]:
    """Return the environment after ``source setup.bash`` (starting from ``base``)."""
    proc = subprocess.run(['bash', '-c', f'source "{setup}" && env -0'], env=base,
                          capture_output=True, timeout=60, check=True)
    pairs = (item.split('=', 1) for item in proc.stdout.decode().split('\0') if '=' in item)
    return dict(pairs)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a fresh copy of the package with colcon; return the workspace."""
    ws = tmp_path_factory.mktemp('colcon_ws')
    src = ws / 'src' / PACKAGE
    for name in _shipped_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, src / name)
    proc = subprocess.run([str(_colcon()), 'build', '--packages-select', PACKAGE,
                           '--event-handlers', 'console_direct+'], cwd=ws,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return ws


def test_colcon_build_installs_what_ros_tools_look_for(workspace: Path) -> None:
    prefix = workspace / 'install' / PACKAGE
    share = prefix / 'share' / PACKAGE
    assert (share / 'package.xml').is_file()
    assert (share / 'launch' / 'fuse.launch.py').is_file()
    assert {p.name for p in (share / 'config').iterdir()} >= {'fuse.yaml', 'fastdds_profile.xml'}
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / PACKAGE).is_file()
    assert (prefix / 'lib' / PACKAGE / 'fuse_node').is_file()
    site = next((prefix / 'lib').glob('python3*/site-packages'))
    assert (site / 'sfdfuse_core' / 'sync.py').is_file() and (site / PACKAGE).is_dir()
    weights = sorted(p.name for p in (REPO_ROOT / 'sfdfuse_core' / 'weights').glob(
        '*.safetensors')) if (REPO_ROOT / 'sfdfuse_core' / 'weights').is_dir() else []
    installed = {p.name for p in (site / 'sfdfuse_core' / 'weights').glob('*.safetensors')}
    missing = [name for name in weights if name not in installed]
    assert not missing, f'weights of the source tree not installed: {missing}'
    assert weights, ('no shipped weights: sfdfuse_core/weights/*.safetensors is empty in '
                     f'{REPO_ROOT} (the install then has no network to run by default)')


def test_installed_node_from_the_sourced_workspace_fuses_over_dds(
        workspace: Path, tmp_path: Path) -> None:
    env = _sourced_env(workspace / 'install' / 'setup.bash', ros_test_env())
    prefix = workspace / 'install' / PACKAGE
    assert str(prefix) in env.get('AMENT_PREFIX_PATH', '').split(':')
    probe = subprocess.run(
        [sys.executable, '-c', 'import sfdfuse_core, sfdfuse_ros.fuse_node; '
         'from ament_index_python.packages import get_package_share_directory as share; '
         'print(sfdfuse_ros.fuse_node.__file__); print(sfdfuse_core.__file__); '
         f'print(share({PACKAGE!r}))'],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    for line in probe.stdout.split():  # the modules and the share folder of the install
        assert Path(line).is_relative_to(prefix), (line, prefix)
    params = write_params(tmp_path / 'params.yaml', {'method': 'mean', 'device': 'cpu'})
    log = tmp_path / 'node.log'
    proc = start_node(['--params-file', params], env, log,
                      executable=prefix / 'lib' / PACKAGE / 'fuse_node')
    fx = FixtureNode('colcon_fixture')
    try:
        fused = fx.collect(Image, 'fused/image')
        pub = PairPublisher(fx)
        if not pub.wait_matched(START_TIMEOUT):
            pytest.fail(f'the installed fuse_node did not subscribe in {START_TIMEOUT} s; '
                        f'its log:\n{read_log(log)}')
        pub.run(20.0, until=lambda: len(fused) >= 1)
        assert fused, read_log(log)
        assert (fused[0].height, fused[0].width) == pub.rgb_hw
    finally:
        fx.close()
        assert stop_process(proc) == 0, read_log(log)
