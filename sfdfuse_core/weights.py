"""Saving and loading SFDFuse weights files, with errors that say what is wrong.

A weights file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file
(``.safetensors``) holding the model's state dict. Its string metadata describes the model, so
that the network can be rebuilt from the file alone:

``format``
    ``"pt"`` (the safetensors convention for PyTorch tensors).
``sfdfuse.format_version``
    version of this layout (:data:`FORMAT_VERSION`); newer files are refused.
``sfdfuse.network``
    which network the file holds: a name of :data:`sfdfuse_core.model.registry.NETWORKS`
    (``sfdfuse``, ``sfdfuse-lite``); files without it (written before the compact network
    existed) hold ``sfdfuse``.
``sfdfuse.config``
    JSON of that network's config (:meth:`sfdfuse_core.config.SFDFuseConfig.to_dict` or
    :meth:`sfdfuse_core.config.SFDFuseLiteConfig.to_dict`).
``sfdfuse.metadata``
    JSON object of free-form information (training data, steps, metrics, ...).
``sfdfuse.core_version``
    the ``sfdfuse_core`` version that wrote the file.

:func:`load_model` also reads a training checkpoint (``.pt`` / ``.pth``: a ``torch.save`` dict with
the keys ``'model'`` (state dict), ``'config'`` (config dict) and ``'network'`` (name; absent
in old checkpoints: ``sfdfuse``), with ``weights_only=True``.

Where a file is expected, a shipped network can also be named instead (``sfdfuse-lite``,
``sfdfuse``: :func:`resolve_weights`); no file at all means the default network of the device
(:func:`default_network`): the compact network on the CPU, the published one on a GPU once its
trained weights ship.
Every problem (missing, truncated or corrupt file, foreign file, keys or shapes that do not match
the config) raises :class:`WeightsError` naming the file. A checkpoint's zip CRCs are verified
before it is loaded (``torch.load`` does not); safetensors files carry no checksum.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from sfdfuse_core import __version__
from sfdfuse_core.device import resolve_device
from sfdfuse_core.model.registry import (DEFAULT_NETWORK, NETWORKS, NetworkConfig, build_model,
                                         config_for, network_of, network_spec,
                                         shipped_weights_path)
from sfdfuse_core.fsutil import fsync_dir, zip_problem

__all__ = ['FORMAT_VERSION', 'WeightsError', 'WeightsNotFoundError', 'default_network',
           'default_weights_path', 'resolve_weights', 'load_model', 'read_weights_info',
           'save_weights']

#: Version of the metadata layout written by :func:`save_weights`.
FORMAT_VERSION = 1
#: Suffixes read as safetensors weights files.
SAFETENSORS_SUFFIXES = ('.safetensors',)
#: Suffixes read as training checkpoints (``torch.save`` dicts).
CHECKPOINT_SUFFIXES = ('.pt', '.pth')

_KEY_FORMAT_VERSION = 'sfdfuse.format_version'
_KEY_CONFIG = 'sfdfuse.config'
_KEY_NETWORK = 'sfdfuse.network'
_KEY_METADATA = 'sfdfuse.metadata'
_KEY_CORE_VERSION = 'sfdfuse.core_version'
# safetensors refuses headers above 100 MB; a larger length means a foreign or damaged file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {'BOOL': 1, 'U8': 1, 'I8': 1, 'F8_E4M3': 1, 'F8_E5M2': 1, 'I16': 2, 'U16': 2,
                'F16': 2, 'BF16': 2, 'I32': 4, 'U32': 4, 'F32': 4, 'I64': 8, 'U64': 8, 'F64': 8}
_LIST_LIMIT = 6

PathLike = Union[str, os.PathLike]


class WeightsError(RuntimeError):
    """A weights file is missing, truncated, corrupt, foreign, or does not fit its model."""


class WeightsNotFoundError(WeightsError):
    """The weights file does not exist (e.g. the shipped weights are not installed yet)."""


def default_network(device: Union[str, torch.device, None] = None) -> str:
    """Name the network a device runs when no weights are given.

    On a GPU the published network, when its trained weights are installed
    (``sfdfuse_ivf.safetensors``); everywhere else the compact one (``sfdfuse-lite``), which
    fuses at camera rate on a CPU.

    :param device: ``'cpu'``, ``'cuda'``, ``'auto'``, a ``torch.device`` or ``None`` (``'auto'``).
    :return: a network name.
    :raises ValueError: an unknown or unavailable device.
    """
    dev = resolve_device('auto' if device is None else device)
    if dev.type == 'cuda' and shipped_weights_path('sfdfuse').is_file():
        return 'sfdfuse'
    return 'sfdfuse-lite'


def default_weights_path(device: Union[str, torch.device, None] = None) -> Path:
    """Return the shipped weights file used when none is given (see :func:`default_network`).

    :param device: the device the model will run on (``None``: ``'auto'``).
    :return: the path inside the installed package (``sfdfuse_core/weights/``).
    """
    return shipped_weights_path(default_network(device))


def resolve_weights(weights: Optional[PathLike] = None,
                    device: Union[str, torch.device, None] = None) -> Path:
    """Turn what a user gave as weights into a file path.

    :param weights: a file path; a network name (``sfdfuse-lite``, ``sfdfuse``: its shipped
        file); or ``None`` / ``''`` (the device's default, :func:`default_weights_path`).
    :param device: the device the model will run on (``None``: ``'auto'``).
    :return: the path (it may not exist; :func:`load_model` says so clearly).
    """
    if weights is None or (isinstance(weights, str) and not weights.strip()):
        return default_weights_path(device)
    name = str(weights).strip()
    if name in NETWORKS:
        return shipped_weights_path(name)
    return Path(weights)


def _short_list(items: list) -> str:
    shown = ', '.join(str(item) for item in items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f'[{shown}{f", ... {more} more" if more > 0 else ""}] ({len(items)})'


def _config_from(network: str, config: Union[NetworkConfig, Mapping[str, Any]],
                 where: str) -> NetworkConfig:
    if isinstance(config, Mapping):
        # a key the file does not have was added after it was written: the structure the file
        # holds is the one from before that key existed, not today's default
        absent = getattr(network_spec(network).config_class, 'ABSENT_KEY_VALUES', {})
        config = {**{k: v for k, v in absent.items() if k not in config}, **config}
    try:
        return config_for(network, config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f'{where}: invalid {network} model config: {exc}') from exc


def _network_from(value: Any, where: str) -> str:
    if value is None:
        return DEFAULT_NETWORK
    if not isinstance(value, str) or value not in NETWORKS:
        raise WeightsError(f'{where}: unknown network {value!r} (known: '
                           f'{", ".join(sorted(NETWORKS))}); the file may come from a newer '
                           'sfdfuse_ros')
    return value


def save_weights(model: nn.Module, path: PathLike,
                 config: Optional[Union[NetworkConfig, Mapping[str, Any]]] = None,
                 metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Save a model's state dict and config as a safetensors weights file, atomically.

    The file is written to a temporary file in the same folder, flushed to disk and renamed over
    ``path``, so a reader never sees half a file. Save the model *before*
    :meth:`~sfdfuse_core.model.SFDFuse.fold_deconv` (a folded model has other keys).

    :param model: the network; its ``state_dict()`` is saved (tensors copied to CPU).
    :param path: destination, ending in ``.safetensors``; missing folders are created.
    :param config: the config the model was built from (the network's config or its dict); when
        ``None``, ``model.config`` is used.
    :param metadata: free-form JSON-serialisable information (training data, steps, metrics).
    :return: the written path.
    :raises TypeError: ``model`` is not an ``nn.Module`` or ``metadata`` is not JSON-serialisable.
    :raises ValueError: ``path`` has another suffix; ``config`` is missing, invalid, or differs
        from ``model.config``; or the state dict does not fit the network ``config`` describes
        (e.g. a folded model), so the file could not be loaded back.
    :raises OSError: the file cannot be written.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    path = Path(path)
    if path.suffix not in SAFETENSORS_SUFFIXES:
        raise ValueError(f'weights files end in .safetensors, got {str(path)!r}')
    if config is None:
        config = getattr(model, 'config', None)
        if config is None:
            raise ValueError('no config given and the model has no .config attribute')
    try:
        network = network_of(model)
    except TypeError:
        network = network_of(config) if not isinstance(config, Mapping) else DEFAULT_NETWORK
    try:
        cfg = _config_from(network, config, str(path))
    except WeightsError as exc:
        raise ValueError(str(exc)) from exc
    model_cfg = getattr(model, 'config', None)
    if model_cfg is not None and model_cfg != cfg:
        raise ValueError(f'config differs from the model\'s own config: {cfg} vs {model_cfg}')
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f'metadata must be a mapping, got {type(metadata).__name__}')
    try:
        metadata_json = json.dumps(dict(metadata or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f'metadata must be JSON-serialisable: {exc}') from exc
    header = {
        'format': 'pt',
        _KEY_FORMAT_VERSION: str(FORMAT_VERSION),
        _KEY_NETWORK: network,
        _KEY_CONFIG: json.dumps(cfg.to_dict(), sort_keys=True),
        _KEY_METADATA: metadata_json,
        _KEY_CORE_VERSION: __version__,
    }
    # clone() breaks storage sharing (tied weights), which safetensors refuses to serialise.
    tensors = {name: tensor.detach().to('cpu').contiguous().clone()
               for name, tensor in model.state_dict().items()}
    try:
        _check_state_matches(path, tensors, build_model(cfg), 'the given config')
    except WeightsError as exc:
        raise ValueError(f'refusing to write weights that could not be loaded back: {exc} '
                         '(save before fold_deconv())') from exc
    from safetensors.torch import save as safetensors_save
    payload = safetensors_save(tensors, metadata=header)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    fsync_dir(path.parent)
    return path


def _check_exists(path: Path) -> None:
    if not path.exists():
        for spec in NETWORKS.values():
            if path == shipped_weights_path(spec.name):
                raise WeightsNotFoundError(
                    f'weights file not found: {path} (the shipped {spec.name} weights are not '
                    'installed: train them with `sfdfuse train` (training/README.md) or give '
                    'another weights file)')
        raise WeightsNotFoundError(f'weights file not found: {path}')
    if not path.is_file():
        raise WeightsError(f'not a weights file (not a regular file): {path}')


def _parse_safetensors_header(path: Path, data: bytes) -> Dict[str, Any]:
    """Check the safetensors framing of ``data`` and return its JSON header."""
    if len(data) < 8:
        raise WeightsError(f'{path}: truncated or not a safetensors file: {len(data)} bytes, '
                           'shorter than the 8-byte header length')
    (header_len,) = struct.unpack('<Q', data[:8])
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise WeightsError(f'{path}: truncated or not a safetensors file: header length '
                           f'{header_len} bytes, file size {len(data)} bytes')
    try:
        header = json.loads(data[8:8 + header_len].decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f'{path}: corrupt safetensors header (not valid JSON: {exc})') from exc
    if not isinstance(header, dict):
        raise WeightsError(f'{path}: corrupt safetensors header (expected a JSON object, got '
                           f'{type(header).__name__})')
    data_len = 0
    for name, entry in header.items():
        if name == '__metadata__':
            continue
        try:
            start, end = entry['data_offsets']
            numel = 1
            for size in entry['shape']:
                numel *= int(size)
            itemsize = _DTYPE_BYTES.get(entry['dtype'])
        except (TypeError, KeyError, ValueError) as exc:
            raise WeightsError(f'{path}: corrupt safetensors header entry for {name!r}: '
                               f'{entry!r}') from exc
        if itemsize is not None and end - start != numel * itemsize:
            raise WeightsError(f'{path}: corrupt safetensors header: tensor {name!r} of shape '
                               f'{entry["shape"]} ({entry["dtype"]}) spans {end - start} bytes')
        data_len = max(data_len, int(end))
    expected = 8 + header_len + data_len
    if len(data) < expected:
        raise WeightsError(f'{path}: truncated safetensors file: {len(data)} bytes, the header '
                           f'describes {expected} bytes')
    if len(data) > expected:
        raise WeightsError(f'{path}: corrupt safetensors file: {len(data) - expected} unexpected '
                           f'bytes after the {expected} bytes the header describes')
    return header


def _read_safetensors(path: Path, with_tensors: bool
                      ) -> Tuple[Optional[Dict[str, torch.Tensor]], Dict[str, Any]]:
    """Read a safetensors weights file: ``(state dict or None, info)``."""
    data = path.read_bytes()
    header = _parse_safetensors_header(path, data)
    meta = header.get('__metadata__') or {}
    if not isinstance(meta, dict):
        raise WeightsError(f'{path}: corrupt safetensors metadata (expected an object)')
    if _KEY_CONFIG not in meta:
        raise WeightsError(f'{path}: not an SFDFuse weights file: its metadata has no '
                           f'{_KEY_CONFIG!r} entry (found keys {sorted(meta)})')
    try:
        version = int(meta.get(_KEY_FORMAT_VERSION, ''))
    except ValueError as exc:
        raise WeightsError(f'{path}: bad {_KEY_FORMAT_VERSION!r} in metadata: '
                           f'{meta.get(_KEY_FORMAT_VERSION)!r}') from exc
    if version > FORMAT_VERSION:
        raise WeightsError(f'{path}: weights format version {version} is newer than this '
                           f'sfdfuse_core understands ({FORMAT_VERSION}); update sfdfuse_ros')
    try:
        config = json.loads(meta[_KEY_CONFIG])
        extra = json.loads(meta.get(_KEY_METADATA, '{}'))
    except ValueError as exc:
        raise WeightsError(f'{path}: corrupt metadata (not valid JSON): {exc}') from exc
    if not isinstance(config, dict):
        raise WeightsError(f'{path}: model config in metadata is not a JSON object: {config!r}')
    entries = {k: v for k, v in header.items() if k != '__metadata__'}
    network = _network_from(meta.get(_KEY_NETWORK), str(path))
    info = {
        'path': str(path),
        'kind': 'safetensors',
        'network': network,
        'format_version': version,
        'core_version': meta.get(_KEY_CORE_VERSION),
        'config': config,
        'metadata': extra if isinstance(extra, dict) else {'value': extra},
        'tensors': len(entries),
        'parameters': sum(_numel(entry['shape']) for entry in entries.values()),
        'size_bytes': len(data),
    }
    if not with_tensors:
        return None, info
    from safetensors.torch import load as safetensors_load
    try:
        state = safetensors_load(data)
    except Exception as exc:  # safetensors raises its own error type for every framing problem
        raise WeightsError(f'{path}: corrupt safetensors file: {exc}') from exc
    return state, info


def _numel(shape: Any) -> int:
    numel = 1
    for size in shape:
        numel *= int(size)
    return numel


def _read_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a training checkpoint (``torch.save`` dict with ``'model'`` and ``'config'``).

    The archive's CRCs are checked first: ``torch.load`` would load altered tensor data silently.
    """
    problem = zip_problem(path)
    if problem is not None:
        raise WeightsError(f'{path}: corrupt PyTorch checkpoint: {problem}')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise WeightsError(f'{path}: not a readable PyTorch checkpoint (truncated, corrupt, or '
                           f'holding objects other than tensors and plain data): {exc}') from exc
    if not isinstance(ckpt, dict) or 'model' not in ckpt or 'config' not in ckpt:
        got = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"{path}: a checkpoint must be a dict with keys 'model' and "
                           f"'config', got {got}")
    state, config = ckpt['model'], ckpt['config']
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{path}: checkpoint 'model' must map names to tensors")
    if not isinstance(config, Mapping):
        raise WeightsError(f"{path}: checkpoint 'config' must be a dict, got "
                           f'{type(config).__name__}')
    extra = {k: v for k, v in ckpt.items()
             if k not in ('model', 'config') and isinstance(v, (str, int, float, bool))}
    if isinstance(ckpt.get('metadata'), Mapping):
        extra.update(ckpt['metadata'])
    network = ckpt.get('network')
    if network is None and isinstance(ckpt.get('train_config'), Mapping):
        network = ckpt['train_config'].get('network')
    network = _network_from(network, str(path))
    info = {
        'path': str(path),
        'kind': 'checkpoint',
        'network': network,
        'format_version': None,
        'core_version': None,
        'config': dict(config),
        'metadata': extra,
        'tensors': len(state),
        'parameters': sum(t.numel() for t in state.values()),
        'size_bytes': path.stat().st_size,
    }
    return dict(state), info


