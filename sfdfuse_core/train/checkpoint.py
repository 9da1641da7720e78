"""Self-describing training checkpoints: atomic saves, validated loads, fallback on corruption.

A checkpoint is a ``torch.save`` dict of tensors and plain data (it loads with
``weights_only=True``) with the keys:

``model``            state dict of the bare network (no ``module.`` / ``_orig_mod.`` prefixes)
``config``           :meth:`SFDFuseConfig.to_dict` of the network, so that
                     :func:`sfdfuse_core.weights.load_model` rebuilds it from the file alone
``train_config``     the whole resolved training configuration (nested dicts)
``optimizer``        ``Adam.state_dict()``
``scheduler``        ``LambdaLR.state_dict()``
``epoch``, ``batch`` where to continue: epoch index (over both phases) and batch within it
``step``             optimiser steps done
``phase``            1 or 2, the phase of ``epoch``
``metrics``          history of losses (per logged step and per epoch) and running sums
``rng``              torch CPU / CUDA, NumPy and Python random states
``finished``         whether the schedule is complete
``format_version``   :data:`FORMAT_VERSION`
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from sfdfuse_core.fsutil import fsync_dir, zip_problem

__all__ = ['CheckpointError', 'FORMAT_VERSION', 'REQUIRED_KEYS', 'save_checkpoint',
           'load_checkpoint', 'load_latest', 'rng_state', 'set_rng_state']

#: Version of the checkpoint layout written here.
FORMAT_VERSION = 1
#: Keys every checkpoint holds.
REQUIRED_KEYS = ('model', 'optimizer', 'scheduler', 'config', 'train_config', 'epoch', 'batch',
                 'step', 'phase', 'metrics', 'rng', 'format_version')

PathLike = Union[str, Path]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or not a training checkpoint of this format."""


def save_checkpoint(state: Dict[str, Any], path: PathLike, keep_previous: bool = False) -> Path:
    """Write a checkpoint atomically: temporary file, flush, fsync, ``os.replace``.

    A reader (or a resumed run after a kill at any moment) sees the old file or the new one,
    never half of one.

    :param state: the checkpoint dict (see the module docstring).
    :param path: destination.
    :param keep_previous: first move an existing ``path`` to ``<stem>.prev<suffix>``, the
        fallback of :func:`load_latest`.
    :return: ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        with open(tmp, 'wb') as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def previous_path(path: PathLike) -> Path:
    """Return the fallback kept beside ``path`` (``last.pt`` -> ``last.prev.pt``).

    :param path: a checkpoint path.
    :return: the path of its previous version.
    """
    path = Path(path)
    return path.with_name(f'{path.stem}.prev{path.suffix}')


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Load and validate one checkpoint (on the CPU, ``weights_only=True``).

    The CRC-32 of every member of the archive is checked first (``torch.load`` does not), so
    flipped bytes in tensor data are refused instead of loading as other weights.

    :param path: the file.
    :return: the checkpoint dict.
    :raises CheckpointError: missing, truncated or corrupt file (naming the file and, for a CRC
        mismatch, the member), missing keys, or a newer format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint not found: {path}')
    problem = zip_problem(path)
    if problem is not None:
        raise CheckpointError(f'corrupt checkpoint {path} ({path.stat().st_size} bytes): '
                              f'{problem}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # RuntimeError, EOFError, UnpicklingError, ... from torch.load
        lines = str(exc).strip().splitlines() or ['']
        raise CheckpointError(f'corrupt or truncated checkpoint {path} '
                              f'({path.stat().st_size} bytes): {type(exc).__name__}: '
                              f'{lines[0][:160]}') from exc
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} is not a training checkpoint: holds a '
                              f'{type(state).__name__}, not a dict')
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f'{path} is not an sfdfuse training checkpoint: missing keys '
                              f'{missing} (has {sorted(map(str, state))})')
    version = state['format_version']
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f'{path} has checkpoint format {version!r}; this code reads '
                              f'up to {FORMAT_VERSION}')
    return state


def load_latest(candidates: Sequence[PathLike]
                ) -> Tuple[Optional[Dict[str, Any]], Path, List[str]]:
    """Load the first readable checkpoint of ``candidates`` (e.g. ``last.pt``, ``last.prev.pt``).

    :param candidates: paths in order of preference.
    :return: ``(state or None when none exists, its path, problems met)``; a problem names the
        file and what is wrong with it.
    :raises CheckpointError: files exist but none is readable (the message names each).
    """
    problems: List[str] = []
    existing = [Path(p) for p in candidates if Path(p).exists()]
    for path in existing:
        try:
            return load_checkpoint(path), path, problems
        except CheckpointError as exc:
            problems.append(str(exc))
    if existing:
        raise CheckpointError('no usable checkpoint: ' + '; '.join(problems))
    return None, Path(candidates[0]), problems


def rng_state() -> Dict[str, Any]:
    """Capture every random state the training loop touches (as tensors and plain data).

    :return: ``{'torch', 'cuda', 'numpy', 'python'}``.
    """
    np_state = np.random.get_state()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'name': str(np_state[0]),
                  'keys': torch.from_numpy(np_state[1].astype(np.int64)),
                  'pos': int(np_state[2]), 'has_gauss': int(np_state[3]),
                  'cached_gaussian': float(np_state[4])},
        'python': _to_lists(random.getstate()),
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the random states captured by :func:`rng_state`.

    :param state: as :func:`rng_state` returns.
    """
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda') or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npst = state.get('numpy')
    if npst:
        np.random.set_state((npst['name'], npst['keys'].numpy().astype(np.uint32), npst['pos'],
                             npst['has_gauss'], npst['cached_gaussian']))
    if state.get('python') is not None:
        random.setstate(_to_tuples(state['python']))


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value
