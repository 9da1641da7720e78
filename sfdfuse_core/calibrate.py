"""Thermal-to-RGB alignment from checkerboard pairs: the node's ``homography`` parameter.

A checkerboard that both cameras see (a printed board on aluminium, heated or cooled, shows its
squares to a thermal camera, often with inverted polarity and blurred edges) gives corresponding
points in the two images. :func:`calibrate` finds the board's inner corners in both images of
every pair and estimates the homography that maps the thermal image *resized to the RGB size*
onto the RGB image, as :func:`sfdfuse_core.thermal.align_thermal` applies it with
``coords='resized'`` (the node's default ``homography_coords``):

* **Several poses**: each camera's intrinsics and the rotation between the cameras are estimated
  with OpenCV's calibration (``calibrateCamera`` per camera, then ``stereoCalibrate``, without
  lens distortion because the node warps with a homography only), and the result is the
  homography at infinity ``K_rgb R K_thermal^-1``: exact for scenes far from the rig compared
  with the baseline, whatever the board's distance during calibration. A pair that disagrees
  with the others (the board moved between the two exposures) is found by a consistency check:
  each camera is calibrated on its own images, and a pair whose relative camera pose differs
  from the other pairs' is left out. When the poses cannot determine the intrinsics (all
  boards seen at nearly the same angle) the result falls back to one robust (RANSAC)
  homography over all pairs, and says so.
* **One pose**: the homography of the board's plane (RANSAC), exact at the board's distance.

The corner order of the two detections can differ (an inverted board with one odd and one even
number of squares is the same board turned by 180 degrees, and the detectors number its
corners from the other end; a square board can also come out turned by a quarter). It is
resolved explicitly: of the orderings the grid's rotations allow, the one whose row and column
directions agree in both images is taken, which assumes the cameras are rolled by less than 45
degrees against each other; a mirrored thermal image (a driver's flip setting) is refused.

:func:`read_folder_pairs` and :func:`read_bag_pairs` give the image pairs (folders matched by
file name as ``sfdfuse fuse`` does; a bag paired by header stamp with the node's
:class:`~sfdfuse_core.sync.ApproximateTimePairer`), :func:`params_yaml` writes the result as a
ROS params file for ``fuse_node``, :func:`overlay_image` draws the warped thermal edges over the
RGB image before and after.
"""
from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
import re
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import cv2
import numpy as np

from sfdfuse_core.thermal import ThermalNormalizer, align_thermal, check_homography

PathLike = Union[str, Path]
#: A board size: inner corners per row and per column, ``(cols, rows)`` (OpenCV's patternSize).
Board = tuple[int, int]
#: A pair to calibrate from: ``(name, thermal_image, rgb_image)``.
ImagePair = tuple[str, np.ndarray, np.ndarray]
#: Where the homography acts on the thermal image (the node's ``homography_coords``).
COORDS = ('resized', 'raw')
#: Thermal polarities :func:`find_board` can look for.
POLARITIES = ('any', 'normal', 'inverted')
#: Fraction of a pair's corners that must fit its plane homography (RANSAC inliers).
MIN_INLIER_FRACTION = 0.8
#: RANSAC inlier threshold of the plane homographies, RGB pixels.
RANSAC_THRESHOLD = 3.0
#: A pair whose relative camera pose (from each camera's own view of the board) deviates from
#: the pairs' consensus by more than this many times the median deviation, and by more than
#: :data:`OUTLIER_MIN_DEG`, disagrees with the other pairs and is rejected.
OUTLIER_FACTOR = 3.0
#: Smallest deviation (degrees: rotation plus translation over distance) of an outlier.
OUTLIER_MIN_DEG = 1.0
#: Images whose shorter side is below this are searched at twice the size too (at 160x128 that
#: finds boards the detectors miss at the image's own size; a failed search costs more).
UPSCALE_BELOW = 200
#: Poses whose board normals span less than this many degrees cannot determine intrinsics.
MIN_TILT_SPREAD_DEG = 10.0

# The SB detector without EXHAUSTIVE / ACCURACY: cornerSubPix refines afterwards, and a failed
# search costs 0.07-0.3 s instead of 0.6-0.7 s at 640x480. FAST_CHECK makes the classic
# detector give up at once on an image without a board.
_SB_FLAGS = cv2.CALIB_CB_NORMALIZE_IMAGE
_CLASSIC_FLAGS = (cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
                  | cv2.CALIB_CB_FAST_CHECK)
_SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-3)
#: No distortion: the node aligns with a homography only, so the model must not need any.
_NO_DISTORTION = (cv2.CALIB_ZERO_TANGENT_DIST | cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2
                  | cv2.CALIB_FIX_K3)


class CalibrationError(ValueError):
    """The pairs do not allow a calibration (no board found, inconsistent sizes, bad input)."""


@dataclass
class PairCorners:
    """The board's inner corners found in one thermal/RGB pair, in the same order.

    :param name: the pair's name (file name, or stamp for a bag).
    :param thermal: ``(N, 2)`` ``float64`` corners in raw thermal pixels (OpenCV convention:
        pixel centres at integers), reordered to match ``rgb``.
    :param rgb: ``(N, 2)`` ``float64`` corners in RGB pixels.
    :param thermal_hw: ``(h, w)`` of the thermal image.
    :param rgb_hw: ``(H, W)`` of the RGB image.
    :param polarity: ``'normal'`` or ``'inverted'``: how the board was found in thermal.
    :param reordered: whether the thermal corners had to be renumbered to match the RGB ones.
    """

    name: str
    thermal: np.ndarray
    rgb: np.ndarray
    thermal_hw: tuple[int, int]
    rgb_hw: tuple[int, int]
    polarity: str
    reordered: bool = False


@dataclass
class PairReport:
    """How one pair took part in a calibration.

    :param name: the pair's name.
    :param used: whether the pair went into the result.
    :param reason: why it was not used (empty when used).
    :param rms: RMS distance (RGB pixels) between the RGB corners and the thermal corners
        mapped by the result's homography; for the homography at infinity it includes the
        parallax of the board's distance. ``nan`` when the board was not found.
    :param max: largest such distance, RGB pixels.
    :param model_rms: the stereo calibration's RMS reprojection error of this pair (both
        cameras, in RGB pixels); ``nan`` without a stereo calibration.
    :param distance: distance of the board from the RGB camera, in the unit of the square size
        (metres with ``square`` in metres); ``nan`` without a stereo calibration.
    """

    name: str
    used: bool
    reason: str = ''
    rms: float = float('nan')
    max: float = float('nan')
    model_rms: float = float('nan')
    distance: float = float('nan')


