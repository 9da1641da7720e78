"""BGR <-> YCbCr conversion as the published fusion protocol does it.

The CDDFuse/SFDFuse test scripts (Zhao et al., "CDDFuse: Correlation-Driven Dual-Branch Feature
Decomposition for Multi-Modality Image Fusion", CVPR 2023) read a colour visible image with
OpenCV, convert it with ``cv2.COLOR_BGR2YCrCb``, fuse the Y channel with the infrared image and
convert back with ``cv2.COLOR_YCrCb2BGR`` after putting the visible image's chroma back.

That is OpenCV's full-range ITU-R BT.601 conversion::

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cr = 0.713 (R - Y) + delta          R = Y + 1.403 (Cr - delta)
    Cb = 0.564 (B - Y) + delta          G = Y - 0.714 (Cr - delta) - 0.344 (Cb - delta)
                                        B = Y + 1.773 (Cb - delta)

with ``delta = 128`` for uint8 and ``delta = 0.5`` for floats in ``[0, 1]``. uint8 arrays go
through OpenCV itself (its fixed-point code, bit-exact with the protocol); float32/float64 arrays
are converted here with OpenCV's float coefficients in the input's precision (OpenCV has no
float64 path). OpenCV's forward and inverse coefficients are rounded to three decimals, so a
float round trip is exact only to about ``2e-4`` (in ``[0, 1]`` units); uint8 round trips are
within one grey level, as in OpenCV.

Unlike OpenCV these functions return and take the channels in ``(Y, Cb, Cr)`` order.
"""
from typing import Tuple

import cv2
import numpy as np

__all__ = ['bgr_to_ycbcr', 'ycbcr_to_bgr']

# OpenCV's float coefficients (modules/imgproc/src/color_yuv.simd.hpp, RGB2YCrCb_f/YCrCb2RGB_f).
_Y_R, _Y_G, _Y_B = 0.299, 0.587, 0.114
_CR_FROM_R_Y, _CB_FROM_B_Y = 0.713, 0.564
_R_FROM_CR, _G_FROM_CR, _G_FROM_CB, _B_FROM_CB = 1.403, -0.714, -0.344, 1.773

_FLOATS = (np.float32, np.float64)


def _check_dtype(arr: np.ndarray, name: str) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f'{name} must be a numpy array, got {type(arr).__name__}')
    if arr.dtype != np.uint8 and arr.dtype not in _FLOATS:
        raise TypeError(f'{name} must be uint8, float32 or float64, got {arr.dtype}')


def bgr_to_ycbcr(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a BGR image into its luminance and chroma (OpenCV's ``COLOR_BGR2YCrCb``).

    :param img: ``(H, W, 3)`` BGR array, uint8 (0..255) or float32/float64 (``[0, 1]``; values
        outside are converted by the same formula, not clipped).
    :return: ``(y, cb, cr)``, three ``(H, W)`` arrays of the input's dtype; chroma is centred on
        128 (uint8) or 0.5 (float).
    :raises TypeError: ``img`` is not a numpy array of a supported dtype.
    :raises ValueError: ``img`` is not ``(H, W, 3)``.
    """
    _check_dtype(img, 'img')
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'expected a BGR image of shape (H, W, 3), got {img.shape}')
    if img.dtype == np.uint8:
        ycrcb = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2YCrCb)
        return ycrcb[:, :, 0].copy(), ycrcb[:, :, 2].copy(), ycrcb[:, :, 1].copy()
    dtype = img.dtype.type
    b, g, r = img[:, :, 0], img[:, :, 1], img[:, :, 2]
    y = dtype(_Y_R) * r + dtype(_Y_G) * g + dtype(_Y_B) * b
    cr = (r - y) * dtype(_CR_FROM_R_Y) + dtype(0.5)
    cb = (b - y) * dtype(_CB_FROM_B_Y) + dtype(0.5)
    return y, cb, cr


def ycbcr_to_bgr(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """Merge luminance and chroma back into a BGR image (OpenCV's ``COLOR_YCrCb2BGR``).

    If all three planes are uint8 the conversion is OpenCV's own (saturated to 0..255). If any
    plane is a float array, uint8 planes are scaled to ``[0, 1]`` first and the result is float
    (float64 if any plane is float64, else float32), not clipped.

    :param y: ``(H, W)`` luminance, uint8 or float in ``[0, 1]``.
    :param cb: ``(H, W)`` blue-difference chroma, centred on 128 (uint8) or 0.5 (float).
    :param cr: ``(H, W)`` red-difference chroma, centred on 128 (uint8) or 0.5 (float).
    :return: ``(H, W, 3)`` BGR array, uint8 or float as described above.
    :raises TypeError: a plane is not a numpy array of a supported dtype.
    :raises ValueError: a plane is not 2-D or the shapes differ.
    """
    planes = {'y': y, 'cb': cb, 'cr': cr}
    for name, plane in planes.items():
        _check_dtype(plane, name)
        if plane.ndim != 2:
            raise ValueError(f'{name} must be a (H, W) plane, got shape {plane.shape}')
    if not (y.shape == cb.shape == cr.shape):
        raise ValueError(f'y, cb and cr must have the same shape, got {y.shape}, {cb.shape}, '
                         f'{cr.shape}')
    if y.dtype == cb.dtype == cr.dtype == np.uint8:
        return cv2.cvtColor(np.dstack((y, cr, cb)), cv2.COLOR_YCrCb2BGR)
    dtype = np.float64 if any(p.dtype == np.float64 for p in planes.values()) else np.float32
    yf, cbf, crf = (p.astype(dtype) / dtype(255.0) if p.dtype == np.uint8 else p.astype(dtype)
                    for p in (y, cb, cr))
    cr_d = crf - dtype(0.5)
    cb_d = cbf - dtype(0.5)
    r = yf + dtype(_R_FROM_CR) * cr_d
    g = yf + dtype(_G_FROM_CR) * cr_d + dtype(_G_FROM_CB) * cb_d
    b = yf + dtype(_B_FROM_CB) * cb_d
    return np.stack((b, g, r), axis=-1)
