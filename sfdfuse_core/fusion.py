"""The fusion API: a visible and an infrared image in, one fused image out.

Colour follows the published CDDFuse/SFDFuse protocol (Zhao et al., CVPR 2023): the visible image
is converted to YCbCr (:mod:`sfdfuse_core.color`), its luminance Y is fused with the infrared
image, and the visible image's chroma is put back. A gray visible image, or a 3-channel one whose
channels are equal (as TNO's files), gives a gray output. A 3-channel infrared image is converted
to gray with OpenCV's BGR->GRAY weights.

Methods (:data:`METHODS`):

``sfdfuse``
    the SFDFuse network (eval mode, DEConv folded, under ``torch.inference_mode()``), run by
    :class:`sfdfuse_core.inference.FusionEngine` (bf16, compiled and CUDA graphs on a GPU).
``mean``
    ``(Y + I) / 2`` on the luminance, the classic baseline of fusion tables.
``max``
    ``max(Y, I)`` per pixel on the luminance.

The fused luminance is scaled to 0..255, rounded and clipped. Like the published protocol, and
unlike the public research scripts' undocumented habit, **no per-image min-max stretch** is
applied to the output: a dark scene stays dark.

Accepted inputs (:func:`validate_pair`): ``vi`` is ``(H, W)`` or ``(H, W, 3)`` BGR; ``ir`` is
``(H, W)`` or ``(H, W, 3)``; each is ``uint8`` (0..255) or ``float32``/``float64`` in ``[0, 1]``
(dtypes may differ between the two). Both have the same ``H, W`` (at least 1x1) and finite values.
``uint16`` is refused for both: raw thermal counts (often 14-bit with an offset) would come out
almost black if divided by 65535; map them to 8 bit first (:mod:`sfdfuse_core.thermal`).
"""
from __future__ import annotations

import os
from typing import Iterable, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from sfdfuse_core.color import ycbcr_to_bgr
from sfdfuse_core.device import resolve_device
from sfdfuse_core.inference.engine import FusionEngine
from sfdfuse_core.inputs import (FusionInputError, check_image, gray_plane, split_luma, to_uint8,
                                 unit_float, validate_pair)
from sfdfuse_core.model.registry import network_of
from sfdfuse_core.weights import WeightsNotFoundError, load_model

__all__ = ['METHODS', 'FusionInputError', 'Fuser', 'fuse_images', 'resolve_device',
           'split_luma', 'validate_pair']

#: Fusion methods: the network and the two classic baselines.
METHODS = ('sfdfuse', 'mean', 'max')