@dataclass
class Calibration:
    """The result of :func:`calibrate` / :func:`estimate`.

    :param homography: ``(3, 3)`` map from the thermal image resized to the RGB size to RGB
        pixels (``homography_coords: resized``), normalised to ``[2, 2] == 1``.
    :param homography_raw: the same map from raw thermal pixels (``homography_coords: raw``).
    :param method: ``'infinity'`` (intrinsics and rotation), ``'plane'`` (one pose) or
        ``'joint-plane'`` (one RANSAC homography over all pairs: poses too alike).
    :param note: why the method was chosen, when it was a fallback.
    :param board: the board's inner corners ``(cols, rows)``.
    :param square: the square size (the unit of ``baseline`` and the distances).
    :param thermal_hw: ``(h, w)`` of the thermal images.
    :param rgb_hw: ``(H, W)`` of the RGB images.
    :param pairs: one report per pair: those skipped before the estimation first, then the
        estimated ones in their order.
    :param rms: RMS over the used pairs' corners of :attr:`PairReport.rms`, RGB pixels.
    :param max: largest corner distance over the used pairs, RGB pixels.
    :param model_rms: RMS reprojection error of the stereo calibration, RGB pixels (``nan``
        without one).
    :param k_thermal: thermal camera matrix (raw pixels), or ``None``.
    :param k_rgb: RGB camera matrix, or ``None``.
    :param rotation: rotation from the thermal to the RGB camera frame, or ``None``.
    :param baseline: translation from the thermal to the RGB camera frame (unit of
        ``square``), or ``None``.
    """

    homography: np.ndarray
    homography_raw: np.ndarray
    method: str
    board: Board
    square: float
    thermal_hw: tuple[int, int]
    rgb_hw: tuple[int, int]
    pairs: list[PairReport] = field(default_factory=list)
    note: str = ''
    rms: float = float('nan')
    max: float = float('nan')
    model_rms: float = float('nan')
    k_thermal: Optional[np.ndarray] = None
    k_rgb: Optional[np.ndarray] = None
    rotation: Optional[np.ndarray] = None
    baseline: Optional[np.ndarray] = None

    @property
    def used(self) -> list[str]:
        """Names of the pairs that went into the result."""
        return [p.name for p in self.pairs if p.used]

    @property
    def skipped(self) -> list[PairReport]:
        """Reports of the pairs that were not used."""
        return [p for p in self.pairs if not p.used]

    def homography_for(self, coords: str) -> np.ndarray:
        """Return the homography for a ``homography_coords`` value.

        :param coords: ``'resized'`` or ``'raw'``.
        :return: ``(3, 3)`` ``float64``.
        """
        if coords not in COORDS:
            raise ValueError(f"coords must be 'resized' or 'raw', got {coords!r}")
        return self.homography if coords == 'resized' else self.homography_raw


# --- boards and images ------------------------------------------------------------------------

def parse_board(text: str) -> Board:
    """Parse a board size ``COLSxROWS`` of inner corners (``'9x6'`` for 10 x 7 squares).

    :param text: e.g. ``'9x6'``.
    :return: ``(cols, rows)``, both ``>= 2``, not both 2.
    :raises CalibrationError: for anything else.
    """
    match = re.fullmatch(r'\s*(\d+)\s*[xX*]\s*(\d+)\s*', str(text))
    if match is None:
        raise CalibrationError(f'board must be COLSxROWS of inner corners, e.g. 9x6 for a board '
                               f'of 10 x 7 squares; got {text!r}')
    cols, rows = int(match.group(1)), int(match.group(2))
    if cols < 2 or rows < 2 or cols * rows < 6:
        raise CalibrationError(f'board {cols}x{rows} is too small: it counts inner corners, at '
                               f'least 3x2 (a board of 4 x 3 squares)')
    return cols, rows


def to_gray8(image: np.ndarray) -> np.ndarray:
    """Make an 8-bit gray image for corner detection.

    ``uint8`` gray is returned as is, colour (BGR) is converted to gray, 16-bit and float
    images (raw thermal counts, temperatures) are stretched between their 0.5 and 99.5
    percentiles.

    :param image: ``(H, W)`` or ``(H, W, 3)``, ``uint8``, ``uint16`` or float.
    :return: ``(H, W)`` ``uint8``.
    :raises CalibrationError: for an empty array or another shape or type.
    """
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise CalibrationError(f'expected a non-empty image array, got '
                               f'{getattr(image, "shape", type(image).__name__)}')
    img = image
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (3, 4) and img.dtype in (np.uint8, np.uint16):
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if img.ndim != 2:
        raise CalibrationError(f'expected a gray or BGR image, got shape {image.shape} '
                               f'{image.dtype}')
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype.kind not in 'uif':
        raise CalibrationError(f'unsupported pixel type {img.dtype}')
    if img.dtype not in (np.uint16, np.float32):
        img = img.astype(np.float32)
    if not np.isfinite(img).all():
        raise CalibrationError('image has NaN or infinite pixels')
    normalizer = ThermalNormalizer(mode='auto', percentiles=(0.5, 99.5), smoothing=0.0)
    return normalizer(img)


def resize_matrix(src_hw: Sequence[int], dst_hw: Sequence[int]) -> np.ndarray:
    """Return the map of ``cv2.resize`` from ``src_hw`` to ``dst_hw`` pixels as a matrix.

    Pixel centres at integers: ``x' = (x + 0.5) * W / w - 0.5``, as
    :func:`~sfdfuse_core.thermal.align_thermal` resizes the thermal image.

    :param src_hw: ``(h, w)`` of the source image.
    :param dst_hw: ``(H, W)`` of the target image.
    :return: ``(3, 3)`` ``float64``.
    """
    sx, sy = dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points with a ``(3, 3)`` homography.

    :param h: the homography.
    :param points: ``(N, 2)`` pixel coordinates.
    :return: ``(N, 2)`` ``float64``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = np.c_[pts, np.ones(len(pts))] @ np.asarray(h, dtype=np.float64).T
    return out[:, :2] / out[:, 2:]


