"""The README's demo: a moving scene -> a bag -> the real ``fuse_node`` -> fused frames.

:func:`run_demo` builds a short bag (the generated night street of :mod:`sfdfuse_core.scene`, or
image pairs from two folders panned to simulate motion), starts ``sfdfuse_ros.fuse_node`` as a
child process with the package's parameters and Fast DDS profile, plays the bag into it with
:class:`~sfdfuse_ros.bag_play.BagPlayer`, collects the fused images with a subscription, and
writes them as PNGs plus a contact sheet (rows: thermal, RGB, fused). When fusion is slower than
the cameras the node drops older pairs; the demo counts them (pairs expected from the bag's
stamps minus pairs fused) and reports the latency from "pair complete" to "fused received".
"""
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

import sfdfuse_core
from sfdfuse_core.bag import pair_stamps
from sfdfuse_core.scene import (RGB_INFO_TOPIC, RGB_TOPIC, THERMAL_TOPIC, frames_from_folders,
                                make_scene, write_scene_bag)
from sfdfuse_ros.node_process import NodeProcess, tail_log

PathLike = Union[str, Path]
FUSED_TOPIC = '/fused/image'
#: The shipped weights of the compact network the node runs by default on a CPU (the same file
#: as ``sfdfuse_core.model.shipped_weights_path('sfdfuse-lite')``, named without importing torch).
WEIGHTS_FILE = (Path(sfdfuse_core.__file__).resolve().parent / 'weights'
                / 'sfdfuse_lite_ivf.safetensors')
#: Default playback speed per method (the compact network keeps up with the cameras on a CPU).
DEFAULT_RATE = {'sfdfuse': 1.0, 'mean': 1.0, 'max': 1.0}
#: Playback speed and image side for the published network on a CPU (seconds per frame).
HEAVY_CPU_RATE, HEAVY_CPU_SIDE = 0.25, 160


class DemoError(RuntimeError):
    """The demo failed; the message says where and, for the node, shows its last log lines."""


@dataclass
class DemoReport:
    """What the demo did.

    :param out_dir: output folder.
    :param bag: the bag that was played.
    :param method: fusion method of the node.
    :param thermal_in: thermal frames played.
    :param rgb_in: RGB frames played.
    :param pairs_expected: pairs the bag's stamps make (as the node's pairer would).
    :param fused: fused frames received.
    :param dropped: pairs expected but not fused (the node drops old pairs when slow).
    :param latency_ms_mean: mean time from "pair complete" (later input published) to "fused
        frame received", milliseconds.
    :param latency_ms_max: largest such time.
    :param frames: the PNG files of the fused frames.
    :param contact_sheet: the contact sheet PNG.
    :param rate: playback speed factor.
    :param seconds: wall time of the whole demo.
    :param node_stats: the node's last diagnostics key/values, when one arrived.
    """

    out_dir: str
    bag: str
    method: str
    thermal_in: int = 0
    rgb_in: int = 0
    pairs_expected: int = 0
    fused: int = 0
    dropped: int = 0
    latency_ms_mean: float = 0.0
    latency_ms_max: float = 0.0
    frames: List[str] = field(default_factory=list)
    contact_sheet: str = ''
    rate: float = 1.0
    seconds: float = 0.0
    node_stats: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """Return a short human-readable summary."""
        lines = [
            f'demo output: {self.out_dir}',
            f'  contact sheet: {self.contact_sheet}',
            f'  fused frames:  {len(self.frames)} PNGs in {Path(self.out_dir) / "fused"}',
            f'frames in: {self.thermal_in} thermal + {self.rgb_in} RGB (bag {self.bag}, played at '
            f'{self.rate:g}x) -> {self.pairs_expected} pairs',
            f'method {self.method}: fused {self.fused}, dropped {self.dropped} '
            '(the node keeps only the newest pair when fusion is slower than the cameras)',
            f'latency (pair complete -> fused received): mean {self.latency_ms_mean:.0f} ms, '
            f'max {self.latency_ms_max:.0f} ms',
            f'time: {self.seconds:.1f} s',
        ]
        stats = self.node_stats
        if stats:
            bad = (int(stats.get('conversion_errors_thermal', 0))
                   + int(stats.get('conversion_errors_rgb', 0)))
            lines.insert(-1, f"node diagnostics: received {stats.get('sync_received_thermal')} "
                             f"thermal + {stats.get('sync_received_rgb')} RGB, paired "
                             f"{stats.get('sync_paired')}, fused {stats.get('pairs_fused')}, "
                             f"superseded {stats.get('pairs_dropped_superseded')}, "
                             f'bad frames {bad}')
        return '\n'.join(lines)


