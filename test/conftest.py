"""Shared pytest fixtures: where the shared data sets live and small synthetic images."""
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The shared data sets (never committed): ``../shared/data`` from the repository root, or
#: ``$SFDFUSE_DATA`` when set.
DATA_ROOT = Path(os.environ.get('SFDFUSE_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture(scope='session')
def data_root() -> Path:
    """Root of the shared data sets; fails (never skips) with the path it looked at."""
    if not (DATA_ROOT / 'ivf').is_dir():
        pytest.fail(f'shared data not found: looked for {DATA_ROOT / "ivf"} '
                    '(set SFDFUSE_DATA to the folder that holds ivf/ and mif/)')
    return DATA_ROOT


@pytest.fixture(scope='session')
def tno_dir(data_root: Path) -> Path:
    """Return the 25-pair TNO evaluation set (``ir/`` and ``vi/``)."""
    return data_root / 'ivf' / 'test' / 'TNO'


@pytest.fixture
def rng() -> np.random.Generator:
    """Return a seeded random generator, so failures reproduce."""
    return np.random.default_rng(1234)
