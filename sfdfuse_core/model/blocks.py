"""Building blocks of the SFDFuse network, smallest first.

References:
- SFDFuse: spatial-frequency domain fusion of infrared and visible images, public code
  ``zxp771/SFDFuse`` (``net.py``), which this module re-implements.
- CDDFuse: Zhao et al., "CDDFuse: Correlation-Driven Dual-Branch Feature Decomposition for
  Multi-Modality Image Fusion", CVPR 2023 (Lite Transformer base branch, INN detail branch).
- Restormer: Zamir et al., CVPR 2022 (MDTA transposed attention, gated FFN).
- MetaFormer baselines / ConvFormer: Yu et al., TPAMI 2023 (separable conv, StarReLU).
- DEA-Net: Chen et al., TIP 2024 (detail-enhanced convolution DEConv, CGA fusion).

Every block takes and returns feature maps ``(B, C, H, W)`` of float tensors.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = [
    'check_image_batch', 'drop_path', 'DropPath', 'LayerNorm2d', 'StarReLU', 'SquaredReLU',
    'haar_dwt', 'haar_idwt', 'HaarDWT',
    'TransposedSelfAttention', 'ShuffleGatedFFN', 'DualGatedFFN', 'GatedMlp',
    'RestormerBlock', 'LiteTransformerBlock',
    'SepConv', 'MlpHead', 'ConvFormerBlock',
    'central_difference_kernel', 'angular_difference_kernel',
    'horizontal_difference_kernel', 'vertical_difference_kernel', 'DEConv',
    'InvertedResidualBlock', 'INNNode',
    'CrossAttention', 'FeatureInteractionBlock',
    'SpatialAttention', 'ChannelAttention', 'PixelAttention', 'CGAFusion',
]


# ----------------------------------------------------------------------------------------------
# Small helpers: stochastic depth, normalisation, activations
# ----------------------------------------------------------------------------------------------

def check_image_batch(name: str, x: torch.Tensor, channels: int, size_multiple: int = 1,
                      min_size: int = 1) -> None:
    """Raise unless ``x`` is a non-empty float ``(B, channels, H, W)`` batch of a usable size.

    Shared by the networks' ``encode`` / ``decode`` / ``forward`` input checks.

    :param name: argument name for the message.
    :param x: the tensor to check.
    :param channels: the channel count expected.
    :param size_multiple: ``H`` and ``W`` must be multiples of this (1: any).
    :param min_size: ``H`` and ``W`` must be at least this.
    :raises TypeError: not a floating-point tensor.
    :raises ValueError: wrong shape, empty, or a size the network cannot take.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'{name} must be a floating-point tensor in [0, 1], got {x.dtype}')
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f'{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}')
    if x.numel() == 0:
        raise ValueError(f'{name} is empty: shape {tuple(x.shape)}')
    h, w = x.shape[-2:]
    if h % size_multiple or w % size_multiple or h < min_size or w < min_size:
        even = ' (even)' if size_multiple == 2 else ''
        raise ValueError(f'{name}: H and W must be multiples of {size_multiple}{even} and at '
                         f'least {min_size} (forward pads for you), got {tuple(x.shape)}')


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Drop whole residual branches per sample (stochastic depth).

    :param x: branch output ``(B, ...)``.
    :param drop_prob: probability of dropping a sample's branch, in ``[0, 1)``.
    :param training: only drop in training; identity otherwise.
    :return: ``x`` with dropped samples zeroed and kept ones scaled by ``1 / (1 - drop_prob)``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask / keep_prob


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`."""

    def __init__(self, drop_prob: float) -> None:
        """Store the drop probability.

        :param drop_prob: probability of dropping a sample's branch, in ``[0, 1)``.
        """
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply stochastic depth in training mode.

        :param x: branch output ``(B, ...)``.
        :return: same shape as ``x``.
        """
        return drop_path(x, self.drop_prob, self.training)


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channels of each pixel, with weight and bias.

    Same as Restormer's ``WithBias_LayerNorm`` (biased variance, eps 1e-5).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        """Create the affine parameters.

        :param channels: number of channels ``C``.
        :param eps: added to the variance.
        """
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.normalized_shape = (channels,)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` across channels.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)