class Fuser:
    """Fuses image pairs with one method, holding the model (loaded once) between calls.

    ``Fuser(...)(vi, ir)`` returns the fused uint8 image: gray ``(H, W)`` when the visible image
    is gray or gray-looking, BGR ``(H, W, 3)`` otherwise. See the module docstring for inputs.
    ``'sfdfuse'`` runs on :class:`sfdfuse_core.inference.FusionEngine` (:attr:`engine`): colour
    conversion, network and 8-bit rounding on the device, compiled on a GPU.

    :param method: one of :data:`METHODS`.
    :param weights: weights file, checkpoint or shipped network name (``sfdfuse-lite``,
        ``sfdfuse``) for ``'sfdfuse'``; ``None`` loads the device's default shipped weights
        (:func:`sfdfuse_core.weights.default_weights_path`: the compact network on the CPU).
        Ignored by ``mean``/``max``.
    :param device: ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a ``torch.device``.
    :param model: an already built network to use instead of loading ``weights``. The Fuser
        takes it over: it is moved to ``device``, put in eval mode and folded in place
        (``fold_deconv()``), and converted to channels-last; pass a copy if you keep training it.
    :param precision: ``'sfdfuse'`` only: ``'auto'`` (bf16 on a GPU, fp32 on the CPU), ``'fp32'``,
        ``'bf16'`` or ``'fp16'`` (see :class:`sfdfuse_core.inference.FusionEngine`).
    :param compile: ``'sfdfuse'`` only: ``'auto'`` (compiled + CUDA graphs on a GPU, eager on the
        CPU), ``'none'``, ``'inductor'``, ``'cudagraphs'`` or ``'inductor+cudagraphs'``.
    :param warmup_shapes: ``'sfdfuse'`` only: ``(height, width)`` sizes to compile for at once.
    :param threads: ``'sfdfuse'`` only: CPU threads of the engine (``None``: all cores).
    :raises ValueError: unknown method or device, or both ``weights`` and ``model`` given.
    :raises TypeError: ``model`` is not an ``nn.Module``.
    :raises sfdfuse_core.weights.WeightsError: the weights cannot be loaded (a missing file says
        so and suggests another weights file or the ``mean`` method).
    """

    def __init__(self, method: str = 'sfdfuse',
                 weights: Optional[Union[str, os.PathLike]] = None,
                 device: Union[str, torch.device] = 'auto',
                 model: Optional[nn.Module] = None, precision: str = 'auto',
                 compile: str = 'auto',
                 warmup_shapes: Iterable[Tuple[int, int]] = (),
                 threads: Optional[int] = None) -> None:
        """Resolve the device, then load the weights or take over ``model`` (see the class)."""
        if method not in METHODS:
            raise ValueError(f'unknown fusion method {method!r}; expected one of {METHODS}')
        self.method = method
        self.device = resolve_device(device)
        self.model: Optional[nn.Module] = None
        self.engine = None
        #: Network name (``sfdfuse``, ``sfdfuse-lite``) for ``'sfdfuse'``, else ``None``.
        self.network: Optional[str] = None
        #: The weights file the network was loaded from (``None``: a given model, or a baseline).
        self.weights_path: Optional[str] = None
        if method != 'sfdfuse':
            return
        if model is not None:
            if weights is not None:
                raise ValueError('give either weights or model, not both')
            if not isinstance(model, nn.Module):
                raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        else:
            try:
                model = load_model(weights, device=self.device)
            except WeightsNotFoundError as exc:
                if weights is not None:
                    raise
                raise WeightsNotFoundError(
                    f"{exc}. Pass a weights file (weights=PATH, or --weights PATH on the command "
                    "line) or use a baseline that needs none (method 'mean' or 'max', "
                    '--method mean)') from exc
        self.network = network_of(model)
        self.weights_path = getattr(model, 'weights_path', None)
        self.engine = FusionEngine(model=model, device=self.device, precision=precision,
                                   compile=compile, warmup_shapes=warmup_shapes,
                                   threads=threads)
        self.model = self.engine.model

    def __repr__(self) -> str:
        """Describe the method and device."""
        return f'Fuser(method={self.method!r}, device={str(self.device)!r})'

    def fuse_luma(self, y: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """Fuse a visible luminance plane with a gray infrared plane.

        :param y: ``(H, W)`` visible luminance, uint8 or float32/float64 in ``[0, 1]``.
        :param ir: ``(H, W)`` infrared, same conventions.
        :return: ``(H, W)`` float32 fused luminance in ``[0, 1]`` (the network's sigmoid output,
            not stretched).
        :raises FusionInputError: a plane is not 2-D, the sizes differ, or the values are invalid.
        :raises RuntimeError: the network returns another shape or non-finite values.
        """
        for plane, name in ((y, 'visible luminance'), (ir, 'infrared image')):
            check_image(plane, name)
            if plane.ndim != 2:
                raise FusionInputError(f'{name} must be a (H, W) plane, got {plane.shape}')
        if y.shape != ir.shape:
            raise FusionInputError(f'visible luminance {y.shape} and infrared {ir.shape} differ '
                                   'in size')
        y_f, ir_f = unit_float(y), unit_float(ir)
        if self.method == 'mean':
            return (y_f + ir_f) * np.float32(0.5)
        if self.method == 'max':
            return np.maximum(y_f, ir_f)
        return self._run_model(y_f, ir_f)

    def _run_model(self, y: np.ndarray, ir: np.ndarray) -> np.ndarray:
        device = self.engine.device
        vi_t = torch.from_numpy(np.ascontiguousarray(y))[None, None].to(device)
        ir_t = torch.from_numpy(np.ascontiguousarray(ir))[None, None].to(device)
        fused = self.engine.fuse_luma_tensor(vi_t, ir_t)[0, 0].cpu().numpy()  # (H, W)
        if not np.isfinite(fused).all():
            raise RuntimeError('the model produced non-finite values (NaN or inf); the weights '
                               'may be damaged')
        return fused

    def __call__(self, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """Fuse one visible/infrared pair.

        :param vi: visible image, ``(H, W)`` or ``(H, W, 3)`` BGR, uint8 or float in ``[0, 1]``.
        :param ir: infrared image of the same size, ``(H, W)`` or ``(H, W, 3)``.
        :return: uint8 fused image: ``(H, W)`` for a gray(-looking) visible image, else BGR
            ``(H, W, 3)`` with the visible image's chroma.
        :raises FusionInputError: see :func:`validate_pair`.
        """
        validate_pair(vi, ir)
        if self.engine is not None:
            return self.engine._fuse_checked(vi, ir)
        y, chroma = split_luma(vi)
        ir_gray = gray_plane(ir)
        if y.dtype == np.uint8 and ir_gray.dtype == np.uint8:
            # 8-bit baselines in exact arithmetic: round((Y + I) / 2) half to even, as the
            # published evaluation's baseline rows (float32 in [0, 1] would make .5 a coin toss).
            if self.method == 'mean':
                fused_u8 = np.round((y.astype(np.float64) + ir_gray) / 2.0).astype(np.uint8)
                return fused_u8 if chroma is None else ycbcr_to_bgr(fused_u8, *chroma)
            if self.method == 'max':
                fused_u8 = np.maximum(y, ir_gray)
                return fused_u8 if chroma is None else ycbcr_to_bgr(fused_u8, *chroma)
        fused = self.fuse_luma(y, ir_gray)
        if chroma is None:
            return to_uint8(fused)
        cb, cr = chroma
        if vi.dtype == np.uint8:
            # The protocol's path: 8-bit fused Y + the visible image's 8-bit chroma, OpenCV back.
            return ycbcr_to_bgr(to_uint8(fused), cb, cr)
        return to_uint8(ycbcr_to_bgr(fused.astype(vi.dtype), cb, cr))


def fuse_images(vi: np.ndarray, ir: np.ndarray, method: str = 'sfdfuse',
                model: Optional[nn.Module] = None,
                device: Union[str, torch.device] = 'cpu') -> np.ndarray:
    """Fuse one visible/infrared pair (convenience wrapper around :class:`Fuser`).

    For ``'sfdfuse'`` without ``model`` this loads the shipped weights on every call: build a
    :class:`Fuser` once when fusing many images.

    :param vi: visible image, ``(H, W)`` or ``(H, W, 3)`` BGR, uint8 or float in ``[0, 1]``.
    :param ir: infrared image of the same size, ``(H, W)`` or ``(H, W, 3)``.
    :param method: one of :data:`METHODS`.
    :param model: network for ``'sfdfuse'`` (moved to ``device``, put in eval mode and folded in
        place, see :class:`Fuser`); ignored by ``mean``/``max``.
    :param device: device for ``'sfdfuse'``.
    :return: uint8 fused image, ``(H, W)`` or ``(H, W, 3)`` (see :meth:`Fuser.__call__`).
    :raises FusionInputError: invalid inputs (see :func:`validate_pair`).
    :raises ValueError: unknown method or device.
    :raises sfdfuse_core.weights.WeightsError: the weights cannot be loaded.
    """
    if method not in METHODS:
        raise ValueError(f'unknown fusion method {method!r}; expected one of {METHODS}')
    validate_pair(vi, ir)
    if method != 'sfdfuse':
        model, device = None, 'cpu'
    return Fuser(method=method, device=device, model=model)(vi, ir)