def corner_distance(h1: np.ndarray, h2: np.ndarray, hw: Sequence[int]) -> float:
    """Largest distance between where two homographies put the four corners of an image.

    :param h1: ``(3, 3)`` homography.
    :param h2: ``(3, 3)`` homography.
    :param hw: ``(H, W)`` of the image whose corner pixels are mapped (``(0, 0)`` ..
        ``(W - 1, H - 1)``).
    :return: the distance in the target image's pixels.
    """
    h, w = int(hw[0]), int(hw[1])
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])
    d = apply_homography(h1, corners) - apply_homography(h2, corners)
    return float(np.linalg.norm(d, axis=1).max())


# --- corner detection -------------------------------------------------------------------------

def _min_spacing(corners: np.ndarray, board: Board) -> float:
    cols, rows = board
    grid = corners.reshape(rows, cols, 2)
    along = np.linalg.norm(np.diff(grid, axis=1), axis=2)
    across = np.linalg.norm(np.diff(grid, axis=0), axis=2)
    return float(min(along.min(), across.min()))


def _refine(gray: np.ndarray, corners: np.ndarray, board: Board) -> np.ndarray:
    """Sub-pixel refinement with a window of about half the corner spacing.

    A window that wide is what blurred (thermal) corners need: a small one sees only the weak
    gradients near the saddle point and wanders (measured on the test boards: RMS 0.12 px with
    half the spacing, 0.39 px with a quarter).
    """
    half = int(np.clip(round(0.45 * _min_spacing(corners, board)), 2, 15))
    pts = corners.reshape(-1, 1, 2).astype(np.float32)
    refined = cv2.cornerSubPix(gray, pts, (half, half), (-1, -1), _SUBPIX_CRITERIA)
    return refined.reshape(-1, 2).astype(np.float64)


def _detect(gray: np.ndarray, board: Board) -> Optional[np.ndarray]:
    """One detection attempt on one polarity: SB detector, else the classic one; refined."""
    found, corners = cv2.findChessboardCornersSB(gray, board, flags=_SB_FLAGS)
    if not found:
        found, corners = cv2.findChessboardCorners(gray, board, flags=_CLASSIC_FLAGS)
    if not found or corners is None or len(corners) != board[0] * board[1]:
        return None
    corners = corners.reshape(-1, 2).astype(np.float64)
    if not np.isfinite(corners).all() or _min_spacing(corners, board) < 2.0:
        return None
    return _refine(gray, corners, board)


def find_board(image: np.ndarray, board: Board,
               polarity: str = 'normal') -> Optional[tuple[np.ndarray, str]]:
    """Find a checkerboard's inner corners with sub-pixel accuracy.

    The image is searched with OpenCV's ``findChessboardCornersSB`` (then the classic
    ``findChessboardCorners``) and the corners are refined with ``cornerSubPix`` (a window of
    about half the corner spacing, which blurred thermal corners need). An image whose shorter
    side is under :data:`UPSCALE_BELOW` pixels is searched again at twice the size when the
    board is not found at its own size (low-resolution thermal cameras).

    :param image: ``(H, W)`` or ``(H, W, 3)`` image (see :func:`to_gray8`).
    :param board: inner corners ``(cols, rows)``.
    :param polarity: ``'normal'`` (dark squares dark), ``'inverted'`` or ``'any'`` (normal,
        then inverted).
    :return: ``(corners, polarity_found)`` with ``(cols * rows, 2)`` ``float64`` corners in the
        image's pixels, in the detector's order; ``None`` when the board is not found.
    """
    if polarity not in POLARITIES:
        raise ValueError(f'polarity must be one of {POLARITIES}, got {polarity!r}')
    gray = to_gray8(image)
    tries = ('normal', 'inverted') if polarity == 'any' else (polarity,)
    for pol in tries:
        img = gray if pol == 'normal' else 255 - gray
        corners = _detect(img, board)
        if corners is None and min(img.shape) < UPSCALE_BELOW:
            big = cv2.resize(img, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)
            found = _detect(big, board)
            if found is not None:  # back to the image's pixels, then refine there
                corners = _refine(img, (found + 0.5) / 2.0 - 0.5, board)
        if corners is not None:
            return corners, pol
    return None


def _grid_orderings(board: Board) -> list[tuple[str, np.ndarray]]:
    """Renumberings of a ``cols x rows`` grid by its rotations (no mirrors).

    OpenCV's detectors number a board's corners the same way round in every image (measured
    on rendered boards, SB and classic detector, both polarities, rolls in 30 degree steps:
    only rotations of the numbering occur, never mirrors), so mirrors are left out and a
    mirrored image is refused instead of being matched the wrong way round.
    """
    cols, rows = board
    idx = np.arange(cols * rows).reshape(rows, cols)
    out = [('as found', idx), ('reversed', idx[::-1, ::-1])]
    if cols == rows:
        out += [('turned left', idx.T[::-1, :]), ('turned right', idx.T[:, ::-1])]
    return out


def _grid_axes(points: np.ndarray, board: Board) -> tuple[np.ndarray, np.ndarray]:
    """Mean unit direction along the rows and down the columns of a detected grid."""
    cols, rows = board
    grid = points.reshape(rows, cols, 2)
    along = (grid[:, -1] - grid[:, 0]).sum(axis=0)
    down = (grid[-1] - grid[0]).sum(axis=0)
    return along / (np.linalg.norm(along) + 1e-12), down / (np.linalg.norm(down) + 1e-12)


def match_corner_order(thermal: np.ndarray, rgb: np.ndarray,
                       board: Board) -> tuple[np.ndarray, str, float]:
    """Renumber the thermal corners so that corner ``i`` is the same board corner as RGB's.

    Every renumbering by a rotation of the grid (reversal; for a square board also the quarter
    turns) is scored by how well the directions of the grid's rows and columns agree between
    the two images (the sum of two cosines, at most 2); the best is taken. Both point sets
    must be in comparable coordinates (the thermal corners in resized or raw pixels: a resize
    keeps the directions' signs).

    :param thermal: ``(N, 2)`` thermal corners, detector order.
    :param rgb: ``(N, 2)`` RGB corners, detector order.
    :param board: inner corners ``(cols, rows)``.
    :return: ``(thermal_reordered, ordering_name, score)``.
    :raises CalibrationError: when no ordering agrees (score below 1: one image is mirrored,
        or the cameras are rolled by more than about 60 degrees against each other).
    """
    rgb_along, rgb_down = _grid_axes(rgb, board)
    best = None
    for name, order in _grid_orderings(board):
        cand = thermal[order.ravel()]
        along, down = _grid_axes(cand, board)
        score = float(along @ rgb_along + down @ rgb_down)
        if best is None or score > best[2]:
            best = (cand, name, score)
    cand, name, score = best
    if score < 1.0:
        raise CalibrationError(f'cannot match the corner order of the two images (best agreement '
                               f'{score:.2f} of 2): is the thermal image mirrored, or the camera '
                               f'rolled against the RGB camera?')
    return cand, name, score


