"""Tests of ``sfdfuse calibrate`` and :mod:`sfdfuse_core.calibrate` on rendered checkerboards.

The boards are rendered here: a checkerboard of 9x6 inner corners (10 x 7 squares of 5 cm, on a
sheet with a one-square white margin) seen by two pinhole cameras with known intrinsics and
**the same optical centre**, so ``K_rgb R^T K_thermal^-1`` maps every thermal pixel exactly
onto the RGB pixel that sees the same ray: the true homography, whatever the board's pose. The
RGB camera is 640x480; the thermal camera is 320x256 (another aspect ratio), rotated by a few
degrees, with a narrower field of view, and sees the board with inverted polarity (a warm board:
the dark squares are bright), blurred (sigma 1.2 px) and noisy, as 14-bit counts in ``uint16``.
Inverting a board of 10 x 7 squares gives the same board turned by 180 degrees, so the detector
numbers the thermal corners from the other end: the corner order must be resolved.

Pixel convention (OpenCV, and :func:`sfdfuse_core.thermal.align_thermal`): pixel centres at
integers; each pixel is rendered as the mean of 3 x 3 samples at offsets of -1/3, 0, 1/3.
"""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
import yaml

from bagutil import IMAGE, image_message, TS
from sfdfuse_core import cli
from sfdfuse_core.calibrate import (CalibrationError, PairCorners, apply_homography, calibrate,
                                    corner_distance, estimate, find_board, match_corner_order,
                                    params_yaml, parse_board, read_folder_pairs, resize_matrix,
                                    to_gray8)
from sfdfuse_core.thermal import align_thermal, parse_homography

BOARD = (9, 6)
SQUARE = 0.05
RGB_HW = (480, 640)
THERMAL_HW = (256, 320)
#: Board poses: (tilt about x, tilt about y, roll) in degrees, centre offset (m), distance (m);
#: tilted by 25-37 degrees, as a calibration needs (with this set the corner error stays
#: within 0.40-0.60 px over six noise seeds).
POSES = [((-24, -35, -9), (0.08, 0.02), 1.02), ((-8, -25, -6), (0.01, 0.12), 1.30),
         ((-23, 30, 7), (0.17, 0.04), 1.13), ((26, 0, 7), (-0.08, 0.01), 1.05),
         ((-31, -36, 8), (-0.02, 0.12), 1.33), ((-9, 37, 3), (0.13, -0.03), 1.04),
         ((-26, -25, 4), (-0.19, -0.14), 1.32), ((-32, -3, 0), (0.06, 0.0), 1.37)]


def _rot(deg) -> np.ndarray:
    return cv2.Rodrigues(np.radians(np.asarray(deg, dtype=np.float64)))[0]


