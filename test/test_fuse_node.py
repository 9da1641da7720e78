"""Integration tests of ``fuse_node`` with real DDS between processes.

The node runs as a child process (this venv's Python) in a private ROS domain; a fixture node in
the test process publishes real thermal (mono16, 14-bit, 9 Hz, 64x48) and RGB (bgr8/rgb8, 30 Hz,
128x96) frames with real stamps and collects ``fused/image``, ``fused/camera_info`` and
``/diagnostics``. ``method: mean`` keeps fusion cheap. One node process serves most tests (they
run in file order and build on each other's counters); start-up failures and the compressed
transport use their own short-lived processes.
"""
from __future__ import annotations

from pathlib import Path
import signal
import subprocess
import time

import cv2
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
import pytest
import yaml
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter, parameter_value_to_python
try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosutil import (FixtureNode, image_msg, PairPublisher, read_log, REPO_ROOT, rgb_frame,
                     ros_test_env, stamp_ns_of, start_node, stop_process, thermal_frame,
                     write_params)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from sfdfuse_ros.fuse_node import FuseNode, FuseSettings, LatestPairMailbox, PARAMS, StartupError

pytestmark = [pytest.mark.ros]

THERMAL_HW = (48, 64)
RGB_HW = (96, 128)
SLOP = 0.06
#: Start-up of a node process (imports torch) on a loaded 2-core machine.
START_TIMEOUT = 60.0


class NodeIO:
    """What the tests share: the node process, the fixture node and what it collected."""

    def __init__(self, proc: subprocess.Popen, log: Path, fx: FixtureNode) -> None:
        self.proc, self.log, self.fx = proc, log, fx
        self.fused: list[Image] = fx.collect(Image, 'fused/image')
        self.infos: list[CameraInfo] = fx.collect(CameraInfo, 'fused/camera_info')
        self.diags: list[DiagnosticArray] = fx.collect(DiagnosticArray, '/diagnostics')
        self.pub = PairPublisher(fx, thermal_hw=THERMAL_HW, rgb_hw=RGB_HW)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def set_params(self, **values: object) -> list:
        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.fx.call(SetParameters, '/fuse_node/set_parameters', request).results

    def get_param(self, name: str) -> object:
        response = self.fx.call(GetParameters, '/fuse_node/get_parameters',
                                GetParameters.Request(names=[name]))
        return parameter_value_to_python(response.values[0])

    def latest_status(self) -> DiagnosticStatus:
        for array in reversed(self.diags):
            for status in array.status:
                if status.hardware_id == 'test_rig':
                    return status
        raise AssertionError('no /diagnostics status from fuse_node received')

    def publish_until(self, count: int, timeout: float, **kwargs: object) -> int:
        """Publish pairs until ``count`` more fused images arrived; return how many arrived."""
        start = len(self.fused)
        self.pub.run(timeout, until=lambda: len(self.fused) - start >= count, **kwargs)
        return len(self.fused) - start


def _values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _default_settings(**changes: object) -> dict:
    values = {name: spec.default for name, spec in PARAMS.items() if spec.runtime}
    values.update(changes)
    return values


def test_settings_accept_the_defaults_and_reject_bad_values() -> None:
    settings = FuseSettings.from_values(_default_settings())
    assert settings.output_encoding == 'bgr8' and np.allclose(settings.homography, np.eye(3))
    for changes, word in (({'slop': -0.1}, 'slop'), ({'slop': float('nan')}, 'slop'),
                          ({'thermal_low': 5.0, 'thermal_high': 5.0}, 'thermal_low'),
                          ({'thermal_low': -1e308, 'thermal_high': 1e308},
                           'thermal_high - thermal_low must be a finite number'),
                          ({'thermal_percentiles': [99.0, 1.0]}, 'thermal_percentiles'),
                          ({'thermal_percentiles': [1.0]}, 'thermal_percentiles'),
                          ({'thermal_smoothing': 1.0}, 'thermal_smoothing'),
                          ({'homography': [0.0] * 9}, 'homography'),
                          ({'homography': [1.0] * 8}, 'homography'),
                          ({'homography_coords': 'pixels'}, 'homography_coords'),
                          ({'thermal_mode': 'agc'}, 'thermal_mode'),
                          ({'output_encoding': 'rgb8'}, 'output_encoding')):
        with pytest.raises(ValueError, match=word):
            FuseSettings.from_values(_default_settings(**changes))