def _read(path: PathLike, with_tensors: bool
          ) -> Tuple[Optional[Dict[str, torch.Tensor]], Dict[str, Any]]:
    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path, with_tensors)
    if suffix in CHECKPOINT_SUFFIXES:
        return _read_checkpoint(path)
    raise WeightsError(f'{path}: unsupported weights file type {path.suffix!r}; expected '
                       f'{", ".join(SAFETENSORS_SUFFIXES + CHECKPOINT_SUFFIXES)}')


def read_weights_info(path: PathLike) -> Dict[str, Any]:
    """Describe a weights file or checkpoint without building the model.

    :param path: ``.safetensors`` weights file or ``.pt``/``.pth`` training checkpoint.
    :return: ``{'path', 'kind' ('safetensors' | 'checkpoint'), 'network', 'format_version',
        'core_version',
        'config' (dict), 'metadata' (dict), 'tensors' (count), 'parameters' (element count),
        'size_bytes'}``.
    :raises WeightsError: the file is missing, truncated, corrupt or not an SFDFuse file.
    """
    return _read(resolve_weights(path, 'cpu'), with_tensors=False)[1]


def _check_state_matches(path: Path, state: Mapping[str, torch.Tensor], model: nn.Module,
                         what: str = "the file's config") -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f'{name}: file {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}'
                  for name in sorted(set(state) & set(expected))
                  if tuple(state[name].shape) != tuple(expected[name].shape)]
    problems = []
    if missing:
        problems.append(f'missing keys {_short_list(missing)}')
    if unexpected:
        problems.append(f'unexpected keys {_short_list(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatch {_short_list(mismatched)}')
    if problems:
        raise WeightsError(f'{path}: weights do not match the model built from {what}: '
                           f'{"; ".join(problems)}')


def load_model(path: Optional[PathLike] = None,
               device: Union[str, torch.device] = 'cpu') -> nn.Module:
    """Rebuild a network from a weights file (or training checkpoint) alone.

    The file says which network it holds (``sfdfuse`` or ``sfdfuse-lite``) and its config.

    :param path: ``.safetensors`` weights file or ``.pt``/``.pth`` checkpoint; a shipped
        network's name (``sfdfuse-lite``, ``sfdfuse``); ``None``: the device's default
        (:func:`default_weights_path`).
    :param device: where to put the model (``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'auto'`` or a
        ``torch.device``).
    :return: the model in eval mode, not folded (call ``fold_deconv()`` for inference).
    :raises WeightsNotFoundError: the file does not exist.
    :raises WeightsError: the file is truncated, corrupt, foreign, or does not match its config.
    """
    device = resolve_device(device)
    path = resolve_weights(path, device)
    state, info = _read(path, with_tensors=True)
    config = _config_from(info['network'], info['config'], str(path))
    model = build_model(config)
    _check_state_matches(path, state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        raise WeightsError(f'{path}: cannot load the state dict: {exc}') from exc
    model.weights_path = str(path)
    return model.to(device).eval()
