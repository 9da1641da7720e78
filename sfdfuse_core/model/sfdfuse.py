"""The SFDFuse infrared-visible fusion network: encoder, fusion layers, decoder.

Re-implements the public SFDFuse code (``zxp771/SFDFuse``, ``net.py``), a successor of CDDFuse
(Zhao et al., "CDDFuse: Correlation-Driven Dual-Branch Feature Decomposition for Multi-Modality
Image Fusion", CVPR 2023, ``Zhaozixiang1228/MMIF-CDDFuse``). Differences from the original:

- any input size works: :meth:`SFDFuse.forward` pads to the sizes the network needs and crops
  back (the original drops the last row/column of odd-sized images);
- the Haar filters are a buffer and no ``.cuda()`` is called, so CPU and GPU share the code
  (the original's difference convolutions allocate ``torch.cuda.FloatTensor`` and fail on CPU);
- modules the original builds but never runs (the decoder's ``reduce_channel`` and
  ``fusion2``, the inverse-wavelet filters, unused activations) are left out.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.model.blocks import (CGAFusion, ConvFormerBlock, DEConv, DualGatedFFN,
                                       FeatureInteractionBlock, HaarDWT, INNNode,
                                       LiteTransformerBlock, RestormerBlock, ShuffleGatedFFN,
                                       check_image_batch)

__all__ = ['DetailBranch', 'SFDFuseEncoder', 'SFDFuseDecoder', 'SFDFuse']


def _transformer_stage(config: SFDFuseConfig, restormer_blocks: int,
                       convformer_blocks: int) -> nn.Sequential:
    """Restormer blocks followed by ConvFormer blocks, all of width ``config.dim``.

    :param config: network configuration.
    :param restormer_blocks: number of Restormer blocks.
    :param convformer_blocks: number of ConvFormer blocks.
    :return: the stage, ``(B, dim, H, W) -> (B, dim, H, W)``.
    """
    restormers = [RestormerBlock(config.dim, config.num_heads, config.ffn_expansion_factor,
                                 config.bias, config.ffn_kernel_size)
                  for _ in range(restormer_blocks)]
    convformers = [ConvFormerBlock(config.dim, config.convformer_sepconv_expansion,
                                   config.convformer_kernel_size, config.convformer_mlp_ratio,
                                   config.layer_scale_init, config.drop_path)
                   for _ in range(convformer_blocks)]
    return nn.Sequential(*restormers, *convformers)


class DetailBranch(nn.Module):
    """CDDFuse's detail branch: invertible coupling nodes over the two channel halves."""

    def __init__(self, config: SFDFuseConfig) -> None:
        """Create the nodes.

        :param config: network configuration (``dim``, ``detail_nodes``, ``inn_expand_ratio``).
        """
        super().__init__()
        self.nodes = nn.ModuleList(INNNode(config.dim, config.inn_expand_ratio)
                                   for _ in range(config.detail_nodes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Extract detail features.

        :param x: ``(B, dim, H, W)``.
        :return: ``(B, dim, H, W)``.
        """
        z1, z2 = x.chunk(2, dim=1)  # each (B, dim/2, H, W)
        for node in self.nodes:
            z1, z2 = node(z1, z2)
        return torch.cat([z1, z2], dim=1)


class SFDFuseEncoder(nn.Module):
    """Encoder shared by both modalities; returns base and detail features.

    A spatial branch (transformer stage, then the base and detail branches) is refined by a
    frequency branch (Haar DWT of the embedding) through two feature-interaction blocks.
    """

    def __init__(self, config: SFDFuseConfig) -> None:
        """Create the encoder.

        :param config: network configuration.
        """
        super().__init__()
        dim = config.dim
        self.patch_embed = nn.Conv2d(config.in_channels, dim, kernel_size=3, padding=1,
                                     bias=config.bias)
        self.dwt = HaarDWT()
        self.high_up = nn.Sequential(
            nn.ConvTranspose2d(3 * dim, dim, kernel_size=2, stride=2),
            nn.LeakyReLU(),
        )
        self.blocks = _transformer_stage(config, config.encoder_restormer_blocks,
                                         config.encoder_convformer_blocks)
        self.base = LiteTransformerBlock(dim, config.num_heads, config.base_ffn_expansion_factor,
                                         config.bias)
        self.detail = DetailBranch(config)
        self.base_interaction = FeatureInteractionBlock(
            dim, config.num_heads, config.bias,
            ShuffleGatedFFN(dim, config.ffn_expansion_factor, config.bias,
                            config.ffn_kernel_size))
        self.detail_interaction = FeatureInteractionBlock(
            dim, config.num_heads, config.bias,
            DualGatedFFN(dim, config.ffn_expansion_factor, config.bias))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one modality.

        :param x: ``(B, in_channels, H, W)``, ``H`` and ``W`` even.
        :return: base and detail features, each ``(B, dim, H, W)``.
        """
        embedded = self.patch_embed(x)  # (B, dim, H, W)
        ll, lh, hl, hh = self.dwt(embedded).unbind(dim=2)  # each (B, dim, H/2, W/2)
        low = F.interpolate(ll, size=embedded.shape[-2:], mode='bilinear', align_corners=False)
        high = torch.cat([lh, hl, hh], dim=1)  # (B, 3*dim, H/2, W/2)
        high = self.high_up(high)  # (B, dim, H, W)
        features = self.blocks(embedded)
        base = self.base_interaction(self.base(features), low)
        detail = self.detail_interaction(self.detail(features), high)
        return base, detail


class SFDFuseDecoder(nn.Module):
    """Decoder: CGA fusion of base and detail, a residual transformer stage, a conv head."""

    def __init__(self, config: SFDFuseConfig) -> None:
        """Create the decoder.

        :param config: network configuration.
        """
        super().__init__()
        self.fusion = CGAFusion(config.dim, config.cga_reduction, config.cga_kernel_size)
        self.blocks = _transformer_stage(config, config.decoder_restormer_blocks,
                                         config.decoder_convformer_blocks)
        self.head = nn.Sequential(
            nn.Conv2d(config.dim, config.head_channels, kernel_size=3, padding=1,
                      bias=config.bias),
            nn.LeakyReLU(),
            nn.Conv2d(config.head_channels, config.in_channels, kernel_size=3, padding=1,
                      bias=config.bias),
        )

    def forward(self, vi: torch.Tensor, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Decode.

        :param vi: the visible (or, in reconstruction, the encoded) image ``(B, 1, H, W)``.
        :param base: ``(B, dim, H, W)``.
        :param detail: ``(B, dim, H, W)``.
        :return: ``(B, 1, H, W)`` in ``(0, 1)``.
        """
        fused = self.fusion(base, detail)  # (B, dim, H, W)
        features = self.blocks(fused) + fused
        return torch.sigmoid(self.head(features) + vi)


class SFDFuse(nn.Module):
    """SFDFuse: shared encoder, base/detail fusion layers and decoder in one module.

    ``encode``, ``fuse_features`` and ``decode`` expose the pieces the two training phases need;
    ``forward(vi, ir)`` fuses images of any size.
    """

    def __init__(self, config: SFDFuseConfig | None = None) -> None:
        """Build the network.

        :param config: sizes; ``None`` gives the published ones.
        :raises TypeError: ``config`` is not an :class:`SFDFuseConfig`.
        """
        super().__init__()
        config = SFDFuseConfig() if config is None else config
        if not isinstance(config, SFDFuseConfig):
            raise TypeError(f'config must be an SFDFuseConfig, got {type(config).__name__}')
        self.config = config
        dim = config.dim
        self.encoder = SFDFuseEncoder(config)
        self.base_fusion = FeatureInteractionBlock(
            dim, config.num_heads, config.bias,
            ShuffleGatedFFN(dim, config.ffn_expansion_factor, config.bias,
                            config.ffn_kernel_size))
        self.detail_fusion = FeatureInteractionBlock(
            dim, config.num_heads, config.bias,
            DualGatedFFN(dim, config.ffn_expansion_factor, config.bias))
        self.decoder = SFDFuseDecoder(config)

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` given to :meth:`encode` / :meth:`decode` must be multiples of this."""
        return HaarDWT.size_multiple

    @property
    def min_size(self) -> int:
        """Smallest ``H`` and ``W`` for :meth:`encode` / :meth:`decode`.

        The CGA fusion's reflect padding needs more than ``cga_kernel_size // 2`` pixels; rounded
        up to a multiple of :attr:`size_multiple`.
        """
        need = self.config.cga_kernel_size // 2 + 1
        return -(-need // self.size_multiple) * self.size_multiple

    # ------------------------------------------------------------------------------------------
    # validation
    # ------------------------------------------------------------------------------------------

    def _check_image(self, name: str, x: torch.Tensor, aligned: bool) -> None:
        """Raise unless ``x`` is a non-empty float ``(B, in_channels, H, W)`` batch.

        :param name: argument name for the message.
        :param x: the tensor to check.
        :param aligned: also require ``H``, ``W`` to be multiples of ``size_multiple`` and at
            least ``min_size``.
        :raises TypeError: not a floating-point tensor.
        :raises ValueError: wrong shape, empty, or (``aligned``) wrong size.
        """
        if aligned:
            check_image_batch(name, x, self.config.in_channels, self.size_multiple,
                              self.min_size)
        else:
            check_image_batch(name, x, self.config.in_channels)

    def _check_features(self, name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Raise unless ``x`` is a tensor of exactly ``shape``.

        :param name: argument name for the message.
        :param x: the tensor to check.
        :param shape: expected ``(B, dim, H, W)``.
        :raises TypeError: not a tensor.
        :raises ValueError: wrong shape.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
        if tuple(x.shape) != shape:
            raise ValueError(f'{name} must have shape {shape}, got {tuple(x.shape)}')

    # ------------------------------------------------------------------------------------------
    # the pieces
    # ------------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one modality into base and detail features.

        :param x: ``(B, 1, H, W)`` float in ``[0, 1]``; ``H``, ``W`` multiples of
            :attr:`size_multiple` and at least :attr:`min_size`.
        :return: ``(base, detail)``, each ``(B, dim, H, W)``.
        :raises ValueError: wrong shape or size.
        :raises TypeError: not a floating-point tensor.
        """
        self._check_image('x', x, aligned=True)
        return self.encoder(x)

    def fuse_features(self, base_v: torch.Tensor, detail_v: torch.Tensor, base_i: torch.Tensor,
                      detail_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse visible and infrared features with the two feature-interaction layers.

        :param base_v: visible base features ``(B, dim, H, W)``.
        :param detail_v: visible detail features ``(B, dim, H, W)``.
        :param base_i: infrared base features ``(B, dim, H, W)``.
        :param detail_i: infrared detail features ``(B, dim, H, W)``.
        :return: fused ``(base, detail)``, each ``(B, dim, H, W)``.
        :raises ValueError: the four shapes differ or are not ``(B, dim, H, W)``.
        """
        if not isinstance(base_v, torch.Tensor) or base_v.ndim != 4 \
                or base_v.shape[1] != self.config.dim:
            got = tuple(base_v.shape) if isinstance(base_v, torch.Tensor) else type(base_v)
            raise ValueError(f'base_v must have shape (B, {self.config.dim}, H, W), got {got}')
        shape = tuple(base_v.shape)
        for name, x in (('detail_v', detail_v), ('base_i', base_i), ('detail_i', detail_i)):
            self._check_features(name, x, shape)
        return self.base_fusion(base_v, base_i), self.detail_fusion(detail_v, detail_i)

    def decode(self, vi: torch.Tensor, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """Decode features into an image, adding ``vi`` before the final sigmoid.

        :param vi: ``(B, 1, H, W)`` float in ``[0, 1]`` (the visible image, or in phase-I
            reconstruction the image that was encoded).
        :param base: ``(B, dim, H, W)``.
        :param detail: ``(B, dim, H, W)``.
        :return: ``(B, 1, H, W)`` in ``(0, 1)``.
        :raises ValueError: wrong or mismatched shapes.
        :raises TypeError: ``vi`` is not a floating-point tensor.
        """
        self._check_image('vi', vi, aligned=True)
        shape = (vi.shape[0], self.config.dim, vi.shape[2], vi.shape[3])
        self._check_features('base', base, shape)
        self._check_features('detail', detail, shape)
        return self.decoder(vi, base, detail)

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Fuse a visible and an infrared image of any size.

        Pads bottom/right (reflect, or replicate where the image is too small to reflect) to the
        size the network needs, encodes both images in one batch, fuses, decodes, and crops the
        result back to the input size.

        :param vi: visible (luminance) ``(B, 1, H, W)`` float in ``[0, 1]``, ``H, W >= 1``.
        :param ir: infrared ``(B, 1, H, W)`` float in ``[0, 1]``, same shape as ``vi``.
        :return: fused ``(B, 1, H, W)`` in ``(0, 1)``.
        :raises ValueError: wrong shapes, empty inputs, or ``vi`` and ``ir`` shapes differ.
        :raises TypeError: inputs are not floating-point tensors.
        """
        self._check_image('vi', vi, aligned=False)
        self._check_image('ir', ir, aligned=False)
        if vi.shape != ir.shape:
            raise ValueError(f'vi and ir must have the same shape, got {tuple(vi.shape)} and '
                             f'{tuple(ir.shape)}')
        batch, _, h, w = vi.shape
        m = self.size_multiple
        pad_h = max(-(-h // m) * m, self.min_size) - h
        pad_w = max(-(-w // m) * m, self.min_size) - w
        both = torch.cat([vi, ir], dim=0)  # (2B, 1, H, W)
        if pad_h or pad_w:
            mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
            both = F.pad(both, (0, pad_w, 0, pad_h), mode=mode)  # (2B, 1, H', W')
        base, detail = self.encoder(both)  # each (2B, dim, H', W')
        base_f, detail_f = self.fuse_features(base[:batch], detail[:batch], base[batch:],
                                              detail[batch:])
        fused = self.decoder(both[:batch], base_f, detail_f)  # (B, 1, H', W')
        return fused[:, :, :h, :w]

    def fold_deconv(self) -> 'SFDFuse':
        """Replace every :class:`DEConv` by the single ``nn.Conv2d`` it equals (for inference).

        The output is unchanged up to float rounding. Works in place and returns ``self``; the
        state-dict keys of the folded convolutions change, so save weights before folding.

        :return: ``self``.
        """
        targets = [name for name, module in self.named_modules() if isinstance(module, DEConv)]
        for name in targets:
            parent_name, _, child_name = name.rpartition('.')
            parent = self.get_submodule(parent_name)
            setattr(parent, child_name, self.get_submodule(name).to_conv())
        return self
