"""Thermal pre-processing: 16-bit/float -> 8-bit mapping and alignment to the RGB geometry.

Radiometric thermal cameras publish ``mono16`` (14-bit counts in a 16-bit word, e.g. FLIR
Boson/Lepton) or ``32FC1`` (temperatures). Shown or fused as if they were 16-bit full range they
come out almost black, a frequent complaint with thermal drivers. :class:`ThermalNormalizer`
maps them to ``uint8`` with either a fixed window or a per-frame percentile window that is
smoothed over time (automatic gain control without flicker). :func:`align_thermal` warps the
thermal image into the RGB image's pixel grid with a homography and resizes it to the RGB size.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import cv2
import numpy as np

#: Default smallest window (``high - low``) in auto mode, per input dtype: a flat frame is
#: mapped with at least this window instead of stretching its noise to 0..255. For ``float32``
#: the unit is the data's (0.5 K or 0.5 degC for temperature images).
DEFAULT_MIN_RANGE = {np.dtype(np.uint8): 8.0, np.dtype(np.uint16): 64.0,
                     np.dtype(np.float32): 0.5}
#: Auto mode computes percentiles on at most about this many pixels (a strided subsample).
MAX_PERCENTILE_SAMPLES = 1 << 16
#: The auto window is also at least this fraction of the magnitude of its centre (about 16
#: float32 steps), so that widening a flat frame of huge values (``7e15``) survives the float
#: rounding of ``centre +- half``; for ordinary data ``min_range`` is far larger.
MIN_RELATIVE_RANGE = 1e-6

_MODES = ('auto', 'fixed')


def _finite_float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{name} must be a number, got {value!r}') from None
    if not np.isfinite(out):
        raise ValueError(f'{name} must be finite, got {value!r}')
    return out


def _as_thermal(img: Any) -> np.ndarray:
    """Validate a thermal image; return it as ``(H, W)`` uint8/uint16/float32."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f'expected a numpy array, got {type(img).__name__}')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)  # a driver that publishes gray as bgr8
    if img.ndim != 2:
        raise ValueError(f'expected a single-channel (H, W) thermal image, got {img.shape}')
    if img.size == 0:
        raise ValueError(f'empty thermal image {img.shape}')
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        if img.dtype.kind == 'f':
            img = img.astype(np.float32)
        else:
            raise ValueError(f'expected uint8, uint16 or float32 thermal, got {img.dtype}')
    return img


