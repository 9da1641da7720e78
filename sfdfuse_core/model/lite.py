"""SFDFuse-Lite: the compact, CPU-rate member of the SFDFuse family.

It keeps the ideas of SFDFuse (Zhang et al.; ``zxp771/SFDFuse``) and of CDDFuse (Zhao et al.,
"CDDFuse: Correlation-Driven Dual-Branch Feature Decomposition for Multi-Modality Image Fusion",
CVPR 2023) and spends its arithmetic where a CPU can afford it:

* a fixed, orthonormal Haar wavelet splits each image into its four subbands (LL, LH, HL, HH)
  at half resolution, and **all** learned work happens there (a quarter of the pixels); the
  inverse transform brings the result back to full resolution, losslessly;
* a shared encoder gives each modality **base** features (a dilated view plus a global channel
  attention: low-frequency, scene-level content that the two modalities share) and **detail**
  features (an invertible coupling step over the two channel halves of the shared features, as
  CDDFuse's INN branch);
  the correlation-driven decomposition loss trains them apart, as for the full network;
* the modalities **interact** in two fusion layers: the base features are merged by a
  convolution over both, the detail features by a per-pixel, per-channel gate computed from
  both (which modality's detail wins where);
* the decoder merges base and detail, predicts the four subbands of a correction, and adds it
  to the **visible input** after the inverse Haar transform.

With the default :class:`~sfdfuse_core.config.SFDFuseLiteConfig` it has 17,448 parameters and
costs 3.9 GFLOP per 640x512 pair (``sfdfuse_core.inference.cost.model_cost``); the full SFDFuse
network costs 1.7 TFLOP. Its layers were chosen by measured CPU time, not only FLOPs: the
8-channel coupling convolutions and every concatenation or element-wise pass cost more time
than their arithmetic suggests, so there is one coupling step, the gate is 1x1, and the engine
runs each convolution with its activation as one kernel (:meth:`SFDFuseLite.fuse_for_cpu`).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from sfdfuse_core.config import SFDFuseLiteConfig
from sfdfuse_core.model.blocks import HaarDWT, check_image_batch, haar_idwt

__all__ = ['ConvAct', 'GlobalChannelGate', 'DetailCoupling', 'LiteEncoder', 'BaseFusion',
           'DetailFusion', 'LiteDecoder', 'SFDFuseLite']


def _fused_conv_available() -> bool:
    """Whether this torch build has oneDNN's convolution with a fused element-wise epilogue."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_convolution_pointwise'))


