"""The typed configuration of one training run, read from YAML with command-line overrides.

Resolution order: the defaults below (the published SFDFuse recipe), then the YAML file, then
``--set key=value`` overrides (``model.dim=8``, ``loss.decomp=1.5``). Unknown keys and values of
the wrong type raise :class:`ConfigError`. The resolved configuration is written to
``config.yaml`` in the run folder and stored in every checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import yaml

from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.model.registry import NetworkConfig, config_for, network_of, network_spec
from sfdfuse_core.train.losses import LossWeights

__all__ = ['ConfigError', 'TrainConfig', 'RUNTIME_KEYS', 'load_config', 'save_config',
           'config_to_dict', 'config_from_dict', 'apply_overrides', 'changed_keys']


class ConfigError(ValueError):
    """A training configuration is invalid: unknown key, wrong type, or bad value."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on.

    Epochs are counted over both phases: epochs ``0 .. phase1_epochs - 1`` are phase I
    (reconstruction), the next ``phase2_epochs`` phase II (fusion).
    """

    #: HDF5 patch file(s) written by ``sfdfuse prepare``, comma-separated (required to train).
    data: str = ''
    #: Run folder: config.yaml, checkpoints, TensorBoard events, loss plot, final weights.
    out: str = 'runs/sfdfuse'
    #: Seed of the initialisation, the data order, the validation split and stochastic depth.
    seed: int = 0
    #: Epochs of phase I (reconstruction of both modalities).
    phase1_epochs: int = 30
    #: Epochs of phase II (fusion).
    phase2_epochs: int = 60
    #: Patches per optimiser step, summed over all processes.
    batch_size: int = 8
    #: Adam learning rate at the start of each schedule.
    lr: float = 1e-4
    #: Adam weight decay.
    weight_decay: float = 0.0
    #: Epochs between learning-rate decays (StepLR step size).
    lr_step: int = 10
    #: Factor of each learning-rate decay.
    lr_gamma: float = 0.5
    #: Floor of the learning rate.
    lr_min: float = 1e-6
    #: Gradient-norm clipping, applied to each module group on its own.
    clip_grad_norm: float = 0.01
    #: Optimiser steps per epoch at most (0: the whole data set), for short schedules.
    max_steps_per_epoch: int = 0
    #: Stop (after saving) once this many optimiser steps are done in total (0: never).
    stop_after_steps: int = 0
    #: Save ``last.pt`` every this many optimiser steps (0: only at epoch ends).
    save_every_steps: int = 500
    #: Also keep ``epoch_NNN.pt`` at the end of every epoch.
    save_epoch_checkpoints: bool = False
    #: Also keep ``phase1.pt`` and ``phase2.pt`` at the end of each phase.
    save_phase_checkpoints: bool = True
    #: Patches held out of training to measure the losses at epoch ends (0: none).
    val_patches: int = 64
    #: Flip each training pair at random, left-right and up-down (the same flips for both
    #: images of a pair, so they stay aligned); held-out patches are never augmented.
    augment_flip: bool = False
    #: Exposure augmentation: raise each training patch of either modality to the power
    #: ``exp(u)``, ``u`` uniform in ``[-augment_gamma, augment_gamma]`` and drawn for each patch
    #: and modality (0: off); values stay in ``[0, 1]``.
    augment_gamma: float = 0.0
    #: Exposure-level augmentation: with this probability, drawn for each patch and modality,
    #: a training patch is raised to the power that brings its mean to a level drawn uniformly
    #: in ``[augment_exposure_low, augment_exposure_high]`` (the exponent kept in
    #: ``[1/4, 4]``; 0: off). MSRS and LLVIP are dim scenes (infrared means about 0.1 and 0.3);
    #: this shows the network sources exposed as a well-lit camera gives them.
    augment_exposure: float = 0.0
    #: Lowest mean level that exposure-level augmentation draws, in ``(0, 1)``.
    augment_exposure_low: float = 0.3
    #: Highest mean level that exposure-level augmentation draws, in ``(0, 1)``.
    augment_exposure_high: float = 0.7
    #: Data-loading worker processes.
    num_workers: int = 2
    #: Pin host memory of batches (CUDA only).
    pin_memory: bool = True
    #: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    device: str = 'auto'
    #: bfloat16 autocast of the network on CUDA (losses stay float32).
    bf16: bool = True
    #: Run the network in channels-last memory format (CUDA).
    channels_last: bool = False
    #: ``torch.compile`` the training step.
    compile: bool = False
    #: ``torch.backends.cudnn.benchmark``.
    cudnn_benchmark: bool = True
    #: ``torch.use_deterministic_algorithms`` (slower on CUDA).
    deterministic: bool = False
    #: Optimiser steps between TensorBoard / history entries.
    log_every: int = 10
    #: Show tqdm progress bars.
    progress: bool = True
    #: The network to train: ``sfdfuse`` (published) or ``sfdfuse-lite`` (compact, for CPUs).
    network: str = 'sfdfuse'
    #: Network sizes: the config of ``network`` (``SFDFuseConfig`` / ``SFDFuseLiteConfig``).
    model: NetworkConfig = field(default_factory=SFDFuseConfig)
    #: Loss weights.
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        """Check types and ranges.

        :raises ConfigError: a value has the wrong type or is out of range.
        """
        for f in dataclasses.fields(self):
            if f.name in ('model', 'loss'):
                continue
            _check_type(f.name, getattr(self, f.name), f.type)
        try:
            spec = network_spec(self.network)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if not isinstance(self.model, spec.config_class):
            got = type(self.model).__name__
            try:
                got = f'{got} (the config of {network_of(self.model)})'
            except TypeError:
                pass
            raise ConfigError(f'model must be a {spec.config_class.__name__} for network '
                              f'{self.network!r}, got {got}')
        if not isinstance(self.loss, LossWeights):
            raise ConfigError(f'loss must be a LossWeights, got {type(self.loss).__name__}')
        for name in ('phase1_epochs', 'phase2_epochs', 'max_steps_per_epoch', 'stop_after_steps',
                     'save_every_steps', 'val_patches', 'num_workers', 'weight_decay',
                     'seed', 'clip_grad_norm', 'augment_gamma'):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)!r}')
        for name in ('batch_size', 'lr', 'lr_step', 'lr_gamma', 'log_every'):
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be > 0, got {getattr(self, name)!r}')
        if not 0.0 <= self.augment_exposure <= 1.0:
            raise ConfigError(f'augment_exposure is a probability in [0, 1], '
                              f'got {self.augment_exposure!r}')
        if not 0.0 < self.augment_exposure_low <= self.augment_exposure_high < 1.0:
            raise ConfigError(f'need 0 < augment_exposure_low <= augment_exposure_high < 1, got '
                              f'{self.augment_exposure_low!r}, {self.augment_exposure_high!r}')
        if self.phase1_epochs + self.phase2_epochs == 0:
            raise ConfigError('phase1_epochs + phase2_epochs must be > 0')
        if not 0 <= self.lr_min <= self.lr:
            raise ConfigError(f'lr_min must be in [0, lr={self.lr}], got {self.lr_min!r}')
        if self.device not in ('auto', 'cpu', 'cuda'):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


#: Keys that may differ when a run is resumed: where and how it runs, not what it computes.
RUNTIME_KEYS = frozenset({
    'data', 'out', 'stop_after_steps', 'save_every_steps', 'save_epoch_checkpoints',
    'save_phase_checkpoints', 'num_workers', 'pin_memory', 'device', 'compile',
    'cudnn_benchmark', 'log_every', 'progress', 'bf16', 'channels_last', 'deterministic'})

_TYPES = {'int': (int,), 'float': (int, float), 'bool': (bool,), 'str': (str,)}


def _coerce(value: Any, type_name: Any) -> Any:
    """Turn ``'1e-4'`` (a string to YAML 1.1) and ints into floats for float fields."""
    if str(type_name) == 'float' and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _check_type(name: str, value: Any, type_name: Any) -> None:
    allowed = _TYPES.get(str(type_name))
    if allowed is None:
        return
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f'{name} must be {type_name}, got {value!r} (bool)')
    if not isinstance(value, allowed):
        raise ConfigError(f'{name} must be {type_name}, got {value!r} ({type(value).__name__})')


def config_to_dict(config: TrainConfig) -> Dict[str, Any]:
    """Turn the configuration into plain nested dicts (YAML / checkpoint friendly).

    :param config: the configuration.
    :return: ``{key: value}`` with ``model`` and ``loss`` as nested dicts.
    """
    return dataclasses.asdict(config)


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Build a configuration from nested dicts; missing keys keep their defaults.

    :param values: as :func:`config_to_dict` returns (possibly partial).
    :return: the configuration.
    :raises ConfigError: unknown keys, wrong types, or bad values.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f'a training config must be a mapping, got {type(values).__name__}')
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(f'unknown config keys: {unknown}; known keys are {sorted(known)}')
    kwargs = dict(values)
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for key in kwargs:
        kwargs[key] = _coerce(kwargs[key], types[key])
    try:
        network = kwargs.get('network', 'sfdfuse')
        if not isinstance(network, str):
            raise ConfigError(f'network must be str, got {network!r}')
        try:
            network_spec(network)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        model = kwargs.get('model') or {}
        if not isinstance(model, Mapping):
            raise ConfigError(f'model must be a mapping, got {type(model).__name__}')
        kwargs['model'] = config_for(network, model)
        if 'loss' in kwargs:
            loss = kwargs['loss'] or {}
            if not isinstance(loss, Mapping):
                raise ConfigError(f'loss must be a mapping, got {type(loss).__name__}')
            loss_known = {f.name for f in dataclasses.fields(LossWeights)}
            bad = sorted(str(k) for k in loss if k not in loss_known)
            if bad:
                raise ConfigError(f'unknown loss keys: {bad}; known keys are '
                                  f'{sorted(loss_known)}')
            loss = dict(loss)
            for f in dataclasses.fields(LossWeights):
                if f.name in loss:
                    loss[f.name] = _coerce(loss[f.name], f.type)
                    _check_type(f'loss.{f.name}', loss[f.name], f.type)
            kwargs['loss'] = LossWeights(**loss)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    return TrainConfig(**kwargs)


def apply_overrides(values: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``key=value`` overrides to nested config dicts (values parsed as YAML scalars).

    :param values: nested dict, modified in place and returned.
    :param overrides: strings like ``phase1_epochs=1`` or ``model.dim=8``.
    :return: ``values``.
    :raises ConfigError: an override without ``=`` or with too deep a key.
    """
    for item in overrides:
        key, sep, raw = item.partition('=')
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f'expected key=value, got {item!r}')
        value = yaml.safe_load(raw) if raw.strip() else ''
        parts = key.split('.')
        if len(parts) > 2:
            raise ConfigError(f'keys are at most two levels deep (model.dim), got {key!r}')
        if len(parts) == 2:
            section = values.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(f'{parts[0]} is not a section, cannot set {key!r}')
            section[parts[1]] = value
        else:
            values[key] = value
    return values


