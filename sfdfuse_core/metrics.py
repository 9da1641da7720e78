"""Infrared-visible fusion metrics as published tables compute them.

The nine metrics of the CDDFuse / SFDFuse tables (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM),
reproducing the evaluator those tables were made with (``utils/Evaluator.py`` of
Zhaozixiang1228/MMIF-CDDFuse, run with scikit-image 0.19.2), so that our numbers can stand next
to theirs. The metrics themselves come from:

- EN, SD, SF, AG: the usual image statistics (entropy in bits, population standard deviation,
  spatial frequency, average gradient).
- MI: mutual information, Qu et al., "Information measure for performance of image fusion",
  Electronics Letters 38(7), 2002.
- SCD: V. Aslantas and E. Bendes, "A new image quality metric for image fusion: the sum of the
  correlations of differences", AEU 69(12), 2015.
- VIF: H. R. Sheikh and A. C. Bovik, "Image information and visual quality", IEEE TIP 15(2),
  2006 (pixel-domain version), summed over the two sources as Han et al. (2013) use it.
- Qabf: C. S. Xydeas and V. Petrovic, "Objective image fusion performance measure",
  Electronics Letters 36(4), 2000.
- SSIM: Z. Wang et al., "Image quality assessment: from error visibility to structural
  similarity", IEEE TIP 13(4), 2004, as scikit-image computes it.

Protocol. ``F`` is the fused image, ``A`` the infrared and ``B`` the visible image; all three
are gray ``(H, W)`` arrays, ``uint8`` or float, with values in 0..255 (files are read with
:func:`sfdfuse_core.imageio.read_gray`: OpenCV BGR->GRAY, rounded). Everything is computed in
float64. Details that follow the reference evaluator:

- EN is the entropy (bits) of the 256-bin histogram of ``round(F)``.
- SF = sqrt(mean(dx^2) + mean(dy^2)) over horizontal and vertical first differences.
- AG is the mean of sqrt((Gx^2 + Gy^2) / 2) with central differences inside the image and
  one-sided differences on its border (``numpy.gradient``).
- MI = MI(F, A) + MI(F, B) in nats, every distinct pixel value being its own bin (for 8-bit
  images: 256 bins; no re-binning).
- SCD = corr(F - B, A) + corr(F - A, B).
- VIF = VIFp(A, F) + VIFp(B, F) over 4 scales, Gaussian windows 17/9/5/3 with sigma N/5,
  sigma_n^2 = 2, valid convolutions, each scale filtered with its own window then subsampled.
- Qabf uses Sobel gradients with zero padding and the published sigmoid constants. Where the
  two gradient magnitudes are equal the reference sets the strength ratio to the magnitude
  itself instead of 1; this is reproduced (for 8-bit images a non-zero Sobel magnitude is at
  least 1, so the sigmoid is saturated and the effect is below 0.1 %).
- SSIM = ssim(F, A) + ssim(F, B) with scikit-image's 7x7 uniform window and sample covariance.
  scikit-image 0.19 took ``data_range`` from the dtype when none was given, and the evaluator
  passed float32 images, so the published numbers used ``data_range = 2`` (float's nominal
  range -1..1) on 0..255 images. That is the default here (``ssim_data_range=2.0``) so results
  compare with published tables; ``data_range=255`` is the correct value for these images.

Where the reference silently substitutes a number for NaN (VIF returns 1.0 when a source image
is constant) or returns NaN (SCD, Qabf), these functions raise :class:`MetricUndefinedError`.
:func:`evaluate_pair` also refuses a constant fused image (a failed fusion), which
:func:`evaluate_folders` then lists under ``"skipped"`` with the reason.
"""
import math
from pathlib import Path
from typing import Dict, Tuple, Union

import cv2
import numpy as np

from sfdfuse_core.imageio import IMAGE_SUFFIXES, ImageReadError, list_pairs, read_gray

