"""Style checks of every Python file of the package, as ament's linters run them.

On a ROS 2 machine ``colcon test`` runs ament_flake8 / ament_pep257; in a venv without ROS these
tests run the same tools (flake8 with line length 99, pydocstyle with ament's pep257 convention).
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ['sfdfuse_core', 'sfdfuse_ros', 'launch', 'test', 'setup.py']
# ament_pep257's default 'ament' convention: pydocstyle's pep257 convention without the checks
# for missing docstrings of public objects.
PEP257_IGNORE = 'D100,D101,D102,D103,D104,D105,D106,D107'


def _run(tool_args):
    proc = subprocess.run([sys.executable, '-m', *tool_args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.mark.linter
def test_flake8():
    """Every file passes flake8 with the package's settings (setup.cfg, line length 99)."""
    rc, out = _run(['flake8', *TARGETS])
    assert rc == 0, f'flake8 found problems:\n{out}'


@pytest.mark.linter
def test_pep257():
    """Every docstring follows ament's pep257 convention."""
    files = [str(p.relative_to(ROOT)) for t in TARGETS for p in
             ([ROOT / t] if t.endswith('.py') else sorted((ROOT / t).rglob('*.py')))]
    rc, out = _run(['pydocstyle', '--convention=pep257', f'--add-ignore={PEP257_IGNORE}', *files])
    assert rc == 0, f'pydocstyle found problems:\n{out}'
