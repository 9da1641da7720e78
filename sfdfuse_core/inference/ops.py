"""Pre- and post-processing of the fusion protocol as torch ops, so they run where the model runs.

These are the torch twins of :mod:`sfdfuse_core.color` and of the steps of
:meth:`sfdfuse_core.fusion.Fuser.__call__` (the CDDFuse/SFDFuse test protocol, Zhao et al.,
CVPR 2023): BGR -> YCbCr, fuse the luminance, put the visible chroma back, 8-bit output.

uint8 images use OpenCV's own fixed-point arithmetic (``modules/imgproc/src/color_yuv.simd.hpp``,
``RGB2YCrCb_i`` / ``YCrCb2RGB_i`` with 14-bit coefficients, ``RGB2Gray<uchar>`` with 15-bit ones;
round half up), in int32, so the planes are bit-exact with ``cv2.cvtColor``. Float images use the
float coefficients of :mod:`sfdfuse_core.color`. Every function takes the device from its input.

Images are ``(H, W)`` planes or ``(H, W, 3)`` BGR tensors (the numpy layout, copied to the device
as they are); the network's tensors are ``(1, 1, H, W)`` float in ``[0, 1]``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['bgr_to_ycbcr', 'ycbcr_to_bgr', 'bgr_to_gray', 'to_unit', 'unit_to_uint8',
           'pad_to_multiple', 'padded_size', 'is_gray_bgr']

_SHIFT = 14
_HALF = 1 << (_SHIFT - 1)
_DELTA = 128
# OpenCV's fixed-point coefficients (x 2**14).
_Y_B, _Y_G, _Y_R = 1868, 9617, 4899
# cv2.COLOR_BGR2GRAY on uint8 uses 15-bit coefficients instead.
_GRAY_SHIFT = 15
_GRAY_B, _GRAY_G, _GRAY_R = 3735, 19235, 9798
_CR_FROM_R_Y, _CB_FROM_B_Y = 11682, 9241
_R_FROM_CR, _G_FROM_CR, _G_FROM_CB, _B_FROM_CB = 22987, -11698, -5636, 29049
# OpenCV's float coefficients (same as sfdfuse_core.color).
_FY_R, _FY_G, _FY_B = 0.299, 0.587, 0.114
_F_CR, _F_CB = 0.713, 0.564
_F_R_CR, _F_G_CR, _F_G_CB, _F_B_CB = 1.403, -0.714, -0.344, 1.773


def _check_bgr(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f'expected a torch.Tensor, got {type(img).__name__}')
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected a BGR image of shape (H, W, 3), got {tuple(img.shape)}')
    if img.dtype != torch.uint8 and not img.is_floating_point():
        raise TypeError(f'expected uint8 or floating-point values, got {img.dtype}')


def _descale(x: torch.Tensor) -> torch.Tensor:
    """Divide by 2**14 rounding half up, as OpenCV's ``CV_DESCALE(x, 14)`` (int32)."""
    return (x + _HALF) >> _SHIFT


def bgr_to_gray(img: torch.Tensor) -> torch.Tensor:
    """BGR -> gray with OpenCV's weights (``cv2.COLOR_BGR2GRAY``; bit-exact for uint8).

    :param img: ``(H, W, 3)`` BGR, uint8 or float in ``[0, 1]``.
    :return: ``(H, W)`` of the input's dtype.
    :raises TypeError: not a tensor, or an integer dtype other than uint8.
    :raises ValueError: not ``(H, W, 3)``.
    """
    _check_bgr(img)
    if img.dtype == torch.uint8:
        b, g, r = img.to(torch.int32).unbind(dim=2)
        total = b * _GRAY_B + g * _GRAY_G + r * _GRAY_R + (1 << (_GRAY_SHIFT - 1))
        return (total >> _GRAY_SHIFT).to(torch.uint8)
    b, g, r = img.unbind(dim=2)
    return _FY_R * r + _FY_G * g + _FY_B * b


