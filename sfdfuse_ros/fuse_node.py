"""ROS 2 node ``fuse_node``: fuses a thermal (infrared) and an RGB camera with SFDFuse.

Topics (relative names, so namespaces and remappings apply):

* subscribes ``thermal/image`` (``sensor_msgs/Image``; mono16/mono8/32FC1 ...),
* subscribes ``rgb/image`` (``sensor_msgs/Image``) or, with ``rgb_transport: compressed``,
  ``<rgb/image after remapping>/compressed`` (``sensor_msgs/CompressedImage``, JPEG/PNG), the
  name image_transport would use,
* subscribes ``rgb/camera_info`` (optional) and republishes it as ``fused/camera_info``,
* publishes ``fused/image`` with the RGB frame's header (stamp and frame_id), in ``bgr8`` (fused
  luminance with the RGB image's chroma) or ``mono8``,
* with ``publish_compressed: true`` also publishes ``<fused/image after remapping>/compressed``
  (``sensor_msgs/CompressedImage``, JPEG of ``jpeg_quality``, ``format`` and header as
  image_transport's compressed plugin writes them), encoded by a thread of its own after
  ``fused/image`` is out, so that encoding never delays it,
* publishes ``/diagnostics`` once a second.

Threading: the subscription callbacks only pair messages by header stamp
(:class:`~sfdfuse_core.sync.ApproximateTimePairer`, policy ``sync_policy``) and hand the pairs to
a :class:`LatestPairMailbox`; a worker thread converts, normalises, aligns and fuses them. A pair
that arrives while the worker is idle is always fused (also when one message completes several
pairs); while the worker is busy only the newest waiting pair is kept, the ones it replaces are
counted as ``superseded``, so no queue builds up and latency stays bounded.

Parameters, their defaults and which of them may change at run time are listed in
``config/fuse.yaml``; each descriptor says it too.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import math
import os
import sys
import threading
import time
from typing import Any, Optional

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_policy_name_from_kind)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

try:  # Iron and newer
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

from sfdfuse_core.fusion import Fuser
from sfdfuse_core.inference.engine import available_cores, PRECISIONS
from sfdfuse_core.imgmsg import (decode_frame, encode_compressed, fill_image_msg,
                                 ImageConversionError)
from sfdfuse_core.sync import (ApproximateTimePairer, header_stamp_ns, POLICIES, RGB,
                               STREAM_NAMES, THERMAL)
from sfdfuse_core.thermal import ThermalNormalizer, align_thermal, parse_homography
from sfdfuse_core.weights import WeightsError

METHODS = ('sfdfuse', 'mean', 'max')
DEVICES = ('auto', 'cpu', 'cuda')
OUTPUT_ENCODINGS = ('bgr8', 'mono8')
THERMAL_MODES = ('auto', 'fixed')
TRANSPORTS = ('raw', 'compressed')
HOMOGRAPHY_COORDS = ('resized', 'raw')
RELIABILITIES = {'best_effort': ReliabilityPolicy.BEST_EFFORT,
                 'reliable': ReliabilityPolicy.RELIABLE}
IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
#: How long (seconds) a repeated warning is held back.
LOG_THROTTLE_S = 5.0
#: Longest wait (seconds) at shutdown for the frame being fused (a large frame takes seconds on
#: a CPU). Exiting while the worker is inside torch aborts the process ('terminate called
#: without an active exception', status -6), so shutdown waits for it.
SHUTDOWN_WAIT_S = 60.0
#: Per-pair times (ms) the worker records; /diagnostics gives ``<name>_{mean,p50,p99,max}_ms``
#: of each over its window. ``latency``: the second message of the pair was received (callback)
#: -> the fused image was published; ``engine``: the fusion call alone (the network on
#: ``method: sfdfuse``); ``overhead``: latency - engine (what ROS and the node add); ``sync``:
#: second message received -> the pairer releases the pair (it may wait for a later frame to
#: be sure of the best partner); ``wait``: pair released -> worker starts on it; ``convert``:
#: messages -> arrays (thermal 8-bit mapping, alignment) and fused array -> message;
#: ``publish``: the publish call; ``fusion``: worker start -> camera info published. With the
#: node's logger at debug level each pair is also logged (``pair timing stamp_ns=...
#: received_monotonic_s=... latency_ms=...``) for ``benchmarks/node_latency.py``.
TIMINGS = ('latency', 'engine', 'overhead', 'sync', 'wait', 'convert', 'publish', 'fusion')
#: Pairs that may wait for an idle worker at once (several pairs completed together, each kept);
#: beyond it the oldest are superseded, as when the worker is busy.
MAILBOX_IDLE_LIMIT = 8


class StartupError(RuntimeError):
    """The node cannot start (bad weights, bad parameter values); the message says why."""


def _out_of_memory_errors() -> tuple[type, ...]:
    """Return ``(torch.cuda.OutOfMemoryError,)``, or ``()`` where torch does not have it."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the fusion core
        return ()
    oom = getattr(getattr(torch, 'cuda', None), 'OutOfMemoryError', None)
    return (oom,) if isinstance(oom, type) and issubclass(oom, BaseException) else ()