def detect_pair(name: str, thermal: np.ndarray, rgb: np.ndarray, board: Board,
                polarity: str = 'any') -> PairCorners:
    """Find the board in both images of a pair and put the corners in the same order.

    :param name: the pair's name (for messages).
    :param thermal: thermal image: ``uint8``/``uint16``/float gray (or BGR).
    :param rgb: RGB image: BGR or gray ``uint8``.
    :param board: inner corners ``(cols, rows)``.
    :param polarity: where to look in thermal: ``'any'``, ``'normal'``, ``'inverted'``.
    :return: the matched corners.
    :raises CalibrationError: when the board is not found (in the RGB image, which is searched
        first, or in the thermal one) or the corner orders cannot be matched; the message says
        which.
    """
    th_hw = tuple(int(v) for v in thermal.shape[:2])
    rgb_hw = tuple(int(v) for v in rgb.shape[:2])
    size = f'{board[0]}x{board[1]}'
    found_rgb = find_board(rgb, board, 'normal')
    if found_rgb is None:  # the thermal search would be wasted: the pair is skipped anyway
        raise CalibrationError(f'board {size} not found in the RGB image')
    found_th = find_board(thermal, board, polarity)
    if found_th is None:
        raise CalibrationError(f'board {size} not found in the thermal image')
    th_corners, pol = found_th
    rgb_corners, _ = found_rgb
    resized = apply_homography(resize_matrix(th_hw, rgb_hw), th_corners)
    _, order_name, _ = match_corner_order(resized, rgb_corners, board)
    order = dict(_grid_orderings(board))[order_name]
    return PairCorners(name=name, thermal=th_corners[order.ravel()], rgb=rgb_corners,
                       thermal_hw=th_hw, rgb_hw=rgb_hw, polarity=pol,
                       reordered=order_name != 'as found')


# --- estimation -------------------------------------------------------------------------------

def _object_points(board: Board, square: float) -> np.ndarray:
    cols, rows = board
    j, i = np.mgrid[0:rows, 0:cols]
    return (np.c_[i.ravel(), j.ravel(), np.zeros(cols * rows)] * square).astype(np.float32)


def _errors(h: np.ndarray, pc: PairCorners, to_resized: np.ndarray) -> np.ndarray:
    """Distances (RGB px) between RGB corners and thermal corners mapped by ``h`` (resized)."""
    mapped = apply_homography(h @ to_resized, pc.thermal)
    return np.linalg.norm(mapped - pc.rgb, axis=1)


def _fit_plane(thermal_resized: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, mask = cv2.findHomography(thermal_resized.astype(np.float64), rgb.astype(np.float64),
                                 cv2.RANSAC, RANSAC_THRESHOLD, maxIters=5000, confidence=0.999)
    if h is None:
        raise CalibrationError('no homography fits the corners')
    return h / h[2, 2], mask.ravel().astype(bool)


def _normalised(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    return check_homography(h / h[2, 2])


def _calibrate_camera(points: list[np.ndarray], hw: tuple[int, int], board: Board,
                      square: float) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """One camera's matrix (no distortion) and the board's pose in each view."""
    obj = [_object_points(board, square)] * len(points)
    img = [p.reshape(-1, 1, 2).astype(np.float32) for p in points]
    _, k, _, rvecs, tvecs = cv2.calibrateCamera(obj, img, (hw[1], hw[0]), None, np.zeros(5),
                                                flags=_NO_DISTORTION)
    rots = [cv2.Rodrigues(np.asarray(r, dtype=np.float64))[0] for r in rvecs]
    return k, rots, [np.asarray(t, dtype=np.float64).ravel() for t in tvecs]


def _angle_deg(r: np.ndarray) -> float:
    """Rotation angle of a rotation matrix, degrees."""
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(r)[0])))