def test_every_parameter_has_a_description_and_a_default_in_the_config() -> None:
    config = yaml.safe_load((REPO_ROOT / 'config' / 'fuse.yaml').read_text())
    defaults = config['/**']['ros__parameters']
    assert set(defaults) == set(PARAMS)
    for name, spec in PARAMS.items():
        assert len(spec.descriptor().description) > 20, name
        assert spec.descriptor().read_only == (not spec.runtime)
        assert defaults[name] == spec.default and type(defaults[name]) is type(spec.default), name
    runtime = {n for n, s in PARAMS.items() if s.runtime}
    assert {'slop', 'thermal_mode', 'thermal_low', 'thermal_high', 'homography',
            'output_encoding'} <= runtime
    assert not {'method', 'weights', 'device', 'input_reliability', 'output_reliability',
                'rgb_transport'} & runtime


def test_mailbox_gives_an_idle_worker_every_pair_and_a_busy_one_the_newest() -> None:
    box = LatestPairMailbox(idle_limit=3)
    assert box.get(timeout=0.01) is None
    assert box.put_all(['a', 'b']) == 0  # the worker is idle: both are kept, in order
    assert box.get(timeout=0.01) == 'a'  # busy with a from here
    assert box.put('c') is False  # b came while the worker was idle: it stays, c waits
    assert box.put('d') is True  # c waited while the worker was busy: d replaces it
    assert box.put_all(['e', 'f']) == 2  # d, and e (older than f)
    assert box.superseded == 3 and box.pending == 2
    box.task_done()
    assert box.get(timeout=0.01) == 'b'
    box.task_done()
    assert box.get(timeout=0.01) == 'f'
    box.task_done()
    assert box.get(timeout=0.01) is None
    assert box.put_all(['g', 'h', 'i', 'j']) == 1  # idle, but beyond idle_limit: g
    assert box.superseded == 4
    box.close()
    assert box.get(timeout=1.0) is None and box.closed


def _in_process_node(fx: FixtureNode, namespace: str, **params: object) -> FuseNode:
    overrides = [Parameter('method', value='mean'), Parameter('device', value='cpu')]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return FuseNode(context=fx.context, namespace=namespace, parameter_overrides=overrides)


def _wait_idle(fx: FixtureNode, node: FuseNode, timeout: float = 5.0) -> None:
    assert fx.wait_for(lambda: node._mailbox.pending == 0 and not node._mailbox._busy, timeout)


def test_no_pair_is_lost_while_the_worker_is_idle(env: dict) -> None:
    """Regression: 4 Hz cameras, the worker idle between pairs, one pair superseded anyway.

    The pairer cannot be sure of a pair before it knows a stream's rate (three intervals), so
    the third pair of a timeline waits for the next frames and comes out together with the
    fourth; the node kept only the newest of pairs completed together, idle worker or not.
    The report blamed a thermal frame of another size (it was the third); sizes play no part.
    Here the thermal frame arrives first (smaller, it overtakes the RGB frame), stamped 1 ms
    later; sizes change, the thermal camera restarts at another resolution (a 2 s gap), then
    both restart on a clock 100 s back (a new timeline: the same wait again).
    """
    fx = FixtureNode('idle_test')
    node = None
    try:
        node = _in_process_node(fx, '/idle')
        fused: list[int] = []
        real = node._fuse_and_publish

        def recording(job: object) -> None:
            fused.append(stamp_ns_of(job.rgb))
            real(job)

        node._fuse_and_publish = recording
        sent: list[int] = []
        plan = [((48, 64), (96, 128))] * 2 + [((24, 32), (96, 128))] + [((48, 64), (96, 128))] * 3
        plan += [((60, 80), (96, 128))] * 4  # thermal restarted at another resolution
        plan += [((30, 40), (120, 160))] * 5  # both restarted, on a clock 100 s back
        stamp = 1_000 * 10**9
        for k, (thermal_hw, rgb_hw) in enumerate(plan):
            stamp += 250_000_000 if k not in (6, 10) else (2_250_000_000 if k == 6 else -10**11)
            node._on_thermal(image_msg(thermal_frame(*thermal_hw, k), 'mono16',
                                       stamp + 1_000_000, 'thermal_optical'))
            node._on_rgb(image_msg(rgb_frame(*rgb_hw, k), 'bgr8', stamp, 'rgb_optical'))
            sent.append(stamp)
            _wait_idle(fx, node)
        node._offer(node._pairer.flush())
        _wait_idle(fx, node)
        assert node._mailbox.superseded == 0
        assert sorted(fused) == sorted(sent), (sorted(set(sent) - set(fused)), fused)
        assert node._fused == len(plan) and node._pairer.stats.resets == 1
    finally:
        if node is not None:
            node.destroy_node()
        fx.close()