def _release_cuda_cache() -> None:
    """Hand the CUDA caching allocator's free blocks back after an out-of-memory error."""
    torch = sys.modules.get('torch')
    try:
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except RuntimeError:  # a broken CUDA context: nothing more to free
        pass


def _frame_size(msg: Any) -> str:
    """Describe a message's frame size for a log line (``640x512``, or bytes if compressed)."""
    if getattr(msg, 'width', None) is not None and getattr(msg, 'height', None) is not None:
        return f'{msg.width}x{msg.height}'
    return f'{len(getattr(msg, "data", b""))} bytes'


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: default, description, whether it may change at run time, bounds."""

    default: Any
    description: str
    runtime: bool = False
    float_range: Optional[tuple[float, float]] = None
    int_range: Optional[tuple[int, int]] = None

    def descriptor(self) -> ParameterDescriptor:
        """Build the ROS descriptor; read-only parameters are enforced by rclpy.

        :return: the descriptor, whose description also says when the value may change.
        """
        when = 'May be changed at run time.' if self.runtime else 'Read-only (set at start-up).'
        desc = ParameterDescriptor(description=f'{self.description} {when}',
                                   read_only=not self.runtime)
        if self.float_range is not None:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(self.float_range[0]), to_value=float(self.float_range[1]))]
        if self.int_range is not None:
            desc.integer_range = [IntegerRange(
                from_value=int(self.int_range[0]), to_value=int(self.int_range[1]))]
        return desc


#: Every parameter of the node (``use_sim_time`` is rclpy's own). Keep in step with
#: ``config/fuse.yaml``, which holds the defaults users edit.
PARAMS: dict[str, ParamSpec] = {
    'method': ParamSpec(
        'sfdfuse', "Fusion method: 'sfdfuse' (the network), 'mean' or 'max' (baselines)."),
    'weights': ParamSpec(
        '', 'Weights file (.safetensors / .pt) or shipped network name (sfdfuse-lite, '
        'sfdfuse); empty = the shipped default for the device: the compact sfdfuse-lite on a '
        'CPU, the published sfdfuse on a GPU once its trained weights ship.'),
    'device': ParamSpec('auto', "Inference device: 'auto' (CUDA if available), 'cpu', 'cuda'."),
    'precision': ParamSpec(
        'auto', "Network precision: 'auto' (bf16 on a GPU, fp32 on the CPU), 'fp32', 'bf16' (on "
        'a CPU with native bf16, AVX512-BF16 or AMX, faster than fp32 and a few 8-bit levels '
        "from it; slower on other CPUs) or 'fp16' (GPU)."),
    'threads': ParamSpec(
        0, 'CPU threads of the network; 0 = all cores this process may use but one, which is '
        'left to the ROS callbacks, image conversion and DDS.', int_range=(0, 1024)),
    'slop': ParamSpec(
        0.05, 'Largest stamp difference (s) between a thermal and an RGB frame that are paired.',
        runtime=True, float_range=(0.0, 10.0)),
    'queue_size': ParamSpec(
        10, 'Frames kept per stream while waiting for a partner.', int_range=(1, 1000)),
    'sync_policy': ParamSpec(
        'optimal', "Pairing policy: 'optimal' emits a pair once it can no longer be improved "
        '(the most pairs, each frame with its closest partner; a pair may wait about one frame '
        "of the faster camera), 'greedy' pairs a frame at once with the closest queued partner "
        "within slop (as message_filters' ApproximateTimeSynchronizer does: lower latency, not "
        'always the closest partner).'),
    'thermal_mode': ParamSpec(
        'auto', "Thermal to 8-bit mapping: 'auto' (percentile range, temporally smoothed) or "
        "'fixed' (thermal_low..thermal_high).", runtime=True),
    'thermal_low': ParamSpec(
        0.0, "Raw thermal value mapped to 0 in 'fixed' mode.", runtime=True),
    'thermal_high': ParamSpec(
        16383.0, "Raw thermal value mapped to 255 in 'fixed' mode (16383 = 14-bit full scale).",
        runtime=True),
    'thermal_percentiles': ParamSpec(
        [1.0, 99.0], "[low, high] percentiles (0..100) that span the range in 'auto' mode.",
        runtime=True),
    'thermal_smoothing': ParamSpec(
        0.9, "Temporal smoothing of the 'auto' range (0 = none, towards 1 = slower).",
        runtime=True, float_range=(0.0, 0.999)),
    'homography': ParamSpec(
        IDENTITY, '3x3 homography (9 doubles, row-major) mapping thermal pixel coordinates to '
        'RGB pixel coordinates (see homography_coords); identity = same field of view.',
        runtime=True),
    'homography_coords': ParamSpec(
        'resized', "Thermal coordinates the homography takes: 'resized' (the thermal image "
        "already resized to the RGB size; identity = plain resize) or 'raw' (the thermal pixel "
        "grid as received, what cv2.findHomography on thermal/RGB point pairs gives).",
        runtime=True),
    'output_encoding': ParamSpec(
        'bgr8', "'bgr8' (fused luminance with the RGB chroma) or 'mono8' (fused luminance).",
        runtime=True),
    'publish_compressed': ParamSpec(
        False, 'Also publish the fused image as JPEG (sensor_msgs/CompressedImage) on '
        "<fused/image after remapping>/compressed, image_transport's compressed topic; encoded "
        'by a thread of its own after fused/image is published.'),
    'jpeg_quality': ParamSpec(
        90, 'JPEG quality (1..100) of the compressed fused image.', runtime=True,
        int_range=(1, 100)),
    'rgb_transport': ParamSpec(
        'raw', "'raw' subscribes rgb/image (sensor_msgs/Image); 'compressed' subscribes "
        'rgb/image/compressed (sensor_msgs/CompressedImage, JPEG/PNG).'),
    'input_reliability': ParamSpec(
        'best_effort', "Reliability of the subscriptions: 'best_effort' (sensor-data QoS, "
        "REP-2003; matches both kinds of publisher) or 'reliable'."),
    'input_depth': ParamSpec(5, 'History depth of the subscriptions.', int_range=(1, 1000)),
    'output_reliability': ParamSpec(
        'reliable', "Reliability of the publishers: 'reliable' (REP-2003) or 'best_effort'."),
    'output_depth': ParamSpec(5, 'History depth of the publishers.', int_range=(1, 1000)),
    'diagnostics_period': ParamSpec(
        1.0, 'Seconds between /diagnostics messages (wall time).', float_range=(0.1, 60.0)),
    'stale_timeout': ParamSpec(
        3.0, 'Diagnostics turn WARN when no fused image was published for this long (s).',
        runtime=True, float_range=(0.1, 3600.0)),
    'hardware_id': ParamSpec(
        '', 'hardware_id of the diagnostics; empty = the node\'s fully qualified name.'),
}


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f'{name} must be one of {", ".join(allowed)}; got {value!r}')
    return value


@dataclass(frozen=True)
class FuseSettings:
    """The run-time-changeable settings, validated together; swapped atomically when changed."""

    slop: float
    thermal_mode: str
    thermal_low: float
    thermal_high: float
    thermal_percentiles: tuple[float, float]
    thermal_smoothing: float
    homography: np.ndarray = field(compare=False)
    homography_coords: str
    output_encoding: str
    stale_timeout: float
    jpeg_quality: int = 90

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> 'FuseSettings':
        """Validate parameter values and build the settings.

        :param values: parameter name -> value, for every run-time parameter.
        :return: the settings.
        :raises ValueError: with the offending parameter and value in the message.
        """
        slop = float(values['slop'])
        if not math.isfinite(slop) or slop < 0.0:
            raise ValueError(f'slop must be >= 0 seconds (0: equal stamps only); got {slop}')
        low, high = float(values['thermal_low']), float(values['thermal_high'])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f'thermal_low must be below thermal_high; got {low} .. {high}')
        if not math.isfinite(high - low):
            raise ValueError('thermal_high - thermal_low must be a finite number (the range '
                             f'overflows a float); got {low} .. {high}')
        pct = [float(v) for v in values['thermal_percentiles']]
        if len(pct) != 2 or not (0.0 <= pct[0] < pct[1] <= 100.0):
            raise ValueError('thermal_percentiles must be [low, high] with '
                             f'0 <= low < high <= 100; got {pct}')
        smoothing = float(values['thermal_smoothing'])
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f'thermal_smoothing must be in [0, 1); got {smoothing}')
        try:
            homography = parse_homography(list(values['homography']))
        except ValueError as exc:
            raise ValueError(f'homography: {exc}') from exc
        stale = float(values['stale_timeout'])
        if not stale > 0.0:
            raise ValueError(f'stale_timeout must be positive; got {stale}')
        quality = values['jpeg_quality']
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f'jpeg_quality must be an integer in 1..100; got {quality!r}')
        return cls(slop=slop,
                   thermal_mode=_choice('thermal_mode', values['thermal_mode'], THERMAL_MODES),
                   thermal_low=low, thermal_high=high,
                   thermal_percentiles=(pct[0], pct[1]), thermal_smoothing=smoothing,
                   homography=homography,
                   homography_coords=_choice('homography_coords', values['homography_coords'],
                                             HOMOGRAPHY_COORDS),
                   output_encoding=_choice('output_encoding', values['output_encoding'],
                                           OUTPUT_ENCODINGS),
                   stale_timeout=stale, jpeg_quality=quality)

    def make_normalizer(self) -> ThermalNormalizer:
        """Build the thermal 16 -> 8 bit mapping these settings describe.

        :return: a fresh normalizer (its temporal smoothing starts over).
        """
        return ThermalNormalizer(mode=self.thermal_mode, low=self.thermal_low,
                                 high=self.thermal_high, percentiles=self.thermal_percentiles,
                                 smoothing=self.thermal_smoothing)


@dataclass
class PairJob:
    """A thermal/RGB message pair waiting for the worker."""

    thermal: Image
    rgb: Any  # Image or CompressedImage
    ready: float  # time.monotonic() when the pairer released the pair
    #: time.monotonic() when the later of the two messages was received (None: ``ready``).
    received: Optional[float] = None


class LatestPairMailbox:
    """Hand-over between the subscription callbacks (or the worker) and a worker thread.

    An item offered while the worker is idle (not working on an item) is always handed over,
    in order, even when several come at once (one message can complete several pairs); while the
    worker is busy only the newest item offered since is kept, and the ones it replaces are
    counted in :attr:`superseded`. So the worker never falls behind, and a pair is dropped only
    when it waited while the worker was busy. (Before, the older of two pairs completed together
    was dropped even with an idle worker: with 4 Hz cameras the third pair of every new
    timeline, whose partner the pairer could only be sure of one frame later, was lost.)

    The worker calls :meth:`get`, works on the item, then :meth:`task_done`.

    :param idle_limit: most items kept for an idle worker (older ones beyond it are superseded).
    """

    def __init__(self, idle_limit: int = MAILBOX_IDLE_LIMIT) -> None:
        self._cond = threading.Condition()
        #: ``(item, offered_while_idle)``, oldest first.
        self._items: deque[tuple[Any, bool]] = deque()
        self._busy = False
        self._closed = False
        self._idle_limit = max(1, int(idle_limit))
        #: Items that were replaced before the worker took them.
        self.superseded = 0

    def put(self, item: Any) -> bool:
        """Offer one item (see :meth:`put_all`).

        :param item: anything but ``None``.
        :return: ``True`` when a waiting item was superseded.
        """
        return self.put_all([item]) > 0

    def put_all(self, items: list) -> int:
        """Offer items, oldest first.

        :param items: the items (not ``None``).
        :return: how many items (waiting ones or older ones of ``items``) were superseded.
        """
        if not items:
            return 0
        with self._cond:
            if self._busy:
                # Items offered while the worker was idle stay; of the others the newest wins.
                kept = [entry for entry in self._items if entry[1]]
                dropped = len(self._items) - len(kept) + len(items) - 1
                self._items = deque(kept)
                self._items.append((items[-1], False))
            else:
                dropped = 0
                self._items.extend((item, True) for item in items)
                while len(self._items) > self._idle_limit:
                    self._items.popleft()
                    dropped += 1
            self.superseded += dropped
            self._cond.notify()
            return dropped

    def get(self, timeout: float) -> Optional[Any]:
        """Take the oldest waiting item, waiting up to ``timeout`` seconds.

        The worker is busy with the item until it calls :meth:`task_done` (or :meth:`get`).

        :param timeout: seconds to wait.
        :return: the item, or ``None`` on time-out or after :meth:`close`.
        """
        with self._cond:
            self._busy = False
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._closed or not self._items:
                return None
            self._busy = True
            return self._items.popleft()[0]

    def task_done(self) -> None:
        """Say that the worker finished the item it took (it is idle until the next one)."""
        with self._cond:
            self._busy = False

    @property
    def pending(self) -> int:
        """Items waiting now."""
        with self._cond:
            return len(self._items)

    def close(self) -> None:
        """Wake the worker for good; later :meth:`get` calls return ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed


