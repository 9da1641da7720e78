"""Validation and conversion of the input image pairs every fusion path accepts.

Shared by :class:`sfdfuse_core.fusion.Fuser`, :class:`sfdfuse_core.inference.FusionEngine` and
the benchmarks; see :mod:`sfdfuse_core.fusion` for what is accepted and why.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from sfdfuse_core.color import bgr_to_ycbcr
from sfdfuse_core.imageio import is_gray_color

__all__ = ['FusionInputError', 'validate_pair', 'split_luma', 'check_image', 'gray_plane',
           'unit_float', 'to_uint8']

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# OpenCV's BGR->GRAY weights (the same as the Y of BT.601).
_GRAY_B, _GRAY_G, _GRAY_R = 0.114, 0.587, 0.299


class FusionInputError(ValueError):
    """An input image has the wrong type, shape, dtype, size or values."""


def check_image(img: np.ndarray, name: str) -> None:
    """Check one input image (see :mod:`sfdfuse_core.fusion` for what is accepted).

    :param img: the image.
    :param name: its name in messages.
    :raises FusionInputError: it is not accepted.
    """
    if not isinstance(img, np.ndarray):
        raise FusionInputError(f'{name} must be a numpy array, got {type(img).__name__}')
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise FusionInputError(f'{name} must have shape (H, W) or (H, W, 3), got {img.shape}')
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise FusionInputError(f'{name} is empty: shape {img.shape}')
    if img.dtype == np.uint8:
        return
    if img.dtype == np.uint16:
        raise FusionInputError(
            f'{name} is uint16: map it to 8 bit first (e.g. sfdfuse_core.thermal for raw '
            'thermal counts); accepted dtypes are uint8 and float32/float64 in [0, 1]')
    if img.dtype not in _FLOATS:
        raise FusionInputError(f'{name} has dtype {img.dtype}; accepted dtypes are uint8 and '
                               'float32/float64 in [0, 1]')
    if not np.isfinite(img).all():
        raise FusionInputError(f'{name} holds {int(np.count_nonzero(~np.isfinite(img)))} '
                               'non-finite values (NaN or inf)')
    low, high = float(img.min()), float(img.max())
    if low < 0.0 or high > 1.0:
        raise FusionInputError(f'{name} is {img.dtype} with values in [{low:g}, {high:g}]; '
                               'float images must lie in [0, 1]')


def validate_pair(vi: np.ndarray, ir: np.ndarray) -> None:
    """Check that a visible and an infrared image can be fused.

    :param vi: visible image, ``(H, W)`` gray or ``(H, W, 3)`` BGR; uint8, or float32/float64 in
        ``[0, 1]``.
    :param ir: infrared image, ``(H, W)`` or ``(H, W, 3)`` (converted to gray); same dtypes.
    :raises FusionInputError: an array is not a numpy array, has another shape or dtype, is empty,
        holds NaN/inf or float values outside ``[0, 1]``, or the two sizes differ.
    """
    check_image(vi, 'visible image')
    check_image(ir, 'infrared image')
    if vi.shape[:2] != ir.shape[:2]:
        raise FusionInputError(f'visible and infrared images differ in size: visible '
                               f'{vi.shape[1]}x{vi.shape[0]}, infrared '
                               f'{ir.shape[1]}x{ir.shape[0]} (W x H); align them first')


def gray_plane(img: np.ndarray) -> np.ndarray:
    """Convert a checked ``(H, W)`` / ``(H, W, 3)`` image to gray with OpenCV's weights."""
    if img.ndim == 2:
        return img
    if img.dtype == np.uint8:
        import cv2
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)
    dtype = img.dtype.type
    return (dtype(_GRAY_B) * img[:, :, 0] + dtype(_GRAY_G) * img[:, :, 1]
            + dtype(_GRAY_R) * img[:, :, 2])


def unit_float(plane: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 [0, 1]; floats -> float32."""
    if plane.dtype == np.uint8:
        return plane.astype(np.float32) / np.float32(255.0)
    return plane.astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float ``[0, 1]`` -> uint8, rounded to nearest and clipped (no min-max stretch)."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def split_luma(vi: np.ndarray) -> Tuple[np.ndarray, Optional[Tuple[np.ndarray, np.ndarray]]]:
    """Split a visible image into luminance and chroma the way :class:`Fuser` does.

    :param vi: visible image, ``(H, W)`` or ``(H, W, 3)`` BGR, uint8 or float in ``[0, 1]``.
    :return: ``(y, (cb, cr))`` for a colour image, ``(y, None)`` for a gray(-looking) one; planes
        keep the input's dtype.
    :raises FusionInputError: invalid input.
    """
    check_image(vi, 'visible image')
    if vi.ndim == 2:
        return vi, None
    if is_gray_color(vi):
        return vi[:, :, 0], None
    y, cb, cr = bgr_to_ycbcr(vi)
    return y, (cb, cr)
