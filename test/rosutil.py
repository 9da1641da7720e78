"""Helpers for ROS 2 integration tests: isolated DDS domain, fixture node, node subprocesses.

Typical use (see ``test_fuse_node.py``)::

    env = ros_test_env()                      # unique ROS_DOMAIN_ID, localhost-only discovery
    proc = start_node(params, env, log_path)  # fuse_node as a child process of this venv
    with FixtureNode(env) as fx:              # rclpy in this process, same domain
        out = fx.collect(Image, 'fused/image')
        fx.publish_pairs(...)                 # real images, real stamps, thermal 9 Hz / RGB 30 Hz
        assert fx.wait_for(lambda: len(out) > 3, timeout=20)
    stop_process(proc)

Everything that waits takes a timeout, so a broken node fails a test instead of hanging it.
"""
from __future__ import annotations

import os
from pathlib import Path
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Optional

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO_ROOT / 'config' / 'fastdds_profile.xml'
_used_domains: set[int] = set()


def ros_test_env(domain_id: Optional[int] = None) -> dict[str, str]:
    """Make an environment for one isolated test run and apply it to this process too.

    DDS reads these variables when a participant is created, so the test process (rclpy) and
    the node subprocesses started with the returned dict meet in the same private domain.

    :param domain_id: ROS domain; default: a random one (1..200) not used before in this process.
    :return: a copy of ``os.environ`` with ``ROS_DOMAIN_ID``,
        ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and the Fast DDS profile of the package
        (unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is already set).
    """
    if domain_id is None:
        rnd = random.Random(os.getpid() * 1000003 + time.monotonic_ns())
        domain_id = rnd.choice([d for d in range(1, 201) if d not in _used_domains])
    _used_domains.add(domain_id)
    os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(FASTDDS_PROFILE))
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '0'
    return env


def write_params(path: Path, params: dict[str, Any], node: str = '/**') -> Path:
    """Write a ROS params file.

    :param path: where to write.
    :param params: parameter name -> value.
    :param node: the node key (``/**`` matches any node).
    :return: ``path``.
    """
    path.write_text(yaml.safe_dump({node: {'ros__parameters': params}}))
    return path


def start_node(ros_args: Iterable[str], env: dict[str, str], log_path: Path,
               module: str = 'sfdfuse_ros.fuse_node',
               executable: Optional[Path] = None) -> subprocess.Popen:
    """Start a node as a child process of this venv's Python.

    :param ros_args: arguments after ``--ros-args`` (e.g. ``['--params-file', p, '-r', ...]``).
    :param env: environment (from :func:`ros_test_env`).
    :param log_path: file that receives stdout and stderr (read it with :func:`read_log`).
    :param module: the module run with ``python -m`` (when no ``executable`` is given).
    :param executable: a console script of this venv to run instead (e.g. ``bin/fuse_node``).
    :return: the process; stop it with :func:`stop_process`.
    """
    prefix = [str(executable)] if executable is not None else [sys.executable, '-m', module]
    cmd = [*prefix, '--ros-args', *map(str, ros_args)]
    log = open(log_path, 'wb')
    try:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """Stop a child: SIGINT, then SIGKILL after ``timeout`` seconds.

    :param proc: the process from :func:`start_node`.
    :param timeout: seconds to wait for a clean exit.
    :return: its exit status.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    return proc.returncode


def read_log(log_path: Path) -> str:
    """Return what a child wrote so far.

    :param log_path: the log file given to :func:`start_node`.
    :return: its text (undecodable bytes replaced).
    """
    return log_path.read_bytes().decode('utf-8', 'replace') if log_path.exists() else ''


def image_msg(array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """Build a ``sensor_msgs/Image`` from a C-contiguous array (fast ``bytes`` assignment).

    :param array: ``(H, W)`` or ``(H, W, C)`` array in the encoding's layout.
    :param encoding: ROS encoding name (``mono16``, ``bgr8`` ...).
    :param stamp_ns: header stamp, nanoseconds.
    :param frame_id: header frame_id.
    :return: the message (little-endian).
    """
    array = np.ascontiguousarray(array)
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


def thermal_frame(height: int, width: int, phase: float) -> np.ndarray:
    """Draw a 14-bit thermal scene: a warm blob moving over a gradient.

    :param height: rows.
    :param width: columns.
    :param phase: animation phase (radians).
    :return: ``(H, W)`` uint16 in 0..16383.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * (0.5 + 0.3 * np.cos(phase)), height * 0.5
    blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * (0.15 * width) ** 2))
    counts = 6000 + 2000 * x / width + 6000 * blob
    return np.clip(counts, 0, 16383).astype(np.uint16)


