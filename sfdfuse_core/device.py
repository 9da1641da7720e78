"""Device names -> ``torch.device``, checked (one place for every entry point)."""
from __future__ import annotations

from typing import Union

import torch

__all__ = ['resolve_device']


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """Turn a device name into a ``torch.device``, checking that it exists.

    :param device: ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'``
        or a ``torch.device``.
    :return: the device.
    :raises TypeError: ``device`` is neither a string nor a ``torch.device``.
    :raises ValueError: the name is unknown, or CUDA is asked for but not available.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        name = device.strip().lower()
        if name == 'auto':
            return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or "
                             "'cuda:N'") from exc
    else:
        raise TypeError(f'device must be a string or torch.device, got {type(device).__name__}')
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f"unsupported device {str(dev)!r}; expected 'auto', 'cpu', 'cuda' or "
                         "'cuda:N'")
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r} requested but CUDA is not available (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda}); use 'cpu' "
                             "or 'auto'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f'device {str(dev)!r} requested but only {count} CUDA device(s) '
                             'are visible')
    return dev