def _fused_inference(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` (its ``fused`` flag set by ``fuse_for_cpu``) may take the fused path.

    Only CPU float32 inference without autograd, tracing or autocast does.
    """
    return (getattr(module, 'fused', False) and not module.training
            and not torch.is_grad_enabled() and x.device.type == 'cpu'
            and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and not torch.jit.is_scripting() and not torch.is_autocast_enabled('cpu'))


def _conv_pointwise(conv: nn.Conv2d, x: torch.Tensor, attr: str, scalars: list,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """``conv`` (or its geometry with ``weight``), the element-wise ``attr`` as its epilogue."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight if weight is None else weight, conv.bias, list(conv.padding),
        list(conv.stride), list(conv.dilation), conv.groups, attr, scalars, '')


class ConvAct(nn.Module):
    """A ``k x k`` convolution followed by a LeakyReLU (``'same'`` zero padding).

    With :attr:`fused` set (:meth:`SFDFuseLite.fuse_for_cpu`), CPU float32 inference runs the
    two as one oneDNN kernel (the activation applied while the output is still in cache, the
    same numbers); training, autograd, tracing/export and other devices or dtypes take the
    plain path.

    :param in_channels: input channels.
    :param out_channels: output channels.
    :param negative_slope: LeakyReLU slope.
    :param kernel_size: odd kernel side.
    :param dilation: dilation of the kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float,
                 kernel_size: int = 3, dilation: int = 1) -> None:
        """Create the layer; see the class docstring."""
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=dilation * (kernel_size // 2), dilation=dilation)
        self.act = nn.LeakyReLU(negative_slope)
        #: Run conv + activation as one oneDNN kernel where that is possible (inference only).
        self.fused = False

    def _can_fuse(self, x: torch.Tensor) -> bool:
        return _fused_inference(self, x) and self.conv.weight.dtype == torch.float32

    def fused_call(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Convolution + activation as one oneDNN kernel (``weight``: instead of the layer's)."""
        return _conv_pointwise(self.conv, x, 'leaky_relu', [self.act.negative_slope], weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer: ``(B, in, H, W) -> (B, out, H, W)``."""
        if self._can_fuse(x):
            return self.fused_call(x)
        return self.act(self.conv(x))


class GlobalChannelGate(nn.Module):
    """Squeeze-and-excitation: scale each channel by a gate computed from the global mean.

    :param channels: feature channels.
    :param reduction: hidden width is ``channels // reduction``.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        """Create the two 1x1 layers; see the class docstring."""
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``x`` ``(B, C, H, W)`` by ``sigmoid(MLP(mean_HW(x)))``."""
        context = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(context))))


class DetailCoupling(nn.Module):
    """Additive invertible coupling steps over the two channel halves (CDDFuse's INN idea).

    Step ``k`` updates one half from the other: ``z2 += f(z1)``, then ``z1 += g(z2)``.

    :param dim: feature channels (even).
    :param nodes: coupling steps.
    :param negative_slope: LeakyReLU slope of ``f`` and ``g``.
    """

    def __init__(self, dim: int, nodes: int, negative_slope: float) -> None:
        """Create the steps; see the class docstring."""
        super().__init__()
        half = dim // 2
        self.f = nn.ModuleList(ConvAct(half, half, negative_slope) for _ in range(nodes))
        self.g = nn.ModuleList(ConvAct(half, half, negative_slope) for _ in range(nodes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the coupling: ``(B, dim, H, W) -> (B, dim, H, W)``."""
        z1, z2 = x.chunk(2, dim=1)  # each (B, dim/2, H, W)
        for f, g in zip(self.f, self.g):
            z2 = z2 + f(z1)
            z1 = z1 + g(z2)
        return torch.cat([z1, z2], dim=1)


class LiteEncoder(nn.Module):
    """Shared encoder: subbands -> stem -> (base, detail) features, all at half resolution.

    :param config: network configuration.
    """

    def __init__(self, config: SFDFuseLiteConfig) -> None:
        """Create the encoder; see the class docstring."""
        super().__init__()
        dim, slope = config.dim, config.negative_slope
        self.dwt = HaarDWT()
        self.embed = ConvAct(4 * config.in_channels, dim, slope)
        self.stem = nn.Sequential(*[ConvAct(dim, dim, slope)
                                    for _ in range(config.encoder_blocks)])
        self.base = nn.Sequential(ConvAct(dim, dim, slope, dilation=config.base_dilation),
                                  GlobalChannelGate(dim, config.base_reduction))
        self.detail = nn.Sequential(*[ConvAct(dim, dim, slope)
                                      for _ in range(config.detail_blocks)],
                                    DetailCoupling(dim, config.detail_nodes, slope))

    def fold_haar(self) -> None:
        """Fold the Haar analysis into the embedding for the fused inference path.

        ``bands = A @ pixel_unshuffle(x)`` per 2x2 block (``A``: the 4x4 filter bank), so the
        embedding convolution over the bands equals one over the unshuffled pixels with weights
        ``W A``: a permutation replaces the strided transform. Kept as a non-persistent buffer
        (not in the state dict; recomputed by each call).
        """
        weight = self.embed.conv.weight  # (dim, 4 * C, k, k), input channel c * 4 + band
        dim, channels = weight.shape[0], weight.shape[1] // 4
        bank = self.dwt.filters.reshape(4, 4).to(weight)  # (band, pixel a * 2 + b)
        folded = torch.einsum('ockxy,km->ocmxy', weight.detach().reshape(dim, channels, 4,
                                                                         *weight.shape[2:]), bank)
        self.register_buffer('embed_folded', folded.reshape(weight.shape).contiguous(),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode images ``(B, in_channels, H, W)``, ``H`` and ``W`` even.

        :return: ``(base, detail)``, each ``(B, dim, H/2, W/2)``.
        """
        folded = getattr(self, 'embed_folded', None)
        if folded is not None and self.embed._can_fuse(x):
            features = self.embed.fused_call(F.pixel_unshuffle(x, 2), folded)
        else:
            bands = self.dwt(x).flatten(1, 2)  # (B, 4 * in_channels, H/2, W/2)
            features = self.embed(bands)
        features = self.stem(features)
        return self.base(features), self.detail(features)


class BaseFusion(nn.Module):
    """Merge the two modalities' base features: 1x1 over both, then ``base_fusion_blocks`` 3x3.

    :param config: network configuration.
    """

    def __init__(self, config: SFDFuseLiteConfig) -> None:
        """Create the layers; see the class docstring."""
        super().__init__()
        dim, slope = config.dim, config.negative_slope
        self.body = nn.Sequential(ConvAct(2 * dim, dim, slope, kernel_size=1),
                                  *[ConvAct(dim, dim, slope)
                                    for _ in range(config.base_fusion_blocks)])

    def forward(self, base_v: torch.Tensor, base_i: torch.Tensor) -> torch.Tensor:
        """Fuse ``(B, dim, h, w)`` visible and infrared base features into one such map."""
        return self.body(torch.cat([base_v, base_i], dim=1))


class DetailFusion(nn.Module):
    """Gate between the two modalities' detail features, per pixel and channel, then refine.

    The gate is a ``gate_kernel`` convolution over both; the refinement
    ``detail_refine_blocks`` 3x3 layers.

    ``fused = d_i + sigmoid(conv([d_v, d_i])) * (d_v - d_i)``.

    :param config: network configuration.
    """

    def __init__(self, config: SFDFuseLiteConfig) -> None:
        """Create the layers; see the class docstring."""
        super().__init__()
        dim, slope = config.dim, config.negative_slope
        k = config.gate_kernel
        self.gate = nn.Conv2d(2 * dim, dim, k, padding=k // 2)
        blocks = config.detail_refine_blocks
        # one block is a bare layer, so its parameter names are those of the files written
        # before the block count was configurable
        self.refine = (ConvAct(dim, dim, slope) if blocks == 1 else
                       nn.Sequential(*[ConvAct(dim, dim, slope) for _ in range(blocks)]))
        #: Run the gate's sigmoid as its convolution's epilogue (set by ``fuse_for_cpu``).
        self.fused = False

    def forward(self, detail_v: torch.Tensor, detail_i: torch.Tensor) -> torch.Tensor:
        """Fuse ``(B, dim, h, w)`` visible and infrared detail features into one such map."""
        both = torch.cat([detail_v, detail_i], dim=1)  # (B, 2 dim, h, w)
        if _fused_inference(self, both):
            gate = _conv_pointwise(self.gate, both, 'sigmoid', [])
        else:
            gate = torch.sigmoid(self.gate(both))
        return self.refine(torch.lerp(detail_i, detail_v, gate))  # d_i + gate (d_v - d_i)


class LiteDecoder(nn.Module):
    """Base + detail -> subbands of a correction -> inverse Haar -> plus the visible input.

    :param config: network configuration.
    """

    def fold_haar(self) -> None:
        """Fold the Haar synthesis into the head for the fused inference path.

        The inverse transform of one 2x2 block is ``A^T @ bands`` followed by a pixel shuffle,
        so the head with weights ``A^T W`` (and bias ``A^T b``) and ``pixel_shuffle`` equal head
        + inverse transform. Kept as non-persistent buffers.
        """
        weight, bias = self.head.weight.detach(), self.head.bias.detach()  # (4 C, dim, k, k)
        channels = weight.shape[0] // 4
        bank = self.dwt.filters.reshape(4, 4).to(weight)  # (band, pixel)
        folded_w = torch.einsum('km,ckixy->cmixy', bank,
                                weight.reshape(channels, 4, *weight.shape[1:]))
        folded_b = torch.einsum('km,ck->cm', bank, bias.reshape(channels, 4))
        self.register_buffer('head_folded_weight', folded_w.reshape(weight.shape).contiguous(),
                             persistent=False)
        self.register_buffer('head_folded_bias', folded_b.reshape(-1).contiguous(),
                             persistent=False)

    @property
    def head_folded(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(weight, bias)`` of the head with the inverse Haar folded in, once folded."""
        weight = getattr(self, 'head_folded_weight', None)
        return None if weight is None else (weight, self.head_folded_bias)

    def __init__(self, config: SFDFuseLiteConfig) -> None:
        """Create the decoder; see the class docstring."""
        super().__init__()
        dim, slope = config.dim, config.negative_slope
        layers = [ConvAct(2 * dim, dim, slope)]
        layers += [ConvAct(dim, dim, slope) for _ in range(config.decoder_blocks - 1)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(dim, 4 * config.in_channels, 3, padding=1)
        self.dwt = HaarDWT()  # its filters are also the synthesis filters (orthonormal)

    def forward(self, vi: torch.Tensor, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Decode.

        :param vi: the visible image (in reconstruction: the encoded image) ``(B, C, H, W)``.
        :param base: ``(B, dim, H/2, W/2)``.
        :param detail: ``(B, dim, H/2, W/2)``.
        :return: ``(B, C, H, W)``: ``vi`` plus the decoded correction; clamped to ``[0, 1]``
            in eval mode (in training mode unclamped, so that every pixel has a gradient).
        """
        features = self.body(torch.cat([base, detail], dim=1))  # (B, dim, H/2, W/2)
        folded = self.head_folded
        if folded is not None and self.body[0]._can_fuse(features):
            weight, bias = folded
            correction = F.pixel_shuffle(F.conv2d(features, weight, bias, padding=1), 2)
            out = vi + correction
            return out.clamp_(0.0, 1.0)
        bands = self.head(features)  # (B, 4C, H/2, W/2)
        b, _, h, w = bands.shape
        correction = haar_idwt(bands.reshape(b, -1, 4, h, w),
                               self.dwt.filters.to(bands.dtype))  # (B, C, H, W)
        out = vi + correction
        return out if self.training else out.clamp(0.0, 1.0)


class SFDFuseLite(nn.Module):
    """The compact SFDFuse: encoder, base/detail fusion layers and decoder in one module.

    The same interface as :class:`sfdfuse_core.model.SFDFuse` (``encode``, ``fuse_features``,
    ``decode``, ``forward(vi, ir)`` for any size), so that training, the engine, ONNX export
    and the node run either network.

    :param config: sizes; ``None`` gives the shipped ones.
    """

    #: ``H`` and ``W`` given to :meth:`encode` / :meth:`decode` must be multiples of this.
    size_multiple = HaarDWT.size_multiple
    #: Smallest ``H`` and ``W`` for :meth:`encode` / :meth:`decode`.
    min_size = 2

    def __init__(self, config: SFDFuseLiteConfig | None = None) -> None:
        """Build the network; see the class docstring.

        :raises TypeError: ``config`` is not an :class:`SFDFuseLiteConfig`.
        """
        super().__init__()
        config = SFDFuseLiteConfig() if config is None else config
        if not isinstance(config, SFDFuseLiteConfig):
            raise TypeError(f'config must be an SFDFuseLiteConfig, got {type(config).__name__}')
        self.config = config
        self.encoder = LiteEncoder(config)
        self.base_fusion = BaseFusion(config)
        self.detail_fusion = DetailFusion(config)
        self.decoder = LiteDecoder(config)

    def _check_image(self, name: str, x: torch.Tensor, aligned: bool) -> None:
        multiple = self.size_multiple if aligned else 1
        check_image_batch(name, x, self.config.in_channels, multiple, multiple)

    def _feature_shape(self, image: torch.Tensor) -> tuple[int, int, int, int]:
        return (image.shape[0], self.config.dim, image.shape[2] // 2, image.shape[3] // 2)

    def _check_features(self, **features: torch.Tensor) -> tuple[int, ...]:
        shape = None
        for name, x in features.items():
            if not isinstance(x, torch.Tensor):
                raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
            if x.ndim != 4 or x.shape[1] != self.config.dim or (
                    shape is not None and tuple(x.shape) != shape):
                want = shape or f'(B, {self.config.dim}, h, w)'
                raise ValueError(f'{name} must have shape {want}, got {tuple(x.shape)}')
            shape = tuple(x.shape)
        return shape

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one modality into base and detail features.

        :param x: ``(B, C, H, W)`` float in ``[0, 1]``, ``H`` and ``W`` even.
        :return: ``(base, detail)``, each ``(B, dim, H/2, W/2)``.
        :raises TypeError: not a floating-point tensor.
        :raises ValueError: wrong shape or odd size.
        """
        self._check_image('x', x, aligned=True)
        return self.encoder(x)

    def fuse_features(self, base_v: torch.Tensor, detail_v: torch.Tensor, base_i: torch.Tensor,
                      detail_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse visible and infrared features with the two fusion layers.

        :param base_v: visible base features ``(B, dim, h, w)``.
        :param detail_v: visible detail features, same shape.
        :param base_i: infrared base features, same shape.
        :param detail_i: infrared detail features, same shape.
        :return: fused ``(base, detail)``, each ``(B, dim, h, w)``.
        :raises ValueError: the shapes differ or are not ``(B, dim, h, w)``.
        """
        self._check_features(base_v=base_v, detail_v=detail_v, base_i=base_i, detail_i=detail_i)
        return self.base_fusion(base_v, base_i), self.detail_fusion(detail_v, detail_i)

    def decode(self, vi: torch.Tensor, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Decode features into an image and add ``vi``.

        :param vi: ``(B, C, H, W)`` float in ``[0, 1]``, ``H`` and ``W`` even.
        :param base: ``(B, dim, H/2, W/2)``.
        :param detail: same shape as ``base``.
        :return: ``(B, C, H, W)`` (in ``[0, 1]`` in eval mode).
        :raises ValueError: wrong or mismatched shapes.
        :raises TypeError: ``vi`` is not a floating-point tensor.
        """
        self._check_image('vi', vi, aligned=True)
        shape = self._check_features(base=base, detail=detail)
        if shape != self._feature_shape(vi):
            raise ValueError(f'base and detail must have shape {self._feature_shape(vi)} for vi '
                             f'of shape {tuple(vi.shape)}, got {shape}')
        return self.decoder(vi, base, detail)

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Fuse a visible and an infrared image of any size.

        Pads bottom/right by one row/column where a size is odd (replicate), encodes both
        images in one batch, fuses, decodes and crops back to the input size.

        :param vi: visible (luminance) ``(B, C, H, W)`` float in ``[0, 1]``, ``H, W >= 1``.
        :param ir: infrared, same shape as ``vi``.
        :return: fused ``(B, C, H, W)`` (in ``[0, 1]`` in eval mode).
        :raises ValueError: wrong shapes, empty inputs, or ``vi`` and ``ir`` shapes differ.
        :raises TypeError: inputs are not floating-point tensors.
        """
        self._check_image('vi', vi, aligned=False)
        self._check_image('ir', ir, aligned=False)
        if vi.shape != ir.shape:
            raise ValueError(f'vi and ir must have the same shape, got {tuple(vi.shape)} and '
                             f'{tuple(ir.shape)}')
        batch, _, h, w = vi.shape
        both = torch.cat([vi, ir], dim=0)  # (2B, C, H, W)
        if h % 2 or w % 2:
            both = F.pad(both, (0, w % 2, 0, h % 2), mode='replicate')  # (2B, C, H', W')
        base, detail = self.encoder(both)  # each (2B, dim, H'/2, W'/2)
        base_f = self.base_fusion(base[:batch], base[batch:])
        detail_f = self.detail_fusion(detail[:batch], detail[batch:])
        fused = self.decoder(both[:batch], base_f, detail_f)  # (B, C, H', W')
        return fused[:, :, :h, :w]

    def fuse_for_cpu(self) -> bool:
        """Let every conv + LeakyReLU run as one oneDNN kernel in CPU float32 inference.

        Called by the inference engine for its CPU torch backend. It changes no weights and no
        result (the same kernel computes the convolution; the activation is its epilogue), and
        folds the fixed Haar analysis and synthesis into the embedding and head convolutions
        (pixel unshuffle / shuffle instead of the strided transforms). It saves passes over the
        feature maps. Training, autograd, ONNX export and other devices keep the plain path; the
        folded copies are taken from the weights at this call, so call it again after changing
        them.

        :return: whether the fused kernel is available in this torch build.
        """
        available = _fused_conv_available()
        for module in self.modules():
            if isinstance(module, (ConvAct, DetailFusion)):
                module.fused = available
        if available:
            with torch.no_grad():
                self.encoder.fold_haar()
                self.decoder.fold_haar()
        return available

    #: The CPU backend the inference engine picks for this network with ``backend='auto'``:
    #: measured faster than ONNX Runtime for it (``docs/PERFORMANCE.md``).
    cpu_backend = 'torch'

    def fold_deconv(self) -> 'SFDFuseLite':
        """Do nothing (the network has no difference convolutions); for the engine's interface.

        :return: ``self``.
        """
        return self