def rgb_frame(height: int, width: int, phase: float) -> np.ndarray:
    """Draw a colourful BGR scene.

    :param height: rows.
    :param width: columns.
    :param phase: animation phase (radians).
    :return: ``(H, W, 3)`` uint8 BGR.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    b = 128 + 100 * np.sin(x / width * 6.28 + phase)
    g = 255 * y / height
    r = np.full_like(x, 200.0)
    return np.clip(np.stack([b, g, r], axis=-1), 0, 255).astype(np.uint8)


def camera_info_msg(height: int, width: int, stamp_ns: int, frame_id: str) -> CameraInfo:
    """Build a pinhole ``sensor_msgs/CameraInfo``.

    :param height: rows.
    :param width: columns.
    :param stamp_ns: header stamp, nanoseconds.
    :param frame_id: header frame_id.
    :return: the message.
    """
    msg = CameraInfo()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id
    msg.height, msg.width = height, width
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    f = float(width)
    msg.k = [f, 0.0, width / 2.0, 0.0, f, height / 2.0, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [f, 0.0, width / 2.0, 0.0, 0.0, f, height / 2.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def stamp_ns_of(msg: Any) -> int:
    """Return a stamped message's header stamp in nanoseconds.

    :param msg: any message with ``header.stamp``.
    :return: nanoseconds.
    """
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class FixtureNode:
    """An rclpy node in its own context, spun in a background thread.

    :param name: node name.
    :param domain_id: ROS domain (default: ``$ROS_DOMAIN_ID``, see :func:`ros_test_env`).
    """

    def __init__(self, name: str = 'test_fixture', domain_id: Optional[int] = None) -> None:
        self.context = Context()
        if domain_id is None:
            domain_id = int(os.environ.get('ROS_DOMAIN_ID', '0'))
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node(name, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: B902 - shutdown races end the spin thread
            pass

    def __enter__(self) -> 'FixtureNode':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        if self.context.ok():
            self.context.try_shutdown()
        self._thread.join(timeout=5.0)
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()

    def add_node(self, node: Node) -> None:
        """Spin another node of this context (e.g. the node under test, in-process).

        :param node: a node created with ``context=self.context``.
        """
        self._executor.add_node(node)

    def collect(self, msg_type: type, topic: str, qos: Optional[QoSProfile] = None,
                **kwargs: Any) -> list:
        """Subscribe and append every message to the returned list (thread-safe appends).

        :param msg_type: message class.
        :param topic: topic name.
        :param qos: QoS (default: reliable, depth 50).
        :param kwargs: passed to ``create_subscription`` (e.g. ``event_callbacks``).
        :return: the list that fills up.
        """
        received: list = []
        qos = qos or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(msg_type, topic, received.append, qos, **kwargs)
        return received

    def publisher(self, msg_type: type, topic: str, qos: Optional[QoSProfile] = None) -> Any:
        """Create a publisher on the fixture node (default QoS: reliable, depth 10).

        :param msg_type: message class.
        :param topic: topic name.
        :param qos: QoS profile.
        :return: the publisher.
        """
        return self.node.create_publisher(msg_type, topic, qos or QoSProfile(depth=10))

    def now_ns(self) -> int:
        """Return the fixture node's clock (real time) in nanoseconds.

        :return: nanoseconds.
        """
        return self.node.get_clock().now().nanoseconds

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
        """Wait until ``predicate()`` is true.

        :param predicate: condition to poll.
        :param timeout: seconds.
        :param poll: seconds between polls.
        :return: whether it became true in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll)
        return predicate()

    def wait_for_subscribers(self, publishers: Iterable[Any], timeout: float) -> bool:
        """Wait until every publisher has at least one matched subscription.

        :param publishers: rclpy publishers.
        :param timeout: seconds.
        :return: whether all matched in time.
        """
        pubs = list(publishers)
        return self.wait_for(lambda: all(p.get_subscription_count() > 0 for p in pubs), timeout)

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 10.0) -> Any:
        """Call a service and wait for the answer.

        :param srv_type: service class.
        :param name: service name.
        :param request: the request.
        :param timeout: seconds (service discovery and answer together).
        :return: the response.
        :raises TimeoutError: no service or no answer in time.
        """
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f'service {name} not available after {timeout} s')
            future = client.call_async(request)
            if not self.wait_for(future.done, timeout):
                raise TimeoutError(f'no answer from {name} after {timeout} s')
            return future.result()
        finally:
            self.node.destroy_client(client)