def find_config_file(name: str) -> Path:
    """Find one of the package's config files (``fuse.yaml``, ``fastdds_profile.xml``).

    Looks in the installed share folder (colcon), the source tree's ``config/`` (editable or
    source use) and the share folder of a pip install (``sys.prefix/share/sfdfuse_ros``).

    :param name: file name.
    :return: the path.
    :raises DemoError: when it is nowhere.
    """
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('sfdfuse_ros')) / 'config' / name)
    except Exception:  # not installed with colcon: ament's lookup raises its own errors
        pass
    here = Path(__file__).resolve().parent
    candidates += [here.parent / 'config' / name,  # source tree, editable install
                   Path(sys.prefix) / 'share' / 'sfdfuse_ros' / 'config' / name]  # pip install
    for path in candidates:
        if path.is_file():
            return path
    raise DemoError(f'config file {name} not found; looked at: '
                    + ', '.join(str(p) for p in candidates))


def default_method() -> Tuple[str, Optional[str]]:
    """``('sfdfuse', None)`` when the shipped compact weights exist, else ``('mean', note)``."""
    if WEIGHTS_FILE.is_file():
        return 'sfdfuse', None
    return 'mean', (f'note: the shipped weights {WEIGHTS_FILE} are not there, so the demo fuses '
                    "with the 'mean' baseline (train the network, or pass --method)")


class _Collector:
    """Receives fused images (and the node's diagnostics) in a background executor thread."""

    def __init__(self, node, reliability) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile
        from sensor_msgs.msg import Image

        self.node = node
        self.frames: List[Tuple[int, np.ndarray, float]] = []  # (stamp_ns, image, wall)
        self.errors: List[str] = []
        self.diag: Dict[str, str] = {}
        self.diag_time = 0.0
        self._lock = threading.Lock()
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=reliability)
        node.create_subscription(Image, FUSED_TOPIC, self._on_image, qos)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    def _on_image(self, msg) -> None:
        from sfdfuse_core.imgmsg import ImageConversionError, image_msg_to_array

        wall = time.monotonic()
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        try:
            image = np.array(image_msg_to_array(msg), copy=True)
        except ImageConversionError as exc:
            with self._lock:
                self.errors.append(str(exc))
            return
        with self._lock:
            self.frames.append((stamp, image, wall))

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if 'fusion' in status.name:
                with self._lock:
                    self.diag = {kv.key: kv.value for kv in status.values}
                    self.diag_time = time.monotonic()

    def node_done(self, since: float) -> bool:
        """Whether diagnostics sent after ``since`` show every pair of the node handled."""
        with self._lock:
            diag, when, count = self.diag, self.diag_time, len(self.frames)
        if when < since + 0.05:
            return False
        try:
            paired = int(diag['sync_paired'])
            fused = int(diag['pairs_fused'])
            handled = (fused + int(diag['pairs_dropped_superseded'])
                       + int(diag['fusion_errors']) + int(diag['conversion_errors_thermal'])
                       + int(diag['conversion_errors_rgb']))
        except (KeyError, ValueError):
            return False
        return handled >= paired and count >= fused

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.frames)


