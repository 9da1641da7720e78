"""A generated thermal + RGB scene, and ROS 2 bags made from it or from image folders.

No data set ships with the package, yet the demo and the tests need a moving scene with the
properties of a real thermal/RGB rig. :func:`make_scene` renders one: a night street (sky, houses,
road with texture, a street light) with warm people and cars that move. Warm objects stand out in
thermal and are dim in RGB; the thermal camera has a lower resolution than the RGB camera and
delivers 14-bit counts in ``uint16``, as LWIR cores do.

:func:`write_scene_bag` writes frames into a ROS 2 bag with ``/thermal/image`` (``mono16``, or
``mono8`` for 8-bit frames), ``/rgb/image`` (``bgr8``) and ``/rgb/camera_info`` at different
rates with realistic stamps (offset, jitter, transport delay). :func:`frames_from_folders` makes
frames from user image folders (pairs matched by name) by panning a window across each pair.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from sfdfuse_core.imgmsg import array_to_image_fields

PathLike = Union[str, Path]
#: A frame of the scene: thermal ``(H_t, W_t)`` ``uint16`` (14-bit) or ``uint8``, and BGR
#: ``(H, W, 3)`` ``uint8``.
Frame = Tuple[np.ndarray, np.ndarray]

THERMAL_TOPIC = '/thermal/image'
RGB_TOPIC = '/rgb/image'
RGB_INFO_TOPIC = '/rgb/camera_info'

#: Thermal counts of the rendered scene (14-bit, roughly 40 counts per kelvin around 20 C).
_COUNTS_SKY = 5200.0
_COUNTS_GROUND = 7600.0
_COUNTS_HOUSE = 7900.0
_COUNTS_WINDOW = 8600.0
_COUNTS_PERSON = 9800.0
_COUNTS_CAR = 8500.0
_COUNTS_ENGINE = 11500.0
_COUNTS_LAMP = 10500.0


class SceneError(ValueError):
    """A scene cannot be built from what was given (sizes, folders, rates)."""


@dataclass
class _Mover:
    kind: str            # 'person' or 'car'
    x: float             # centre, fraction of the width at t = 0
    y: float             # foot line, fraction of the height
    speed: float         # fraction of the width per second (signed)
    scale: float         # size relative to the default object size
    color: Tuple[int, int, int]


def _check_size(size: Tuple[int, int], what: str) -> Tuple[int, int]:
    if (len(size) != 2 or not all(isinstance(v, (int, np.integer)) for v in size)
            or min(size) < 16):
        raise SceneError(f'{what} must be (width, height) with both >= 16, got {size!r}')
    return int(size[0]), int(size[1])


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Return smooth noise in [-1, 1]: a coarse random grid resized with cubic interpolation."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


class _SceneRenderer:
    """Static layers of the scene, rendered once; moving objects are drawn per frame."""

    def __init__(self, size: Tuple[int, int], thermal_size: Tuple[int, int], seed: int,
                 n_objects: int) -> None:
        self.w, self.h = size
        self.tw, self.th = thermal_size
        self.rng = np.random.default_rng(seed)
        w, h, rng = self.w, self.h, self.rng
        self.horizon = int(0.45 * h)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

        # Thermal background (counts) and RGB background (float BGR 0..255).
        therm = np.empty((h, w), np.float32)
        rgb = np.empty((h, w, 3), np.float32)
        sky = yy < self.horizon
        t_sky = (yy / max(1, self.horizon))
        therm[sky] = (_COUNTS_SKY + 600.0 * t_sky)[sky]
        rgb[sky] = np.stack([40 + 25 * t_sky, 18 + 14 * t_sky, 10 + 8 * t_sky], -1)[sky]
        ground = ~sky
        tex = _value_noise(rng, h, w, 6) + 0.5 * _value_noise(rng, h, w, 2)
        therm[ground] = (_COUNTS_GROUND + 150.0 * tex)[ground]
        road = rgb[ground]
        road[:] = 30.0
        road += (10.0 * tex[ground])[:, None]
        rgb[ground] = road
        # Lane markings: bright in RGB, slightly cooler in thermal.
        lane_y = int(0.78 * h)
        for x0 in range(0, w, max(8, w // 8)):
            x1 = x0 + max(4, w // 16)
            cv2.rectangle(rgb, (x0, lane_y), (x1, lane_y + max(1, h // 100)), (90, 95, 100), -1)
            cv2.rectangle(therm, (x0, lane_y), (x1, lane_y + max(1, h // 100)),
                          _COUNTS_GROUND - 250.0, -1)
        # Houses along the horizon with lit windows (warm in both).
        x = 0
        while x < w:
            bw = int(rng.uniform(0.12, 0.22) * w)
            bh = int(rng.uniform(0.15, 0.3) * h)
            top = self.horizon - bh
            shade = float(rng.uniform(20, 35))
            cv2.rectangle(rgb, (x, top), (x + bw - 2, self.horizon), (shade, shade, shade + 4), -1)
            cv2.rectangle(therm, (x, top), (x + bw - 2, self.horizon),
                          _COUNTS_HOUSE + float(rng.uniform(-150, 150)), -1)
            for wy in range(top + bh // 6, self.horizon - bh // 6, max(4, bh // 4)):
                for wx in range(x + bw // 8, x + bw - bw // 8, max(4, bw // 3)):
                    ww, wh = max(2, bw // 8), max(2, bh // 8)
                    if rng.random() < 0.5:
                        cv2.rectangle(rgb, (wx, wy), (wx + ww, wy + wh), (60, 150, 200), -1)
                    cv2.rectangle(therm, (wx, wy), (wx + ww, wy + wh), _COUNTS_WINDOW, -1)
            x += bw
        # A street light: a bright cone in RGB, a warm lamp head in thermal.
        lx = int(rng.uniform(0.55, 0.8) * w)
        cv2.line(rgb, (lx, int(0.25 * h)), (lx, int(0.75 * h)), (45, 45, 45), max(1, w // 120))
        cv2.line(therm, (lx, int(0.25 * h)), (lx, int(0.75 * h)), _COUNTS_GROUND, max(1, w // 120))
        glow = np.exp(-(((xx - lx) / (0.18 * w)) ** 2 + ((yy - 0.75 * h) / (0.2 * h)) ** 2))
        rgb += glow[..., None] * np.array([120.0, 170.0, 200.0], np.float32)
        cv2.circle(rgb, (lx, int(0.25 * h)), max(2, w // 60), (230, 250, 255), -1)
        cv2.circle(therm, (lx, int(0.25 * h)), max(2, w // 60), _COUNTS_LAMP, -1)
        self.therm_bg, self.rgb_bg = therm, rgb
        # Fixed-pattern noise of the thermal core (column offsets), at thermal resolution.
        self.fpn = (rng.normal(0.0, 12.0, (1, self.tw)) + rng.normal(0.0, 6.0, (self.th, 1)))
        self.fpn = self.fpn.astype(np.float32)
        self.movers = [self._random_mover(i) for i in range(n_objects)]

    def _random_mover(self, i: int) -> _Mover:
        rng = self.rng
        kind = 'car' if i % 3 == 2 else 'person'
        if kind == 'car':
            return _Mover(kind, float(rng.uniform(0, 1)), float(rng.uniform(0.72, 0.92)),
                          float(rng.choice([-1, 1]) * rng.uniform(0.12, 0.25)),
                          float(rng.uniform(0.9, 1.2)),
                          tuple(int(c) for c in rng.integers(20, 70, 3)))
        return _Mover(kind, float(rng.uniform(0, 1)), float(rng.uniform(0.6, 0.95)),
                      float(rng.choice([-1, 1]) * rng.uniform(0.03, 0.08)),
                      float(rng.uniform(0.8, 1.2)),
                      tuple(int(c) for c in rng.integers(15, 45, 3)))

    def render(self, t: float) -> Frame:
        """Render the scene at time ``t`` seconds: (thermal uint16 14-bit, BGR uint8)."""
        w, h = self.w, self.h
        therm = self.therm_bg.copy()
        rgb = self.rgb_bg.copy()
        # Far objects first, so that near ones cover them.
        for m in sorted(self.movers, key=lambda o: o.y):
            depth = 0.5 + (m.y - 0.45) / 0.55 * 0.8
            span = 1.3  # objects leave the picture before wrapping round
            cx = ((m.x + m.speed * t) % span - 0.15) * w
            foot = m.y * h
            if m.kind == 'person':
                ph = 0.22 * h * depth * m.scale
                pw = 0.35 * ph
                centre = (int(cx), int(foot - 0.45 * ph))
                axes = (max(1, int(pw / 2)), max(1, int(ph / 2)))
                cv2.ellipse(therm, centre, axes, 0, 0, 360, _COUNTS_PERSON, -1)
                cv2.circle(therm, (int(cx), int(foot - ph)), max(1, int(pw / 2.5)),
                           _COUNTS_PERSON + 300.0, -1)
                cv2.ellipse(rgb, centre, axes, 0, 0, 360, m.color, -1)
                cv2.circle(rgb, (int(cx), int(foot - ph)), max(1, int(pw / 2.5)),
                           tuple(c + 10 for c in m.color), -1)
            else:
                ch = 0.12 * h * depth * m.scale
                cw = 2.6 * ch
                x0, x1 = int(cx - cw / 2), int(cx + cw / 2)
                y0, y1 = int(foot - ch), int(foot)
                cv2.rectangle(therm, (x0, y0), (x1, y1), _COUNTS_CAR, -1)
                front = x1 if m.speed > 0 else x0
                eng = (front - int(0.3 * cw), y0) if m.speed > 0 else (front, y0)
                cv2.rectangle(therm, eng, (eng[0] + int(0.3 * cw), y1), _COUNTS_ENGINE, -1)
                cv2.rectangle(rgb, (x0, y0), (x1, y1), m.color, -1)
                # Headlights: bright in RGB, hardly visible in thermal.
                cv2.circle(rgb, (front, int(foot - 0.4 * ch)), max(1, int(0.15 * ch)),
                           (220, 245, 255), -1)
                for wx in (x0 + int(0.2 * cw), x1 - int(0.2 * cw)):
                    cv2.circle(therm, (wx, y1), max(1, int(0.2 * ch)), _COUNTS_CAR + 1500.0, -1)
                    cv2.circle(rgb, (wx, y1), max(1, int(0.2 * ch)), (10, 10, 10), -1)
        # Thermal: optics blur, resample to the thermal core, fixed-pattern + temporal noise.
        therm = cv2.GaussianBlur(therm, (0, 0), max(0.5, w / 320.0))
        therm = cv2.resize(therm, (self.tw, self.th), interpolation=cv2.INTER_AREA)
        therm += self.fpn + self.rng.normal(0.0, 15.0, therm.shape).astype(np.float32)
        therm16 = np.clip(therm, 0, 2 ** 14 - 1).astype(np.uint16)
        # RGB: night-time sensor noise.
        rgb += self.rng.normal(0.0, 3.0, rgb.shape).astype(np.float32)
        rgb8 = np.clip(rgb, 0, 255).astype(np.uint8)
        return therm16, rgb8


def make_scene(n_frames: int, size: Tuple[int, int] = (320, 256), seed: int = 0, *,
               thermal_size: Optional[Tuple[int, int]] = None, fps: float = 30.0,
               n_objects: int = 5) -> Iterator[Frame]:
    """Render a moving night street scene as seen by a thermal and an RGB camera.

    Frame ``i`` shows the scene at ``t = i / fps`` seconds. Warm people and cars move across a
    street; in RGB they are dim (night, one street light, headlights), in thermal they stand
    out. The thermal image is blurred, has fixed-pattern and temporal noise, and is smaller than
    the RGB image (half of it in each direction unless ``thermal_size`` says otherwise); both
    cameras see the same field of view.

    :param n_frames: number of frames to render (>= 1).
    :param size: RGB ``(width, height)`` in pixels.
    :param seed: seed of the scene layout and of the noise; the same seed gives the same frames.
    :param thermal_size: thermal ``(width, height)``; default half of ``size``.
    :param fps: frame rate the motion is computed for.
    :param n_objects: number of moving objects.
    :return: an iterator of ``(thermal, rgb)``: thermal ``(H_t, W_t)`` ``uint16`` with 14-bit
        counts (0..16383), rgb ``(H, W, 3)`` ``uint8`` BGR.
    :raises SceneError: on a size below 16 pixels, ``n_frames < 1`` or ``fps <= 0``.
    """
    size = _check_size(tuple(size), 'size')
    if thermal_size is None:
        thermal_size = (max(16, size[0] // 2), max(16, size[1] // 2))
    thermal_size = _check_size(tuple(thermal_size), 'thermal_size')
    if n_frames < 1:
        raise SceneError(f'n_frames must be >= 1, got {n_frames}')
    if fps <= 0:
        raise SceneError(f'fps must be > 0, got {fps}')
    renderer = _SceneRenderer(size, thermal_size, seed, n_objects)
    for i in range(n_frames):
        yield renderer.render(i / fps)


def frames_from_folders(ir_dir: PathLike, vi_dir: PathLike, n_frames: int,
                        size: Optional[Tuple[int, int]] = None, *, pan: bool = True,
                        crop: float = 0.75, max_side: Optional[int] = None) -> Iterator[Frame]:
    """Make frames from infrared/visible image pairs (matched by file name) in two folders.

    With ``pan`` the frames sweep a window of ``crop`` times the image size across each pair
    (left to right, then down), so the bag shows motion; the ``n_frames`` frames are spread
    evenly over the pairs. Without ``pan`` each pair gives one frame (``n_frames`` is then the
    maximum; pairs repeat when there are fewer). Both images of a pair are cut with the same
    window, so registered pairs stay registered.

    :param ir_dir: folder of infrared images (8- or 16-bit, gray or colour).
    :param vi_dir: folder of visible images (gray or colour).
    :param n_frames: number of frames to make (>= 1).
    :param size: output ``(width, height)`` of both images; default the first visible image's
        size (with ``pan``: the window size).
    :param pan: pan a window across each pair instead of one frame per pair.
    :param crop: window size as a fraction of the image (0.3..1) when panning.
    :param max_side: without ``size``, shrink (keeping the aspect ratio) so that the longer
        side is at most this many pixels.
    :return: an iterator of ``(ir, vi)``: ir ``(H, W)`` ``uint8`` or ``uint16`` as stored, vi
        ``(H, W, 3)`` ``uint8`` BGR.
    :raises SceneError: when the folders hold no pair or the arguments are out of range.
    """
    from sfdfuse_core.imageio import list_pairs, read_image

    if n_frames < 1:
        raise SceneError(f'n_frames must be >= 1, got {n_frames}')
    if not 0.3 <= crop <= 1.0:
        raise SceneError(f'crop must be in [0.3, 1], got {crop}')
    listing = list_pairs(ir_dir, vi_dir)
    if not listing.pairs:
        raise SceneError(f'no image pairs (same file name) in {ir_dir} and {vi_dir}: '
                         f'{len(listing.ir_only)} infrared-only and {len(listing.vi_only)} '
                         'visible-only names')
    pairs = listing.pairs
    per_pair = max(1, n_frames // len(pairs)) if pan else 1
    produced = 0
    index = 0
    while produced < n_frames:
        _, ir_path, vi_path = pairs[index % len(pairs)]
        index += 1
        ir = read_image(ir_path)
        vi = read_image(vi_path)
        if ir.ndim == 3:
            ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
        if vi.ndim == 2:
            vi = cv2.cvtColor(vi, cv2.COLOR_GRAY2BGR)
        if vi.dtype != np.uint8:
            vi = (vi >> 8).astype(np.uint8)
        vh, vw = vi.shape[:2]
        if ir.shape[:2] != (vh, vw):
            ir = cv2.resize(ir, (vw, vh), interpolation=cv2.INTER_AREA)
        if pan:
            cw, ch = max(8, int(crop * vw)), max(8, int(crop * vh))
        else:
            cw, ch = vw, vh
        if size is not None:
            out_w, out_h = size
        elif max_side is not None and max(cw, ch) > max_side:
            f = max_side / max(cw, ch)
            out_w, out_h = max(16, int(round(cw * f))), max(16, int(round(ch * f)))
        else:
            out_w, out_h = cw, ch
        count = min(per_pair, n_frames - produced)
        if index == len(pairs) and pan:
            count = n_frames - produced  # the last pair takes the remainder
        for k in range(count):
            s = k / max(1, count - 1)
            x0 = int(round(s * (vw - cw)))
            y0 = int(round(0.5 * (1 - np.cos(np.pi * s)) * (vh - ch)))
            ir_c = ir[y0:y0 + ch, x0:x0 + cw]
            vi_c = vi[y0:y0 + ch, x0:x0 + cw]
            if (out_w, out_h) != (cw, ch):
                ir_c = cv2.resize(ir_c, (out_w, out_h), interpolation=cv2.INTER_AREA)
                vi_c = cv2.resize(vi_c, (out_w, out_h), interpolation=cv2.INTER_AREA)
            yield np.ascontiguousarray(ir_c), np.ascontiguousarray(vi_c)
            produced += 1


@dataclass
class SceneBagInfo:
    """What :func:`write_scene_bag` wrote.

    :param path: the bag folder.
    :param thermal: ``(bag_time_ns, header_stamp_ns, frame_index)`` of every thermal message.
    :param rgb: ``(bag_time_ns, header_stamp_ns, frame_index)`` of every RGB message.
    :param camera_info: number of camera-info messages.
    """

    path: Path
    thermal: List[Tuple[int, int, int]] = field(default_factory=list)
    rgb: List[Tuple[int, int, int]] = field(default_factory=list)
    camera_info: int = 0


def _camera_info(ts, header, width: int, height: int):
    """Build a pinhole ``sensor_msgs/CameraInfo`` with a 60 degree horizontal field of view."""
    fx = 0.5 * width / np.tan(np.radians(30.0))
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    info_t = ts.types['sensor_msgs/msg/CameraInfo']
    roi_t = ts.types['sensor_msgs/msg/RegionOfInterest']
    return info_t(
        header=header, height=height, width=width, distortion_model='plumb_bob',
        d=np.zeros(5, np.float64),
        k=np.array([fx, 0, cx, 0, fx, cy, 0, 0, 1], np.float64),
        r=np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], np.float64),
        p=np.array([fx, 0, cx, 0, 0, fx, cy, 0, 0, 0, 1, 0], np.float64),
        binning_x=0, binning_y=0,
        roi=roi_t(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_scene_bag(path: PathLike, frames: Iterable[Frame], thermal_hz: float = 9.0,
                    rgb_hz: float = 30.0, *, start_ns: int = 1_700_000_000_000_000_000,
                    jitter_s: float = 0.002, seed: int = 0, storage: str = 'mcap',
                    thermal_topic: str = THERMAL_TOPIC, rgb_topic: str = RGB_TOPIC,
                    info_topic: Optional[str] = RGB_INFO_TOPIC,
                    thermal_frame: str = 'thermal_camera',
                    rgb_frame: str = 'rgb_camera') -> SceneBagInfo:
    """Write frames into a ROS 2 bag as a thermal + RGB rig would record them.

    ``frames`` are samples of the scene at ``rgb_hz`` (frame ``i`` at ``i / rgb_hz`` s, as
    :func:`make_scene` renders them with ``fps=rgb_hz``). Every frame gives an RGB message; the
    thermal camera, slower and not synchronised, gives a message at ``thermal_hz`` from the
    frame nearest its own tick (started 13 ms after the RGB camera). Header stamps get a small
    jitter; bag (receive) times add a transport delay. Thermal arrays in ``uint16`` are written
    as ``mono16``, ``uint8`` as ``mono8``; RGB as ``bgr8``, with a ``CameraInfo`` per RGB image.

    :param path: bag folder to create (must not exist).
    :param frames: ``(thermal, rgb)`` pairs, see :func:`make_scene`.
    :param thermal_hz: thermal frame rate (<= ``rgb_hz``).
    :param rgb_hz: RGB frame rate.
    :param start_ns: header stamp of the first RGB frame, nanoseconds since the epoch.
    :param jitter_s: standard deviation of the stamp jitter in seconds.
    :param seed: seed of the jitter.
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    :param thermal_topic: thermal image topic.
    :param rgb_topic: RGB image topic.
    :param info_topic: RGB camera-info topic, or ``None`` for none.
    :param thermal_frame: ``frame_id`` of the thermal images.
    :param rgb_frame: ``frame_id`` of the RGB images and camera info.
    :return: the stamps of what was written.
    :raises SceneError: on rates out of range, no frames, or frames of the wrong kind.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    if not 0 < thermal_hz <= rgb_hz:
        raise SceneError(f'need 0 < thermal_hz <= rgb_hz, got thermal_hz={thermal_hz}, '
                         f'rgb_hz={rgb_hz}')
    plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise SceneError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    path = Path(path)
    ts = get_typestore(Stores.ROS2_KILTED)
    image_t = ts.types['sensor_msgs/msg/Image']
    header_t = ts.types['std_msgs/msg/Header']
    time_t = ts.types['builtin_interfaces/msg/Time']
    rng = np.random.default_rng(seed)
    info = SceneBagInfo(path=path)

    def header(stamp_ns: int, frame_id: str):
        return header_t(stamp=time_t(sec=stamp_ns // 10 ** 9, nanosec=stamp_ns % 10 ** 9),
                        frame_id=frame_id)

    def jitter() -> int:
        return int(rng.normal(0.0, jitter_s) * 1e9) if jitter_s > 0 else 0

    pending: List[Tuple[int, object, bytes]] = []  # (bag time, connection, cdr)
    writer = Writer(path, version=9, storage_plugin=plugins[storage])
    writer.open()
    try:
        c_th = writer.add_connection(thermal_topic, 'sensor_msgs/msg/Image', typestore=ts)
        c_rgb = writer.add_connection(rgb_topic, 'sensor_msgs/msg/Image', typestore=ts)
        c_info = (writer.add_connection(info_topic, 'sensor_msgs/msg/CameraInfo', typestore=ts)
                  if info_topic else None)
        next_thermal = 0
        offset_s = 0.013
        for i, (therm, rgb) in enumerate(frames):
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise SceneError(f'frame {i}: rgb must be (H, W, 3) uint8, got '
                                 f'{rgb.shape} {rgb.dtype}')
            if therm.ndim != 2 or therm.dtype not in (np.uint8, np.uint16):
                raise SceneError(f'frame {i}: thermal must be (H, W) uint8 or uint16, got '
                                 f'{therm.shape} {therm.dtype}')
            t_rgb = i / rgb_hz
            stamp = start_ns + int(t_rgb * 1e9) + jitter()
            hdr = header(stamp, rgb_frame)
            msg = image_t(header=hdr, **_np_fields(rgb, 'bgr8'))
            bag_t = stamp + 4_000_000 + abs(jitter())
            pending.append((bag_t, c_rgb, ts.serialize_cdr(msg, 'sensor_msgs/msg/Image')))
            info.rgb.append((bag_t, stamp, i))
            if c_info is not None:
                cam = _camera_info(ts, hdr, rgb.shape[1], rgb.shape[0])
                pending.append((bag_t + 50_000, c_info,
                                ts.serialize_cdr(cam, 'sensor_msgs/msg/CameraInfo')))
                info.camera_info += 1
            # Thermal ticks whose nearest RGB frame is this one.
            while (offset_s + next_thermal / thermal_hz) < t_rgb + 0.5 / rgb_hz:
                t_th = offset_s + next_thermal / thermal_hz
                stamp_th = start_ns + int(t_th * 1e9) + jitter()
                enc = 'mono16' if therm.dtype == np.uint16 else 'mono8'
                msg = image_t(header=header(stamp_th, thermal_frame), **_np_fields(therm, enc))
                bag_th = stamp_th + 9_000_000 + abs(jitter())
                pending.append((bag_th, c_th, ts.serialize_cdr(msg, 'sensor_msgs/msg/Image')))
                info.thermal.append((bag_th, stamp_th, i))
                next_thermal += 1
        if not info.rgb:
            raise SceneError('no frames to write')
        pending.sort(key=lambda p: p[0])
        for bag_t, conn, raw in pending:
            writer.write(conn, bag_t, raw)
    except BaseException:
        writer.abort()
        import shutil
        shutil.rmtree(path, ignore_errors=True)
        raise
    writer.close()
    return info


def _np_fields(arr: np.ndarray, encoding: str) -> dict:
    """Image fields for a rosbags message: ``data`` as a ``uint8`` array, as rosbags wants."""
    fields = array_to_image_fields(arr, encoding)
    fields['data'] = np.frombuffer(fields['data'], np.uint8)
    return fields
