"""The package's layering: the core never imports the ROS side, and has no import circle."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / 'sfdfuse_core'


def _imported_names(path: Path) -> list:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_core_source_never_imports_the_ros_side() -> None:
    offenders = [f'{path.relative_to(CORE.parent)}: {name}'
                 for path in sorted(CORE.rglob('*.py')) for name in _imported_names(path)
                 if name == 'sfdfuse_ros' or name.startswith('sfdfuse_ros.')]
    assert not offenders, offenders


@pytest.mark.parametrize('first', ['sfdfuse_core.weights', 'sfdfuse_core.fusion',
                                   'sfdfuse_core.inference.engine', 'sfdfuse_core.model'])
def test_no_import_circle(first: str) -> None:
    """Each of the modules that used to import each other loads first in a fresh interpreter."""
    code = (f'import {first}, sys; import sfdfuse_core.fusion, sfdfuse_core.cli; '
            "print(any(m.startswith('sfdfuse_ros') for m in sys.modules))")
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == 'False'
