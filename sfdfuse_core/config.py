"""The configurations every size of the two SFDFuse-family networks comes from.

:class:`SFDFuseConfig`: the defaults reproduce the public SFDFuse network (``zxp771/SFDFuse``,
``net.py``), which builds on CDDFuse (Zhao et al., CVPR 2023): embedding width 64, 8 attention
heads, two Restormer and two ConvFormer blocks in both encoder and decoder, three invertible
detail nodes.

:class:`SFDFuseLiteConfig`: the compact member of the family built for CPUs
(:mod:`sfdfuse_core.model.lite`): every feature map lives on the Haar subbands at half
resolution, 16 channels wide.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Type, TypeVar

_C = TypeVar('_C')


def _check_field_types(config: Any) -> None:
    """Raise ``TypeError`` unless every field of a config dataclass has its declared type."""
    name = type(config).__name__
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        expected = {'int': int, 'float': float, 'bool': bool}[field.type]
        ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise TypeError(f'{name}.{field.name} must be {field.type}, '
                            f'got {value!r} ({type(value).__name__})')


class _DictConfig:
    """``to_dict`` / ``from_dict`` shared by the network configs (frozen dataclasses)."""

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a plain dict (JSON/YAML friendly).

        :return: ``{field name: value}`` for every field.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: Type[_C], values: Mapping[str, Any]) -> _C:
        """Build a configuration from a mapping; missing keys keep their defaults.

        :param values: field names to values, e.g. the output of :meth:`to_dict`.
        :return: the configuration.
        :raises TypeError: ``values`` is not a mapping, or a value has the wrong type.
        :raises ValueError: ``values`` holds keys that are not fields, or a value is invalid.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f'{cls.__name__}.from_dict expects a mapping, got '
                            f'{type(values).__name__}')
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise ValueError(f'unknown {cls.__name__} keys: {unknown}; '
                             f'known keys are {sorted(known)}')
        return cls(**dict(values))


__all__ = ['SFDFuseConfig', 'SFDFuseLiteConfig']