class _Window:
    """Counters of the current diagnostics window, guarded by the node's stats lock."""

    def __init__(self) -> None:
        self.inputs = [0, 0]
        self.outputs = 0
        self.errors = 0
        self.timings_ms: dict[str, list[float]] = {name: [] for name in TIMINGS}
        self.jpeg_ms: list[float] = []
        self.start = time.monotonic()


class FuseNode(Node):
    """Pairs thermal and RGB frames by stamp, fuses the newest pair, publishes the result."""

    def __init__(self, **kwargs: Any) -> None:
        """Declare parameters, load the model, then create topics and the worker.

        :param kwargs: passed to :class:`rclpy.node.Node` (e.g. ``parameter_overrides``).
        :raises StartupError: for weights problems or invalid parameter values; the message
            names the file or parameter. Nothing is subscribed at that point.
        """
        super().__init__('fuse_node', **kwargs)
        self._mailbox = LatestPairMailbox()
        self._worker: Optional[threading.Thread] = None
        self._jpeg_box: Optional[LatestPairMailbox] = None
        self._encoder: Optional[threading.Thread] = None
        self._fuser: Optional[Fuser] = None
        try:
            for name, spec in PARAMS.items():
                self.declare_parameter(name, spec.default, spec.descriptor())
        except ParameterException as exc:  # wrong type or out of range in a params file
            raise StartupError(f'invalid parameter: {exc}') from exc
        values = {name: self.get_parameter(name).value for name in PARAMS}
        try:
            self._settings = FuseSettings.from_values(values)
            self._method = _choice('method', values['method'], METHODS)
            self._device = _choice('device', values['device'], DEVICES)
            self._precision = _choice('precision', values['precision'], PRECISIONS)
            self._transport = _choice('rgb_transport', values['rgb_transport'], TRANSPORTS)
            self._sync_policy = _choice('sync_policy', values['sync_policy'], POLICIES)
            in_rel = RELIABILITIES[_choice('input_reliability', values['input_reliability'],
                                           tuple(RELIABILITIES))]
            out_rel = RELIABILITIES[_choice('output_reliability', values['output_reliability'],
                                            tuple(RELIABILITIES))]
        except ValueError as exc:
            raise StartupError(f'invalid parameter: {exc}') from exc
        self._normalizer = self._settings.make_normalizer()
        self._threads = values['threads'] or max(1, available_cores() - 1)
        self._fuser = self._load_fuser(values['method'], values['weights'])
        # Described once: diagnostics must not depend on the fuser object (tests replace it).
        self._network_name = getattr(self._fuser, 'network', None)
        self._weights_path = getattr(self._fuser, 'weights_path', None)
        self._device_name = str(getattr(self._fuser, 'device', self._device))
        engine = getattr(self._fuser, 'engine', None)
        self._precision_name = str(getattr(engine, 'precision', '-'))

        self._stats_lock = threading.Lock()
        self._window = _Window()
        self._conversion_errors = [0, 0]
        self._fusion_errors = 0
        #: Fusion errors that were torch.cuda.OutOfMemoryError (also in _fusion_errors).
        self._out_of_memory = 0
        self._oom_errors = _out_of_memory_errors()
        self._fused = 0
        self._qos_events = 0
        self._last_output: Optional[float] = None
        self._started = time.monotonic()
        self._camera_infos: deque[CameraInfo] = deque(maxlen=30)
        self._pairer = ApproximateTimePairer(slop=self._settings.slop,
                                             queue_size=int(values['queue_size']),
                                             policy=self._sync_policy)
        self._compressed_published = 0
        self._compressed_errors = 0

        in_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(values['input_depth']),
                            reliability=in_rel, durability=DurabilityPolicy.VOLATILE)
        out_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST,
                             depth=int(values['output_depth']), reliability=out_rel,
                             durability=DurabilityPolicy.VOLATILE)
        self._pub_image = self.create_publisher(
            Image, 'fused/image', out_qos, event_callbacks=self._pub_events('fused/image'))
        self._pub_info = self.create_publisher(
            CameraInfo, 'fused/camera_info', out_qos,
            event_callbacks=self._pub_events('fused/camera_info'))
        self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._pub_compressed = None
        self._compressed_topic = ''
        if values['publish_compressed']:
            # image_transport's name: the (remapped) base topic + '/compressed'.
            self._compressed_topic = self.resolve_topic_name('fused/image') + '/compressed'
            self._pub_compressed = self.create_publisher(
                CompressedImage, self._compressed_topic, out_qos,
                event_callbacks=self._pub_events(self._compressed_topic))
            self._jpeg_box = LatestPairMailbox(idle_limit=1)
        rgb_topic, rgb_type = 'rgb/image', Image
        if self._transport == 'compressed':
            # image_transport's name: the (remapped) base topic + '/compressed'.
            rgb_topic = self.resolve_topic_name('rgb/image') + '/compressed'
            rgb_type = CompressedImage
        self._topics = (self.resolve_topic_name('thermal/image'),
                        self.resolve_topic_name(rgb_topic))
        self._subs = [
            self.create_subscription(Image, 'thermal/image', self._on_thermal, in_qos,
                                     event_callbacks=self._sub_events('thermal/image')),
            self.create_subscription(rgb_type, rgb_topic, self._on_rgb, in_qos,
                                     event_callbacks=self._sub_events(rgb_topic)),
            self.create_subscription(CameraInfo, 'rgb/camera_info', self._on_camera_info,
                                     in_qos, event_callbacks=self._sub_events('rgb/camera_info')),
        ]
        self._hardware_id = values['hardware_id'] or self.get_fully_qualified_name()
        self._diag_timer = self.create_timer(float(values['diagnostics_period']),
                                             self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._worker = threading.Thread(target=self._work, name='fuse_worker', daemon=True)
        self._worker.start()
        if self._jpeg_box is not None:
            self._encoder = threading.Thread(target=self._encode_loop, name='jpeg_encoder',
                                             daemon=True)
            self._encoder.start()
        self.get_logger().info(
            f'fusing {self._topics[0]} + {self._topics[1]} -> '
            f'{self.resolve_topic_name("fused/image")} (method={self._method}, '
            f'{self._network_text()}device={self._fuser.device}, '
            f'output={self._settings.output_encoding})')

    def _network_text(self) -> str:
        if self._fuser.network is None:
            return ''
        engine = getattr(self._fuser, 'engine', None)
        backend = (f'backend={engine.backend}, precision={engine.precision}, '
                   f'threads={engine.threads}, ' if engine is not None else '')
        return f'network={self._fuser.network}, weights={self._fuser.weights_path}, {backend}'

    # --- start-up -----------------------------------------------------------------------------
    def _load_fuser(self, method: str, weights: str) -> Fuser:
        if weights and method != 'sfdfuse':
            self.get_logger().warning(f"weights '{weights}' ignored: method is '{method}'")
        try:
            return Fuser(method=method, weights=weights or None, device=self._device,
                         precision=self._precision, threads=self._threads)
        except WeightsError as exc:
            raise StartupError(f'cannot load SFDFuse weights: {exc}') from exc
        except (ValueError, RuntimeError) as exc:
            raise StartupError(f'cannot set up fusion (method={method}, '
                               f'device={self._device}): {exc}') from exc

    def _sub_events(self, topic: str) -> SubscriptionEventCallbacks:
        return SubscriptionEventCallbacks(
            incompatible_qos=lambda event: self._on_incompatible_qos(topic, 'subscription',
                                                                     event))

    def _pub_events(self, topic: str) -> PublisherEventCallbacks:
        return PublisherEventCallbacks(
            incompatible_qos=lambda event: self._on_incompatible_qos(topic, 'publisher', event))

    def _on_incompatible_qos(self, topic: str, side: str, event: Any) -> None:
        with self._stats_lock:
            self._qos_events += 1
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        peer = 'publisher' if side == 'subscription' else 'subscription'
        self.get_logger().warning(
            f'incompatible QoS on {topic}: a {peer} cannot be matched with this node\'s '
            f'{side} (policy {policy}; {event.total_count} so far). Check the '
            f'input_reliability/output_reliability parameters.')

    # --- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        values = {name: self.get_parameter(name).value for name in PARAMS
                  if PARAMS[name].runtime}
        changed = False
        for param in params:
            if param.name in values:
                values[param.name] = param.value
                changed = True
        if not changed:
            return SetParametersResult(successful=True)
        try:
            settings = FuseSettings.from_values(values)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        old = self._settings
        if settings.slop != old.slop:
            self._pairer.slop = settings.slop  # keeps the timeline and counters
        thermal_fields = ('thermal_mode', 'thermal_low', 'thermal_high', 'thermal_percentiles',
                          'thermal_smoothing')
        if any(getattr(settings, f) != getattr(old, f) for f in thermal_fields):
            self._normalizer = settings.make_normalizer()
        self._settings = settings
        self.get_logger().info('parameters updated: ' + ', '.join(
            f'{p.name}={p.value}' for p in params))
        return SetParametersResult(successful=True)

    # --- subscription callbacks ---------------------------------------------------------------
    def _on_thermal(self, msg: Image) -> None:
        self._add(THERMAL, msg)

    def _on_rgb(self, msg: Any) -> None:
        self._add(RGB, msg)

    def _add(self, stream: int, msg: Any) -> None:
        received = time.monotonic()
        with self._stats_lock:
            self._window.inputs[stream] += 1
        self._offer(self._pairer.add(stream, header_stamp_ns(msg), (msg, received)))

    def _offer(self, pairs: list[tuple[int, Any, Any]]) -> None:
        """Hand pairs of ``(message, receive time)`` items to the worker, oldest first.

        An idle worker gets all of them; a busy one only the newest (see the mailbox).
        """
        if pairs:
            ready = time.monotonic()
            self._mailbox.put_all([
                PairJob(thermal=thermal, rgb=rgb, ready=ready, received=max(t_thermal, t_rgb))
                for _, (thermal, t_thermal), (rgb, t_rgb) in pairs])

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._stats_lock:
            self._camera_infos.append(msg)

    # --- worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._mailbox.closed:
            job = self._mailbox.get(timeout=0.2)
            if job is None:
                continue
            try:
                self._fuse_and_publish(job)
            except ImageConversionError:
                pass  # counted and logged in _convert
            except self._oom_errors as exc:  # a RuntimeError: before the catch-all below
                self._on_out_of_memory(job, exc)
            except ValueError as exc:
                with self._stats_lock:
                    self._fusion_errors += 1
                    self._window.errors += 1
                self.get_logger().warning(f'fusion skipped a pair: {exc}',
                                          throttle_duration_sec=LOG_THROTTLE_S)
            except Exception as exc:  # noqa: B902 - the worker must outlive any bad frame
                if self._mailbox.closed or not rclpy.ok(context=self.context):
                    return
                with self._stats_lock:
                    self._fusion_errors += 1
                    self._window.errors += 1
                self.get_logger().error(f'unexpected error while fusing: {exc!r}',
                                        throttle_duration_sec=LOG_THROTTLE_S)
            finally:
                self._mailbox.task_done()

    def _encode_loop(self) -> None:
        """Encode and publish the newest fused image as JPEG (``publish_compressed``)."""
        box = self._jpeg_box
        while box is not None and not box.closed:
            job = box.get(timeout=0.2)
            if job is None:
                continue
            fused, header, quality = job
            try:
                start = time.monotonic()
                fmt, data = encode_compressed(fused, 'jpeg', jpeg_quality=quality)
                msg = CompressedImage()
                msg.header = header
                msg.format = fmt
                msg.data = data
                encoded = time.monotonic()
                self._pub_compressed.publish(msg)
                with self._stats_lock:
                    self._compressed_published += 1
                    self._window.jpeg_ms.append((encoded - start) * 1e3)
            except Exception as exc:  # noqa: B902 - the encoder must outlive any bad frame
                if box.closed or not rclpy.ok(context=self.context):
                    return
                with self._stats_lock:
                    self._compressed_errors += 1
                self.get_logger().warning(f'cannot publish the compressed fused image: {exc!r}',
                                          throttle_duration_sec=LOG_THROTTLE_S)
            finally:
                box.task_done()

    def _on_out_of_memory(self, job: PairJob, exc: BaseException) -> None:
        """Drop the pair, count it (fusion error, reason out_of_memory), free the CUDA cache."""
        with self._stats_lock:
            self._fusion_errors += 1
            self._out_of_memory += 1
            self._window.errors += 1
            count = self._out_of_memory
        _release_cuda_cache()
        first = (str(exc).strip().splitlines() or [''])[0][:200]
        self.get_logger().warning(
            f'out of memory while fusing a {_frame_size(job.rgb)} RGB + '
            f'{_frame_size(job.thermal)} thermal pair on {self._device}: pair dropped '
            f'({count} so far): {first}', throttle_duration_sec=LOG_THROTTLE_S)

    def _convert(self, stream: int, msg: Any) -> np.ndarray:
        """Message -> array: thermal as uint8 (H, W) after the 8-bit mapping, RGB as uint8."""
        try:
            array = decode_frame(msg, color=stream == RGB)
            if stream == THERMAL:
                try:
                    array = self._normalizer(array)
                except ValueError as exc:
                    raise ImageConversionError(
                        f'cannot map {msg.encoding!r} thermal to 8 bit: {exc}') from exc
        except ImageConversionError as exc:
            with self._stats_lock:
                self._conversion_errors[stream] += 1
                self._window.errors += 1
                count = self._conversion_errors[stream]
            text = f'skipping {STREAM_NAMES[stream]} frame on {self._topics[stream]}: {exc} ' \
                   f'({count} bad {STREAM_NAMES[stream]} frames so far)'
            # rclpy throttles per call site: one per stream, so bad RGB never hides bad thermal.
            if stream == THERMAL:
                self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)
            else:
                self.get_logger().warning(text, throttle_duration_sec=LOG_THROTTLE_S)
            raise
        return array

    def _fuse_and_publish(self, job: PairJob) -> None:
        start = time.monotonic()
        settings = self._settings
        ir = self._convert(THERMAL, job.thermal)
        vi = self._convert(RGB, job.rgb)
        ir = align_thermal(ir, vi.shape[:2], settings.homography,
                           coords=settings.homography_coords)
        if settings.output_encoding == 'mono8':
            vi_in = vi if vi.ndim == 2 else cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)
        else:
            vi_in = vi
        engine_start = time.monotonic()
        fused = self._fuser(vi_in, ir)
        engine_end = time.monotonic()
        if settings.output_encoding == 'bgr8' and fused.ndim == 2:
            fused = cv2.cvtColor(fused, cv2.COLOR_GRAY2BGR)
        out = Image()
        out.header = job.rgb.header
        fill_image_msg(out, fused, settings.output_encoding)
        publish_start = time.monotonic()
        self._pub_image.publish(out)
        published = time.monotonic()
        info = self._matching_camera_info(header_stamp_ns(out))
        if info is not None:
            info.header = out.header
            self._pub_info.publish(info)
        if self._jpeg_box is not None:  # encoded by the encoder thread, after the raw image
            self._jpeg_box.put((fused, out.header, settings.jpeg_quality))
        end = time.monotonic()
        received = job.ready if job.received is None else job.received
        times = {  # milliseconds, see TIMINGS
            'latency': (published - received) * 1e3,
            'engine': (engine_end - engine_start) * 1e3,
            'overhead': ((published - received) - (engine_end - engine_start)) * 1e3,
            'sync': (job.ready - received) * 1e3,
            'wait': (start - job.ready) * 1e3,
            'convert': ((engine_start - start) + (publish_start - engine_end)) * 1e3,
            'publish': (published - publish_start) * 1e3,
            'fusion': (end - start) * 1e3,
        }
        with self._stats_lock:
            self._fused += 1
            self._last_output = end
            self._window.outputs += 1
            for name, value in times.items():
                self._window.timings_ms[name].append(value)
        # received_monotonic_s: CLOCK_MONOTONIC, which other processes on this machine share.
        self.get_logger().debug(
            f'pair timing stamp_ns={header_stamp_ns(out)} received_monotonic_s={received:.6f} '
            + ' '.join(f'{name}_ms={value:.3f}' for name, value in times.items()))

    def _matching_camera_info(self, stamp_ns: int) -> Optional[CameraInfo]:
        with self._stats_lock:
            infos = list(self._camera_infos)
        if not infos:
            return None
        best = min(infos, key=lambda m: abs(header_stamp_ns(m) - stamp_ns))
        copy = CameraInfo()
        for name in CameraInfo.get_fields_and_field_types():
            setattr(copy, name, getattr(best, name))
        return copy

    # --- diagnostics --------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        settings = self._settings
        with self._stats_lock:
            window, self._window = self._window, _Window()
            fused, fusion_errors = self._fused, self._fusion_errors
            out_of_memory = self._out_of_memory
            conversion_errors = list(self._conversion_errors)
            qos_events, last_output = self._qos_events, self._last_output
            compressed = (self._compressed_published, self._compressed_errors)
        span = max(now - window.start, 1e-6)
        sync = self._pairer.stats.as_dict()
        idle = now - (last_output if last_output is not None else self._started)

        problems = []
        if idle > settings.stale_timeout:
            missing = [STREAM_NAMES[i] for i in (THERMAL, RGB) if window.inputs[i] == 0]
            problems.append(f'no fused image for {idle:.1f} s' +
                            (f' (no {" or ".join(missing)} input)' if missing else ''))
        if window.errors:
            problems.append(f'{window.errors} bad frames in the last {span:.1f} s')
        if qos_events:
            problems.append(f'{qos_events} incompatible QoS events since start (see the log)')
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if problems else DiagnosticStatus.OK,
            name=f'{self.get_fully_qualified_name().lstrip("/")}: thermal/RGB fusion',
            message='; '.join(problems) if problems else
            f'fusing at {window.outputs / span:.1f} Hz',
            hardware_id=self._hardware_id)

        pairs: list[tuple[str, Any]] = [
            ('thermal_topic', self._topics[THERMAL]),
            ('rgb_topic', self._topics[RGB]),
            ('thermal_rate_hz', f'{window.inputs[THERMAL] / span:.2f}'),
            ('rgb_rate_hz', f'{window.inputs[RGB] / span:.2f}'),
            ('output_rate_hz', f'{window.outputs / span:.2f}'),
            *_timing_stats(window.timings_ms),
            ('pairs_fused', fused),
            ('pairs_dropped_superseded', self._mailbox.superseded),
            ('conversion_errors_thermal', conversion_errors[THERMAL]),
            ('conversion_errors_rgb', conversion_errors[RGB]),
            ('fusion_errors', fusion_errors),
            ('fusion_errors_out_of_memory', out_of_memory),
            ('incompatible_qos_events', qos_events),
            ('seconds_since_last_output', f'{idle:.2f}'),
            ('method', self._method),
            ('network', self._network_name or '-'),
            ('weights', self._weights_path or '-'),
            ('device', self._device_name),
            ('precision', self._precision_name),
            ('output_encoding', settings.output_encoding),
            ('sync_policy', self._sync_policy),
            ('publish_compressed', self._pub_compressed is not None),
        ]
        if self._jpeg_box is not None:
            pairs += [('compressed_topic', self._compressed_topic),
                      ('compressed_published', compressed[0]),
                      ('compressed_dropped_superseded', self._jpeg_box.superseded),
                      ('compressed_errors', compressed[1]),
                      *_timing_stats({'jpeg_encode': window.jpeg_ms})]
        pairs += [(f'sync_{key}', value) for key, value in _flatten(sync)]
        status.values = [KeyValue(key=k, value=str(v)) for k, v in pairs]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._pub_diag.publish(array)

    # --- shutdown -----------------------------------------------------------------------------
    def destroy_node(self) -> None:
        """Stop the worker, release the model, then destroy the ROS entities."""
        self._mailbox.close()
        if self._jpeg_box is not None:
            self._jpeg_box.close()
        if self._encoder is not None and self._encoder.is_alive():
            self._encoder.join(timeout=5.0)
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(timeout=1.0)
            if self._worker.is_alive():
                # Not the node's logger: after SIGINT its rosout publisher is invalid.
                rclpy.logging.get_logger(f'{self.get_name()}.shutdown').info(
                    'waiting for the frame being fused to finish')
                self._worker.join(timeout=SHUTDOWN_WAIT_S)
        self._fuser = None
        super().destroy_node()

    @property
    def worker_alive(self) -> bool:
        """Whether the fusion worker thread is still running (after shutdown: it hangs)."""
        return self._worker is not None and self._worker.is_alive()


