"""Tests of :mod:`sfdfuse_core.thermal` (16-bit -> 8-bit mapping, homography alignment)."""
import time
import warnings

import cv2
import numpy as np
import pytest

from sfdfuse_core.thermal import (align_thermal, check_homography, parse_homography,
                                  ThermalNormalizer, to_14bit)


def _scene(h=120, w=160):
    """A smooth 8-bit 'thermal' scene: warm blobs on a cool gradient."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 40 + 60 * x / w + 120 * np.exp(-((x - w / 3) ** 2 + (y - h / 2) ** 2) / 200.0)
    img += 90 * np.exp(-((x - 0.75 * w) ** 2 + (y - h / 4) ** 2) / 80.0)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_to_14bit():
    ir8 = np.array([[0, 255]], np.uint8)
    out = to_14bit(ir8)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[7000, 7000 + 255 * 16]])
    assert out.max() < 2 ** 14
    with pytest.raises(ValueError, match='uint8'):
        to_14bit(ir8.astype(np.uint16))
    with pytest.raises(ValueError, match='offset=65000, gain=16'):
        to_14bit(ir8, offset=65000)


def test_14bit_thermal_maps_to_a_well_spread_image():
    """The common complaint: mono16 shown as-is (or >> 8) is nearly black. Auto mode is not."""
    ir16 = to_14bit(_scene())
    naive = (ir16 >> 8).astype(np.uint8)
    assert naive.max() < 50  # what a plain 16 -> 8 bit shift shows
    out = ThermalNormalizer()(ir16)
    assert out.dtype == np.uint8 and out.shape == ir16.shape
    assert out.min() <= 5 and out.max() >= 250
    assert out.std() > 40 and 40 < out.mean() < 215
    # the mapping is monotonic: order of temperatures is kept
    order = np.argsort(ir16.ravel(), kind='stable')
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_float_thermal_auto():
    temps = 290.0 + _scene().astype(np.float32) / 10.0  # Kelvin
    out = ThermalNormalizer()(temps)
    assert out.dtype == np.uint8 and out.std() > 40
    with pytest.raises(ValueError, match='NaN'):
        ThermalNormalizer()(np.full((4, 4), np.nan, np.float32))


def test_smoothing_converges_gradually():
    """A sudden change of the scene's range moves the window by (1 - smoothing) per frame."""
    norm = ThermalNormalizer(percentiles=(0.0, 100.0), smoothing=0.5)
    a = np.linspace(1000, 2000, 100 * 100).reshape(100, 100).astype(np.uint16)
    b = (a - 1000) * 3 + 4000  # range 4000..7000
    norm(a)
    assert norm.window == pytest.approx((1000, 2000))
    windows = []
    for _ in range(12):
        norm(b)
        windows.append(norm.window)
    lows = np.array([w[0] for w in windows])
    highs = np.array([w[1] for w in windows])
    np.testing.assert_allclose(lows[:3], [2500, 3250, 3625])
    np.testing.assert_allclose(highs[:3], [4500, 5750, 6375])
    assert np.all(np.diff(lows) > 0) and abs(lows[-1] - 4000) < 2 and abs(highs[-1] - 7000) < 2
    out_first = ThermalNormalizer(percentiles=(0, 100), smoothing=0.5)
    out_first(a)
    first_frame_of_b = out_first(b)
    assert first_frame_of_b.max() == 255 and first_frame_of_b.min() > 100  # not a jump
    norm.reset()
    assert norm.window is None
    norm(b)
    assert norm.window == pytest.approx((4000, 7000))


def test_zero_smoothing_is_per_frame():
    norm = ThermalNormalizer(percentiles=(0, 100), smoothing=0.0)
    norm(np.array([[10, 20]], np.uint16) * 100)
    norm(np.array([[50, 90]], np.uint16) * 100)
    assert norm.window == (5000, 9000)


def test_flat_frame_does_not_explode_noise(rng):
    flat = (8000 + rng.integers(-3, 4, (64, 64))).astype(np.uint16)
    out = ThermalNormalizer(smoothing=0.0)(flat)
    assert out.max() - out.min() <= 255 * 6 / 64 + 1  # min_range 64 counts, noise 6 counts
    assert 100 < out.mean() < 155