@dataclass(frozen=True)
class SFDFuseConfig(_DictConfig):
    """Hyper-parameters of :class:`sfdfuse_core.model.SFDFuse`.

    Every channel count, depth and kernel size of the network is read from here.
    """

    #: Channels of the input images and of the fused output (gray: 1).
    in_channels: int = 1
    #: Width of every feature map (the patch embedding's output channels).
    dim: int = 64
    #: Heads of every channel (transposed) attention.
    num_heads: int = 8
    #: Hidden-width factor of the gated FFNs in the Restormer and feature-interaction blocks.
    ffn_expansion_factor: float = 2.0
    #: Hidden-width factor of the MLP of the base branch (CDDFuse's Lite Transformer).
    base_ffn_expansion_factor: float = 1.0
    #: Whether the 1x1/3x3 convolutions of attention and gated FFNs carry a bias.
    bias: bool = False
    #: Depthwise kernel of the pixel-shuffled gated FFN.
    ffn_kernel_size: int = 7
    #: Restormer blocks (MDTA + gated FFN) in the encoder.
    encoder_restormer_blocks: int = 2
    #: ConvFormer blocks (separable conv + MLP) in the encoder, after the Restormer blocks.
    encoder_convformer_blocks: int = 2
    #: Restormer blocks in the decoder.
    decoder_restormer_blocks: int = 2
    #: ConvFormer blocks in the decoder, after the Restormer blocks.
    decoder_convformer_blocks: int = 2
    #: Hidden-width factor of the ConvFormer's inverted separable convolution.
    convformer_sepconv_expansion: float = 2.0
    #: Depthwise kernel of the ConvFormer's separable convolution.
    convformer_kernel_size: int = 7
    #: Hidden-width factor of the ConvFormer's MLP head.
    convformer_mlp_ratio: float = 4.0
    #: Initial value of the ConvFormer's per-channel layer scale.
    layer_scale_init: float = 1e-5
    #: Stochastic-depth probability of each ConvFormer branch (training only).
    drop_path: float = 0.1
    #: Invertible (INN) nodes of the detail branch.
    detail_nodes: int = 3
    #: Hidden-width factor of the INN nodes' inverted residual blocks.
    inn_expand_ratio: float = 2.0
    #: Channel-reduction ratio of the CGA fusion's channel attention.
    cga_reduction: int = 8
    #: Kernel of the CGA fusion's spatial and pixel attention convolutions.
    cga_kernel_size: int = 7
    #: Channels between the two 3x3 convolutions of the output head.
    head_channels: int = 32

    def __post_init__(self) -> None:
        """Check types and the divisibility the network relies on.

        :raises TypeError: a field has the wrong type.
        :raises ValueError: a value is out of range or sizes do not divide.
        """
        _check_field_types(self)
        positive = ['in_channels', 'dim', 'num_heads', 'ffn_expansion_factor',
                    'base_ffn_expansion_factor', 'ffn_kernel_size', 'convformer_sepconv_expansion',
                    'convformer_kernel_size', 'convformer_mlp_ratio', 'detail_nodes',
                    'inn_expand_ratio', 'cga_reduction', 'cga_kernel_size', 'head_channels']
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f'SFDFuseConfig.{name} must be > 0, got {getattr(self, name)!r}')
        for name in ['encoder_restormer_blocks', 'encoder_convformer_blocks',
                     'decoder_restormer_blocks', 'decoder_convformer_blocks']:
            if getattr(self, name) < 0:
                raise ValueError(f'SFDFuseConfig.{name} must be >= 0, got {getattr(self, name)!r}')
        for name in ['ffn_kernel_size', 'convformer_kernel_size', 'cga_kernel_size']:
            if getattr(self, name) % 2 == 0:
                raise ValueError(f'SFDFuseConfig.{name} must be odd, got {getattr(self, name)}')
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f'SFDFuseConfig.drop_path must be in [0, 1), got {self.drop_path!r}')
        if self.dim % self.num_heads != 0:
            raise ValueError(f'SFDFuseConfig.dim ({self.dim}) must be divisible by num_heads '
                             f'({self.num_heads})')
        if self.dim % 2 != 0:
            raise ValueError(f'SFDFuseConfig.dim must be even (the INN splits it in two halves), '
                             f'got {self.dim}')
        hidden = int(self.dim * self.ffn_expansion_factor)
        if hidden % 4 != 0:
            raise ValueError('int(dim * ffn_expansion_factor) must be divisible by 4 (the gated '
                             f'FFN pixel-shuffles and halves it), got {hidden} from '
                             f'dim={self.dim}, ffn_expansion_factor={self.ffn_expansion_factor}')
        if int(self.dim * self.base_ffn_expansion_factor) < 1:
            raise ValueError('int(dim * base_ffn_expansion_factor) must be >= 1, got '
                             f'{int(self.dim * self.base_ffn_expansion_factor)}')
        if 2 * self.dim // self.cga_reduction < 1:
            raise ValueError(f'SFDFuseConfig.cga_reduction ({self.cga_reduction}) must not exceed '
                             f'2 * dim ({2 * self.dim})')
        if int(self.dim // 2 * self.inn_expand_ratio) < 1:
            raise ValueError('int(dim // 2 * inn_expand_ratio) must be >= 1, got '
                             f'{int(self.dim // 2 * self.inn_expand_ratio)}')


@dataclass(frozen=True)
class SFDFuseLiteConfig(_DictConfig):
    """Hyper-parameters of :class:`sfdfuse_core.model.SFDFuseLite`, the compact network.

    Every channel count and depth of the network is read from here. All feature maps are at
    half resolution (on the Haar subbands), ``dim`` channels wide.
    """

    #: Channels of the input images and of the fused output (gray: 1).
    in_channels: int = 1
    #: Width of every feature map.
    dim: int = 16
    #: 3x3 conv + LeakyReLU layers of the shared encoder stem, after the subband embedding.
    encoder_blocks: int = 1
    #: Dilation of the base branch's 3x3 convolution (a wider, smoother view).
    base_dilation: int = 2
    #: Channel reduction of the base branch's global channel attention.
    base_reduction: int = 4
    #: 3x3 conv + LeakyReLU layers of the detail branch before its coupling steps (0: the
    #: coupling works on the stem's features directly, as CDDFuse's INN branch does).
    detail_blocks: int = 0
    #: Invertible coupling steps of the detail branch (each: two 3x3 convs on channel halves).
    detail_nodes: int = 1
    #: 3x3 conv + LeakyReLU layers of the base fusion after its 1x1 merge of both modalities.
    base_fusion_blocks: int = 0
    #: Kernel side of the detail fusion's gate convolution (odd; 1: per-pixel).
    gate_kernel: int = 1
    #: 3x3 conv + LeakyReLU layers refining the gated detail features.
    detail_refine_blocks: int = 1
    #: 3x3 conv + LeakyReLU layers of the decoder, the first one merging base and detail.
    decoder_blocks: int = 2
    #: Negative slope of every LeakyReLU.
    negative_slope: float = 0.1

    #: Values of keys that a weights file's stored config lacks: the structure of the files
    #: written before those keys existed (the first shipped sfdfuse-lite, 27,352 parameters).
    ABSENT_KEY_VALUES: ClassVar[Dict[str, Any]] = {
        'detail_blocks': 1, 'base_fusion_blocks': 1, 'gate_kernel': 3, 'detail_refine_blocks': 1}

    def __post_init__(self) -> None:
        """Check types and ranges.

        :raises TypeError: a field has the wrong type.
        :raises ValueError: a value is out of range.
        """
        _check_field_types(self)
        for name in ('in_channels', 'dim', 'base_dilation', 'base_reduction', 'decoder_blocks'):
            if getattr(self, name) <= 0:
                raise ValueError(f'SFDFuseLiteConfig.{name} must be > 0, '
                                 f'got {getattr(self, name)!r}')
        for name in ('encoder_blocks', 'detail_blocks', 'detail_nodes', 'base_fusion_blocks',
                     'detail_refine_blocks'):
            if getattr(self, name) < 0:
                raise ValueError(f'SFDFuseLiteConfig.{name} must be >= 0, '
                                 f'got {getattr(self, name)!r}')
        if self.dim % 2:
            raise ValueError(f'SFDFuseLiteConfig.dim must be even (the detail coupling splits it '
                             f'in two halves), got {self.dim}')
        if self.gate_kernel <= 0 or self.gate_kernel % 2 == 0:
            raise ValueError(f'SFDFuseLiteConfig.gate_kernel must be odd and > 0, '
                             f'got {self.gate_kernel!r}')
        if self.dim // self.base_reduction < 1:
            raise ValueError(f'SFDFuseLiteConfig.base_reduction ({self.base_reduction}) must not '
                             f'exceed dim ({self.dim})')
        if not 0.0 <= self.negative_slope < 1.0:
            raise ValueError('SFDFuseLiteConfig.negative_slope must be in [0, 1), '
                             f'got {self.negative_slope!r}')