def _timing_stats(timings_ms: dict[str, list[float]]) -> list[tuple[str, str]]:
    """Summarise per-pair times as ``('<name>_<mean|p50|p99|max>_ms', '12.34')`` pairs.

    :param timings_ms: timing name -> the window's values in milliseconds.
    :return: four key/values per name, ``0.00`` for a window without pairs.
    """
    out = []
    for name, values in timings_ms.items():
        if values:
            arr = np.asarray(values, dtype=np.float64)
            p50, p99 = np.percentile(arr, [50.0, 99.0])
            stats = (arr.mean(), p50, p99, arr.max())
        else:
            stats = (0.0, 0.0, 0.0, 0.0)
        out += [(f'{name}_{kind}_ms', f'{value:.2f}')
                for kind, value in zip(('mean', 'p50', 'p99', 'max'), stats)]
    return out


def _flatten(tree: Any, prefix: str = '') -> list[tuple[str, Any]]:
    """Flatten nested dicts into ``('a_b', value)`` pairs for diagnostics key/values."""
    if not isinstance(tree, dict):
        return [(prefix, tree)]
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        out += _flatten(value, f'{prefix}_{key}' if prefix else str(key))
    return out


def main(args: Optional[list[str]] = None) -> int:
    """Run the node until Ctrl-C, SIGTERM or ROS shutdown.

    :param args: ROS command-line arguments (default: ``sys.argv``).
    :return: the exit status: 0 after a clean shutdown, 1 when the node could not start.
    """
    rclpy.init(args=args)
    node: Optional[FuseNode] = None
    try:
        node = FuseNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except StartupError as exc:
        rclpy.logging.get_logger('fuse_node').fatal(str(exc))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        if node is not None and node.worker_alive:
            # Interpreter exit under a thread still inside torch would abort (status -6).
            rclpy.logging.get_logger('fuse_node').fatal(
                f'the fusion worker did not finish its frame in {SHUTDOWN_WAIT_S:.0f} s; '
                'exiting without clean-up')
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