class StarReLU(nn.Module):
    """StarReLU, ``s * relu(x) ** 2 + b`` with learnable scalars ``s`` and ``b``."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0) -> None:
        """Create the two scalars.

        :param scale: initial ``s``.
        :param bias: initial ``b``.
        """
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), scale))
        self.bias = nn.Parameter(torch.full((1,), bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation.

        :param x: any shape.
        :return: same shape.
        """
        return self.scale * F.relu(x) ** 2 + self.bias


class SquaredReLU(nn.Module):
    """Squared ReLU, ``relu(x) ** 2`` (So et al., Primer, 2021)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the activation.

        :param x: any shape.
        :return: same shape.
        """
        return F.relu(x) ** 2


# ----------------------------------------------------------------------------------------------
# Fixed one-level Haar wavelet transform
# ----------------------------------------------------------------------------------------------

def _haar_filters(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the four orthonormal 2x2 Haar analysis filters ``(4, 1, 2, 2)``: LL, LH, HL, HH.

    The order and signs follow ``pywt.Wavelet('db1')`` as the original builds them: the second
    filter differences rows (top minus bottom), the third columns (left minus right), the fourth
    both diagonals.

    :param dtype: floating dtype of the filters.
    :return: the filter bank.
    """
    low = torch.tensor([1.0, 1.0], dtype=dtype) / 2.0 ** 0.5
    high = torch.tensor([1.0, -1.0], dtype=dtype) / 2.0 ** 0.5
    # filter[i, j] = row_filter[i] * column_filter[j]
    bank = [torch.outer(low, low), torch.outer(high, low), torch.outer(low, high),
            torch.outer(high, high)]
    return torch.stack(bank).unsqueeze(1)  # (4, 1, 2, 2)


def haar_dwt(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """One-level 2-D Haar transform of every channel.

    :param x: ``(B, C, H, W)`` with even ``H`` and ``W``.
    :param filters: analysis filters ``(4, 1, 2, 2)``, see :class:`HaarDWT`.
    :return: ``(B, C, 4, H // 2, W // 2)``; index 2 holds LL, LH, HL, HH.
    :raises ValueError: ``H`` or ``W`` is odd.
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f'haar_dwt needs even height and width, got {tuple(x.shape)}')
    bands = F.conv2d(x.reshape(b * c, 1, h, w), filters, stride=2)  # (B*C, 4, H/2, W/2)
    return bands.reshape(b, c, 4, h // 2, w // 2)


def haar_idwt(bands: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt` (the filters are orthonormal, so synthesis uses the same ones).

    :param bands: ``(B, C, 4, h, w)`` as returned by :func:`haar_dwt`.
    :param filters: the analysis filters used for the forward transform ``(4, 1, 2, 2)``.
    :return: ``(B, C, 2 * h, 2 * w)``.
    """
    b, c, _, h, w = bands.shape
    image = F.conv_transpose2d(bands.reshape(b * c, 4, h, w), filters, stride=2)  # (B*C, 1, ..)
    return image.reshape(b, c, 2 * h, 2 * w)


class HaarDWT(nn.Module):
    """Fixed (not learned) one-level Haar DWT; the filters are a non-persistent buffer.

    ``size_multiple`` (2) is what ``H`` and ``W`` must be multiples of.
    """

    size_multiple = 2

    def __init__(self) -> None:
        """Register the filter bank as a buffer so it follows ``.to(device)``."""
        super().__init__()
        self.register_buffer('filters', _haar_filters(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform ``x``.

        :param x: ``(B, C, H, W)``, ``H`` and ``W`` even.
        :return: ``(B, C, 4, H // 2, W // 2)``: LL, LH, HL, HH along dim 2.
        """
        return haar_dwt(x, self.filters.to(x.dtype))


# ----------------------------------------------------------------------------------------------
# Channel ("transposed") attention shared by the Restormer, Lite Transformer and cross attention
# ----------------------------------------------------------------------------------------------

def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reshape ``(B, C, H, W)`` to ``(B, heads, C // heads, H * W)``."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w)


def _merge_heads(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reshape ``(B, heads, c, H * W)`` back to ``(B, heads * c, H, W)``."""
    b, heads, c, _ = x.shape
    return x.reshape(b, heads * c, height, width)


def _channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       temperature: torch.Tensor) -> torch.Tensor:
    """Attention across channels: a ``c x c`` map per head, cost linear in the pixel count.

    :param q: L2-normalised queries ``(B, heads, c, N)``.
    :param k: L2-normalised keys ``(B, heads, c, N)``.
    :param v: values ``(B, heads, c, N)``.
    :param temperature: learned scale ``(heads, 1, 1)``.
    :return: ``(B, heads, c, N)``.
    """
    attn = (q @ k.transpose(-2, -1)) * temperature  # (B, heads, c, c)
    return attn.softmax(dim=-1) @ v


class TransposedSelfAttention(nn.Module):
    """Multi-head channel self-attention with L2-normalised q/k and a learned temperature.

    With ``depthwise_qkv`` it is Restormer's MDTA (1x1 then depthwise 3x3 conv for q, k, v);
    without it, CDDFuse's Lite Transformer attention (1x1 then a full 3x3 conv).
    """

    def __init__(self, dim: int, num_heads: int, bias: bool, depthwise_qkv: bool = True) -> None:
        """Create the projections.

        :param dim: channels ``C``.
        :param num_heads: heads; must divide ``dim``.
        :param bias: whether the convolutions have a bias.
        :param depthwise_qkv: depthwise (MDTA) or full (Lite Transformer) 3x3 q/k/v conv.
        """
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_conv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1,
                                  groups=dim * 3 if depthwise_qkv else 1, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        _, _, h, w = x.shape
        q, k, v = self.qkv_conv(self.qkv(x)).chunk(3, dim=1)  # each (B, C, H, W)
        q = F.normalize(_split_heads(q, self.num_heads), dim=-1)  # (B, heads, c, H*W)
        k = F.normalize(_split_heads(k, self.num_heads), dim=-1)
        v = _split_heads(v, self.num_heads)
        out = _channel_attention(q, k, v, self.temperature)
        return self.project_out(_merge_heads(out, h, w))  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------
# Feed-forward networks
# ----------------------------------------------------------------------------------------------

class ShuffleGatedFFN(nn.Module):
    """SFDFuse's gated FFN: expand, pixel-shuffle to twice the resolution, gate, shuffle back.

    ``project_in`` gives ``2 * hidden`` channels; ``pixel_shuffle(2)`` turns them into
    ``hidden / 2`` channels at ``(2H, 2W)``, split into a value half (depthwise conv) and a gate
    half (GELU); their product is pixel-unshuffled to ``hidden`` channels and projected back.
    """

    def __init__(self, dim: int, expansion_factor: float, bias: bool, kernel_size: int) -> None:
        """Create the convolutions.

        :param dim: channels ``C``.
        :param expansion_factor: ``hidden = int(dim * expansion_factor)``, divisible by 4.
        :param bias: whether the convolutions have a bias.
        :param kernel_size: odd kernel of the depthwise conv.
        """
        super().__init__()
        hidden = int(dim * expansion_factor)
        quarter = hidden // 4
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(quarter, quarter, kernel_size=kernel_size,
                                padding=kernel_size // 2, groups=quarter, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the FFN.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = F.pixel_shuffle(self.project_in(x), 2)  # (B, hidden/2, 2H, 2W)
        value, gate = x.chunk(2, dim=1)  # each (B, hidden/4, 2H, 2W)
        x = self.dwconv(value) * F.gelu(gate)
        return self.project_out(F.pixel_unshuffle(x, 2))  # (B, hidden, H, W) -> (B, C, H, W)


class DualGatedFFN(nn.Module):
    """SFDFuse's dual-scale gated FFN of the detail interaction blocks.

    Like :class:`ShuffleGatedFFN`, but the value half goes through a depthwise 5x5 conv and the
    gate half through a dilated depthwise 3x3 conv followed by Mish.
    """

    def __init__(self, dim: int, expansion_factor: float, bias: bool,
                 value_kernel_size: int = 5, gate_kernel_size: int = 3,
                 gate_dilation: int = 2) -> None:
        """Create the convolutions.

        :param dim: channels ``C``.
        :param expansion_factor: ``hidden = int(dim * expansion_factor)``, divisible by 4.
        :param bias: whether the convolutions have a bias.
        :param value_kernel_size: odd kernel of the value branch's depthwise conv.
        :param gate_kernel_size: odd kernel of the gate branch's dilated depthwise conv.
        :param gate_dilation: dilation of the gate branch's conv.
        """
        super().__init__()
        hidden = int(dim * expansion_factor)
        quarter = hidden // 4
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.value_conv = nn.Conv2d(quarter, quarter, kernel_size=value_kernel_size,
                                    padding=value_kernel_size // 2, groups=quarter, bias=bias)
        self.gate_conv = nn.Conv2d(quarter, quarter, kernel_size=gate_kernel_size,
                                   padding=gate_dilation * (gate_kernel_size // 2),
                                   dilation=gate_dilation, groups=quarter, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the FFN.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = F.pixel_shuffle(self.project_in(x), 2)  # (B, hidden/2, 2H, 2W)
        value, gate = x.chunk(2, dim=1)  # each (B, hidden/4, 2H, 2W)
        x = self.value_conv(value) * F.mish(self.gate_conv(gate))
        return self.project_out(F.pixel_unshuffle(x, 2))  # (B, hidden, H, W) -> (B, C, H, W)


class GatedMlp(nn.Module):
    """CDDFuse's Lite Transformer MLP: 1x1 expand, grouped 3x3 conv, GELU gate, 1x1 project."""

    def __init__(self, dim: int, expansion_factor: float, bias: bool) -> None:
        """Create the convolutions.

        :param dim: channels ``C``.
        :param expansion_factor: ``hidden = int(dim * expansion_factor)``.
        :param bias: whether the convolutions have a bias.
        """
        super().__init__()
        hidden = int(dim * expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        # groups=hidden over 2*hidden channels: each group mixes two channels, as in CDDFuse.
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1,
                                groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)  # each (B, hidden, H, W)
        return self.project_out(F.gelu(gate) * value)


# ----------------------------------------------------------------------------------------------
# Transformer and ConvFormer blocks
# ----------------------------------------------------------------------------------------------

class RestormerBlock(nn.Module):
    """Pre-norm Restormer block: MDTA channel attention and the gated FFN, both residual."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 ffn_kernel_size: int) -> None:
        """Create the block.

        :param dim: channels ``C``.
        :param num_heads: attention heads.
        :param ffn_expansion_factor: hidden-width factor of the FFN.
        :param bias: whether the convolutions have a bias.
        :param ffn_kernel_size: depthwise kernel of the FFN.
        """
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = TransposedSelfAttention(dim, num_heads, bias, depthwise_qkv=True)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = ShuffleGatedFFN(dim, ffn_expansion_factor, bias, ffn_kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class LiteTransformerBlock(nn.Module):
    """CDDFuse's Lite Transformer (the base branch): channel attention and a gated MLP."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool) -> None:
        """Create the block.

        :param dim: channels ``C``.
        :param num_heads: attention heads.
        :param ffn_expansion_factor: hidden-width factor of the MLP.
        :param bias: whether the convolutions have a bias.
        """
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = TransposedSelfAttention(dim, num_heads, bias, depthwise_qkv=False)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = GatedMlp(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SepConv(nn.Module):
    """Inverted separable convolution (MobileNetV2 / ConvFormer) with StarReLU.

    As in SFDFuse (unlike MetaFormer's SepConv) it adds its own input to its output.
    """

    def __init__(self, dim: int, expansion: float, kernel_size: int) -> None:
        """Create the convolutions.

        :param dim: channels ``C``.
        :param expansion: hidden width ``int(expansion * dim)``.
        :param kernel_size: odd kernel of the depthwise conv.
        """
        super().__init__()
        hidden = int(expansion * dim)
        self.pwconv1 = nn.Conv2d(dim, hidden, kernel_size=1, bias=False)
        self.act = StarReLU()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=kernel_size,
                                padding=kernel_size // 2, groups=hidden, bias=False)
        self.pwconv2 = nn.Conv2d(hidden, dim, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix tokens.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        return x + self.pwconv2(self.dwconv(self.act(self.pwconv1(x))))


class MlpHead(nn.Module):
    """SFDFuse's ConvFormer MLP: 1x1 expand, SquaredReLU, layer norm, 1x1 project."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        """Create the layers.

        :param dim: channels ``C``.
        :param mlp_ratio: hidden width ``int(mlp_ratio * dim)``.
        """
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Conv2d(dim, hidden, kernel_size=1, bias=False)
        self.act = SquaredReLU()
        self.norm = LayerNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        return self.fc2(self.norm(self.act(self.fc1(x))))


class ConvFormerBlock(nn.Module):
    """Pre-norm ConvFormer block with per-channel layer scale and stochastic depth."""

    def __init__(self, dim: int, sepconv_expansion: float, kernel_size: int, mlp_ratio: float,
                 layer_scale_init: float, drop_path_prob: float) -> None:
        """Create the block.

        :param dim: channels ``C``.
        :param sepconv_expansion: hidden-width factor of the separable conv.
        :param kernel_size: depthwise kernel of the separable conv.
        :param mlp_ratio: hidden-width factor of the MLP.
        :param layer_scale_init: initial value of both layer scales.
        :param drop_path_prob: stochastic-depth probability; 0 gives ``nn.Identity``.
        """
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.token_mixer = SepConv(dim, sepconv_expansion, kernel_size)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = MlpHead(dim, mlp_ratio)
        self.drop_path = DropPath(drop_path_prob) if drop_path_prob > 0.0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = x + self.drop_path(self.layer_scale_1 * self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


# ----------------------------------------------------------------------------------------------
# Detail-enhanced convolution (DEConv) and the INN detail nodes
# ----------------------------------------------------------------------------------------------

def central_difference_kernel(weight: torch.Tensor) -> torch.Tensor:
    """Central-difference 3x3 kernel: the centre tap minus the sum of all taps.

    Convolving with it equals ``sum_i w_i * (x_i - x_centre)``.

    :param weight: learned ``(O, I, 3, 3)``.
    :return: ``(O, I, 3, 3)``.
    """
    kernel = weight.clone()
    kernel[:, :, 1, 1] = weight[:, :, 1, 1] - weight.sum(dim=(2, 3))
    return kernel


# The eight ring taps of a flattened 3x3 kernel, each replaced by its clockwise neighbour:
# tap p takes tap _ANGULAR_SOURCE[p] (centre maps to itself and cancels).
_ANGULAR_SOURCE = (3, 0, 1, 6, 4, 2, 7, 8, 5)


def angular_difference_kernel(weight: torch.Tensor) -> torch.Tensor:
    """Angular-difference 3x3 kernel: each tap minus its neighbour one step around the ring.

    :param weight: learned ``(O, I, 3, 3)``.
    :return: ``(O, I, 3, 3)`` with a zero centre.
    """
    flat = weight.flatten(2)  # (O, I, 9)
    source = torch.tensor(_ANGULAR_SOURCE, device=weight.device)
    return (flat - flat.index_select(2, source)).reshape(weight.shape)


def horizontal_difference_kernel(weight: torch.Tensor) -> torch.Tensor:
    """Horizontal-difference 3x3 kernel: left column ``w``, middle 0, right column ``-w``.

    :param weight: learned column ``(O, I, 3)`` (one tap per row).
    :return: ``(O, I, 3, 3)``.
    """
    return torch.stack([weight, torch.zeros_like(weight), -weight], dim=-1)


def vertical_difference_kernel(weight: torch.Tensor) -> torch.Tensor:
    """Vertical-difference 3x3 kernel: top row ``w``, middle 0, bottom row ``-w``.

    :param weight: learned row ``(O, I, 3)`` (one tap per column).
    :return: ``(O, I, 3, 3)``.
    """
    return torch.stack([weight, torch.zeros_like(weight), -weight], dim=-2)


class DEConv(nn.Module):
    """Detail-enhanced 3x3 convolution (DEA-Net): five parallel convolutions in one.

    The kernel is the sum of a central-, horizontal-, vertical- and angular-difference kernel and a
    plain kernel; the biases add up too, so :meth:`to_conv` folds it into one ``nn.Conv2d``.
    The sub-convolutions only hold weights (their ``forward`` is never called).
    """

    def __init__(self, channels: int) -> None:
        """Create the five weight sets, each with PyTorch's default initialisation.

        :param channels: input and output channels.
        """
        super().__init__()
        self.central = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.horizontal = nn.Conv1d(channels, channels, kernel_size=3)
        self.vertical = nn.Conv1d(channels, channels, kernel_size=3)
        self.angular = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.plain = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the summed kernel and bias.

        :return: weight ``(C, C, 3, 3)`` and bias ``(C,)``.
        """
        weight = (central_difference_kernel(self.central.weight)
                  + horizontal_difference_kernel(self.horizontal.weight)
                  + vertical_difference_kernel(self.vertical.weight)
                  + angular_difference_kernel(self.angular.weight)
                  + self.plain.weight)
        bias = (self.central.bias + self.horizontal.bias + self.vertical.bias
                + self.angular.bias + self.plain.bias)
        return weight, bias

    def to_conv(self) -> nn.Conv2d:
        """Fold into one plain convolution with the same output.

        :return: a new ``nn.Conv2d`` on the same device and dtype, detached from this module.
        """
        weight, bias = self.fused_kernel()
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=3, padding=1,
                         device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the summed kernel.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        weight, bias = self.fused_kernel()
        return F.conv2d(x, weight, bias, padding=1)


class InvertedResidualBlock(nn.Module):
    """MobileNetV2 bottleneck of the INN nodes, with a DEConv in place of the depthwise conv.

    (Despite the name, inherited from CDDFuse, it has no residual connection.)
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: float) -> None:
        """Create the layers.

        :param in_channels: input channels.
        :param out_channels: output channels.
        :param expand_ratio: hidden width ``int(in_channels * expand_ratio)``.
        """
        super().__init__()
        hidden = int(in_channels * expand_ratio)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False),
            nn.ReLU6(),
            DEConv(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the bottleneck.

        :param x: ``(B, in_channels, H, W)``.
        :return: ``(B, out_channels, H, W)``.
        """
        return self.body(x)


class INNNode(nn.Module):
    """One invertible (affine coupling) node of CDDFuse's detail branch."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        """Create the three coupling functions and the channel-shuffling 1x1 conv.

        :param dim: channels of the full feature; each half has ``dim // 2``.
        :param expand_ratio: hidden-width factor of the coupling functions.
        """
        super().__init__()
        half = dim // 2
        self.theta_phi = InvertedResidualBlock(half, half, expand_ratio)
        self.theta_rho = InvertedResidualBlock(half, half, expand_ratio)
        self.theta_eta = InvertedResidualBlock(half, half, expand_ratio)
        self.shuffle = nn.Conv2d(dim, dim, kernel_size=1, bias=True)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Couple the two halves.

        :param z1: ``(B, dim // 2, H, W)``.
        :param z2: ``(B, dim // 2, H, W)``.
        :return: the new ``(z1, z2)``, same shapes.
        """
        z1, z2 = self.shuffle(torch.cat([z1, z2], dim=1)).chunk(2, dim=1)
        z2 = z2 + self.theta_phi(z1)
        z1 = z1 * torch.exp(self.theta_rho(z2)) + self.theta_eta(z2)
        return z1, z2


# ----------------------------------------------------------------------------------------------
# Cross attention between two feature maps
# ----------------------------------------------------------------------------------------------

class CrossAttention(nn.Module):
    """SFDFuse's bidirectional channel cross attention between two feature maps.

    One projection serves both inputs; queries of each input attend to the other's keys and
    values, the (normalised) queries are added back, and both directions plus both inputs are
    summed.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool) -> None:
        """Create the shared projections.

        :param dim: channels ``C``.
        :param num_heads: heads; must divide ``dim``.
        :param bias: whether the convolutions have a bias.
        """
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3,
                                    bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x`` to normalised q, k and v, each ``(B, heads, c, H * W)``."""
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)  # each (B, C, H, W)
        return (F.normalize(_split_heads(q, self.num_heads), dim=-1),
                F.normalize(_split_heads(k, self.num_heads), dim=-1),
                _split_heads(v, self.num_heads))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Attend both ways.

        :param a: ``(B, C, H, W)``.
        :param b: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        _, _, h, w = a.shape
        q_a, k_a, v_a = self._heads(a)
        q_b, k_b, v_b = self._heads(b)
        b_to_a = _channel_attention(q_b, k_a, v_a, self.temperature) + q_b  # (B, heads, c, N)
        a_to_b = _channel_attention(q_a, k_b, v_b, self.temperature) + q_a
        return (self.project_out(_merge_heads(b_to_a, h, w))
                + self.project_out(_merge_heads(a_to_b, h, w)) + a + b)


class FeatureInteractionBlock(nn.Module):
    """Cross attention between two inputs (one shared pre-norm), then a residual FFN."""

    def __init__(self, dim: int, num_heads: int, bias: bool, ffn: nn.Module) -> None:
        """Create the block.

        :param dim: channels ``C``.
        :param num_heads: attention heads.
        :param bias: whether the attention convolutions have a bias.
        :param ffn: the feed-forward network, ``(B, C, H, W) -> (B, C, H, W)``.
        """
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attention = CrossAttention(dim, num_heads, bias)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = ffn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fuse ``x`` with ``y``.

        :param x: ``(B, C, H, W)``.
        :param y: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)``.
        """
        x = self.attention(self.norm1(x), self.norm1(y))
        return x + self.ffn(self.norm2(x))


# ----------------------------------------------------------------------------------------------
# CGA fusion (content-guided attention: channel + spatial + pixel)
# ----------------------------------------------------------------------------------------------

class SpatialAttention(nn.Module):
    """Spatial attention map from the channel mean and max (reflect-padded conv)."""

    def __init__(self, kernel_size: int) -> None:
        """Create the conv.

        :param kernel_size: odd kernel; ``H`` and ``W`` must exceed ``kernel_size // 2``.
        """
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2,
                              padding_mode='reflect', bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the map.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, 1, H, W)`` (no activation).
        """
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return self.conv(pooled)  # (B, 2, H, W) -> (B, 1, H, W)


class ChannelAttention(nn.Module):
    """Channel attention weights from global average pooling and a bottleneck MLP."""

    def __init__(self, channels: int, reduction: int) -> None:
        """Create the bottleneck.

        :param channels: channels ``C``.
        :param reduction: hidden width ``C // reduction``.
        """
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=True),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the weights.

        :param x: ``(B, C, H, W)``.
        :return: ``(B, C, 1, 1)`` (no activation).
        """
        return self.mlp(x.mean(dim=(2, 3), keepdim=True))


class PixelAttention(nn.Module):
    """Per-pixel, per-channel attention from a feature and a coarse attention map."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        """Create the grouped conv (one group per channel sees the feature and its map).

        :param channels: channels ``C``.
        :param kernel_size: odd kernel; ``H`` and ``W`` must exceed ``kernel_size // 2``.
        """
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, kernel_size, padding=kernel_size // 2,
                              padding_mode='reflect', groups=channels, bias=True)

    def forward(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Refine ``coarse`` with ``x``.

        :param x: ``(B, C, H, W)``.
        :param coarse: ``(B, C, H, W)``.
        :return: ``(B, C, H, W)`` in ``(0, 1)``.
        """
        pairs = torch.stack([x, coarse], dim=2).flatten(1, 2)  # (B, 2C, H, W): x0, c0, x1, ..
        return torch.sigmoid(self.conv(pairs))


class CGAFusion(nn.Module):
    """SFDFuse's CGA fusion of two feature maps into one (DEA-Net's content-guided attention)."""

    def __init__(self, dim: int, reduction: int, kernel_size: int) -> None:
        """Create the attentions and the 1x1 projection.

        :param dim: channels of each input and of the output.
        :param reduction: channel-attention reduction on the ``2 * dim`` concatenation.
        :param kernel_size: spatial and pixel attention kernel.
        """
        super().__init__()
        self.channel = ChannelAttention(2 * dim, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.pixel = PixelAttention(2 * dim, kernel_size)
        self.project = nn.Conv2d(2 * dim, dim, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Fuse.

        :param x: ``(B, dim, H, W)``.
        :param y: ``(B, dim, H, W)``.
        :return: ``(B, dim, H, W)``.
        """
        joint = torch.cat([x, y], dim=1)  # (B, 2*dim, H, W)
        coarse = self.spatial(joint) + self.channel(joint)  # broadcast to (B, 2*dim, H, W)
        # GELU on top of the pixel attention's sigmoid, as in the original.
        weights = F.gelu(self.pixel(joint, coarse))
        return self.project(joint * weights + joint)