def _build_frames(ir_dir: Optional[PathLike], vi_dir: Optional[PathLike], n_frames: int,
                  size: Optional[Tuple[int, int]], max_side: int,
                  seed: int) -> List[Tuple[np.ndarray, np.ndarray]]:
    if (ir_dir is None) != (vi_dir is None):
        raise DemoError('give both --ir DIR and --vi DIR, or neither (generated scene)')
    if ir_dir is not None:
        return list(frames_from_folders(ir_dir, vi_dir, n_frames, size, max_side=max_side))
    if size is None:
        size = (max_side, max_side * 4 // 5)
    return list(make_scene(n_frames, size, seed))


def _heavy_on_cpu(method: str, device: str, weights: Optional[str]) -> bool:
    """Whether the node will run the published (GPU-sized) network on the CPU."""
    if method != 'sfdfuse' or not weights or device.startswith('cuda'):
        return False
    from sfdfuse_core.weights import WeightsError, read_weights_info
    try:
        if read_weights_info(weights)['network'] != 'sfdfuse':
            return False
    except WeightsError:
        return False  # the node reports the bad file itself
    if device == 'auto':
        import torch  # only to ask for a GPU; the node has its own torch
        return not torch.cuda.is_available()
    return True


def default_max_side(heavy_on_cpu: bool) -> Tuple[int, Optional[str]]:
    """Return the longer image side to use when no size is given, and a note when it is small.

    The published network on a CPU takes seconds per 320x256 frame, so the demo then uses 160
    pixels; the compact network (the default) and the baselines run at 320.

    :param heavy_on_cpu: whether the node runs the published network on the CPU.
    """
    if not heavy_on_cpu:
        return 320, None
    return HEAVY_CPU_SIDE, ('note: no GPU, so the published network runs on the CPU: the demo '
                            f'uses small images ({HEAVY_CPU_SIDE} pixels wide) and plays slowly; '
                            'the node still drops pairs it cannot keep up with (pass --size '
                            '320x256 for larger images)')


def _label(img: np.ndarray, text: str, scale: float, y: Optional[int] = None) -> np.ndarray:
    """Write ``text`` on a copy of ``img`` (white with a dark outline) at the top or row ``y``."""
    out = img.copy()
    thick = max(1, int(round(scale * 1.5)))
    y = int(18 * scale) + 2 if y is None else y
    cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 1,
                cv2.LINE_AA)
    cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                cv2.LINE_AA)
    return out