def load_config(path: Optional[Union[str, Path]] = None, overrides: Iterable[str] = (),
                **direct: Any) -> TrainConfig:
    """Resolve a configuration: defaults, then the YAML file, then overrides.

    :param path: YAML file (``None``: defaults only).
    :param overrides: ``key=value`` strings (see :func:`apply_overrides`).
    :param direct: top-level keys set last when not ``None`` (e.g. ``data=``, ``out=``).
    :return: the configuration.
    :raises ConfigError: unreadable file, unknown keys, wrong types, or bad values.
    """
    values: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f'cannot read config {path}: {exc}') from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f'{path}: expected a mapping at the top level, '
                              f'got {type(loaded).__name__}')
        values = loaded or {}
    apply_overrides(values, overrides)
    for key, value in direct.items():
        if value is not None:
            values[key] = value
    return config_from_dict(values)


def save_config(config: TrainConfig, path: Union[str, Path]) -> None:
    """Write the resolved configuration as YAML.

    :param config: the configuration.
    :param path: the file to write.
    """
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    Path(path).write_text('# resolved SFDFuse training config (sfdfuse train)\n' + text)


def changed_keys(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = '') -> list:
    """Dotted keys whose values differ between two nested config dicts.

    :param a: one config dict.
    :param b: the other.
    :param prefix: used in recursion.
    :return: sorted list of ``key`` / ``section.key``.
    """
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += changed_keys(va, vb, prefix + key + '.')
        elif va != vb:
            out.append(prefix + key)
    return out