def _pose_deviations(corners: list[PairCorners], board: Board,
                     square: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far each pair's relative camera pose is from the pairs' consensus, in degrees.

    Each camera is calibrated on its own images (a board that moved between the two exposures
    spoils neither camera's calibration), each pair then gives the pose of the RGB camera
    relative to the thermal one, ``R_i = R_rgb,i R_thermal,i^T`` and ``t_i``. The reference is
    the pair whose pose is closest (median angle) to the others'; a pair's deviation is the
    angle between ``R_i`` and the reference plus the translation difference over the board's
    distance (an angle too).

    :return: ``(deviation_deg, rotation_deg, translation_fraction)`` per pair: the combined
        deviation, its rotation part, and the translation difference over the distance.
    """
    th_hw, rgb_hw = corners[0].thermal_hw, corners[0].rgb_hw
    _, r_th, t_th = _calibrate_camera([pc.thermal for pc in corners], th_hw, board, square)
    _, r_vi, t_vi = _calibrate_camera([pc.rgb for pc in corners], rgb_hw, board, square)
    rel_r = [rv @ rt.T for rv, rt in zip(r_vi, r_th)]
    rel_t = [tv - r @ tt for tv, tt, r in zip(t_vi, t_th, rel_r)]
    distance = [max(float(np.linalg.norm(t)), 1e-9) for t in t_vi]
    n = len(corners)
    rot, trans = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            rot[i, j] = _angle_deg(rel_r[i] @ rel_r[j].T)
            trans[i, j] = np.linalg.norm(rel_t[i] - rel_t[j]) / distance[i]
    dev = rot + np.degrees(trans)
    ref = int(np.argmin(np.median(dev, axis=1)))
    return dev[:, ref], rot[:, ref], trans[:, ref]


def _stereo(corners: list[PairCorners], board: Board, square: float) -> dict:
    """Calibrate both cameras and their relative pose (no distortion); per-pair errors."""
    th_hw, rgb_hw = corners[0].thermal_hw, corners[0].rgb_hw
    k_th, _, _ = _calibrate_camera([pc.thermal for pc in corners], th_hw, board, square)
    k_vi, _, _ = _calibrate_camera([pc.rgb for pc in corners], rgb_hw, board, square)
    obj = [_object_points(board, square)] * len(corners)
    out = cv2.stereoCalibrateExtended(
        obj, [pc.thermal.reshape(-1, 1, 2).astype(np.float32) for pc in corners],
        [pc.rgb.reshape(-1, 1, 2).astype(np.float32) for pc in corners],
        k_th, np.zeros(5), k_vi, np.zeros(5), (rgb_hw[1], rgb_hw[0]), None, None,
        flags=cv2.CALIB_USE_INTRINSIC_GUESS | _NO_DISTORTION,
        criteria=(cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 200, 1e-9))
    _, k_th, _, k_vi, _, rot, trans, _, _, rvecs_th, tvecs_th, per_view = out
    per_view = np.asarray(per_view, dtype=np.float64).reshape(len(corners), 2)
    scale = np.sqrt((rgb_hw[0] / th_hw[0]) * (rgb_hw[1] / th_hw[1]))
    # one error per pair in RGB pixels: thermal pixels scaled to the RGB size
    pair_rms = np.sqrt(((per_view[:, 0] * scale) ** 2 + per_view[:, 1] ** 2) / 2.0)
    centre = _object_points(board, square).mean(axis=0).astype(np.float64)
    normals, distances = [], []
    for rv, tv in zip(rvecs_th, tvecs_th):
        r_board = rot @ cv2.Rodrigues(np.asarray(rv, dtype=np.float64))[0]  # in the RGB frame
        t_centre = r_board @ centre + rot @ np.asarray(tv, dtype=np.float64).ravel() \
            + trans.ravel()
        normals.append(r_board[:, 2])
        distances.append(float(np.linalg.norm(t_centre)))
    return {'k_thermal': k_th, 'k_rgb': k_vi, 'rotation': rot, 'baseline': trans.ravel(),
            'pair_rms': pair_rms, 'normals': np.array(normals), 'distances': distances}


def _tilt_spread(normals: np.ndarray) -> float:
    """Largest angle (degrees) between two board normals (sign-free)."""
    cosines = np.abs(np.clip(normals @ normals.T, -1.0, 1.0))
    return float(np.degrees(np.arccos(cosines.min())))


def _intrinsics_problem(k: np.ndarray, hw: tuple[int, int], what: str) -> str:
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    h, w = hw
    if not np.isfinite(k).all() or fx <= 0 or fy <= 0:
        return f'{what} focal length is not positive'
    if not 0.5 < fx / fy < 2.0:
        return f'{what} pixel aspect {fx / fy:.2f} is implausible'
    if not (-0.25 * w < cx < 1.25 * w and -0.25 * h < cy < 1.25 * h):
        return f'{what} optical centre ({cx:.0f}, {cy:.0f}) is far outside the image'
    return ''


def estimate(corners: Sequence[PairCorners], board: Board, square: float = 1.0,
             reports: Optional[list[PairReport]] = None) -> Calibration:
    """Estimate the thermal -> RGB homography from matched corners.

    One pair gives the board plane's homography (RANSAC). Several give the homography at
    infinity from a stereo calibration, after a consistency check: each camera is calibrated
    on its own, every pair gives the pose of one camera relative to the other, and a pair
    whose pose deviates from the consensus by more than :data:`OUTLIER_FACTOR` times the
    median deviation (and over :data:`OUTLIER_MIN_DEG`) is rejected (the board moved between
    the two exposures; two pairs that disagree raise, as it cannot be told which is wrong).
    When the intrinsics cannot be determined (board normals within
    :data:`MIN_TILT_SPREAD_DEG` of each other, or implausible intrinsics) one RANSAC homography
    over all pairs is used instead. Within each pair the corners that do not fit its plane
    homography must be few (:data:`MIN_INLIER_FRACTION`), else the pair is rejected.

    :param corners: matched corners, all with the same image sizes.
    :param board: inner corners ``(cols, rows)``.
    :param square: the board's square size (metres, say); it sets the unit of the baseline and
        the distances only, the homography does not depend on it.
    :param reports: reports of pairs skipped before estimation (board not found), kept in the
        result.
    :return: the calibration.
    :raises CalibrationError: without pairs, with pairs of different image sizes, when no
        pair fits, or when two pairs disagree.
    """
    if not np.isfinite(square) or square <= 0:
        raise CalibrationError(f'square size must be a positive number, got {square!r}')
    reports = list(reports or [])
    corners = list(corners)
    if not corners:
        raise CalibrationError('no pair with the board found in both images')
    th_hw, rgb_hw = corners[0].thermal_hw, corners[0].rgb_hw
    for pc in corners[1:]:
        if pc.thermal_hw != th_hw or pc.rgb_hw != rgb_hw:
            raise CalibrationError(
                f'image sizes differ between pairs: {corners[0].name} has thermal {th_hw[1]}x'
                f'{th_hw[0]} and RGB {rgb_hw[1]}x{rgb_hw[0]}, {pc.name} has thermal '
                f'{pc.thermal_hw[1]}x{pc.thermal_hw[0]} and RGB {pc.rgb_hw[1]}x{pc.rgb_hw[0]}')
    to_resized = resize_matrix(th_hw, rgb_hw)
    report = {pc.name: PairReport(name=pc.name, used=True) for pc in corners}

    good = []
    for pc in corners:
        try:
            _, inliers = _fit_plane(apply_homography(to_resized, pc.thermal), pc.rgb)
        except CalibrationError as exc:
            report[pc.name] = PairReport(pc.name, False, str(exc))
            continue
        if inliers.mean() < MIN_INLIER_FRACTION:
            report[pc.name] = PairReport(
                pc.name, False, f'only {inliers.sum()} of {len(inliers)} corners fit one plane '
                f'homography (a wrong detection)')
            continue
        good.append(pc)
    if not good:
        raise CalibrationError('no pair has corners that fit a homography: '
                               + '; '.join(f'{r.name}: {r.reason}' for r in report.values()))

    stereo = None
    note = ''
    problem = ''
    if len(good) > 1:
        try:
            dev, rot_dev, trans_dev = _pose_deviations(good, board, square)
        except cv2.error as exc:
            problem = f'OpenCV calibration failed ({str(exc).strip().splitlines()[-1]})'
            dev = rot_dev = trans_dev = np.zeros(len(good))
        others = np.sort(dev)[1:]  # the reference itself deviates by 0
        limit = max(OUTLIER_FACTOR * float(np.median(others)), OUTLIER_MIN_DEG)
        k = int(np.argmax(dev))
        differ = (f'{rot_dev[k]:.1f} degrees of rotation and a translation of '
                  f'{100 * trans_dev[k]:.0f}% of the board distance')
        if len(good) == 2 and dev[k] > OUTLIER_MIN_DEG:
            raise CalibrationError(
                f'the two pairs {good[0].name} and {good[1].name} disagree: the poses of one '
                f'camera relative to the other that they give differ by {differ} (the board '
                f'moved between the two exposures?); with a third pair the wrong one is found')
        if len(good) > 2:
            keep = []
            for k, pc in enumerate(good):
                differ = (f'{rot_dev[k]:.1f} degrees of rotation and a translation of '
                          f'{100 * trans_dev[k]:.0f}% of the board distance')
                if dev[k] > limit:
                    report[pc.name] = PairReport(
                        pc.name, False, f'disagrees with the other pairs: the pose of one camera '
                        f'relative to the other differs by {differ} from theirs (the board '
                        f'moved between the two exposures?)')
                else:
                    keep.append(pc)
            good = keep
    if len(good) == 1:
        method = 'plane'
        h, _ = _fit_plane(apply_homography(to_resized, good[0].thermal), good[0].rgb)
    else:
        if not problem:
            try:
                stereo = _stereo(good, board, square)
            except cv2.error as exc:
                problem = f'OpenCV calibration failed ({str(exc).strip().splitlines()[-1]})'
        if stereo is not None:
            problem = (_intrinsics_problem(stereo['k_thermal'], th_hw, 'thermal')
                       or _intrinsics_problem(stereo['k_rgb'], rgb_hw, 'RGB'))
            spread = _tilt_spread(stereo['normals'])
            if not problem and spread < MIN_TILT_SPREAD_DEG:
                problem = (f'the board was seen at nearly the same angle in every pair (normals '
                           f'within {spread:.1f} degrees; tilt it more between pairs)')
        if problem:
            method = 'joint-plane'
            note = (f'intrinsics not determined: {problem}; one RANSAC homography over all '
                    f'pairs is used, exact only at the distance the board was seen at')
            h, _ = _fit_plane(np.concatenate([apply_homography(to_resized, pc.thermal)
                                              for pc in good]),
                              np.concatenate([pc.rgb for pc in good]))
            stereo = None
        else:
            method = 'infinity'
            h_raw = stereo['k_rgb'] @ stereo['rotation'] @ np.linalg.inv(stereo['k_thermal'])
            h = h_raw @ np.linalg.inv(to_resized)
    h = _normalised(h)

    all_errs = []
    for k, pc in enumerate(good):
        e = _errors(h, pc, to_resized)
        all_errs.append(e)
        rep = report[pc.name]
        rep.rms, rep.max = float(np.sqrt((e ** 2).mean())), float(e.max())
        if stereo is not None:
            rep.model_rms = float(stereo['pair_rms'][k])
            rep.distance = float(stereo['distances'][k])
    errs = np.concatenate(all_errs)
    given = {r.name: r for r in reports}
    given.update(report)
    return Calibration(
        homography=h, homography_raw=_normalised(h @ to_resized), method=method, note=note,
        board=tuple(board), square=float(square), thermal_hw=th_hw, rgb_hw=rgb_hw,
        pairs=list(given.values()), rms=float(np.sqrt((errs ** 2).mean())),
        max=float(errs.max()),
        model_rms=(float(np.sqrt((stereo['pair_rms'] ** 2).mean())) if stereo is not None
                   else float('nan')),
        k_thermal=None if stereo is None else stereo['k_thermal'],
        k_rgb=None if stereo is None else stereo['k_rgb'],
        rotation=None if stereo is None else stereo['rotation'],
        baseline=None if stereo is None else stereo['baseline'])


def calibrate(pairs: Iterable[ImagePair], board: Board, square: float = 1.0,
              polarity: str = 'any',
              skipped: Sequence[tuple[str, str]] = ()) -> tuple[Calibration, list[PairCorners]]:
    """Find the board in every pair and estimate the thermal -> RGB homography.

    :param pairs: ``(name, thermal, rgb)`` image pairs (see :func:`detect_pair`).
    :param board: inner corners ``(cols, rows)``.
    :param square: square size, the unit of the baseline and distances (see :func:`estimate`).
    :param polarity: where to look in thermal: ``'any'``, ``'normal'``, ``'inverted'``.
    :param skipped: ``(name, reason)`` of pairs already known to be unusable (no partner),
        listed in the result.
    :return: the calibration and the corners of the pairs where the board was found.
    :raises CalibrationError: when the board is found in no pair (the message counts where it
        was found and recalls what ``board`` counts) or see :func:`estimate`.
    """
    if polarity not in POLARITIES:
        raise CalibrationError(f'polarity must be one of {POLARITIES}, got {polarity!r}')
    found: list[PairCorners] = []
    missed: list[PairReport] = []
    tried = 0
    for name, thermal, rgb in pairs:
        tried += 1
        try:
            found.append(detect_pair(name, thermal, rgb, board, polarity))
        except CalibrationError as exc:
            missed.append(PairReport(name, False, str(exc)))
    # read after the loop: a generator of pairs may add the files it could not read
    reports = [PairReport(name, False, reason) for name, reason in skipped] + missed
    if not found:
        size = f'{board[0]}x{board[1]}'
        if not tried:
            raise CalibrationError('no image pairs to calibrate from'
                                   + ''.join(f'; {n}: {r}' for n, r in skipped))
        reasons: dict[str, int] = {}
        for r in missed:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        counted = ', '.join(f'{n} x {reason}' for reason, n in sorted(reasons.items()))
        raise CalibrationError(
            f'board {size} found in both images of none of the {tried} pairs ({counted}). The '
            f'board size counts inner corners: a board of {board[0] + 1} x {board[1] + 1} squares '
            f'is {size}. Is the board in view of both cameras, and warm or cool enough to show '
            f'its squares in the thermal image?')
    return estimate(found, board, square, reports), found


# --- input pairs ------------------------------------------------------------------------------

def read_folder_pairs(ir_dir: PathLike, vi_dir: PathLike
                      ) -> tuple[Iterator[ImagePair], list[tuple[str, str]]]:
    """Pairs of a thermal and an RGB folder, matched by file name as ``sfdfuse fuse`` does.

    :param ir_dir: folder of thermal images (8- or 16-bit).
    :param vi_dir: folder of RGB images.
    :return: ``(pairs, skipped)``: a generator of ``(name, thermal, rgb)`` (an unreadable
        file is skipped and its name added to ``skipped``, which is a list filled as the
        generator runs), and ``(name, reason)`` of the names without a partner.
    :raises CalibrationError: when a folder is missing or no file name is in both.
    """
    from sfdfuse_core.imageio import ImageReadError, list_pairs, read_image

    for what, folder in (('thermal', ir_dir), ('RGB', vi_dir)):
        if not Path(folder).is_dir():
            raise CalibrationError(f'{what} folder not found: {folder}')
    listing = list_pairs(ir_dir, vi_dir)
    skipped = [(n, f'no RGB image of that name in {vi_dir}') for n in listing.ir_only]
    skipped += [(n, f'no thermal image of that name in {ir_dir}') for n in listing.vi_only]
    if not listing.pairs:
        def some(names: list[str]) -> str:
            if not names:
                return 'no images'
            return (f'{len(names)} images, e.g. ' + ', '.join(names[:3])
                    + (' ...' if len(names) > 3 else ''))
        raise CalibrationError(
            f'no pairs: pairs are matched by file name, and no name is in both {ir_dir} '
            f'({some(listing.ir_only)}) and {vi_dir} ({some(listing.vi_only)})')

    def generate() -> Iterator[ImagePair]:
        for name, ir_path, vi_path in listing.pairs:
            try:
                yield name, read_image(ir_path), read_image(vi_path)
            except ImageReadError as exc:
                skipped.append((name, str(exc)))
    return generate(), skipped


def read_bag_pairs(bag: PathLike, thermal_topic: str, rgb_topic: str, slop: float = 0.05,
                   queue_size: int = 10, max_pairs: int = 40
                   ) -> tuple[list[ImagePair], list[tuple[str, str]], int]:
    """Time-synchronised thermal/RGB pairs from a ROS 2 bag.

    The bag is read with :mod:`sfdfuse_core.bag` (folder, ``.mcap`` or ``.db3``), the header
    stamps are paired by :class:`~sfdfuse_core.sync.ApproximateTimePairer` as the node pairs
    them, and at most ``max_pairs`` pairs, evenly spread over the recording, are decoded with
    :func:`~sfdfuse_core.imgmsg.decode_frame` (a second pass over the bag, so that a long
    recording is never held in memory).

    :param bag: the bag.
    :param thermal_topic: thermal ``Image`` or ``CompressedImage`` topic.
    :param rgb_topic: RGB ``Image`` or ``CompressedImage`` topic.
    :param slop: largest stamp difference of a pair, seconds (keep it small: the board moves).
    :param queue_size: messages the pairer keeps per stream.
    :param max_pairs: most pairs returned, ``>= 1``.
    :return: ``(pairs, skipped, total)``: ``(name, thermal, rgb)`` with names ``t=+S.SSSs``
        (seconds after the first pair), ``(name, reason)`` of chosen pairs that could not be
        decoded, and the number of pairs the pairer formed.
    :raises CalibrationError: when the bag or a topic cannot be read, or no pair is formed.
    """
    from rosbags.typesys import Stores, get_typestore

    from sfdfuse_core.bag import (BagError, RGB, THERMAL, check_topic, read_messages,
                                  stamp_ns, open_reader)
    from sfdfuse_core.imgmsg import decode_frame
    from sfdfuse_core.sync import ApproximateTimePairer

    if int(max_pairs) < 1:
        raise CalibrationError(f'max_pairs must be >= 1, got {max_pairs!r}')
    if thermal_topic == rgb_topic:
        raise CalibrationError(f'thermal and RGB topic are the same: {thermal_topic!r}')
    typestore = get_typestore(Stores.ROS2_KILTED)
    bag = Path(bag)
    try:
        with closing(open_reader(bag)) as reader:
            conns = {THERMAL: check_topic(reader, thermal_topic, 'thermal'),
                     RGB: check_topic(reader, rgb_topic, 'rgb')}
            stream_of = {c.id: s for s, cs in conns.items() for c in cs}
            wanted = conns[THERMAL] + conns[RGB]
            pairer = ApproximateTimePairer(slop=slop, queue_size=queue_size)
            pairs = []
            ordinal = 0
            for conn, _, raw in read_messages(reader, wanted, bag):
                stream = stream_of[conn.id]
                try:
                    msg = typestore.deserialize_cdr(raw, conn.msgtype)
                except Exception:  # a corrupt message pairs with nothing; the bag tool counts it
                    ordinal += 1
                    continue
                pairs += pairer.add(stream, stamp_ns(msg.header), ordinal)
                ordinal += 1
            pairs += pairer.flush() or []
            if not pairs:
                raise CalibrationError(
                    f'no thermal/RGB pair within {slop} s in {bag} ({thermal_topic}, '
                    f'{rgb_topic}): are the header stamps of the two cameras on one clock?')
            total = len(pairs)
            keep = sorted(set(np.linspace(0, total - 1, min(total, int(max_pairs)))
                              .round().astype(int).tolist()))
            chosen = [pairs[k] for k in keep]
            want = {o for _, a, b in chosen for o in (a, b)}
            images: dict[int, Any] = {}
            ordinal = 0
            for conn, _, raw in read_messages(reader, wanted, bag):
                if ordinal in want:
                    try:
                        msg = typestore.deserialize_cdr(raw, conn.msgtype)
                        images[ordinal] = decode_frame(msg, color=stream_of[conn.id] == RGB)
                    except Exception as exc:  # undecodable: that pair is skipped, named
                        images[ordinal] = f'{type(exc).__name__}: {exc}'
                ordinal += 1
    except BagError as exc:
        raise CalibrationError(str(exc)) from exc
    t0 = chosen[0][0]
    out: list[ImagePair] = []
    skipped: list[tuple[str, str]] = []
    for stamp, a, b in chosen:
        name = f't=+{(stamp - t0) / 1e9:.3f}s'
        th, vi = images.get(a, 'not read'), images.get(b, 'not read')
        if isinstance(th, str) or isinstance(vi, str):
            skipped.append((name, 'cannot decode: ' + (th if isinstance(th, str) else vi)))
            continue
        out.append((name, th, vi))
    return out, skipped, total


# --- output -----------------------------------------------------------------------------------

def _yaml_float(value: float) -> str:
    """Write a float as YAML that PyYAML and ROS both read as a double (``1.0``, ``1.5e-05``)."""
    text = repr(float(value))
    mantissa, e, exponent = text.partition('e')
    if '.' not in mantissa:
        mantissa += '.0'
    return mantissa + (e + exponent if e else '')


def params_yaml(cal: Calibration, coords: str = 'resized', source: str = '',
                node: str = '/**/fuse_node') -> str:
    """Write the calibration as a ROS params file for ``fuse_node``.

    ``--ros-args --params-file FILE`` and the launch file's ``params_file`` read it; the node
    key ``/**/fuse_node`` matches the node in any namespace. A comment says how it was made.

    :param cal: the calibration.
    :param coords: ``homography_coords`` to write: ``'resized'`` (the node's default) or
        ``'raw'``.
    :param source: how the pairs were given (a command line), for the comment.
    :param node: the node key.
    :return: the file's text.
    """
    h = cal.homography_for(coords)
    used = cal.used
    lines = ['# fuse_node geometry written by `sfdfuse calibrate`.']
    if source:
        lines.append(f'#   {source}')
    lines.append(f'# board {cal.board[0]}x{cal.board[1]} inner corners; {len(used)} of '
                 f'{len(cal.pairs)} pairs used: {", ".join(used)}')
    for rep in cal.skipped:
        lines.append(f'#   skipped {rep.name}: {rep.reason}')
    if cal.method == 'infinity':
        lines.append('# homography at infinity K_rgb R K_thermal^-1 (OpenCV stereoCalibrate, no '
                     'distortion): right for scenes far from the rig compared with the baseline')
        lines.append(f'# calibration reprojection error {cal.model_rms:.3f} RGB px (RMS)')
    elif cal.method == 'plane':
        lines.append("# homography of the board's plane (one pose): exact at that distance")
    else:
        lines.append(f'# one RANSAC homography over all pairs: {cal.note}')
    lines.append(f'# homography on the board corners: RMS {cal.rms:.3f}, max {cal.max:.3f} RGB px'
                 + (' (includes the parallax of the board distance)'
                    if cal.method == 'infinity' else ''))
    lines.append(f'# thermal {cal.thermal_hw[1]}x{cal.thermal_hw[0]} -> RGB '
                 f'{cal.rgb_hw[1]}x{cal.rgb_hw[0]}; homography_coords {coords}: '
                 + ('thermal pixels after the resize to the RGB size' if coords == 'resized'
                    else 'raw thermal pixels'))
    lines += ['# use: ros2 run sfdfuse_ros fuse_node --ros-args --params-file THIS_FILE',
              '#      ros2 launch sfdfuse_ros fuse.launch.py params_file:=THIS_FILE',
              f'{node}:',
              '  ros__parameters:']
    rows = [', '.join(_yaml_float(v) for v in row) for row in h]
    pad = ' ' * len('    homography: [')
    lines.append('    homography: [' + (',\n' + pad).join(rows) + ']')
    lines.append(f'    homography_coords: {coords}')
    return '\n'.join(lines) + '\n'


def _edges(gray8: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Find the edges of a (blurred, noisy) image inside ``valid``.

    Canny with thresholds from Otsu's level, without specks (components under 25 pixels) and
    without the border of ``valid``.
    """
    smooth = cv2.GaussianBlur(gray8, (0, 0), 1.5)
    level, _ = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    edges = cv2.Canny(smooth, 0.3 * level, 0.6 * level)
    edges[cv2.erode(valid, np.ones((7, 7), np.uint8)) == 0] = 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(edges, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= 25
    return cv2.dilate(keep[labels].astype(np.uint8), np.ones((2, 2), np.uint8))


def _panel(rgb8: np.ndarray, thermal8: np.ndarray, h: np.ndarray, title: str,
           corners: Optional[PairCorners]) -> np.ndarray:
    out_hw = rgb8.shape[:2]
    warped = align_thermal(thermal8, out_hw, h, coords='resized')
    valid = align_thermal(np.full(thermal8.shape, 255, np.uint8), out_hw, h,
                          coords='resized', interpolation=cv2.INTER_NEAREST)
    base = rgb8 if rgb8.ndim == 3 else cv2.cvtColor(rgb8, cv2.COLOR_GRAY2BGR)
    panel = (base.astype(np.float32) * 0.6).astype(np.uint8)
    panel[_edges(warped, valid) > 0] = (255, 0, 255)
    if corners is not None:
        mapped = apply_homography(h @ resize_matrix(corners.thermal_hw, out_hw), corners.thermal)
        for (x, y), (u, v) in zip(corners.rgb, mapped):
            cv2.circle(panel, (int(round(x)), int(round(y))), 3, (0, 255, 0), 1, cv2.LINE_AA)
            cv2.drawMarker(panel, (int(round(u)), int(round(v))), (0, 0, 255),
                           cv2.MARKER_CROSS, 6, 1, cv2.LINE_AA)
    scale = max(0.4, out_hw[1] / 1000.0)
    (tw, th), base_line = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(panel, (0, 0), (tw + 12, th + base_line + 10), (0, 0, 0), -1)
    cv2.putText(panel, title, (6, th + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def overlay_image(thermal: np.ndarray, rgb: np.ndarray, homography: np.ndarray,
                  corners: Optional[PairCorners] = None, label: str = '') -> np.ndarray:
    """Draw the thermal edges over the RGB image, warped as the node would, before and after.

    Left: the thermal image only resized (identity homography); right: warped with
    ``homography`` by :func:`~sfdfuse_core.thermal.align_thermal` (``coords='resized'``).
    Thermal edges are magenta (the edge of the warped thermal image is left out); with
    ``corners``, the RGB corners are green circles and the mapped thermal corners red crosses.

    :param thermal: the pair's thermal image (any type :func:`to_gray8` takes).
    :param rgb: the pair's RGB image, BGR or gray ``uint8``.
    :param homography: ``(3, 3)`` resized-thermal -> RGB homography.
    :param corners: the pair's matched corners, or ``None``.
    :param label: text added to the titles (the pair's name).
    :return: ``(H, 2 W, 3)`` ``uint8`` BGR.
    """
    th8 = to_gray8(thermal)
    rgb8 = to_gray8(rgb) if rgb.dtype != np.uint8 else rgb
    suffix = f' ({label})' if label else ''
    before = _panel(rgb8, th8, np.eye(3), 'before: thermal only resized' + suffix, corners)
    after = _panel(rgb8, th8, check_homography(homography), 'after: calibrated homography'
                   + suffix, corners)
    return np.hstack([before, after])