def bgr_to_ycbcr(img: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a BGR image into ``(Y, Cb, Cr)`` (OpenCV's ``COLOR_BGR2YCrCb``).

    :param img: ``(H, W, 3)`` BGR; uint8 (bit-exact with OpenCV) or float in ``[0, 1]``.
    :return: three ``(H, W)`` planes of the input's dtype; chroma centred on 128 (uint8) or 0.5.
    :raises TypeError: not a tensor, or an integer dtype other than uint8.
    :raises ValueError: not ``(H, W, 3)``.
    """
    _check_bgr(img)
    if img.dtype == torch.uint8:
        b, g, r = img.to(torch.int32).unbind(dim=2)
        y = _descale(b * _Y_B + g * _Y_G + r * _Y_R)
        cr = _descale((r - y) * _CR_FROM_R_Y + (_DELTA << _SHIFT)).clamp_(0, 255)
        cb = _descale((b - y) * _CB_FROM_B_Y + (_DELTA << _SHIFT)).clamp_(0, 255)
        return y.to(torch.uint8), cb.to(torch.uint8), cr.to(torch.uint8)
    b, g, r = img.unbind(dim=2)
    y = _FY_R * r + _FY_G * g + _FY_B * b
    return y, (b - y) * _F_CB + 0.5, (r - y) * _F_CR + 0.5


def ycbcr_to_bgr(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """Merge ``(Y, Cb, Cr)`` planes into BGR (OpenCV's ``COLOR_YCrCb2BGR``).

    All uint8: OpenCV's fixed-point conversion, saturated (bit-exact). Otherwise the planes must
    all be float in ``[0, 1]`` units and the float result is not clipped.

    :param y: ``(H, W)`` luminance.
    :param cb: ``(H, W)`` blue-difference chroma, centred on 128 (uint8) or 0.5 (float).
    :param cr: ``(H, W)`` red-difference chroma.
    :return: ``(H, W, 3)`` BGR, uint8 or float.
    :raises ValueError: shapes differ or are not 2-D.
    :raises TypeError: uint8 and float planes are mixed.
    """
    if not (y.ndim == 2 and y.shape == cb.shape == cr.shape):
        raise ValueError(f'y, cb and cr must be (H, W) planes of one shape, got '
                         f'{tuple(y.shape)}, {tuple(cb.shape)}, {tuple(cr.shape)}')
    kinds = {p.dtype == torch.uint8 for p in (y, cb, cr)}
    if len(kinds) != 1:
        raise TypeError(f'planes must be all uint8 or all float, got {y.dtype}, {cb.dtype}, '
                        f'{cr.dtype}')
    if y.dtype == torch.uint8:
        yi = y.to(torch.int32)
        cbi = cb.to(torch.int32) - _DELTA
        cri = cr.to(torch.int32) - _DELTA
        b = yi + _descale(cbi * _B_FROM_CB)
        g = yi + _descale(cbi * _G_FROM_CB + cri * _G_FROM_CR)
        r = yi + _descale(cri * _R_FROM_CR)
        return torch.stack((b, g, r), dim=-1).clamp_(0, 255).to(torch.uint8)
    cb_d, cr_d = cb - 0.5, cr - 0.5
    return torch.stack((y + _F_B_CB * cb_d, y + _F_G_CR * cr_d + _F_G_CB * cb_d,
                        y + _F_R_CR * cr_d), dim=-1)


def is_gray_bgr(img: torch.Tensor) -> torch.Tensor:
    """Whether a BGR image has three equal channels, as a 0-d bool tensor (no host sync).

    :param img: ``(H, W, 3)``.
    :return: 0-d ``torch.bool`` on the image's device.
    """
    return ((img[:, :, 0] == img[:, :, 1]) & (img[:, :, 1] == img[:, :, 2])).all()


def to_unit(plane: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 0..255 -> ``dtype`` in ``[0, 1]``; floats are only cast.

    :param plane: any shape, uint8 or float.
    :param dtype: floating output dtype.
    :return: same shape, ``dtype``.
    """
    if plane.dtype == torch.uint8:
        return plane.to(dtype) / 255.0
    return plane.to(dtype)


def unit_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float ``[0, 1]`` -> uint8: scaled, rounded half to even (as ``np.rint``) and clipped.

    :param x: any shape, floating point.
    :return: same shape, uint8.
    """
    return torch.round(x.float() * 255.0).clamp_(0, 255).to(torch.uint8)


def padded_size(height: int, width: int, multiple: int, min_size: int) -> Tuple[int, int]:
    """Return the size the network runs at: sides rounded up to ``multiple``, >= ``min_size``.

    :param height: image height ``H >= 1``.
    :param width: image width ``W >= 1``.
    :param multiple: ``size_multiple`` of the model.
    :param min_size: ``min_size`` of the model.
    :return: ``(H', W')``.
    """
    return (max(-(-height // multiple) * multiple, min_size),
            max(-(-width // multiple) * multiple, min_size))


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` bottom/right exactly as :meth:`SFDFuse.forward` does.

    Reflect padding, or replicate where the image is too small to reflect.

    :param x: ``(B, C, H, W)`` float.
    :param multiple: ``size_multiple`` of the model.
    :param min_size: ``min_size`` of the model.
    :return: ``(B, C, H', W')`` with ``(H', W') = padded_size(H, W, ...)``; ``x`` itself when no
        padding is needed.
    """
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, w, multiple, min_size)
    pad_h, pad_w = ph - h, pw - w
    if not (pad_h or pad_w):
        return x
    mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
