"""A PyTorch dataset over the HDF5 patch file written by :mod:`sfdfuse_core.data.prepare`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ['PatchDatasetError', 'H5PatchDataset']


class PatchDatasetError(ValueError):
    """The patch file is missing or is not laid out as :mod:`~sfdfuse_core.data.prepare` writes."""


class H5PatchDataset(Dataset):
    """Infrared / visible patch pairs read lazily from an HDF5 file.

    The file is opened on first access in each process (each ``DataLoader`` worker opens its
    own handle; an ``h5py`` handle must not cross a ``fork``).

    Items are ``(vi, ir)``: ``float32`` tensors of shape ``(1, P, P)`` in ``[0, 1]``.

    :param path: the ``.h5`` file.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise PatchDatasetError(f'patch file not found: {self.path}')
        try:
            with h5py.File(self.path, 'r') as h5:
                missing = [k for k in ('ir', 'vi') if k not in h5]
                if missing:
                    raise PatchDatasetError(f'{self.path} has no dataset(s) {missing}; '
                                            f'found {sorted(h5.keys())}')
                ir_shape, vi_shape = h5['ir'].shape, h5['vi'].shape
                self.attrs: Dict[str, Any] = {k: _plain(v) for k, v in h5.attrs.items()}
        except OSError as exc:
            raise PatchDatasetError(f'cannot read patch file {self.path}: {exc}') from exc
        if ir_shape != vi_shape or len(ir_shape) != 4 or ir_shape[1] != 1:
            raise PatchDatasetError(f'expected ir and vi of one shape (N, 1, P, P) in '
                                    f'{self.path}, got {ir_shape} and {vi_shape}')
        self._len = int(ir_shape[0])
        self.patch_shape = tuple(int(s) for s in ir_shape[1:])
        self._h5: Optional[Any] = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        """:return: the number of patch pairs."""
        return self._len

    def _file(self) -> Any:
        import h5py

        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, 'r')
            self._pid = os.getpid()
        return self._h5

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Read one pair.

        :param index: ``0 <= index < len(self)``.
        :return: ``(vi, ir)``, each ``(1, P, P)`` ``float32`` in ``[0, 1]``.
        """
        if not -self._len <= index < self._len:
            raise IndexError(f'index {index} out of range for {self._len} patches')
        h5 = self._file()
        vi = torch.from_numpy(np.asarray(h5['vi'][index], dtype=np.float32)) / 255.0
        ir = torch.from_numpy(np.asarray(h5['ir'][index], dtype=np.float32)) / 255.0
        return vi, ir

    def __getstate__(self) -> Dict[str, Any]:
        """Pickle without the open file handle (for spawned workers)."""
        state = self.__dict__.copy()
        state['_h5'] = None
        state['_pid'] = None
        return state

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next access)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode()
    return value