class ThermalNormalizer:
    """Map thermal frames (uint16, float32 or uint8) to ``uint8`` ``(H, W)``.

    ``fixed``: ``[low, high]`` maps linearly to ``[0, 255]``, clipped, rounded half up.
    ``auto``: the window is the ``percentiles`` of each frame (on a subsample of at most
    :data:`MAX_PERCENTILE_SAMPLES` pixels), exponentially smoothed over frames
    (``window = smoothing * previous + (1 - smoothing) * current``), and widened about its
    centre to at least ``min_range`` (and :data:`MIN_RELATIVE_RANGE` times the magnitude of the
    centre, so that the window never collapses in float rounding). ``uint8`` frames pass
    through unchanged in auto mode (they are already display-ready) unless ``stretch_uint8``
    is set.

    :param mode: ``'auto'`` or ``'fixed'``.
    :param low: lower end of the fixed window (fixed mode; raw units of the input).
    :param high: upper end of the fixed window (fixed mode), ``> low`` with a finite
        ``high - low``.
    :param percentiles: ``(p_lo, p_hi)`` with ``0 <= p_lo < p_hi <= 100`` (auto mode).
    :param smoothing: weight of the past window, ``0 <= smoothing < 1`` (0: per frame).
    :param min_range: smallest auto window; ``None`` for :data:`DEFAULT_MIN_RANGE`.
    :param stretch_uint8: in auto mode, stretch ``uint8`` input too instead of passing it on.
    """

    def __init__(self, mode: str = 'auto', low: Optional[float] = None,
                 high: Optional[float] = None, percentiles: Sequence[float] = (1.0, 99.0),
                 smoothing: float = 0.9, min_range: Optional[float] = None,
                 stretch_uint8: bool = False) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be 'auto' or 'fixed', got {mode!r}")
        self.mode = mode
        self.low: Optional[float] = None
        self.high: Optional[float] = None
        if mode == 'fixed':
            if low is None or high is None:
                raise ValueError(f'fixed mode needs low and high, got low={low!r}, high={high!r}')
            self.low = _finite_float('low', low)
            self.high = _finite_float('high', high)
            if not self.low < self.high:
                raise ValueError(f'low must be < high, got low={low!r}, high={high!r}')
            if not np.isfinite(self.high - self.low):
                raise ValueError(f'high - low must be finite (the range overflows a float), '
                                 f'got low={low!r}, high={high!r}')
        try:
            p_lo, p_hi = (float(p) for p in percentiles)
        except (TypeError, ValueError):
            raise ValueError(f'percentiles must be two numbers, got {percentiles!r}') from None
        if not 0.0 <= p_lo < p_hi <= 100.0:
            raise ValueError(f'percentiles must satisfy 0 <= p_lo < p_hi <= 100, '
                             f'got {percentiles!r}')
        self.percentiles = (p_lo, p_hi)
        self.smoothing = _finite_float('smoothing', smoothing)
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing!r}')
        if min_range is not None:
            min_range = _finite_float('min_range', min_range)
            if min_range < 0:
                raise ValueError(f'min_range must be >= 0, got {min_range!r}')
        self.min_range = min_range
        self.stretch_uint8 = bool(stretch_uint8)
        self._window: Optional[tuple[float, float]] = None
        self._dtype: Optional[np.dtype] = None
        self._lut: Optional[np.ndarray] = None

    @property
    def window(self) -> Optional[tuple[float, float]]:
        """The ``(low, high)`` window used for the last frame (``None`` before the first)."""
        if self.mode == 'fixed':
            return self.low, self.high
        return self._window

    def reset(self) -> None:
        """Forget the smoothed auto window (the next frame sets it afresh)."""
        self._window = None
        self._dtype = None

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Map one frame.

        :param img: ``(H, W)`` ``uint16``, ``float32`` or ``uint8`` thermal frame (``(H, W, 1)``
            and gray-as-``bgr8`` are accepted too).
        :return: ``(H, W)`` ``uint8``.
        """
        img = _as_thermal(img)
        if img.dtype == np.float32 and not np.isfinite(img).all():
            raise ValueError('thermal frame has NaN or infinite pixels')
        if self.mode == 'fixed':
            return _apply_window(img, self.low, self.high, self._fixed_lut(img.dtype))
        if img.dtype == np.uint8 and not self.stretch_uint8:
            return img
        if self._dtype is not None and img.dtype != self._dtype:
            self._window = None  # another kind of input: the old window means nothing
        self._dtype = img.dtype
        lo, hi = self._percentiles(img)
        if self._window is not None:
            s = self.smoothing
            lo = s * self._window[0] + (1.0 - s) * lo
            hi = s * self._window[1] + (1.0 - s) * hi
        self._window = (lo, hi)
        min_range = self.min_range if self.min_range is not None else DEFAULT_MIN_RANGE[img.dtype]
        centre = 0.5 * lo + 0.5 * hi  # no overflow for windows near the float32 limits
        min_range = max(min_range, 1e-6, MIN_RELATIVE_RANGE * abs(centre))
        if hi - lo < min_range:
            lo, hi = centre - 0.5 * min_range, centre + 0.5 * min_range
        return _apply_window(img, lo, hi)

    def _percentiles(self, img: np.ndarray) -> tuple[float, float]:
        stride = max(1, int(np.ceil(np.sqrt(img.size / MAX_PERCENTILE_SAMPLES))))
        sample = img[::stride, ::stride].astype(np.float64)  # float32 would overflow at 3e38
        lo, hi = np.percentile(sample, self.percentiles)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError('thermal frame has NaN or infinite pixels')
        return float(lo), float(hi)

    def _fixed_lut(self, dtype: np.dtype) -> Optional[np.ndarray]:
        if dtype == np.float32:
            return None
        if self._lut is None or self._lut.size != np.iinfo(dtype).max + 1:
            self._lut = _window_lut(self.low, self.high, np.iinfo(dtype).max + 1)
        return self._lut


def _window_lut(low: float, high: float, n: int) -> np.ndarray:
    """Lookup table of the window mapping for integer inputs ``0..n-1``."""
    values = np.arange(n, dtype=np.float64)
    return np.floor(np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0) + 0.5).astype(
        np.uint8)


def _apply_window(img: np.ndarray, low: float, high: float,
                  lut: Optional[np.ndarray] = None) -> np.ndarray:
    """Map ``[low, high]`` to ``[0, 255]`` (clipped, rounded half up) as ``uint8``.

    :raises ValueError: when the window is empty or its width is not a finite float (a frame
        whose values defeat the float arithmetic of the window).
    """
    if not (high > low and np.isfinite(high - low)):
        raise ValueError(f'thermal window [{low!r}, {high!r}] is empty or not finite')
    if img.dtype == np.uint8:
        return cv2.LUT(img, lut if lut is not None else _window_lut(low, high, 256))
    if img.dtype == np.uint16:
        lut = lut if lut is not None else _window_lut(low, high, 65536)
        return lut[img]  # one gather: faster than float arithmetic on the frame
    scale = np.float32(255.0 / (high - low))
    with np.errstate(over='ignore'):  # +-inf (values far outside the window) clip to 255 / 0
        out = np.subtract(img, np.float32(low), dtype=np.float32)
        out *= scale
    np.clip(out, 0.0, 255.0, out=out)
    out += np.float32(0.5)
    return out.astype(np.uint8)  # truncation of x + 0.5: rounds half up


def parse_homography(values: Sequence[float]) -> np.ndarray:
    """Parse a row-major list of 9 numbers (a node parameter) into a 3x3 homography.

    :param values: 9 finite numbers, row-major.
    :return: ``(3, 3)`` ``float64``, invertible.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'homography must be 9 numbers, got {values!r}') from None
    if arr.size != 9 or arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape != (3, 3)):
        raise ValueError(f'homography must have 9 values (3x3, row-major), got shape '
                         f'{arr.shape}')
    return check_homography(arr.reshape(3, 3))