def _k(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


class Rig:
    """Two cameras at one optical centre: the RGB camera frame is the world frame."""

    def __init__(self, scale: float = 1.0) -> None:
        s = scale
        self.rgb_hw = (int(RGB_HW[0] * s), int(RGB_HW[1] * s))
        self.thermal_hw = (int(THERMAL_HW[0] * s), int(THERMAL_HW[1] * s))
        self.k_rgb = _k(560 * s, 560 * s, 319.5 * s + 0.5 * (s - 1), 239.5 * s + 0.5 * (s - 1))
        self.k_thermal = _k(300 * s, 303 * s, 161.0 * s, 126.5 * s)
        self.r_thermal = _rot((2.0, -3.0, 1.5))  # x_thermal = R x_rgb
        h_raw = self.k_rgb @ self.r_thermal.T @ np.linalg.inv(self.k_thermal)
        #: the true homography, raw thermal pixels -> RGB pixels
        self.h_raw = h_raw / h_raw[2, 2]
        h = h_raw @ np.linalg.inv(resize_matrix(self.thermal_hw, self.rgb_hw))
        #: the true homography, resized thermal pixels -> RGB pixels (the node's default)
        self.h = h / h[2, 2]

    @staticmethod
    def board_pose(k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rotation (columns: board x, y, normal) and origin (first inner corner) of pose k."""
        tilt, (x, y), z = POSES[k]
        rot = _rot(tilt)
        centre = np.array([x, y, z])
        origin = centre - rot[:, :2] @ (np.array([BOARD[0] - 1, BOARD[1] - 1]) / 2 * SQUARE)
        return rot, origin

    def board_to_pixels(self, k: int, camera: str) -> np.ndarray:
        """Homography from board coordinates (in squares, inner corner (0, 0) at 0) to pixels."""
        rot, origin = self.board_pose(k)
        kc, rc = ((self.k_rgb, np.eye(3)) if camera == 'rgb'
                  else (self.k_thermal, self.r_thermal))
        return kc @ rc @ np.c_[rot[:, 0] * SQUARE, rot[:, 1] * SQUARE, origin]

    def corners(self, k: int, camera: str) -> np.ndarray:
        """True inner corners, row by row (OpenCV's order for an upright board)."""
        j, i = np.mgrid[0:BOARD[1], 0:BOARD[0]]
        return apply_homography(self.board_to_pixels(k, camera),
                                np.c_[i.ravel(), j.ravel()].astype(np.float64))

    def render(self, k: int, camera: str) -> np.ndarray:
        """Reflectance image in 0..1: black squares 0.1, paper 0.9, background 0.45.

        Only the paper's bounding box is sampled (3 x 3 samples a pixel); the rest is
        background.
        """
        hw = self.rgb_hw if camera == 'rgb' else self.thermal_hw
        to_pixels = self.board_to_pixels(k, camera)
        paper = apply_homography(to_pixels, np.array(
            [[-2.0, -2.0], [BOARD[0] + 1, -2.0], [BOARD[0] + 1, BOARD[1] + 1],
             [-2.0, BOARD[1] + 1]]))
        x0, y0 = np.maximum(np.floor(paper.min(axis=0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(paper.max(axis=0)).astype(int) + 2, (hw[1], hw[0]))
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        to_board = np.linalg.inv(to_pixels)
        acc = np.zeros(xs.shape)
        for dy in (-1 / 3, 0.0, 1 / 3):
            for dx in (-1 / 3, 0.0, 1 / 3):
                p = to_board @ np.stack([(xs + dx).ravel(), (ys + dy).ravel(),
                                         np.ones(xs.size)])
                u, v = (p[0] / p[2]).reshape(xs.shape), (p[1] / p[2]).reshape(xs.shape)
                iu, iv = np.floor(u), np.floor(v)
                squares = (iu >= -1) & (iu < BOARD[0]) & (iv >= -1) & (iv < BOARD[1])
                on_paper = (u >= -2) & (u < BOARD[0] + 1) & (v >= -2) & (v < BOARD[1] + 1)
                black = squares & ((iu + iv) % 2 == 0)
                acc += np.where(on_paper, np.where(black, 0.1, 0.9), 0.45)
        out = np.full(hw, 0.45)
        out[y0:y1, x0:x1] = acc / 9.0
        return out

    def rgb_image(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """8-bit BGR, slightly blurred, noise sigma 2 levels."""
        img = cv2.GaussianBlur(self.render(k, 'rgb'), (0, 0), 0.6) * 255
        gray = np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).round().astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)

    def thermal_image(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """14-bit counts: inverted polarity, blur sigma 1.2 px, noise 2 % of the contrast."""
        img = cv2.GaussianBlur(1.0 - self.render(k, 'thermal'), (0, 0), 1.2)
        img = img + rng.normal(0, 0.016, img.shape)
        return np.clip(7000 + 2500 * img, 0, 16383).round().astype(np.uint16)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture(scope='module')
def rig() -> Rig:
    return Rig()


@pytest.fixture(scope='module')
def folders(tmp_path_factory, rig):
    """Six good pairs, a pair whose board moved between the exposures, a pair with a cold
    board (nothing in thermal), and a thermal image without an RGB partner."""
    root = tmp_path_factory.mktemp('calib')
    rng = np.random.default_rng(7)
    for k in range(len(POSES)):
        _write(root / 'ir' / f'pose{k}.png', rig.thermal_image(k, rng))
        _write(root / 'vi' / f'pose{k}.png', rig.rgb_image(k, rng))
    _write(root / 'ir' / 'x_moved.png', rig.thermal_image(0, rng))
    _write(root / 'vi' / 'x_moved.png', rig.rgb_image(2, rng))
    flat = np.full(rig.thermal_hw, 7500, np.uint16) + rng.integers(0, 30, rig.thermal_hw)
    _write(root / 'ir' / 'x_cold.png', flat.astype(np.uint16))
    _write(root / 'vi' / 'x_cold.png', rig.rgb_image(3, rng))
    _write(root / 'ir' / 'x_alone.png', rig.thermal_image(1, rng))
    return root


@pytest.fixture(scope='module')
def calibrated(folders):
    pairs, skipped = read_folder_pairs(folders / 'ir', folders / 'vi')
    return calibrate(pairs, BOARD, square=SQUARE, skipped=skipped)


def test_recovers_the_true_homography_within_a_pixel(calibrated, rig):
    """Several poses: intrinsics + rotation give the homography at infinity, here exact."""
    cal, corners = calibrated
    assert cal.method == 'infinity', cal.note
    error = corner_distance(cal.homography, rig.h, rig.rgb_hw)
    print(f'corner error of the recovered homography: {error:.3f} RGB px at 640x480 '
          f'(board corners: RMS {cal.rms:.3f} px, calibration {cal.model_rms:.3f} px)')
    assert error <= 1.0
    assert corner_distance(cal.homography_raw, rig.h_raw, rig.thermal_hw) <= 1.0
    raw = cal.homography @ resize_matrix(rig.thermal_hw, rig.rgb_hw)
    np.testing.assert_allclose(cal.homography_raw, raw / raw[2, 2], rtol=1e-9, atol=1e-12)
    # the intrinsics and the rotation are recovered, the baseline is zero
    np.testing.assert_allclose(cal.k_rgb, rig.k_rgb, atol=3.0)
    np.testing.assert_allclose(cal.k_thermal, rig.k_thermal, atol=2.0)
    angle = np.degrees(np.linalg.norm(cv2.Rodrigues(cal.rotation @ rig.r_thermal)[0]))
    assert angle < 0.1
    assert np.linalg.norm(cal.baseline) < 0.005
    # inverted polarity on a 10 x 7 board: the thermal corners came in reverse order
    assert all(pc.reordered for pc in corners)


def test_bad_pairs_are_listed_and_skipped(calibrated):
    cal, _ = calibrated
    assert cal.used == [f'pose{k}.png' for k in range(len(POSES))]
    reasons = {r.name: r.reason for r in cal.skipped}
    assert set(reasons) == {'x_moved.png', 'x_cold.png', 'x_alone.png'}
    assert 'disagrees with the other pairs' in reasons['x_moved.png']
    assert reasons['x_cold.png'] == 'board 9x6 not found in the thermal image'
    assert reasons['x_alone.png'].startswith('no RGB image of that name')
    for rep in cal.pairs:
        if rep.used:
            assert rep.rms < 0.6 and rep.max < 1.5 and rep.model_rms < 0.6
            _, (x, y), z = POSES[int(rep.name[4])]
            assert rep.distance == pytest.approx(np.linalg.norm([x, y, z]), rel=0.02)


def test_two_pairs_that_disagree_poses_too_alike_and_sizes_that_differ(calibrated):
    """Two pairs cannot tell which is wrong: refused; one pose seen twice: one plane fit."""
    _, corners = calibrated
    by_name = {pc.name: pc for pc in corners}
    with pytest.raises(CalibrationError, match='the two pairs pose0.png and x_moved.png '
                                               'disagree'):
        estimate([by_name['pose0.png'], by_name['x_moved.png']], BOARD)
    pc = by_name['pose2.png']
    again = PairCorners('again.png', pc.thermal + 0.05, pc.rgb - 0.05, pc.thermal_hw, pc.rgb_hw,
                        pc.polarity)
    cal = estimate([pc, again], BOARD)
    assert cal.method == 'joint-plane' and 'intrinsics not determined' in cal.note
    assert 'one RANSAC homography' in params_yaml(cal)
    other = PairCorners('lepton.png', pc.thermal / 2, pc.rgb, (128, 160), pc.rgb_hw, 'normal')
    with pytest.raises(CalibrationError, match='image sizes differ between pairs: pose2.png '
                                               'has thermal 320x256 .* lepton.png has thermal '
                                               '160x128'):
        estimate([pc, other], BOARD)


def test_node_warp_puts_thermal_corners_on_rgb_corners(folders, calibrated, rig):
    """The homography as the node applies it: align_thermal, coords 'resized' (and 'raw')."""
    cal, _ = calibrated
    thermal = cv2.imread(str(folders / 'ir' / 'pose2.png'), cv2.IMREAD_UNCHANGED)
    truth = rig.corners(2, 'rgb')
    for h, coords in ((cal.homography, 'resized'), (cal.homography_raw, 'raw')):
        warped = align_thermal(to_gray8(thermal), rig.rgb_hw, h, coords=coords)
        found = find_board(warped, BOARD, 'inverted')
        assert found is not None
        corners, _, _ = match_corner_order(found[0], truth, BOARD)
        error = np.linalg.norm(corners - truth, axis=1)
        assert error.mean() < 0.5 and error.max() < 1.5, (coords, error.mean(), error.max())
    plain = align_thermal(to_gray8(thermal), rig.rgb_hw, None)
    found = find_board(plain, BOARD, 'inverted')
    if found is not None:  # without the homography the corners are far off
        corners, _, _ = match_corner_order(found[0], truth, BOARD)
        assert np.linalg.norm(corners - truth, axis=1).mean() > 10


def test_one_pair_gives_the_plane_homography(calibrated, rig):
    _, corners = calibrated
    pc = next(c for c in corners if c.name == 'pose2.png')
    cal = estimate([pc], BOARD)
    assert cal.method == 'plane' and cal.used == ['pose2.png']
    # exact on the board's plane: compare where both homographies put the board's corners
    on_board = apply_homography(resize_matrix(rig.thermal_hw, rig.rgb_hw), pc.thermal)
    d = apply_homography(cal.homography, on_board) - apply_homography(rig.h, on_board)
    assert np.linalg.norm(d, axis=1).max() < 1.0
    assert 'one pose' in params_yaml(cal)


def test_corner_order_is_resolved_for_every_rotation_and_a_mirror_is_refused():
    """Reversed and (square boards) quarter-turned numberings are put back; mirrored refused."""
    for board in ((5, 4), (4, 4)):
        cols, rows = board
        j, i = np.mgrid[0:rows, 0:cols]
        rgb = np.c_[i.ravel() * 20.0 + 50, j.ravel() * 18.0 + 40]
        rgb = apply_homography(np.array([[1.0, 0.1, 0], [-0.05, 1.0, 0], [1e-4, 0, 1]]), rgb)
        idx = np.arange(cols * rows).reshape(rows, cols)
        orders = [idx, idx[::-1, ::-1]]
        if cols == rows:
            orders += [idx.T[::-1, :], idx.T[:, ::-1]]
        for order in orders:
            thermal = rgb[order.ravel()] * 0.5 + 3.0  # another size and place, same directions
            back, _, score = match_corner_order(thermal, rgb, board)
            np.testing.assert_allclose(back, rgb * 0.5 + 3.0)
            assert score > 1.9
        mirrored = rgb * [-1.0, 1.0] + [400.0, 0.0]  # a thermal driver's horizontal flip
        with pytest.raises(CalibrationError, match='mirrored'):
            match_corner_order(mirrored, rgb, board)


def test_parse_board():
    assert parse_board('9x6') == (9, 6)
    assert parse_board(' 7 X 5 ') == (7, 5)
    for bad in ('9', '9x', 'ax6', '1x6', '2x2', '9x6x3'):
        with pytest.raises(CalibrationError, match='inner corners'):
            parse_board(bad)


# --- the command, the params file and the bag ---------------------------------------------------


def write_board_bag(path: Path, frames: list) -> None:
    """A 30 Hz RGB camera (bgr8) and a thermal camera (mono16) watching the board take a new
    pose every 0.1 s (three RGB frames); two thermal frames per pose, 5 ms after the first and
    the third RGB frame, so each pairs with an RGB frame of its own pose.

    :param frames: ``(thermal, rgb)`` images, one per pose.
    """
    t0 = 1_700_000_000_000_000_000
    period = 1_000_000_000 // 30
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    c_th = writer.add_connection('/thermal/image', IMAGE, typestore=TS)
    c_rgb = writer.add_connection('/rgb/image', IMAGE, typestore=TS)
    msgs = []
    for n, (thermal, rgb) in enumerate(frames):
        start = t0 + n * 3 * period
        for i in range(3):
            stamp = start + i * period
            msgs.append((stamp, c_rgb, TS.serialize_cdr(image_message(stamp, 'rgb', rgb, 'bgr8'),
                                                        IMAGE)))
        for i in (0, 2):
            stamp = start + i * period + 5_000_000
            msgs.append((stamp, c_th, TS.serialize_cdr(
                image_message(stamp, 'thermal', thermal, 'mono16'), IMAGE)))
    for stamp, conn, raw in sorted(msgs, key=lambda m: m[0]):
        writer.write(conn, stamp + 1_000_000, raw)
    writer.close()


def test_bag_calibration_gives_the_folders_result_and_ros_reads_it(tmp_path, folders,
                                                                   calibrated, rig, capsys):
    """From a bag, the package's reader, pairer and decoding give the folders' result.

    The params file is then read by ROS itself: rcl's parser, rclpy's node-name matching.
    """
    frames = [(cv2.imread(str(folders / 'ir' / f'pose{k}.png'), cv2.IMREAD_UNCHANGED),
               cv2.imread(str(folders / 'vi' / f'pose{k}.png'))) for k in range(len(POSES))]
    bag = tmp_path / 'boards'
    write_board_bag(bag, frames)
    out = tmp_path / 'geometry.yaml'
    rc = cli.main(['calibrate', '--bag', str(bag), '--thermal-topic', '/thermal/image',
                   '--rgb-topic', '/rgb/image', '--board', '9x6', '--square', '0.05',
                   '--max-pairs', str(len(POSES)), '--out', str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f'{2 * len(POSES)} thermal/RGB pairs' in text
    assert f'calibrating from {len(POSES)}' in text
    assert 'homography at infinity' in text
    lines = text.splitlines()
    table = lines[lines.index(next(x for x in lines if x.startswith('pair '))) + 1:][:len(POSES)]
    for line in table:  # one row per pair, all used
        assert line.startswith('t=+') and ' yes ' in line, line
    params = yaml.safe_load(out.read_text())['/**/fuse_node']['ros__parameters']
    assert params['homography_coords'] == 'resized'
    assert all(isinstance(v, float) for v in params['homography'])
    h = parse_homography(params['homography'])
    # one pair per pose was chosen, decoded and paired right: the folders' homography
    assert corner_distance(h, calibrated[0].homography, rig.rgb_hw) < 1e-6
    assert corner_distance(h, rig.h, rig.rgb_hw) <= 1.0
    comment = out.read_text().split('/**/fuse_node:')[0]
    assert f'{len(POSES)} of {len(POSES)} pairs used' in comment
    assert 'calibration reprojection error' in comment and 'RGB px' in comment
    picture = cv2.imread(str(tmp_path / 'geometry.png'))
    assert picture.shape == (rig.rgb_hw[0], 2 * rig.rgb_hw[1], 3)
    rc = cli.main(['calibrate', '--bag', str(bag), '--thermal-topic', '/flir/image',
                   '--rgb-topic', '/rgb/image', '--board', '9x6',
                   '--out', str(tmp_path / 'x.yaml')])
    err = capsys.readouterr().err
    assert rc == 1 and "thermal topic '/flir/image' not in the bag" in err
    assert '/thermal/image' in err  # the bag's topics are listed
    script = (
        'import sys, rclpy\n'
        'rclpy.init(args=["--ros-args", "--params-file", sys.argv[1]])\n'
        'for ns in ("", "/rig"):\n'
        '    node = rclpy.create_node("fuse_node", namespace=ns,\n'
        '                             automatically_declare_parameters_from_overrides=True)\n'
        '    print(node.get_parameter("homography").value,\n'
        '          node.get_parameter("homography_coords").value)\n'
        '    node.destroy_node()\n'
        'rclpy.shutdown()\n')
    env = {**os.environ, 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'ROS_DOMAIN_ID': '213'}
    proc = subprocess.run([sys.executable, '-c', script, str(out)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        values, coords = line.rsplit(' ', 1)
        assert coords == 'resized'
        np.testing.assert_allclose(yaml.safe_load(values), params['homography'])


def test_cli_refuses_to_overwrite_and_checks_arguments(tmp_path, capsys):
    out = tmp_path / 'g.yaml'
    out.write_text('mine\n')
    (tmp_path / 'ir').mkdir()
    (tmp_path / 'vi').mkdir()
    cases = [
        (['--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'), '--board', '9x6',
          '--out', str(out)], 'exists (pass --force'),
        (['--ir', str(tmp_path / 'ir'), '--board', '9x6', '--out', str(tmp_path / 'a.yaml')],
         '--ir and --vi go together'),
        (['--board', '9x6', '--out', str(tmp_path / 'a.yaml')], 'give either --ir'),
        (['--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'), '--board', '9by6',
          '--out', str(tmp_path / 'a.yaml')], 'COLSxROWS of inner corners'),
        (['--ir', str(tmp_path / 'nope'), '--vi', str(tmp_path / 'vi'), '--board', '9x6',
          '--out', str(tmp_path / 'a.yaml')], '--ir folder not found'),
        (['--bag', str(tmp_path / 'nobag'), '--thermal-topic', '/t', '--rgb-topic', '/r',
          '--board', '9x6', '--out', str(tmp_path / 'a.yaml')], 'bag not found'),
    ]
    for argv, message in cases:
        assert cli.main(['calibrate', *argv]) == 2
        assert message in capsys.readouterr().err
    assert out.read_text() == 'mine\n'


def test_cli_messages_when_no_calibration_is_possible(tmp_path, capsys):
    """No board, a wrong board size, folders whose names do not match: status 1, clear."""
    rig = Rig(scale=0.5)
    rng = np.random.default_rng(5)
    _write(tmp_path / 'ir' / 'a.png', rig.thermal_image(2, rng))
    _write(tmp_path / 'vi' / 'a.png', rig.rgb_image(2, rng))
    _write(tmp_path / 'noise_ir' / 'a.png', rng.integers(0, 255, rig.thermal_hw, np.uint8))
    _write(tmp_path / 'noise_vi' / 'a.png', rng.integers(0, 255, rig.rgb_hw, np.uint8))
    _write(tmp_path / 'other_vi' / 'b.png', rig.rgb_image(2, rng))
    out = str(tmp_path / 'g.yaml')
    cases = [
        ('noise_ir', 'noise_vi', '9x6', ['board 9x6 found in both images of none of the 1 '
                                         'pairs', 'board 9x6 not found in the RGB image',
                                         'a board of 10 x 7 squares is 9x6']),
        ('ir', 'vi', '7x5', ['board 7x5 found in both images of none',
                             'a board of 8 x 6 squares is 7x5']),
        ('ir', 'vi', '10x7', ['board 10x7 found in both images of none']),
        ('ir', 'other_vi', '9x6', ['no pairs: pairs are matched by file name',
                                   '1 images, e.g. a.png', '1 images, e.g. b.png']),
    ]
    for ir, vi, board, messages in cases:
        rc = cli.main(['calibrate', '--ir', str(tmp_path / ir), '--vi', str(tmp_path / vi),
                       '--board', board, '--out', out])
        err = capsys.readouterr().err
        assert rc == 1, err
        for message in messages:
            assert message in err, err
    assert not Path(out).exists()


def test_cli_one_pair_folder(tmp_path, capsys):
    """A single pair works and says what it gives: the board plane's homography."""
    rig = Rig(scale=0.5)
    rng = np.random.default_rng(6)
    _write(tmp_path / 'ir' / 'a.png', rig.thermal_image(2, rng))
    _write(tmp_path / 'vi' / 'a.png', rig.rgb_image(2, rng))
    out = tmp_path / 'g.yaml'
    rc = cli.main(['calibrate', '--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'),
                   '--board', '9x6', '--out', str(out), '--coords', 'raw'])
    text = capsys.readouterr().out
    assert rc == 0
    assert "the board plane's homography (one pose)" in text
    assert 'a.png' in text and 'wrote' in text
    params = yaml.safe_load(out.read_text())['/**/fuse_node']['ros__parameters']
    assert params['homography_coords'] == 'raw'
    h = parse_homography(params['homography'])
    pc = PairCorners('a', rig.corners(2, 'thermal'), rig.corners(2, 'rgb'), rig.thermal_hw,
                     rig.rgb_hw, 'inverted')
    d = apply_homography(h, pc.thermal) - pc.rgb
    assert np.linalg.norm(d, axis=1).max() < 1.0