def _bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def make_contact_sheet(columns: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                       pad: int = 4) -> np.ndarray:
    """Arrange ``(caption, thermal8, rgb, fused)`` columns into rows thermal / RGB / fused.

    :param columns: per column a caption and three ``uint8`` images (gray or BGR); each is
        resized to the fused image's size.
    :param pad: gap between tiles, pixels.
    :return: the sheet, BGR ``uint8``, with a label column on the left.
    """
    if not columns:
        raise ValueError('no columns for the contact sheet')
    h, w = columns[0][3].shape[:2]
    names = ('thermal', 'RGB', 'fused')
    scale = float(np.clip(w / 500.0, 0.3, 1.2))
    label_w = int(np.ceil(110 * scale)) + 8
    rows = []
    for r, name in enumerate(names):
        tiles = [_label(np.zeros((h, label_w, 3), np.uint8), name, scale, y=h // 2)]
        for caption, *imgs in columns:
            tile = _bgr(imgs[r])
            if tile.shape[:2] != (h, w):
                tile = cv2.resize(tile, (w, h), interpolation=cv2.INTER_LINEAR)
            if r == 0:
                tile = _label(tile, caption, scale)
            tiles.append(tile)
        spaced = []
        for tile in tiles:
            spaced += [tile, np.full((h, pad, 3), 32, np.uint8)]
        rows.append(np.hstack(spaced[:-1]))
    sheet = []
    for row in rows:
        sheet += [row, np.full((pad, row.shape[1], 3), 32, np.uint8)]
    return np.vstack(sheet[:-1])


def run_demo(out_dir: PathLike = 'out/demo', *, method: Optional[str] = None,
             ir_dir: Optional[PathLike] = None, vi_dir: Optional[PathLike] = None,
             n_frames: int = 60, size: Optional[Tuple[int, int]] = None, seed: int = 0,
             rate: Optional[float] = None, device: str = 'auto', weights: Optional[str] = None,
             columns: int = 6, start_timeout: float = 90.0, tail_timeout: float = 120.0,
             log: Callable[[str], None] = print) -> DemoReport:
    """Run the demo end to end and write its outputs under ``out_dir``.

    :param out_dir: output folder (``scene_bag/``, ``fused/*.png``, ``contact_sheet.png``,
        ``node.log``, ``summary.json``); earlier outputs of the demo there are replaced.
    :param method: ``'sfdfuse'``, ``'mean'`` or ``'max'``; default ``'sfdfuse'`` when the
        shipped weights exist, else ``'mean'`` (with a note).
    :param ir_dir: folder of infrared images (with ``vi_dir``); default the generated scene.
    :param vi_dir: folder of visible images with the same file names.
    :param n_frames: RGB frames of the bag (30 Hz; thermal at 9 Hz).
    :param size: RGB ``(width, height)`` (the generated thermal is half of it); default 320x256
        (image folders: 320 pixels on the longer side), or 160 pixels for the network on a CPU.
    :param seed: seed of the generated scene.
    :param rate: playback speed factor; default per method (:data:`DEFAULT_RATE`).
    :param device: the node's torch device.
    :param weights: the node's weights file (default the shipped one).
    :param columns: fused frames shown on the contact sheet.
    :param start_timeout: seconds the node may take to start (model loading).
    :param tail_timeout: seconds the node may take, after the bag ended, to finish its pairs.
    :param log: where progress lines go.
    :return: the report.
    :raises DemoError: when something fails (the node died, nothing was fused ...).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from sfdfuse_ros.bag_play import BagPlayer

    started = time.monotonic()
    out_dir = Path(out_dir)
    if method is None:
        method, note = default_method()
        if note:
            log(note)
    if method not in DEFAULT_RATE:
        raise DemoError(f"method must be one of {', '.join(DEFAULT_RATE)}, got {method!r}")
    heavy = _heavy_on_cpu(method, device, weights)
    if rate is None:
        rate = HEAVY_CPU_RATE if heavy else DEFAULT_RATE[method]
    rate = float(rate)
    if not rate > 0:
        raise DemoError(f'rate must be > 0, got {rate}')
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    if 'FASTDDS_DEFAULT_PROFILES_FILE' not in os.environ:
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(find_config_file('fastdds_profile.xml'))
    params_file = find_config_file('fuse.yaml')

    # 1. The bag.
    out_dir.mkdir(parents=True, exist_ok=True)
    bag_path = out_dir / 'scene_bag'
    fused_dir = out_dir / 'fused'
    for old in (bag_path, fused_dir):
        if old.exists():
            import shutil
            shutil.rmtree(old)
    for old in ('contact_sheet.png', 'summary.json'):
        (out_dir / old).unlink(missing_ok=True)
    max_side, note = default_max_side(heavy) if size is None else (0, None)
    if note:
        log(note)
    frames = _build_frames(ir_dir, vi_dir, n_frames, size, max_side, seed)
    info = write_scene_bag(bag_path, frames)
    source = f'{ir_dir} + {vi_dir}' if ir_dir else 'generated scene'
    log(f'[demo] wrote {bag_path}: {len(info.thermal)} thermal + {len(info.rgb)} RGB frames '
        f'({source}, {frames[0][1].shape[1]}x{frames[0][1].shape[0]})')
    expected = pair_stamps([s for _, s, _ in info.thermal], [s for _, s, _ in info.rgb])
    thermal_of_rgb = {rgb: th for _, th, rgb in expected}
    header_of = {}  # (topic, bag time) -> header stamp
    for _, (topic, rows) in enumerate(((THERMAL_TOPIC, info.thermal), (RGB_TOPIC, info.rgb))):
        for bag_t, stamp, _ in rows:
            header_of[(topic, bag_t)] = stamp
    frame_of = {stamp: idx for _, stamp, idx in info.thermal + info.rgb}

    # 2. The node.
    overrides = {'method': method, 'device': device}
    if weights:
        overrides['weights'] = str(weights)
    log_path = out_dir / 'node.log'
    node_proc = NodeProcess(log_path, params_file, overrides, dict(os.environ))
    report = DemoReport(out_dir=str(out_dir), bag=str(bag_path), method=method, rate=rate)
    context = rclpy.Context()
    executor = None
    spin_thread = None
    try:
        rclpy.init(context=context)
        player = BagPlayer(bag_path, topics=[THERMAL_TOPIC, RGB_TOPIC, RGB_INFO_TOPIC],
                           node_name='sfdfuse_demo_player', context=context)
        listener = Node('sfdfuse_demo_listener', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        log(f'[demo] starting fuse_node (method {method}); log: {log_path}')
        reliability = _wait_for_node(listener, player, node_proc, start_timeout)
        collector = _Collector(listener, reliability)
        spin_thread = threading.Thread(target=executor.spin, daemon=True)
        spin_thread.start()
        _wait(lambda: listener.count_publishers(FUSED_TOPIC) > 0
              and _subscribed(listener), 10.0, node_proc, 'while connecting')

        # 3. Play.
        published: Dict[Tuple[str, int], float] = {}

        def on_publish(topic: str, bag_ns: int, wall: float) -> None:
            stamp = header_of.get((topic, bag_ns))
            if stamp is not None:
                published[(topic, stamp)] = wall

        log(f'[demo] playing the bag at {rate:g}x real time')
        player.play(rate=rate, start_delay=0.2, on_publish=on_publish,
                    should_stop=lambda: not node_proc.alive())
        if not node_proc.alive():
            raise DemoError(node_proc.describe('while the bag played'))
        # 4. Let the node finish the pairs it holds: its diagnostics (once a second) say when
        # every pair it made is fused or superseded; a hard cap guards against a hung node.
        play_end = time.monotonic()
        deadline = play_end + tail_timeout
        while collector.count < len(expected) and not collector.node_done(play_end):
            if not node_proc.alive():
                raise DemoError(node_proc.describe('after the bag played'))
            if time.monotonic() > deadline:
                log(f'[demo] warning: the node still had pairs in hand {tail_timeout:.0f} s '
                    'after the bag ended; stopping it')
                break
            time.sleep(0.05)
        # The node's counters in the summary should include the last frames: wait (bounded) for
        # a diagnostics message sent after them.
        settled = time.monotonic()
        while collector.diag_time < settled and time.monotonic() < settled + 3.0:
            time.sleep(0.05)
        report.node_stats = dict(collector.diag)
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if spin_thread is not None:
            spin_thread.join(timeout=5.0)
        rclpy.try_shutdown(context=context)
        status = node_proc.stop()
    if status != 0:
        log(f'[demo] warning: fuse_node exited with status {status} when stopped; its last log '
            f'lines ({log_path}):\n{tail_log(log_path, 10)}')

    # 5. Results.
    got = sorted(collector.frames, key=lambda f: f[0])
    report.thermal_in = len(info.thermal)
    report.rgb_in = len(info.rgb)
    report.pairs_expected = len(expected)
    report.fused = len(got)
    report.dropped = max(0, len(expected) - len(got))
    if not got:
        raise DemoError(f'no fused frame arrived from fuse_node ({len(expected)} pairs played); '
                        f'its last log lines ({log_path}):\n{tail_log(log_path)}')
    latencies = []
    for stamp, _, wall in got:
        th = thermal_of_rgb.get(stamp)
        sent = [published.get((RGB_TOPIC, stamp))]
        if th is not None:
            sent.append(published.get((THERMAL_TOPIC, th)))
        sent = [s for s in sent if s is not None]
        if sent:
            latencies.append((wall - max(sent)) * 1e3)
    if latencies:
        report.latency_ms_mean = float(np.mean(latencies))
        report.latency_ms_max = float(np.max(latencies))
    fused_dir.mkdir(parents=True)
    for i, (stamp, image, _) in enumerate(got):
        path = fused_dir / f'fused_{i:04d}.png'
        cv2.imwrite(str(path), image)
        report.frames.append(str(path))
    report.contact_sheet = str(_write_sheet(out_dir / 'contact_sheet.png', got, frames,
                                            frame_of, thermal_of_rgb, info, columns))
    report.seconds = time.monotonic() - started
    with open(out_dir / 'summary.json', 'w') as f:
        json.dump(asdict(report), f, indent=2)
    return report


def _subscribed(listener) -> bool:
    return all(listener.count_subscribers(t) > 0 for t in (THERMAL_TOPIC, RGB_TOPIC))


def _wait(cond: Callable[[], bool], timeout: float, node_proc: NodeProcess,
          doing: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if not node_proc.alive():
            raise DemoError(node_proc.describe(doing))
        if time.monotonic() > deadline:
            raise DemoError(f'fuse_node did not come up within {timeout:.0f} s ({doing}); its '
                            f'last log lines ({node_proc.log_path}):\n'
                            f'{tail_log(node_proc.log_path)}')
        time.sleep(0.05)


def _wait_for_node(listener, player, node_proc: NodeProcess, timeout: float):
    """Wait until the node subscribes the inputs and publishes the output; return its QoS."""
    from rclpy.qos import ReliabilityPolicy

    def ready() -> bool:
        return (player.wait_for_subscribers(0.0) and _subscribed(listener)
                and bool(listener.get_publishers_info_by_topic(FUSED_TOPIC)))

    _wait(ready, timeout, node_proc, 'while starting')
    infos = listener.get_publishers_info_by_topic(FUSED_TOPIC)
    reliabilities = {i.qos_profile.reliability for i in infos}
    if ReliabilityPolicy.BEST_EFFORT in reliabilities:
        return ReliabilityPolicy.BEST_EFFORT
    return ReliabilityPolicy.RELIABLE


def _write_sheet(path: Path, got, frames, frame_of, thermal_of_rgb, info,
                 columns: int) -> Path:
    from sfdfuse_core.thermal import ThermalNormalizer

    normalizer = ThermalNormalizer(mode='auto', smoothing=0.0)
    picks = np.unique(np.linspace(0, len(got) - 1, min(columns, len(got))).round().astype(int))
    t0 = info.rgb[0][1]
    cols = []
    for k in picks:
        stamp, fused, _ = got[k]
        rgb_idx = frame_of.get(stamp)
        th_stamp = thermal_of_rgb.get(stamp)
        th_idx = frame_of.get(th_stamp) if th_stamp is not None else rgb_idx
        rgb = frames[rgb_idx][1] if rgb_idx is not None else np.zeros_like(_bgr(fused))
        th = frames[th_idx][0] if th_idx is not None else np.zeros(fused.shape[:2], np.uint16)
        th8 = normalizer(th)
        cols.append((f't={(stamp - t0) / 1e9:.2f}s', th8, rgb, fused))
    sheet = make_contact_sheet(cols)
    cv2.imwrite(str(path), sheet)
    return path


def run_from_args(args) -> int:
    """Run the demo as ``sfdfuse demo`` parsed it (the ``sfdfuse.ros_commands`` entry point).

    :param args: the namespace of ``sfdfuse_core.commands.demo.add_arguments``.
    :return: 0 on success, 1 with a message when something failed.
    """
    from sfdfuse_core.scene import SceneError
    try:
        report = run_demo(args.out, method=args.method, ir_dir=args.ir, vi_dir=args.vi,
                          n_frames=args.frames, size=args.size, seed=args.seed, rate=args.rate,
                          device=args.device, weights=args.weights, columns=args.columns,
                          start_timeout=args.start_timeout, tail_timeout=args.tail_timeout,
                          log=lambda line: print(line, flush=True))
    except (DemoError, SceneError) as exc:
        print(f'sfdfuse demo failed: {exc}', file=sys.stderr)
        return 1
    print(report.summary())
    return 0