#: The metrics, in the order of published tables.
METRIC_NAMES = ('EN', 'SD', 'SF', 'AG', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM')

#: SSIM data range of the published protocol (scikit-image 0.19's dtype range for float).
PUBLISHED_SSIM_DATA_RANGE = 2.0

#: Smallest image side VIF accepts: four scales of valid convolutions need 41 pixels.
VIF_MIN_SIZE = 41
#: Side of SSIM's uniform window (and so the smallest image side SSIM accepts).
SSIM_WIN_SIZE = 7

_ACCEPTED_DTYPES = (np.uint8, np.float32, np.float64)

# VIF (Sheikh & Bovik, pixel domain) constants of the reference.
_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10

# Qabf constants (Xydeas & Petrovic): gradient strength and orientation sigmoids.
_QABF_TG, _QABF_KG, _QABF_DG = 0.9994, -15.0, 0.5
_QABF_TA, _QABF_KA, _QABF_DA = 0.9879, -22.0, 0.8
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)

# SSIM constants (Wang et al. 2004, scikit-image defaults).
_SSIM_K1, _SSIM_K2 = 0.01, 0.03

PathLike = Union[str, Path]


class MetricError(ValueError):
    """Base class of the errors raised by this module."""


class MetricInputError(MetricError):
    """An input array has the wrong type, dtype, shape, size or values."""


class MetricUndefinedError(MetricError):
    """A metric is mathematically undefined for these images (for example 0/0)."""


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------

def _check_image(img: np.ndarray, name: str, min_size: int = 1) -> np.ndarray:
    """Validate one gray image and return it as a float64 array.

    :param img: ``(H, W)`` array, ``uint8``, ``float32`` or ``float64``, values in 0..255.
    :param name: the argument's name, for error messages.
    :param min_size: smallest accepted height and width.
    :return: the image as a float64 array (a copy when converted).
    :raises MetricInputError: when any of the above does not hold.
    """
    if not isinstance(img, np.ndarray):
        raise MetricInputError(f'{name}: expected a numpy array, got {type(img).__name__}')
    if img.ndim != 2:
        raise MetricInputError(f'{name}: expected a gray (H, W) array, got shape {img.shape}')
    if img.size == 0:
        raise MetricInputError(f'{name}: empty image, shape {img.shape}')
    if img.dtype.type not in _ACCEPTED_DTYPES:
        raise MetricInputError(
            f'{name}: expected dtype uint8, float32 or float64, got {img.dtype}')
    if min(img.shape) < min_size:
        raise MetricInputError(
            f'{name}: image of shape {img.shape} is too small, this metric needs at least '
            f'{min_size}x{min_size} pixels')
    out = img.astype(np.float64, copy=False)
    if img.dtype != np.uint8:
        if not np.all(np.isfinite(out)):
            bad = int(np.count_nonzero(~np.isfinite(out)))
            raise MetricInputError(f'{name}: {bad} non-finite value(s) (NaN or inf)')
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 255.0:
            raise MetricInputError(
                f'{name}: values must lie in 0..255, got min {lo:g}, max {hi:g}')
    return out