class PairPublisher:
    """Publishes thermal (mono16, 14-bit) and RGB frames at their own rates with real stamps.

    Frames are built once per phase step and reused, so publishing costs little CPU.

    :param fixture: the fixture node.
    :param thermal_topic: thermal image topic.
    :param rgb_topic: RGB image topic.
    :param info_topic: RGB camera_info topic (``None``: no camera_info).
    :param thermal_hw: thermal ``(H, W)``.
    :param rgb_hw: RGB ``(H, W)``.
    :param rgb_encoding: ``bgr8`` or ``rgb8``.
    :param frame_ids: ``(thermal, rgb)`` frame ids.
    """

    def __init__(self, fixture: FixtureNode, thermal_topic: str = 'thermal/image',
                 rgb_topic: str = 'rgb/image', info_topic: Optional[str] = 'rgb/camera_info',
                 thermal_hw: tuple[int, int] = (48, 64), rgb_hw: tuple[int, int] = (96, 128),
                 rgb_encoding: str = 'bgr8',
                 frame_ids: tuple[str, str] = ('thermal_optical', 'rgb_optical')) -> None:
        self.fixture = fixture
        self.thermal_pub = fixture.publisher(Image, thermal_topic)
        self.rgb_pub = fixture.publisher(Image, rgb_topic)
        self.info_pub = fixture.publisher(CameraInfo, info_topic) if info_topic else None
        self.thermal_hw, self.rgb_hw = thermal_hw, rgb_hw
        self.rgb_encoding = rgb_encoding
        self.frame_ids = frame_ids
        self.thermal_stamps: list[int] = []
        self.rgb_stamps: list[int] = []
        self._thermal = [thermal_frame(*thermal_hw, p) for p in np.linspace(0, 6.28, 8)]
        rgb = [rgb_frame(*rgb_hw, p) for p in np.linspace(0, 6.28, 8)]
        self._rgb = [f[:, :, ::-1].copy() for f in rgb] if rgb_encoding == 'rgb8' else rgb

    def wait_matched(self, timeout: float = 20.0) -> bool:
        """Wait until the node subscribed both image topics.

        :param timeout: seconds.
        :return: whether both matched.
        """
        return self.fixture.wait_for_subscribers([self.thermal_pub, self.rgb_pub], timeout)

    def publish_thermal(self, stamp_ns: int, index: int = 0) -> None:
        """Publish one thermal frame.

        :param stamp_ns: stamp.
        :param index: which of the prepared frames.
        """
        self.thermal_pub.publish(image_msg(self._thermal[index % len(self._thermal)], 'mono16',
                                           stamp_ns, self.frame_ids[0]))
        self.thermal_stamps.append(stamp_ns)

    def publish_rgb(self, stamp_ns: int, index: int = 0) -> None:
        """Publish one RGB frame (and its camera_info).

        :param stamp_ns: stamp.
        :param index: which of the prepared frames.
        """
        self.rgb_pub.publish(image_msg(self._rgb[index % len(self._rgb)], self.rgb_encoding,
                                       stamp_ns, self.frame_ids[1]))
        if self.info_pub is not None:
            self.info_pub.publish(camera_info_msg(*self.rgb_hw, stamp_ns, self.frame_ids[1]))
        self.rgb_stamps.append(stamp_ns)

    def run(self, duration: float, thermal_hz: float = 9.0, rgb_hz: float = 30.0,
            stamp_offset_ns: int = 0, until: Optional[Callable[[], bool]] = None) -> None:
        """Publish both streams for ``duration`` seconds (or until ``until()`` is true).

        Stamps are the fixture clock's time of publication plus ``stamp_offset_ns``.

        :param duration: seconds.
        :param thermal_hz: thermal rate.
        :param rgb_hz: RGB rate.
        :param stamp_offset_ns: added to every stamp (negative: time jumps backwards).
        :param until: optional early stop condition.
        """
        start = time.monotonic()
        next_t, next_r = start, start
        i_t = i_r = 0
        while True:
            now = time.monotonic()
            if now - start >= duration or (until is not None and until()):
                return
            if now >= next_r:
                self.publish_rgb(self.fixture.now_ns() + stamp_offset_ns, i_r)
                i_r += 1
                next_r += 1.0 / rgb_hz
            if now >= next_t:
                self.publish_thermal(self.fixture.now_ns() + stamp_offset_ns, i_t)
                i_t += 1
                next_t += 1.0 / thermal_hz
            time.sleep(max(0.0, min(next_r, next_t) - time.monotonic()))