@pytest.mark.parametrize('value', [-6.843686e15, 7e15, 3.4e38, -3.4e38, 1e-30, 0.0])
@pytest.mark.parametrize('smoothing', [0.0, 0.9])
def test_flat_float_frame_of_any_magnitude_maps_to_mid_gray(value, smoothing):
    """Regression (fuzzing): at 7e15 the widening by min_range vanished in float rounding.

    The window then had ``high == low`` and the mapping divided by zero. It is now widened
    relative to the magnitude of its centre too, so a flat frame is mid-gray at any value.
    """
    norm = ThermalNormalizer(smoothing=smoothing)
    frame = np.full((2, 3), value, np.float32)
    for _ in range(3):
        out = norm(frame)
        assert out.shape == (2, 3) and out.dtype == np.uint8
        assert len(np.unique(out)) == 1 and 100 <= out[0, 0] <= 155
        low, high = norm.window
        assert np.isfinite(low) and np.isfinite(high) and low <= high


def test_float_frame_spanning_the_float32_range_maps_to_the_ends():
    frame = np.array([[-3.4e38, 0.0, 3.4e38]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no overflow warning either
        out = ThermalNormalizer(percentiles=(0, 100))(frame)
        fixed = ThermalNormalizer('fixed', low=-1e30, high=1e30)(frame)
    np.testing.assert_array_equal(out, [[0, 128, 255]])
    np.testing.assert_array_equal(fixed, [[0, 128, 255]])


def test_fixed_mode_exact_values():
    norm = ThermalNormalizer('fixed', low=1000, high=2020)
    img = np.array([[0, 1000, 1002, 1510, 2020, 65535]], np.uint16)
    np.testing.assert_array_equal(norm(img), [[0, 0, 1, 128, 255, 255]])  # 0.5 rounds up
    img8 = np.array([[0, 10, 20]], np.uint8)
    np.testing.assert_array_equal(ThermalNormalizer('fixed', low=10, high=20)(img8), [[0, 0, 255]])
    f = np.array([[-1.0, 0.0, 0.5, 1.0, 3.0]], np.float32)
    np.testing.assert_array_equal(ThermalNormalizer('fixed', low=0, high=1)(f),
                                  [[0, 0, 128, 255, 255]])
    assert norm.window == (1000.0, 2020.0)


def test_uint8_passes_through_in_auto_mode_unless_stretched():
    img = np.array([[100, 110], [120, 130]], np.uint8)
    assert ThermalNormalizer()(img) is img
    out = ThermalNormalizer(stretch_uint8=True, percentiles=(0, 100), min_range=1)(img)
    np.testing.assert_array_equal(out, [[0, 85], [170, 255]])


def test_accepted_shapes():
    norm = ThermalNormalizer('fixed', low=0, high=255)
    assert norm(np.zeros((3, 4, 1), np.uint16)).shape == (3, 4)
    assert norm(np.zeros((3, 4, 3), np.uint8)).shape == (3, 4)
    with pytest.raises(ValueError, match='single-channel'):
        norm(np.zeros((3, 4, 2), np.uint16))
    with pytest.raises(ValueError, match='int32'):
        norm(np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match='empty'):
        norm(np.zeros((0, 4), np.uint16))
    with pytest.raises(TypeError, match='list'):
        norm([[1]])


@pytest.mark.parametrize('kwargs,match', [
    (dict(mode='manual'), "mode must be 'auto' or 'fixed', got 'manual'"),
    (dict(mode='fixed'), 'fixed mode needs low and high'),
    (dict(mode='fixed', low=10, high=10), 'low must be < high'),
    (dict(mode='fixed', low=20, high=10), 'low=20, high=10'),
    (dict(mode='fixed', low=0, high=np.inf), 'high must be finite'),
    (dict(mode='fixed', low=-1e308, high=1e308), 'high - low must be finite'),
    (dict(percentiles=(99, 1)), '0 <= p_lo < p_hi <= 100'),
    (dict(percentiles=(-1, 50)), 'p_lo'),
    (dict(percentiles=(0, 101)), 'got \\(0, 101\\)'),
    (dict(percentiles=(5,)), 'two numbers'),
    (dict(smoothing=1.0), 'smoothing must be in \\[0, 1\\), got 1.0'),
    (dict(smoothing=-0.1), 'smoothing'),
    (dict(min_range=-1), 'min_range'),
])
def test_invalid_normalizer_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThermalNormalizer(**kwargs)


def test_normalizer_speed_on_a_1280x1024_frame(rng):
    """Auto mode on a 1280x1024 14-bit frame takes a few ms (measured ~3.5 ms here)."""
    frame = to_14bit(rng.integers(0, 256, (1024, 1280), dtype=np.uint8))
    norm = ThermalNormalizer()
    norm(frame)
    start = time.perf_counter()
    for _ in range(10):
        norm(frame)
    per_frame = (time.perf_counter() - start) / 10
    assert per_frame < 0.05  # generous: CI machines are shared


def test_identity_homography_is_a_resize():
    ir = to_14bit(_scene(60, 80))
    out = align_thermal(ir, (120, 160))
    np.testing.assert_array_equal(out, cv2.resize(ir, (160, 120), interpolation=cv2.INTER_LINEAR))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(align_thermal(ir, (120, 160), np.eye(3) * 2.0), out)
    assert align_thermal(ir, (60, 80)) is ir


def test_resized_coords_warp_matches_resize_geometry():
    """A near-identity homography goes through warpPerspective and agrees with the resize."""
    ir = _scene(60, 80).astype(np.float32)
    h = np.eye(3)
    h[2, 0] = 1e-12  # not the identity for the shortcut, the same map in practice
    warped = align_thermal(ir, (120, 160), h)
    resized = cv2.resize(ir, (160, 120))
    np.testing.assert_allclose(warped[2:-2, 2:-2], resized[2:-2, 2:-2], atol=0.05)


def test_translation_moves_content_by_the_right_amount():
    ir = np.zeros((100, 120), np.uint8)
    ir[40:50, 30:45] = 255
    h = np.array([[1, 0, 7], [0, 1, -5], [0, 0, 1]], np.float64)
    out = align_thermal(ir, (100, 120), h)
    ys, xs = np.nonzero(out > 127)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (35, 44, 37, 51)
    # with a resize to twice the size, the translation is in RGB (output) pixels
    out2 = align_thermal(ir, (200, 240), h)
    ys, xs = np.nonzero(out2 > 127)
    assert abs(ys.min() - (80 - 5)) <= 1 and abs(xs.min() - (60 + 7)) <= 1
    assert out2[:5].max() == 0 or out2[-5:].max() == 0  # borders are filled with 0


def test_raw_coords():
    ir = np.zeros((50, 60), np.uint8)
    ir[10:20, 10:20] = 255
    scale = np.diag([2.0, 2.0, 1.0])
    np.testing.assert_array_equal(align_thermal(ir, (100, 120), scale, coords='raw'),
                                  cv2.resize(ir, (120, 100)))
    out = align_thermal(ir, (100, 120), np.eye(3), coords='raw')  # no scaling at all
    np.testing.assert_array_equal(out[:50, :60], ir)
    assert out[50:].max() == 0 and out[:, 60:].max() == 0
    with pytest.raises(ValueError, match="coords must be 'resized' or 'raw'"):
        align_thermal(ir, (10, 10), coords='rgb')


def test_perspective_homography_runs_and_keeps_dtype():
    ir = to_14bit(_scene(60, 80))
    h = np.array([[1.0, 0.02, 3.0], [0.01, 1.0, -2.0], [1e-4, 2e-4, 1.0]])
    out = align_thermal(ir, (90, 120), h)
    assert out.shape == (90, 120) and out.dtype == np.uint16 and out.max() > 7000


@pytest.mark.parametrize('h,match', [
    (np.zeros((3, 3)), 'not invertible'),
    (np.array([[1, 2, 3], [2, 4, 6], [0, 0, 1]], float), 'not invertible'),
    (np.eye(2), 'must be 3x3'),
    (np.array([[1, 0, np.nan], [0, 1, 0], [0, 0, 1]]), 'finite'),
    (np.array([[1, 0, np.inf], [0, 1, 0], [0, 0, 1]]), 'finite'),
    ('identity', '3x3'),
])
def test_invalid_homographies_raise(h, match):
    with pytest.raises(ValueError, match=match):
        align_thermal(np.zeros((4, 4), np.uint8), (4, 4), h)


@pytest.mark.parametrize('out_hw', [(0, 10), (10, -1), (10,), 'ab', None])
def test_invalid_output_size_raises(out_hw):
    with pytest.raises(ValueError, match='out_hw'):
        align_thermal(np.zeros((4, 4), np.uint8), out_hw)


def test_invalid_input_image_raises():
    with pytest.raises(ValueError, match='non-empty'):
        align_thermal(np.zeros((0, 4), np.uint8), (4, 4))


def test_parse_homography():
    values = [1, 0, 5, 0, 1, -3, 0, 0, 1]
    h = parse_homography(values)
    assert h.shape == (3, 3) and h.dtype == np.float64
    np.testing.assert_array_equal(h, np.array(values, float).reshape(3, 3))
    np.testing.assert_array_equal(parse_homography(np.eye(3)), np.eye(3))
    np.testing.assert_array_equal(check_homography(np.eye(3).tolist()), np.eye(3))
    with pytest.raises(ValueError, match='9 values'):
        parse_homography([1, 0, 0, 0, 1, 0, 0, 0])
    with pytest.raises(ValueError, match='9 numbers'):
        parse_homography(['a'] * 9)
    with pytest.raises(ValueError, match='not invertible'):
        parse_homography([0] * 9)
    with pytest.raises(ValueError, match='finite'):
        parse_homography([float('nan')] + [0] * 8)