def _check_triplet(f: np.ndarray, a: np.ndarray, b: np.ndarray,
                   min_size: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate fused, infrared and visible images together (same shape).

    :return: the three images as float64 arrays.
    """
    f64 = _check_image(f, 'fused')
    a64 = _check_image(a, 'ir')
    b64 = _check_image(b, 'vi')
    if not f64.shape == a64.shape == b64.shape:
        raise MetricInputError(
            f'shape mismatch: fused {f64.shape}, ir {a64.shape}, vi {b64.shape}')
    if min(f64.shape) < min_size:
        raise MetricInputError(
            f'images of shape {f64.shape} are too small, this metric needs at least '
            f'{min_size}x{min_size} pixels')
    return f64, a64, b64


def _check_data_range(data_range: float) -> float:
    try:
        value = float(data_range)
    except (TypeError, ValueError):
        raise MetricInputError(f'data_range must be a number, got {data_range!r}') from None
    if not math.isfinite(value) or value <= 0.0:
        raise MetricInputError(f'data_range must be positive and finite, got {data_range!r}')
    return value


# --------------------------------------------------------------------------------------------
# The metrics on validated float64 arrays
# --------------------------------------------------------------------------------------------

def _entropy(f: np.ndarray) -> float:
    counts = np.bincount(np.round(f).astype(np.intp).ravel(), minlength=256)
    p = counts[counts > 0] / f.size
    return float(-np.sum(p * np.log2(p)))


def _spatial_frequency(f: np.ndarray) -> float:
    row = np.mean(np.square(np.diff(f, axis=1)))
    col = np.mean(np.square(np.diff(f, axis=0)))
    return float(np.sqrt(row + col))


def _average_gradient(f: np.ndarray) -> float:
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


def _labels(x: np.ndarray) -> Tuple[np.ndarray, int]:
    """Map pixel values to bin labels 0..n-1, one bin per distinct value."""
    if np.array_equal(x, np.round(x)):  # integer values 0..255: the value is the label
        return x.astype(np.int64).ravel(), 256
    uniq, inverse = np.unique(x.ravel(), return_inverse=True)
    return inverse.astype(np.int64).ravel(), int(uniq.size)


def _mutual_information_pair(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information (nats) of two images, each distinct value a bin."""
    lx, nx = _labels(x)
    ly, ny = _labels(y)
    codes = lx * ny + ly
    if nx * ny <= (1 << 22):
        joint = np.bincount(codes, minlength=nx * ny)
        nz = np.flatnonzero(joint)
        joint = joint[nz]
    else:
        nz, joint = np.unique(codes, return_counts=True)
    px = np.bincount(lx, minlength=nx).astype(np.float64)
    py = np.bincount(ly, minlength=ny).astype(np.float64)
    n = float(lx.size)
    pxy = joint / n
    # Integer counts in float64 are exact, so independent values give log(1) = 0 exactly.
    mi = np.sum(pxy * np.log((joint * n) / (px[nz // ny] * py[nz % ny])))
    return float(max(mi, 0.0))


def _correlation(x: np.ndarray, y: np.ndarray, what: str) -> float:
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float(np.sum(xc * xc)) * float(np.sum(yc * yc)))
    if den == 0.0:
        raise MetricUndefinedError(
            f'SCD is undefined: {what} is constant, so its correlation is 0/0')
    return float(np.sum(xc * yc)) / den


def _scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return (_correlation(a, f - b, 'ir or fused - vi')
            + _correlation(b, f - a, 'vi or fused - ir'))


def _gaussian_1d(n: int) -> np.ndarray:
    """Return the reference's n x n Gaussian window (sigma n/5) as a normalized 1-D factor."""
    half = (n - 1) / 2.0
    sd = n / 5.0
    x = np.arange(-half, half + 1.0)
    g = np.exp(-(x * x) / (2.0 * sd * sd))
    # The reference zeroes 2-D taps below eps * max; none are that small for n <= 17.
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering with the window outer(g, g), 'valid' region only."""
    r = (g.size - 1) // 2
    out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
    return out[r:x.shape[0] - r, r:x.shape[1] - r]


def _vifp(ref: np.ndarray, dist: np.ndarray, ref_name: str) -> float:
    """Pixel-domain VIF of ``dist`` against ``ref`` (Sheikh & Bovik), 4 scales."""
    eps = _VIF_EPS
    num = 0.0
    den = 0.0
    for scale in range(1, 5):
        g = _gaussian_1d(2 ** (5 - scale) + 1)
        if scale > 1:
            ref = _filter_valid(ref, g)[::2, ::2]
            dist = _filter_valid(dist, g)[::2, ::2]
        mu1 = _filter_valid(ref, g)
        mu2 = _filter_valid(dist, g)
        sigma1_sq = _filter_valid(ref * ref, g) - mu1 * mu1
        sigma2_sq = _filter_valid(dist * dist, g) - mu2 * mu2
        sigma12 = _filter_valid(ref * dist, g) - mu1 * mu2
        np.maximum(sigma1_sq, 0.0, out=sigma1_sq)
        np.maximum(sigma2_sq, 0.0, out=sigma2_sq)

        gain = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - gain * sigma12
        flat_ref = sigma1_sq < eps
        gain[flat_ref] = 0.0
        sv_sq[flat_ref] = sigma2_sq[flat_ref]
        sigma1_sq[flat_ref] = 0.0
        flat_dist = sigma2_sq < eps
        gain[flat_dist] = 0.0
        sv_sq[flat_dist] = 0.0
        negative = gain < 0.0
        sv_sq[negative] = sigma2_sq[negative]
        gain[negative] = 0.0
        sv_sq[sv_sq <= eps] = eps

        num += float(np.sum(np.log10(1.0 + gain * gain * sigma1_sq / (sv_sq + _VIF_SIGMA_NSQ))))
        den += float(np.sum(np.log10(1.0 + sigma1_sq / _VIF_SIGMA_NSQ)))
    if den == 0.0:
        raise MetricUndefinedError(
            f'VIF is undefined: the {ref_name} image is constant (no information to preserve); '
            'the reference evaluator would silently return 1.0 here')
    return num / den


def _convolve_same(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution (kernel flipped), zero padding, output the size of ``img``."""
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    return cv2.filter2D(img, cv2.CV_64F, flipped, borderType=cv2.BORDER_CONSTANT)


def _sobel(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sobel gradient magnitude and orientation (zero padding), as the reference."""
    sx = _convolve_same(img, _SOBEL_X)
    sy = _convolve_same(img, _SOBEL_Y)
    magnitude = np.sqrt(sx * sx + sy * sy)
    nonzero = sx != 0
    ratio = np.divide(sy, sx, out=np.zeros_like(sy), where=nonzero)
    angle = np.where(nonzero, np.arctan(ratio), np.pi / 2.0)
    return magnitude, angle


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray,
                       g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Per-pixel edge preservation Q^{SF} of a source in the fused image."""
    safe_src = np.where(g_src > 0, g_src, 1.0)
    safe_f = np.where(g_f > 0, g_f, 1.0)
    strength = np.where(g_src > g_f, g_f / safe_src,
                        np.where(g_src < g_f, g_src / safe_f, g_f))  # reference: g_f if equal
    orientation = 1.0 - np.abs(a_src - a_f) / (np.pi / 2.0)
    q_g = _QABF_TG / (1.0 + np.exp(_QABF_KG * (strength - _QABF_DG)))
    q_a = _QABF_TA / (1.0 + np.exp(_QABF_KA * (orientation - _QABF_DA)))
    return q_g * q_a


def _qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    g_a, a_a = _sobel(a)
    g_b, a_b = _sobel(b)
    g_f, a_f = _sobel(f)
    den = float(np.sum(g_a) + np.sum(g_b))
    if den == 0.0:
        raise MetricUndefinedError(
            'Qabf is undefined: both source images are constant (no edges to preserve)')
    q_af = _edge_preservation(g_a, a_a, g_f, a_f)
    q_bf = _edge_preservation(g_b, a_b, g_f, a_f)
    return float(np.sum(q_af * g_a) + np.sum(q_bf * g_b)) / den


def _ssim_pair(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Mean SSIM with a 7x7 uniform window and sample covariance (scikit-image's default)."""
    win = SSIM_WIN_SIZE
    n_px = win * win
    cov_norm = n_px / (n_px - 1.0)

    def mean_filter(img: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(img, cv2.CV_64F, (win, win), normalize=True,
                             borderType=cv2.BORDER_REFLECT)

    ux = mean_filter(x)
    uy = mean_filter(y)
    vx = cov_norm * (mean_filter(x * x) - ux * ux)
    vy = cov_norm * (mean_filter(y * y) - uy * uy)
    vxy = cov_norm * (mean_filter(x * y) - ux * uy)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)
         / ((ux * ux + uy * uy + c1) * (vx + vy + c2)))
    pad = (win - 1) // 2  # border pixels, whose windows leave the image, are left out
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean(dtype=np.float64))


# --------------------------------------------------------------------------------------------
# Public metric functions
# --------------------------------------------------------------------------------------------

def entropy(f: np.ndarray) -> float:
    """EN: entropy in bits of the 256-bin histogram of ``round(f)``.

    :param f: fused image ``(H, W)``, uint8 or float, values in 0..255.
    :return: entropy in bits, 0 (constant image) to 8.
    :raises MetricInputError: for an invalid image.
    """
    return _entropy(_check_image(f, 'fused'))


def standard_deviation(f: np.ndarray) -> float:
    """SD: population standard deviation of the pixel values.

    :param f: fused image ``(H, W)``, uint8 or float, values in 0..255.
    :return: standard deviation in gray levels.
    :raises MetricInputError: for an invalid image.
    """
    return float(np.std(_check_image(f, 'fused')))


def spatial_frequency(f: np.ndarray) -> float:
    """SF: sqrt(mean(dx^2) + mean(dy^2)) of the horizontal and vertical first differences.

    :param f: fused image ``(H, W)`` with H, W >= 2, uint8 or float, values in 0..255.
    :return: spatial frequency in gray levels.
    :raises MetricInputError: for an invalid image.
    """
    return _spatial_frequency(_check_image(f, 'fused', min_size=2))


def average_gradient(f: np.ndarray) -> float:
    """AG: mean of sqrt((Gx^2 + Gy^2) / 2), central differences, one-sided on the border.

    :param f: fused image ``(H, W)`` with H, W >= 2, uint8 or float, values in 0..255.
    :return: average gradient in gray levels per pixel.
    :raises MetricInputError: for an invalid image.
    """
    return _average_gradient(_check_image(f, 'fused', min_size=2))


def mutual_information(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI: MI(F, A) + MI(F, B) in nats, one bin per distinct pixel value.

    :param f: fused image ``(H, W)``, uint8 or float, values in 0..255.
    :param a: infrared image, same shape and kind.
    :param b: visible image, same shape and kind.
    :return: the summed mutual information in nats (0 when ``f`` is constant).
    :raises MetricInputError: for invalid or mismatched images.
    """
    f64, a64, b64 = _check_triplet(f, a, b)
    return _mutual_information_pair(f64, a64) + _mutual_information_pair(f64, b64)


def scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD: the sum of the correlations of differences, corr(F - B, A) + corr(F - A, B).

    :param f: fused image ``(H, W)``, uint8 or float, values in 0..255.
    :param a: infrared image, same shape and kind.
    :param b: visible image, same shape and kind.
    :return: SCD, in -2..2.
    :raises MetricInputError: for invalid or mismatched images.
    :raises MetricUndefinedError: when a source or a difference image is constant.
    """
    return _scd(*_check_triplet(f, a, b))


def vif(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """VIF: VIFp(A, F) + VIFp(B, F), Sheikh-Bovik pixel-domain VIF over 4 scales.

    :param f: fused image ``(H, W)`` with H, W >= 41, uint8 or float, values in 0..255.
    :param a: infrared image, same shape and kind.
    :param b: visible image, same shape and kind.
    :return: the summed VIF (2 when ``f`` equals both sources).
    :raises MetricInputError: for invalid, mismatched or too small images.
    :raises MetricUndefinedError: when a source image is constant.
    """
    f64, a64, b64 = _check_triplet(f, a, b, min_size=VIF_MIN_SIZE)
    return _vifp(a64, f64, 'ir') + _vifp(b64, f64, 'vi')


def qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf: Xydeas-Petrovic gradient-based edge preservation, weighted by source gradients.

    :param f: fused image ``(H, W)``, uint8 or float, values in 0..255.
    :param a: infrared image, same shape and kind.
    :param b: visible image, same shape and kind.
    :return: Qabf, in 0..1 for ordinary images.
    :raises MetricInputError: for invalid or mismatched images.
    :raises MetricUndefinedError: when both source images are constant.
    """
    return _qabf(*_check_triplet(f, a, b))


def ssim(f: np.ndarray, a: np.ndarray, b: np.ndarray,
         data_range: float = PUBLISHED_SSIM_DATA_RANGE) -> float:
    """Sum the SSIM of F with A and with B (7x7 uniform window, sample covariance).

    The default ``data_range=2`` reproduces published tables (scikit-image 0.19 used float's
    nominal range -1..1 for float images); ``data_range=255`` is the correct value for 0..255
    images and agrees with ``skimage.metrics.structural_similarity(..., data_range=255)``.

    :param f: fused image ``(H, W)`` with H, W >= 7, uint8 or float, values in 0..255.
    :param a: infrared image, same shape and kind.
    :param b: visible image, same shape and kind.
    :param data_range: the SSIM data range ``L`` (constants C1 = (0.01 L)^2, C2 = (0.03 L)^2).
    :return: the summed SSIM (2 when ``f`` equals both sources).
    :raises MetricInputError: for invalid, mismatched or too small images or a bad data range.
    """
    data_range = _check_data_range(data_range)
    f64, a64, b64 = _check_triplet(f, a, b, min_size=SSIM_WIN_SIZE)
    return _ssim_pair(f64, a64, data_range) + _ssim_pair(f64, b64, data_range)


# --------------------------------------------------------------------------------------------
# All metrics of a pair, of folders, and a table
# --------------------------------------------------------------------------------------------

def evaluate_pair(fused: np.ndarray, ir: np.ndarray, vi: np.ndarray, *,
                  ssim_data_range: float = PUBLISHED_SSIM_DATA_RANGE) -> Dict[str, float]:
    """Compute every metric of :data:`METRIC_NAMES` for one fused image.

    A constant fused image is refused: its numbers (EN = SD = SF = AG = MI = VIF = 0) would
    describe a failed fusion, not measure one, so it is reported as an error instead.

    :param fused: fused image ``(H, W)`` with H, W >= 41, uint8 or float, values in 0..255.
    :param ir: infrared image, same shape and kind.
    :param vi: visible image, same shape and kind.
    :param ssim_data_range: SSIM data range; 2 is the published protocol, 255 the correct one.
    :return: metric name -> value, in the order of :data:`METRIC_NAMES`.
    :raises MetricInputError: for invalid, mismatched or too small images.
    :raises MetricUndefinedError: for a constant fused image, or when a metric is undefined
        (constant source images).
    """
    data_range = _check_data_range(ssim_data_range)
    f, a, b = _check_triplet(fused, ir, vi, min_size=VIF_MIN_SIZE)
    if f.min() == f.max():
        raise MetricUndefinedError(
            f'the fused image is constant (every pixel {f.flat[0]:g}): nothing to evaluate')
    return {
        'EN': _entropy(f),
        'SD': float(np.std(f)),
        'SF': _spatial_frequency(f),
        'AG': _average_gradient(f),
        'MI': _mutual_information_pair(f, a) + _mutual_information_pair(f, b),
        'SCD': _scd(f, a, b),
        'VIF': _vifp(a, f, 'ir') + _vifp(b, f, 'vi'),
        'Qabf': _qabf(f, a, b),
        'SSIM': _ssim_pair(f, a, data_range) + _ssim_pair(f, b, data_range),
    }


def find_fused(fused_dir: Path, name: str) -> Union[Path, None]:
    """Find the fused image of a pair: the same file name, else the same stem as any image kind.

    (Published code saves every fused image as PNG, ``NAME.jpg`` -> ``NAME.png``.)

    :param fused_dir: folder of fused images.
    :param name: the pair's file name.
    :return: the fused image's path, or ``None`` when there is none.
    """
    exact = fused_dir / name
    if exact.is_file():
        return exact
    stem = Path(name).stem
    for suffix in IMAGE_SUFFIXES:
        for candidate in (fused_dir / (stem + suffix), fused_dir / (stem + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def evaluate_folders(ir_dir: PathLike, vi_dir: PathLike, fused_dir: PathLike, *,
                     ssim_data_range: float = PUBLISHED_SSIM_DATA_RANGE,
                     progress: bool = True) -> dict:
    """Evaluate every fused image of a folder against its infrared and visible pair.

    Pairs are matched by file name (:func:`sfdfuse_core.imageio.list_pairs`); the fused image
    of ``NAME`` is ``fused_dir/NAME`` or, failing that, ``fused_dir/STEM.<any image suffix>``.
    Every image is read as 8-bit gray (:func:`sfdfuse_core.imageio.read_gray`).

    :param ir_dir: folder of infrared images.
    :param vi_dir: folder of visible images.
    :param fused_dir: folder of fused images.
    :param ssim_data_range: SSIM data range; 2 is the published protocol, 255 the correct one.
    :param progress: show progress on stderr (a bar on a terminal, lines otherwise).
    :return: ``{"mean": {metric: value}, "per_image": {name: {metric: value}},
        "skipped": {name: reason}}``; the mean is over the evaluated images.
    :raises ImageReadError: when a folder does not exist.
    :raises MetricError: when no image could be evaluated (the reasons are in the message).
    """
    from sfdfuse_core.progress import progress as show_progress

    data_range = _check_data_range(ssim_data_range)
    fused_dir = Path(fused_dir)
    if not fused_dir.is_dir():
        raise ImageReadError(f'not a folder: {fused_dir}')
    listing = list_pairs(ir_dir, vi_dir)
    skipped: Dict[str, str] = {}
    for name in listing.ir_only:
        skipped[name] = f'no visible image in {vi_dir}'
    for name in listing.vi_only:
        skipped[name] = f'no infrared image in {ir_dir}'
    per_image: Dict[str, Dict[str, float]] = {}
    for name, ir_path, vi_path in show_progress(listing.pairs, desc='evaluate', unit='image',
                                                disable=not progress):
        fused_path = find_fused(fused_dir, name)
        if fused_path is None:
            skipped[name] = f'no fused image in {fused_dir}'
            continue
        try:
            per_image[name] = evaluate_pair(read_gray(fused_path), read_gray(ir_path),
                                            read_gray(vi_path), ssim_data_range=data_range)
        except (ImageReadError, MetricError) as exc:
            skipped[name] = str(exc)
    if not per_image:
        reasons = '; '.join(f'{n}: {r}' for n, r in list(skipped.items())[:5])
        raise MetricError(f'no image could be evaluated ({len(skipped)} skipped'
                          + (f': {reasons}' if reasons else ', no image pairs found') + ')')
    mean = {m: float(np.mean([v[m] for v in per_image.values()], dtype=np.float64))
            for m in METRIC_NAMES}
    return {'mean': mean, 'per_image': per_image, 'skipped': dict(sorted(skipped.items()))}


def format_table(rows: Dict[str, Dict[str, float]], decimals: int = 4) -> str:
    """Format metric rows as a plain-text table, one row per name, columns :data:`METRIC_NAMES`.

    :param rows: row name (method or image) -> metric name -> value; a missing metric is
        shown as ``-``.
    :param decimals: digits after the decimal point (2 to 4 make sense).
    :return: the table, lines joined by newlines, without a trailing newline.
    """
    if not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f'decimals must be a non-negative int, got {decimals!r}')
    names = [str(n) for n in rows]
    cells = [[('-' if m not in row else f'{float(row[m]):.{decimals}f}') for m in METRIC_NAMES]
             for row in rows.values()]
    name_width = max([len('name')] + [len(n) for n in names])
    widths = [max([len(m)] + [len(c[i]) for c in cells]) for i, m in enumerate(METRIC_NAMES)]
    header = '  '.join(['name'.ljust(name_width)]
                       + [m.rjust(w) for m, w in zip(METRIC_NAMES, widths)])
    lines = [header, '-' * len(header)]
    for name, row_cells in zip(names, cells):
        lines.append('  '.join([name.ljust(name_width)]
                               + [c.rjust(w) for c, w in zip(row_cells, widths)]))
    return '\n'.join(lines)