def check_homography(h: Any) -> np.ndarray:
    """Validate a homography.

    :param h: a ``(3, 3)`` array-like.
    :return: ``(3, 3)`` ``float64``.
    """
    try:
        arr = np.asarray(h, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'homography must be a 3x3 array of numbers, got {h!r}') from None
    if arr.shape != (3, 3):
        raise ValueError(f'homography must be 3x3, got shape {arr.shape}')
    if not np.isfinite(arr).all():
        raise ValueError(f'homography must be finite, got {arr.tolist()}')
    if np.linalg.cond(arr) > 1e12:
        raise ValueError(f'homography is not invertible (singular), got {arr.tolist()}')
    return arr


def _is_identity(h: np.ndarray) -> bool:
    return bool(np.allclose(h / h[2, 2], np.eye(3), rtol=0.0, atol=1e-9))


def align_thermal(ir: np.ndarray, out_hw: tuple[int, int], homography: Optional[Any] = None,
                  coords: str = 'resized', interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Bring a thermal image into the RGB image's geometry.

    The homography maps thermal pixel coordinates to RGB pixel coordinates (pixel centres at
    integers, as OpenCV). With ``coords='resized'`` (default) it acts on the thermal image
    already resized to ``out_hw``, so the identity is a plain resize and a translation
    ``(tx, ty)`` moves the content by ``(tx, ty)`` RGB pixels. With ``coords='raw'`` it acts on
    the thermal pixel grid as received (what ``cv2.findHomography`` on thermal/RGB point pairs
    gives); then ``diag(W / w, H / h, 1)`` is the plain resize. Pixels that no thermal pixel
    maps to are 0. The identity and the pure resize use ``cv2.resize``, affine maps
    ``cv2.warpAffine``, the rest ``cv2.warpPerspective``.

    :param ir: ``(h, w)`` thermal image (any dtype OpenCV warps: uint8, uint16, float32).
    :param out_hw: ``(H, W)`` of the RGB image, both ``> 0``.
    :param homography: ``(3, 3)`` invertible, finite; ``None`` for the identity.
    :param coords: ``'resized'`` or ``'raw'`` (see above).
    :param interpolation: an OpenCV interpolation flag.
    :return: ``(H, W)`` thermal image of the same dtype.
    """
    if not isinstance(ir, np.ndarray) or ir.ndim not in (2, 3) or ir.size == 0:
        raise ValueError(f'expected a non-empty (H, W) image, got '
                         f'{getattr(ir, "shape", type(ir).__name__)}')
    try:
        out_h, out_w = (int(v) for v in out_hw)
    except (TypeError, ValueError):
        raise ValueError(f'out_hw must be (height, width), got {out_hw!r}') from None
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f'out_hw must be positive, got {out_hw!r}')
    if coords not in ('resized', 'raw'):
        raise ValueError(f"coords must be 'resized' or 'raw', got {coords!r}")
    in_h, in_w = ir.shape[:2]
    sx, sy = out_w / in_w, out_h / in_h
    # resize as a matrix on pixel centres: x' = (x + 0.5) * sx - 0.5 (what cv2.resize does)
    resize = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    h = np.eye(3) if homography is None else check_homography(homography)
    if coords == 'resized':
        if _is_identity(h):
            return _resize(ir, out_w, out_h, interpolation)
        full = h @ resize
    else:
        hn = h / h[2, 2]
        if np.allclose(hn, np.diag([sx, sy, 1.0]), rtol=0.0, atol=1e-9):
            return _resize(ir, out_w, out_h, interpolation)
        full = h
    full = full / full[2, 2]
    if np.allclose(full[2, :2], 0.0, atol=1e-12):
        return cv2.warpAffine(ir, full[:2], (out_w, out_h), flags=interpolation,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.warpPerspective(ir, full, (out_w, out_h), flags=interpolation,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _resize(ir: np.ndarray, out_w: int, out_h: int, interpolation: int) -> np.ndarray:
    if ir.shape[:2] == (out_h, out_w):
        return ir
    return cv2.resize(ir, (out_w, out_h), interpolation=interpolation)


def to_14bit(ir8: np.ndarray, offset: int = 7000, gain: int = 16) -> np.ndarray:
    """Make a realistic 14-bit radiometric frame (as ``uint16``) from an 8-bit thermal image.

    ``out = offset + gain * ir8``: with the defaults 7000..11080 counts, a typical scene of an
    uncooled 14-bit camera. Used by tests and demos to exercise the ``mono16`` path.

    :param ir8: ``(H, W)`` ``uint8``.
    :param offset: counts added to every pixel, ``>= 0``.
    :param gain: counts per 8-bit level, ``>= 1``.
    :return: ``(H, W)`` ``uint16``, all values ``< 2 ** 14`` for 14-bit-compatible arguments.
    """
    if not isinstance(ir8, np.ndarray) or ir8.dtype != np.uint8:
        raise ValueError(f'expected a uint8 array, got '
                         f'{getattr(ir8, "dtype", type(ir8).__name__)}')
    if int(offset) < 0 or int(gain) < 1 or int(offset) + 255 * int(gain) > 65535:
        raise ValueError(f'offset + 255 * gain must fit 0..65535 with offset >= 0 and gain >= 1, '
                         f'got offset={offset}, gain={gain}')
    return (ir8.astype(np.uint16) * np.uint16(gain) + np.uint16(offset)).astype(np.uint16)