def test_greedy_policy_pairs_without_waiting_for_the_next_rgb_frame(env: dict) -> None:
    """10 Hz thermal 14 ms after an RGB frame, 30 Hz RGB, fed in real time to two nodes.

    ``optimal`` holds each pair until the next RGB frame (about 20 ms); ``greedy`` releases it
    on the thermal frame's arrival. Same pairs, same counters.
    """
    fx = FixtureNode('policy_test')
    try:
        made = {}
        for policy in ('optimal', 'greedy'):
            node = _in_process_node(fx, f'/{policy}', sync_policy=policy)
            try:
                rgb, thermal = rgb_frame(96, 128, 0.0), thermal_frame(48, 64, 0.0)
                start, t0 = time.monotonic(), 5_000 * 10**9
                for k in range(36):  # 1.2 s
                    stamp = t0 + k * 33_333_333
                    time.sleep(max(0.0, start + k / 30 - time.monotonic()))
                    node._on_rgb(image_msg(rgb, 'bgr8', stamp, 'rgb_optical'))
                    if k % 3 == 0:
                        time.sleep(0.014)
                        node._on_thermal(image_msg(thermal, 'mono16', stamp + 14_000_000,
                                                   'thermal_optical'))
                _wait_idle(fx, node)
                with node._stats_lock:
                    sync_ms = list(node._window.timings_ms['sync'])
                made[policy] = (node._pairer.stats.as_dict(), sorted(sync_ms))
                assert node._pairer.policy == policy
            finally:
                node.destroy_node()
        (opt_stats, opt_sync), (greedy_stats, greedy_sync) = made['optimal'], made['greedy']
        assert greedy_stats['paired'] == 12 and opt_stats['paired'] >= 11
        assert greedy_stats.keys() == opt_stats.keys()
        assert np.median(greedy_sync) < 2.0, greedy_sync  # released on arrival
        assert np.median(opt_sync) > 10.0, opt_sync  # the next RGB frame, ~19 ms later
    finally:
        fx.close()


def test_jpeg_encoding_never_delays_the_fused_image(env: dict) -> None:
    """A JPEG encoder slowed to 300 ms: fused/image still goes out at once, JPEGs are dropped."""
    import sfdfuse_ros.fuse_node as fuse_node_module

    fx = FixtureNode('jpeg_test')
    node = None
    real_encode = fuse_node_module.encode_compressed

    def slow_encode(*args: object, **kwargs: object) -> tuple:
        time.sleep(0.3)
        return real_encode(*args, **kwargs)

    fuse_node_module.encode_compressed = slow_encode
    try:
        node = _in_process_node(fx, '/jpeg', publish_compressed=True, jpeg_quality=75)
        assert node._compressed_topic == '/jpeg/fused/image/compressed'
        rgb, thermal = rgb_frame(96, 128, 0.0), thermal_frame(48, 64, 0.0)
        for k in range(20):  # 10 Hz for 2 s
            stamp = 9_000 * 10**9 + k * 100_000_000
            node._on_rgb(image_msg(rgb, 'bgr8', stamp, 'rgb_optical'))
            node._on_thermal(image_msg(thermal, 'mono16', stamp, 'thermal_optical'))
            time.sleep(0.1)
        _wait_idle(fx, node)
        assert fx.wait_for(lambda: node._jpeg_box.pending == 0, 2.0)
        time.sleep(0.4)
        with node._stats_lock:
            latency = list(node._window.timings_ms['latency'])
        assert node._fused == 20 and node._mailbox.superseded == 0
        assert max(latency) < 150.0, latency  # the raw image never waited for the encoder
        assert 3 <= node._compressed_published <= 12, node._compressed_published
        assert node._jpeg_box.superseded == 20 - node._compressed_published
    finally:
        fuse_node_module.encode_compressed = real_encode
        if node is not None:
            node.destroy_node()
        fx.close()


