"""The networks of the package, by name: class, config class and shipped weights file.

One table, so that a weights file, a training config or a command line can name a network
(``sfdfuse``, ``sfdfuse-lite``) and everything else follows from it. It imports nothing but the
model and config modules, so any part of the package (weights, engine, fusion, training) can use
it without an import circle.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

from torch import nn

from sfdfuse_core.config import SFDFuseConfig, SFDFuseLiteConfig
from sfdfuse_core.model.lite import SFDFuseLite
from sfdfuse_core.model.sfdfuse import SFDFuse

__all__ = ['NetworkSpec', 'NETWORKS', 'DEFAULT_NETWORK', 'NetworkConfig', 'network_spec',
           'network_of', 'build_model', 'config_for', 'shipped_weights_path',
           'weights_dir']

NetworkConfig = Union[SFDFuseConfig, SFDFuseLiteConfig]


@dataclass(frozen=True)
class NetworkSpec:
    """One network of the family.

    :param name: its name in weights files, configs and on the command line.
    :param model_class: the ``nn.Module`` class; ``model_class(config)`` builds it.
    :param config_class: its config dataclass (``from_dict`` / ``to_dict``).
    :param weights_file: file name of its shipped weights in ``sfdfuse_core/weights/``.
    :param summary: one line for help texts and logs.
    """

    name: str
    model_class: type
    config_class: type
    weights_file: str
    summary: str


#: Every network, by name.
NETWORKS = {
    'sfdfuse': NetworkSpec('sfdfuse', SFDFuse, SFDFuseConfig, 'sfdfuse_ivf.safetensors',
                           'the published SFDFuse network (2.3 M parameters, GPU-sized)'),
    'sfdfuse-lite': NetworkSpec('sfdfuse-lite', SFDFuseLite, SFDFuseLiteConfig,
                                'sfdfuse_lite_ivf.safetensors',
                                'the compact SFDFuse for CPUs (17 k parameters, half-resolution '
                                'Haar subbands)'),
}
#: The network a weights file without a network entry holds (files written before the registry).
DEFAULT_NETWORK = 'sfdfuse'


def network_spec(name: str) -> NetworkSpec:
    """Look a network up by name.

    :param name: a key of :data:`NETWORKS`.
    :return: its spec.
    :raises ValueError: unknown name (the message lists the known ones).
    """
    try:
        return NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown network {name!r}; known networks: '
                         f'{", ".join(sorted(NETWORKS))}') from None


def network_of(obj: Union[nn.Module, NetworkConfig]) -> str:
    """Name the network a model or a config belongs to.

    :param obj: a network module or its config.
    :return: the network name.
    :raises TypeError: neither a known network nor a known config.
    """
    for spec in NETWORKS.values():
        if isinstance(obj, (spec.model_class, spec.config_class)):
            return spec.name
    raise TypeError(f'not a network of this package or its config: {type(obj).__name__}')


def config_for(network: str, values: Union[Mapping[str, Any], NetworkConfig, None] = None
               ) -> NetworkConfig:
    """Build the config of a network from a dict (missing keys keep their defaults).

    :param network: a network name.
    :param values: field values, an existing config of that network, or ``None`` (defaults).
    :return: the config.
    :raises ValueError: unknown network, unknown keys or bad values.
    :raises TypeError: a value of the wrong type, or a config of another network.
    """
    spec = network_spec(network)
    if isinstance(values, spec.config_class):
        return values
    if values is None:
        return spec.config_class()
    if not isinstance(values, Mapping):
        raise TypeError(f'the {network} config must be a mapping or {spec.config_class.__name__}, '
                        f'got {type(values).__name__}')
    return spec.config_class.from_dict(values)


def build_model(config: NetworkConfig | None = None) -> nn.Module:
    """Build the network a config describes (randomly initialised, training mode, on the CPU).

    :param config: an :class:`SFDFuseConfig` (the published network) or an
        :class:`SFDFuseLiteConfig` (the compact one); ``None`` gives the published network.
    :return: the network.
    :raises TypeError: ``config`` is of neither kind.
    """
    if config is None:
        return SFDFuse()
    return network_spec(network_of(config)).model_class(config)


def weights_dir() -> Path:
    """Return the folder of the shipped weights inside the installed package."""
    return Path(__file__).resolve().parent.parent / 'weights'


def shipped_weights_path(network: str) -> Path:
    """Return where a network's shipped weights live (the file may not exist).

    :param network: a network name.
    :return: ``sfdfuse_core/weights/<its weights_file>``.
    :raises ValueError: unknown network.
    """
    return weights_dir() / network_spec(network).weights_file