@pytest.fixture(scope='module')
def env() -> dict:
    return ros_test_env()


@pytest.fixture(scope='module')
def io(env: dict, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp('fuse_node')
    params = write_params(folder / 'params.yaml', {
        'method': 'mean', 'device': 'cpu', 'slop': SLOP, 'diagnostics_period': 0.5,
        'stale_timeout': 1.5, 'hardware_id': 'test_rig'})
    log = folder / 'node.log'
    proc = start_node(['--params-file', params], env, log)
    fx = FixtureNode('fuse_node_test')
    try:
        shared = NodeIO(proc, log, fx)
        if not shared.pub.wait_matched(START_TIMEOUT):
            pytest.fail(f'fuse_node did not subscribe in {START_TIMEOUT} s; its log:\n'
                        + read_log(log))
        yield shared
    finally:
        stop_process(proc)
        fx.close()


@pytest.mark.slow
def test_fuses_pairs_with_the_rgb_header(io: NodeIO) -> None:
    arrived = io.publish_until(10, timeout=20.0)
    assert arrived >= 10, read_log(io.log)
    time.sleep(0.3)
    rgb_stamps, thermal_stamps = set(io.pub.rgb_stamps), np.array(io.pub.thermal_stamps)
    for msg in io.fused:
        stamp = stamp_ns_of(msg)
        assert stamp in rgb_stamps, 'the fused stamp must be one of the RGB stamps'
        assert np.min(np.abs(thermal_stamps - stamp)) <= SLOP * 1e9
        assert msg.header.frame_id == 'rgb_optical'
        assert (msg.encoding, msg.height, msg.width) == ('bgr8', *RGB_HW)
        assert msg.step == RGB_HW[1] * 3 and len(msg.data) == msg.step * msg.height
    # Each thermal frame pairs at most once, so there are no more outputs than thermal frames.
    stamps = [stamp_ns_of(m) for m in io.fused]
    assert len(set(stamps)) == len(stamps) <= len(thermal_stamps)
    # The output really is a fusion: neither the RGB frame nor constant.
    fused = np.frombuffer(io.fused[-1].data, np.uint8).reshape(*RGB_HW, 3)
    assert fused.std() > 5.0
    assert not any(np.array_equal(fused, rgb) for rgb in io.pub._rgb)


def test_camera_info_is_republished_with_the_fused_header(io: NodeIO) -> None:
    assert io.fx.wait_for(lambda: len(io.infos) >= 3, timeout=10.0)
    fused_stamps = {stamp_ns_of(m) for m in io.fused}
    for info in io.infos:
        assert stamp_ns_of(info) in fused_stamps
        assert info.header.frame_id == 'rgb_optical'
        assert (info.height, info.width) == RGB_HW
        assert info.distortion_model == 'plumb_bob'


def test_rejects_bad_parameter_updates_and_keeps_old_values(io: NodeIO) -> None:
    results = io.set_params(slop=-1.0)
    assert not results[0].successful and 'slop' in results[0].reason
    results = io.set_params(homography=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    assert not results[0].successful and 'homography' in results[0].reason
    results = io.set_params(thermal_low=20000.0)  # above thermal_high
    assert not results[0].successful and 'thermal_low' in results[0].reason
    results = io.set_params(output_encoding='yuv422')
    assert not results[0].successful and 'output_encoding' in results[0].reason
    results = io.set_params(method='max')  # read-only
    assert not results[0].successful and 'read-only' in results[0].reason
    assert io.get_param('slop') == pytest.approx(SLOP)
    assert io.get_param('method') == 'mean'
    assert io.get_param('output_encoding') == 'bgr8'
    assert io.alive()


def test_mono8_output_and_rgb8_input_at_run_time(io: NodeIO) -> None:
    results = io.set_params(output_encoding='mono8', thermal_mode='fixed', thermal_low=5000.0,
                            thermal_high=15000.0)
    assert all(r.successful for r in results), [r.reason for r in results]
    rgb8 = PairPublisher(io.fx, thermal_hw=THERMAL_HW, rgb_hw=RGB_HW, rgb_encoding='rgb8')
    start = len(io.fused)
    rgb8.run(15.0, until=lambda: sum(m.encoding == 'mono8' for m in io.fused[start:]) >= 3)
    mono = [m for m in io.fused[start:] if m.encoding == 'mono8']
    assert len(mono) >= 3, read_log(io.log)
    for msg in mono:
        assert (msg.height, msg.width, msg.step) == (*RGB_HW, RGB_HW[1])
        assert stamp_ns_of(msg) in set(rgb8.rgb_stamps)
    # mean of gray(RGB) and the fixed-range thermal image, both known here.
    vi = cv2.cvtColor(rgb8._rgb[0][:, :, ::-1], cv2.COLOR_BGR2GRAY).astype(np.float32)
    assert np.frombuffer(mono[-1].data, np.uint8).mean() == pytest.approx(
        (vi.mean() + np.clip((rgb8._thermal[0] - 5000.0) / 10000.0 * 255, 0, 255).mean()) / 2,
        abs=40)
    results = io.set_params(output_encoding='bgr8', thermal_mode='auto')
    assert all(r.successful for r in results)


def test_bad_messages_are_skipped_and_fusion_goes_on(io: NodeIO) -> None:
    fx, pub = io.fx, io.pub
    good_t = np.full(THERMAL_HW, 8000, np.uint16)
    good_rgb = np.zeros((*RGB_HW, 3), np.uint8)
    truncated = image_msg(good_rgb, 'bgr8', 0, 'rgb_optical')
    truncated.data = bytes(truncated.data[:len(truncated.data) // 2])
    nan_thermal = np.full(THERMAL_HW, np.nan, np.float32)
    bad_pairs = [
        (image_msg(good_t, 'yuv422', 0, 'thermal_optical'), None),      # unsupported encoding
        (None, truncated),                                              # data < height * step
        (image_msg(nan_thermal, '32FC1', 0, 'thermal_optical'), None),  # non-finite values
        (image_msg(np.zeros((0, 0), np.uint16), 'mono16', 0, 't'), None),  # empty image
    ]
    for thermal, rgb in bad_pairs:
        stamp = fx.now_ns()
        thermal = thermal or image_msg(good_t, 'mono16', 0, 'thermal_optical')
        rgb = rgb or image_msg(good_rgb, 'bgr8', 0, 'rgb_optical')
        for msg in (thermal, rgb):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        pub.thermal_pub.publish(thermal)
        pub.rgb_pub.publish(rgb)
        time.sleep(0.7)  # past the pairer's bounded wait, and time for the worker
    assert io.alive(), read_log(io.log)
    assert io.publish_until(5, timeout=15.0) >= 5, read_log(io.log)
    log = read_log(io.log)
    assert 'skipping thermal frame' in log and 'skipping rgb frame' in log, log
    assert 'Traceback' not in log


def test_diagnostics_report_rates_counters_and_errors(io: NodeIO) -> None:
    io.publish_until(1000, timeout=1.5)  # a window with traffic
    assert io.fx.wait_for(lambda: len(io.diags) >= 2, timeout=5.0)
    status = io.latest_status()
    values = _values(status)
    assert status.hardware_id == 'test_rig'
    for key in ('thermal_rate_hz', 'rgb_rate_hz', 'output_rate_hz', 'latency_mean_ms',
                'latency_max_ms', 'pairs_fused', 'pairs_dropped_superseded',
                'conversion_errors_thermal', 'conversion_errors_rgb', 'sync_resets',
                'sync_dropped_rgb_no_match'):
        assert key in values, values
    assert int(values['pairs_fused']) >= 15
    assert int(values['conversion_errors_thermal']) >= 2
    assert int(values['conversion_errors_rgb']) >= 1
    assert float(values['rgb_rate_hz']) > 5.0
    # Nothing published for longer than stale_timeout (1.5 s): WARN.
    time.sleep(2.5)
    status = io.latest_status()
    assert status.level == DiagnosticStatus.WARN and 'no fused image' in status.message


def test_time_jumping_backwards_resets_instead_of_stalling(io: NodeIO) -> None:
    assert io.publish_until(3, timeout=10.0) >= 3
    before = len(io.fused)
    jump = -30 * 1_000_000_000  # a looping bag
    arrived = io.publish_until(5, timeout=15.0, stamp_offset_ns=jump)
    assert arrived >= 5, read_log(io.log)
    assert stamp_ns_of(io.fused[-1]) < stamp_ns_of(io.fused[before - 1]) - 20 * 10**9
    io.publish_until(1000, timeout=1.2, stamp_offset_ns=jump)
    assert int(_values(io.latest_status())['sync_resets']) >= 1


def test_incompatible_qos_is_logged(io: NodeIO) -> None:
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)  # the node offers VOLATILE
    quiet = SubscriptionEventCallbacks(incompatible_qos=lambda event: None)
    io.fx.collect(Image, 'fused/image', qos, event_callbacks=quiet)
    assert io.fx.wait_for(lambda: 'incompatible QoS on fused/image' in read_log(io.log),
                          timeout=10.0), read_log(io.log)


def test_sigint_stops_the_node_cleanly(io: NodeIO) -> None:
    io.proc.send_signal(signal.SIGINT)
    assert io.proc.wait(15.0) == 0, read_log(io.log)
    assert 'Traceback' not in read_log(io.log)


def test_compressed_rgb_in_and_compressed_fused_out_in_a_namespace(env: dict, tmp_path: Path
                                                                   ) -> None:
    """Compressed RGB in; JPEG out on the remapped fused topic + /compressed (image_transport)."""
    params = write_params(tmp_path / 'params.yaml', {
        'method': 'max', 'device': 'cpu', 'rgb_transport': 'compressed',
        'output_encoding': 'mono8', 'publish_compressed': True, 'jpeg_quality': 80})
    log = tmp_path / 'node.log'
    proc = start_node(['--params-file', params, '-r', '__ns:=/rig',
                       '-r', 'rgb/image:=/rig/camera/color', '-r', 'fused/image:=/rig/out/fused'],
                      env, log)
    fx = FixtureNode('compressed_test')
    try:
        fused = fx.collect(Image, '/rig/out/fused')
        jpegs = fx.collect(CompressedImage, '/rig/out/fused/compressed')
        thermal_pub = fx.publisher(Image, '/rig/thermal/image')
        rgb_pub = fx.publisher(CompressedImage, '/rig/camera/color/compressed')
        assert fx.wait_for_subscribers([thermal_pub, rgb_pub], START_TIMEOUT), read_log(log)
        rgb = np.zeros((*RGB_HW, 3), np.uint8)
        cv2.circle(rgb, (40, 40), 20, (0, 255, 0), -1)
        ok, jpeg = cv2.imencode('.jpg', rgb)
        assert ok
        thermal = np.full(THERMAL_HW, 9000, np.uint16)

        def publish_pairs_until(done, timeout: float) -> None:
            """Publish a compressed RGB + mono16 thermal pair every 0.1 s until ``done()``."""
            deadline = time.monotonic() + timeout
            while not done() and time.monotonic() < deadline and proc.poll() is None:
                stamp = fx.now_ns()
                msg = CompressedImage(format='bgr8; jpeg compressed bgr8', data=jpeg.tobytes())
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                msg.header.frame_id = 'color_optical'
                rgb_pub.publish(msg)
                thermal_pub.publish(image_msg(thermal, 'mono16', stamp, 'thermal_optical'))
                time.sleep(0.1)

        publish_pairs_until(lambda: len(fused) >= 3, 30.0)
        assert len(fused) >= 3, f'{len(fused)} fused images; log:\n{read_log(log)}'
        assert (fused[0].encoding, fused[0].height, fused[0].width) == ('mono8', *RGB_HW)
        assert fused[0].header.frame_id == 'color_optical'
        assert fx.wait_for(lambda: len(jpegs) >= 2, 10.0), read_log(log)
        raw = {stamp_ns_of(m): m for m in fused}
        for jpeg_msg in jpegs:
            assert jpeg_msg.format == 'mono8; jpeg compressed mono8'
            assert jpeg_msg.header.frame_id == 'color_optical'
            original = raw[stamp_ns_of(jpeg_msg)]  # the header of a fused image
            decoded = cv2.imdecode(np.frombuffer(bytes(jpeg_msg.data), np.uint8),
                                   cv2.IMREAD_UNCHANGED)
            expected = np.frombuffer(bytes(original.data), np.uint8).reshape(RGB_HW)
            assert decoded.shape == RGB_HW
            assert np.abs(decoded.astype(int) - expected).mean() < 4.0
        # run time: colour output and another JPEG quality
        request = SetParameters.Request(parameters=[
            Parameter('output_encoding', value='bgr8').to_parameter_msg(),
            Parameter('jpeg_quality', value=30).to_parameter_msg()])
        results = fx.call(SetParameters, '/rig/fuse_node/set_parameters', request).results
        assert all(r.successful for r in results), [r.reason for r in results]
        bad = SetParameters.Request(parameters=[
            Parameter('jpeg_quality', value=0).to_parameter_msg()])
        assert not fx.call(SetParameters, '/rig/fuse_node/set_parameters', bad).results[
            0].successful
        start = len(jpegs)
        publish_pairs_until(lambda: any(m.format.startswith('bgr8') for m in jpegs[start:]),
                            20.0)
        colour = [m for m in jpegs[start:] if m.format.startswith('bgr8')]
        assert colour and colour[-1].format == 'bgr8; jpeg compressed bgr8', read_log(log)
        decoded = cv2.imdecode(np.frombuffer(bytes(colour[-1].data), np.uint8),
                               cv2.IMREAD_UNCHANGED)
        assert decoded.shape == (*RGB_HW, 3)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15.0)
        assert code == 0, f'exit status {code} after SIGTERM; log:\n{read_log(log)}'
    finally:
        stop_process(proc)
        fx.close()


def test_precision_parameter_reaches_the_engine_and_is_checked() -> None:
    """precision: bf16 runs the shipped compact network in bf16 on the CPU; 'int8' is refused."""
    fx = FixtureNode('precision_test')
    node = None
    try:
        node = _in_process_node(fx, '/bf16', method='sfdfuse', precision='bf16', threads=1)
        assert node._fuser.engine.precision == 'bf16'
        assert 'precision=bf16' in node._network_text()
        fused = node._fuser(rgb_frame(96, 128, 0), np.full((96, 128), 100, np.uint8))
        assert fused.shape == (96, 128, 3)
        with pytest.raises(StartupError, match='precision must be one of'):
            _in_process_node(fx, '/int8', precision='int8')
    finally:
        if node is not None:
            node.destroy_node()
        fx.close()


def test_missing_weights_fail_at_start_up_naming_the_file(env: dict, tmp_path: Path) -> None:
    missing = tmp_path / 'no_such_weights.safetensors'
    params = write_params(tmp_path / 'params.yaml', {
        'method': 'sfdfuse', 'device': 'cpu', 'weights': str(missing)})
    log = tmp_path / 'node.log'
    proc = start_node(['--params-file', params], env, log)
    try:
        code = proc.wait(START_TIMEOUT)
    finally:
        stop_process(proc)
    text = read_log(log)
    assert code != 0, text
    assert str(missing) in text, text
    assert 'Traceback' not in text, text


def test_newest_pair_wins_when_fusion_is_slower_than_the_cameras(env: dict) -> None:
    """In-process node whose fusion takes 150 ms, fed 30 pairs/s: no backlog, drops counted."""
    fx = FixtureNode('slow_test')
    node = None
    try:
        node = FuseNode(context=fx.context, namespace='/slow', parameter_overrides=[
            Parameter('method', value='mean'), Parameter('device', value='cpu')])
        fast = node._fuser

        def slow(vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
            time.sleep(0.15)
            return fast(vi, ir)

        node._fuser = slow
        fx.add_node(node)
        arrivals: list[tuple[int, Image]] = []
        fx.node.create_subscription(Image, '/slow/fused/image',
                                    lambda m: arrivals.append((fx.now_ns(), m)), 50)
        pub = PairPublisher(fx, '/slow/thermal/image', '/slow/rgb/image', None, THERMAL_HW, RGB_HW)
        assert pub.wait_matched(10.0)
        pub.run(3.0, thermal_hz=30.0, rgb_hz=30.0)
        time.sleep(0.5)
        assert 5 <= len(arrivals) <= 25, len(arrivals)  # at most one per 150 ms
        assert node._mailbox.superseded >= 20
        # Bounded latency: a queue of the ~90 pairs would take 13 s to drain; allow for load.
        latency_s = [(t - stamp_ns_of(m)) / 1e9 for t, m in arrivals]
        assert max(latency_s) < 1.0, latency_s
        assert pub.rgb_stamps[-1] - stamp_ns_of(arrivals[-1][1]) < 1.0e9
    finally:
        if node is not None:
            fx._executor.remove_node(node)
            node.destroy_node()
        fx.close()
