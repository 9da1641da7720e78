"""Reliability of ``fuse_node`` as a process: load, bad input, time faults, bad weights, signals.

Short versions of ``scripts/reliability/*`` (which run the long ones and write
``docs/RELIABILITY.md``). The node runs as a child process with ``method: mean`` (fast); the
signal test uses ``method: sfdfuse`` with random weights so that SIGINT lands while a frame is
being fused (seconds per frame on this CPU).
"""
from __future__ import annotations

from pathlib import Path
import signal
import subprocess
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosutil import (FixtureNode, image_msg, PairPublisher, read_log, REPO_ROOT, ros_test_env,
                     stamp_ns_of, start_node, stop_process, write_params)
from sensor_msgs.msg import Image
import torch

sys.path.insert(0, str(REPO_ROOT / 'scripts' / 'reliability'))
import report  # noqa: E402  (scripts/reliability/report.py)
import soak  # noqa: E402  (scripts/reliability/soak.py)

pytestmark = [pytest.mark.ros]

THERMAL_HW = (48, 64)
RGB_HW = (96, 128)
START_TIMEOUT = 90.0


@pytest.fixture(scope='module')
def env() -> dict:
    return ros_test_env()


@pytest.mark.slow
def test_short_soak_accounts_for_every_frame_with_flat_memory(env: dict,
                                                              tmp_path: Path) -> None:
    """20 s of 30 Hz 320x256 RGB + 160x128 thermal (the 10-minute run: soak.py)."""
    res = soak.run_soak(20.0, tmp_path, warmup_s=6.0, env=env)
    report.record('soak_short', test='short soak 20 s', problems=res['problems'],
                  accounting=res.get('accounting'), latency_ms=res.get('latency_ms'),
                  rss_growth_pct=res.get('rss_kib', {}).get('growth_pct'))
    assert not res['problems'], res
    acc = res['accounting']
    assert acc['fused'] >= 0.5 * 20 * 30, acc  # the node keeps up on a shared machine
    assert res['rss_kib']['growth_pct'] < 5.0, res['rss_kib']
    assert res['latency_ms']['p99'] < 1000.0, res['latency_ms']
    assert res['sigint_exit_status'] == 0


class RunningNode:
    """A node process plus a fixture node that collects its output and checks every image.

    Each node runs in its own namespace ``/<name>`` (the module's long-lived node and the
    short-lived ones share the domain) and reports with ``hardware_id`` ``<name>``.

    :param env: ROS environment.
    :param folder: where the parameters file and the log go.
    :param params: parameters on top of ``method: mean``.
    :param name: namespace, hardware id and file stem.
    :param remaps: extra ``-r`` rules (e.g. to absolute topics of a bag).
    """

    def __init__(self, env: dict, folder: Path, params: dict, name: str,
                 remaps: tuple[str, ...] = ()) -> None:
        self.log = folder / f'{name}.log'
        self.params = write_params(folder / f'{name}.yaml', {
            'method': 'mean', 'device': 'cpu', 'diagnostics_period': 0.5,
            'hardware_id': name, **params})
        self.env, self.name = env, name
        self.args = ['--params-file', self.params, '-r', f'__ns:=/{name}']
        for rule in remaps:
            self.args += ['-r', rule]
        self.proc = start_node(self.args, env, self.log)
        self.fx = FixtureNode(f'{name}_fixture', domain_id=int(env['ROS_DOMAIN_ID']))
        self.col = soak.Collector(self.fx, RGB_HW, topic=f'/{name}/fused/image',
                                  hardware_id=name)
        self.pub = PairPublisher(self.fx, f'/{name}/thermal/image', f'/{name}/rgb/image',
                                 f'/{name}/rgb/camera_info', THERMAL_HW, RGB_HW)

    def close(self) -> None:
        stop_process(self.proc)
        self.fx.close()

    def fused_after(self, count: int, timeout: float, **kwargs: object) -> int:
        """Publish valid pairs until ``count`` more fused images arrived; return how many."""
        start = self.col.count()
        self.pub.run(timeout, until=lambda: self.col.count() - start >= count, **kwargs)
        return self.col.count() - start


@pytest.fixture(scope='module')
def node(env: dict, tmp_path_factory: pytest.TempPathFactory):
    running = RunningNode(env, tmp_path_factory.mktemp('rel_node'), {}, 'node')
    try:
        if not running.pub.wait_matched(START_TIMEOUT):
            pytest.fail('fuse_node did not subscribe:\n' + read_log(running.log))
        yield running
    finally:
        running.close()


def fuzzed_messages(seed: int, count: int) -> list[tuple[str, Image]]:
    """Make ``count`` malformed or hostile messages for either topic (seeded).

    :param seed: random seed.
    :param count: how many.
    :return: ``(stream, message)`` pairs, stream ``'thermal'`` or ``'rgb'``.
    """
    rng = np.random.default_rng(seed)
    out = []
    kinds = ['encoding', 'truncated', 'oversized', 'step', 'nan', 'inf', 'bigendian', 'empty',
             'huge_dims', 'mismatch']
    for i in range(count):
        kind = kinds[i % len(kinds)]
        stream = 'thermal' if rng.random() < 0.5 else 'rgb'
        h, w = (THERMAL_HW if stream == 'thermal' else RGB_HW)
        if stream == 'thermal':
            msg = image_msg(rng.integers(0, 16384, (h, w), np.uint16), 'mono16', 0, 't')
        else:
            msg = image_msg(rng.integers(0, 256, (h, w, 3), np.uint8), 'bgr8', 0, 'rgb_optical')
        if kind == 'encoding':
            msg.encoding = str(rng.choice(['yuv422', '', 'bayer_rggb8', '64FC1', 'MONO16']))
        elif kind == 'truncated':
            msg.data = bytes(msg.data[:int(rng.integers(0, len(msg.data)))])
        elif kind == 'oversized':
            msg.data = bytes(msg.data) + bytes(int(rng.integers(1, 5000)))
        elif kind == 'step':
            msg.step = int(rng.choice([0, 1, msg.step - 1, 2**32 - 1]))
        elif kind in ('nan', 'inf'):
            value = np.nan if kind == 'nan' else np.inf
            arr = np.full((h, w), value, np.float32)
            arr[: h // 2] = 1.0
            msg = image_msg(arr, '32FC1', 0, 't')
            stream = 'thermal'
        elif kind == 'bigendian':
            msg.is_bigendian = 1
        elif kind == 'empty':
            msg.height = msg.width = msg.step = 0
            msg.data = b''
        elif kind == 'huge_dims':
            msg.height, msg.width = 2**31 - 1, 2**31 - 1
        elif kind == 'mismatch':
            hh, ww = int(rng.integers(1, 300)), int(rng.integers(1, 300))
            if stream == 'thermal':
                msg = image_msg(rng.integers(0, 16384, (hh, ww), np.uint16), 'mono16', 0, 't')
            else:
                msg = image_msg(rng.integers(0, 256, (hh, ww), np.uint8), 'mono8', 0, 'x')
        out.append((stream, msg))
    return out


def test_fuzzed_messages_and_bad_parameters_never_kill_or_corrupt_the_node(
        node: RunningNode) -> None:
    assert node.fused_after(3, timeout=20.0) >= 3, read_log(node.log)
    rng = np.random.default_rng(7)
    node.col.rgb_hw = None  # sizes are checked against what was sent, below
    rgb_sizes = {}
    for stream, msg in fuzzed_messages(seed=3, count=60):
        stamp = node.fx.now_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        rgb_sizes[stamp] = (msg.height, msg.width) if stream == 'rgb' else RGB_HW
        if stream == 'rgb':
            partner = image_msg(np.full(THERMAL_HW, 8000, np.uint16), 'mono16', stamp, 't')
        else:
            partner = image_msg(np.zeros((*RGB_HW, 3), np.uint8), 'bgr8', stamp, 'rgb_optical')
        pubs = (node.pub.thermal_pub, node.pub.rgb_pub)
        pubs[stream == 'rgb'].publish(msg)
        pubs[stream != 'rgb'].publish(partner)
        time.sleep(0.03)
        if rng.random() < 0.2:  # bad run-time parameter values in between
            bad = rng.choice(['slop', 'homography', 'thermal_percentiles', 'thermal_low'])
            value = {'slop': float('nan'), 'homography': [0.0] * 9,
                     'thermal_percentiles': [99.0, 1.0], 'thermal_low': 1e9}[bad]
            request = SetParameters.Request(
                parameters=[Parameter(str(bad), value=value).to_parameter_msg()])
            result = node.fx.call(SetParameters, f'/{node.name}/fuse_node/set_parameters',
                                  request)
            assert not result.results[0].successful
    assert node.proc.poll() is None, read_log(node.log)
    node.col.rgb_hw = RGB_HW
    assert node.fused_after(5, timeout=20.0) >= 5, read_log(node.log)
    assert not node.col.malformed, node.col.malformed
    with node.col.lock:
        wrong = {s: hw for s, hw in node.col.sizes.items() if s in rgb_sizes
                 and hw != rgb_sizes[s]}
    assert not wrong, f'fused images without their RGB frame\'s size: {wrong}'
    log = read_log(node.log)
    # The log says what was wrong (throttled: the first bad frame per stream every 5 s) ...
    for what in ('skipping thermal frame', 'skipping rgb frame', 'expected height * step'):
        assert what in log, log
    assert 'Traceback' not in log
    # ... and the diagnostics count every bad frame.
    bad = soak.diag_int(node.col.diag, 'conversion_errors_thermal') + soak.diag_int(
        node.col.diag, 'conversion_errors_rgb')
    report.record('node_fuzz', test='fuzzed messages into the node process', sent=60,
                  bad_frames_counted=bad, fused_total=node.col.count(),
                  malformed_outputs=len(node.col.malformed), alive=node.proc.poll() is None,
                  fused_sizes_checked=len([s for s in node.col.sizes if s in rgb_sizes]))
    assert bad >= 30, node.col.diag


def test_time_faults_fusion_resumes_each_time(node: RunningNode) -> None:
    """Backwards jumps, multi-second gaps, duplicate stamps, one camera stopping."""
    pub, fx = node.pub, node.fx
    assert node.fused_after(3, timeout=15.0) >= 3
    # 1. time jumps back 60 s (a looping bag / restarted simulation)
    assert node.fused_after(5, timeout=15.0, stamp_offset_ns=-60 * 10**9) >= 5, read_log(node.log)
    # 2. a gap of 3 s with no input at all, then on (stamps jump forward)
    time.sleep(3.0)
    assert node.fused_after(5, timeout=15.0) >= 5
    # 3. duplicate stamps: every pair sent twice with the same stamps
    start = node.col.count()
    for i in range(20):
        stamp = fx.now_ns()
        for _ in range(2):
            pub.publish_rgb(stamp, i)
            pub.publish_thermal(stamp, i)
        time.sleep(0.05)
    assert fx.wait_for(lambda: node.col.count() - start >= 5, 10.0)
    time.sleep(0.5)  # a second output of a stamp would come by now
    # A pair re-sent after its first copy was fused is dropped as late, not fused again.
    with node.col.lock:
        stamps = [s for _, s in node.col.arrivals[start:]]
    assert len(set(stamps)) >= 5 and len(set(stamps)) == len(stamps), stamps
    # 4. the thermal camera stops for 2 s (RGB goes on), then restarts
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        pub.publish_rgb(fx.now_ns())
        time.sleep(1 / 30)
    assert node.fused_after(5, timeout=15.0) >= 5
    # 5. and the RGB camera stops while thermal goes on
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.0:
        pub.publish_thermal(fx.now_ns())
        time.sleep(1 / 9)
    assert node.fused_after(5, timeout=15.0) >= 5
    assert node.proc.poll() is None and not node.col.malformed
    report.record('time', test='time faults into the node process', resumed_after=[
        'time 60 s backwards', '3 s gap', 'duplicate stamps', 'thermal stopped 2 s',
        'RGB stopped 2 s'], duplicate_stamp_outputs=len(stamps) - len(set(stamps)),
        sync_resets=soak.diag_int(node.col.diag, 'sync_resets'))


def test_4k_frames_and_200hz_bursts(node: RunningNode) -> None:
    fx = node.fx
    start = node.col.count()
    big = PairPublisher(fx, f'/{node.name}/thermal/image', f'/{node.name}/rgb/image', None,
                        thermal_hw=(512, 640), rgb_hw=(2160, 3840))
    node.col.rgb_hw = None  # sizes checked by stamp (late pairs of the other size may come)
    try:
        big.run(4.0, thermal_hz=5.0, rgb_hz=5.0)
        assert fx.wait_for(lambda: node.col.count() > start, 15.0), read_log(node.log)
        t_end = time.monotonic() + 2.0
        i = 0
        while time.monotonic() < t_end:  # 200 pairs/s
            stamp = fx.now_ns()
            node.pub.publish_rgb(stamp, i)
            node.pub.publish_thermal(stamp, i)
            i += 1
            time.sleep(0.005)
        assert node.fused_after(5, timeout=15.0) >= 5
        time.sleep(1.0)
    finally:
        node.col.rgb_hw = RGB_HW
    assert node.proc.poll() is None and not node.col.malformed, node.col.malformed
    with node.col.lock:
        sizes = dict(node.col.sizes)
    big_sizes = {sizes[s] for s in big.rgb_stamps if s in sizes}
    small_sizes = {sizes[s] for s in node.pub.rgb_stamps if s in sizes}
    fused_4k = sum(1 for s in big.rgb_stamps if s in sizes)
    assert fused_4k >= 1 and big_sizes == {(2160, 3840)}, (fused_4k, big_sizes)
    assert small_sizes == {RGB_HW}, small_sizes
    report.record('load', test='4K frames then 200 Hz pairs for 2 s', fused_4k=fused_4k,
                  published_4k_pairs=len(big.rgb_stamps),
                  burst_pairs_sent=i, superseded=soak.diag_int(node.col.diag,
                                                               'pairs_dropped_superseded'))


def test_node_restart_while_publishers_keep_going(node: RunningNode) -> None:
    node.proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    while node.proc.poll() is None and time.monotonic() - t0 < 15.0:
        node.pub.publish_rgb(node.fx.now_ns())
        node.pub.publish_thermal(node.fx.now_ns())
        time.sleep(0.03)
    assert node.proc.returncode == 0, read_log(node.log)
    assert 'Traceback' not in read_log(node.log)
    node.log = node.log.with_name('node_restarted.log')
    node.proc = start_node(node.args, node.env, node.log)
    assert node.fused_after(5, timeout=START_TIMEOUT) >= 5, read_log(node.log)
    report.record('signals', test='SIGINT while publishers keep going, then restart',
                  exit_status=0, fused_after_restart=5)


def test_injected_out_of_memory_drops_and_counts_the_frame(env: dict) -> None:
    """A fuser raising ``torch.cuda.OutOfMemoryError`` (as CUDA does on a huge frame)."""
    from sfdfuse_ros.fuse_node import FuseNode
    fx = FixtureNode('oom_fixture', domain_id=int(env['ROS_DOMAIN_ID']))
    fuse = None
    try:
        fuse = FuseNode(context=fx.context, namespace='/oom', parameter_overrides=[
            Parameter('method', value='mean'), Parameter('device', value='cpu'),
            Parameter('hardware_id', value='oom_rig'), Parameter('diagnostics_period', value=0.3)])
        real = fuse._fuser
        calls = []

        def flaky(vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
            calls.append(vi.shape)
            if len(calls) % 3 == 1:
                raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 20 GiB')
            return real(vi, ir)

        fuse._fuser = flaky
        fx.add_node(fuse)
        col = soak.Collector(fx, RGB_HW, topic='/oom/fused/image', hardware_id='oom_rig')
        pub = PairPublisher(fx, '/oom/thermal/image', '/oom/rgb/image', None, THERMAL_HW, RGB_HW)
        assert pub.wait_matched(10.0)
        for i in range(12):
            stamp = fx.now_ns()
            pub.publish_rgb(stamp, i)
            pub.publish_thermal(stamp, i)
            fx.wait_for(lambda: len(calls) > i, 2.0)
        assert fx.wait_for(lambda: col.count() >= 7, 10.0)
        assert fx.wait_for(lambda: soak.diag_int(col.diag, 'fusion_errors') >= 4, 5.0), col.diag
        # each one dropped and counted as a fusion error with the reason out_of_memory
        ooms = (len(calls) + 2) // 3  # calls 1, 4, 7, ... raised
        assert fx.wait_for(lambda: soak.diag_int(col.diag, 'fusion_errors_out_of_memory')
                           == soak.diag_int(col.diag, 'fusion_errors') == ooms, 5.0), col.diag
        assert fuse._out_of_memory == ooms >= 4
        assert soak.diag_int(col.diag, 'pairs_fused') == col.count()
        assert not col.malformed and fuse.worker_alive
        report.record('faults', test='injected torch.cuda.OutOfMemoryError every 3rd frame',
                      frames=len(calls), fusion_errors=soak.diag_int(col.diag, 'fusion_errors'),
                      fused=col.count())
    finally:
        if fuse is not None:
            fx._executor.remove_node(fuse)
            fuse.destroy_node()
        fx.close()


def _weights(folder: Path) -> dict[str, tuple[Path, str]]:
    """Write the bad weights files: name -> (path, text the log must contain)."""
    from sfdfuse_core.config import SFDFuseConfig
    from sfdfuse_core.model import build_model
    from sfdfuse_core.weights import save_weights
    tiny = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1,
                         encoder_convformer_blocks=1, decoder_restormer_blocks=1,
                         decoder_convformer_blocks=1, detail_nodes=1, cga_reduction=4,
                         head_channels=4)
    good = save_weights(build_model(tiny), folder / 'good.safetensors', tiny)
    truncated = folder / 'truncated.safetensors'
    truncated.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    import json
    import struct
    raw = good.read_bytes()
    n = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header['__metadata__']
    cfg = json.loads(meta['sfdfuse.config'])
    cfg['dim'] = 16  # the tensors are dim 8: shapes do not match the config
    meta['sfdfuse.config'] = json.dumps(cfg)
    new_header = json.dumps(header).encode()
    new_header += b' ' * (-len(new_header) % 8)
    mismatched = folder / 'mismatched.safetensors'
    mismatched.write_bytes(struct.pack('<Q', len(new_header)) + new_header + raw[8 + n:])
    return {'missing': (folder / 'missing.safetensors', 'not found'),
            'truncated': (truncated, 'truncated'),
            'mismatched': (mismatched, 'shape'),
            'not_safetensors': (folder / 'params.txt', '')}


def test_bad_weights_fail_at_start_up_before_subscribing(env: dict, tmp_path: Path) -> None:
    cases = _weights(tmp_path)
    (tmp_path / 'params.txt').write_text('not a weights file at all')
    procs = {}
    for name, (path, _) in cases.items():
        params = write_params(tmp_path / f'{name}.yaml', {
            'method': 'sfdfuse', 'device': 'cpu', 'weights': str(path)})
        procs[name] = start_node(['--params-file', params, '-r', f'__ns:=/{name}'], env,
                                 tmp_path / f'{name}.log')
    fx = FixtureNode('weights_fixture', domain_id=int(env['ROS_DOMAIN_ID']))
    seen_subs: set[str] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            for name in procs:
                for topic in (f'/{name}/thermal/image', f'/{name}/rgb/image'):
                    if fx.node.get_subscriptions_info_by_topic(topic):
                        seen_subs.add(topic)
            time.sleep(0.05)
    finally:
        codes = {name: stop_process(p) for name, p in procs.items()}
        fx.close()
    assert not seen_subs, f'subscribed before failing: {seen_subs}'
    for name, (path, what) in cases.items():
        text = read_log(tmp_path / f'{name}.log')
        assert codes[name] == 1, (name, codes[name], text)
        assert 'cannot load SFDFuse weights' in text and str(path) in text, (name, text)
        assert text.count('cannot load SFDFuse weights') == 1, (name, text)  # logged once
        assert what.lower() in text.lower(), (name, text)
        assert 'Traceback' not in text and 'fusing /' not in text, (name, text)
        line = next(ln for ln in text.splitlines() if 'cannot load SFDFuse weights' in ln)
        message = line.split(']: ', 1)[-1].replace(str(tmp_path), '<tmp>')
        report.record('weights', test=name, exit_status=codes[name], subscriptions_seen=0,
                      message=message if len(message) < 240 else message[:240] + ' ...')


def test_incompatible_qos_best_effort_camera_into_reliable_input(env: dict, tmp_path: Path
                                                                 ) -> None:
    running = RunningNode(env, tmp_path, {'input_reliability': 'reliable'}, 'qos')
    try:
        best_effort = running.fx.publisher(
            Image, '/qos/rgb/image',
            QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
        assert running.fx.wait_for(
            lambda: 'incompatible QoS on rgb/image' in read_log(running.log), START_TIMEOUT), \
            read_log(running.log)
        del best_effort
        # reliable publishers (PairPublisher) still match and fuse
        assert running.fused_after(3, timeout=20.0) >= 3, read_log(running.log)
        assert running.fx.wait_for(
            lambda: soak.diag_int(running.col.diag, 'incompatible_qos_events') >= 1, 5.0)
        line = next(ln for ln in read_log(running.log).splitlines() if 'incompatible QoS' in ln)
        report.record('qos', test='best-effort publisher -> reliable input',
                      log=line.split('] ')[-1])
    finally:
        running.close()


def test_sim_time_with_a_looping_bag_resumes_every_loop(env: dict, tmp_path: Path) -> None:
    from sfdfuse_core.scene import make_scene, write_scene_bag
    bag = tmp_path / 'scene'
    write_scene_bag(bag, make_scene(30, (128, 96)))  # 1 s of 30 Hz RGB, 9 Hz thermal
    running = RunningNode(env, tmp_path, {'use_sim_time': True, 'slop': 0.06}, 'sim',
                          remaps=('thermal/image:=/thermal/image', 'rgb/image:=/rgb/image'))
    player = None
    try:
        player = subprocess.Popen(
            [sys.executable, '-m', 'sfdfuse_core', 'bag', 'play', str(bag), '--loop', '--clock',
             '--wait-for-subscribers', '60', '--topics', '/thermal/image', '/rgb/image'],
            env=env, stdout=open(tmp_path / 'play.log', 'wb'), stderr=subprocess.STDOUT,
            start_new_session=True)
        # 4 loops of the 1 s bag: fused stamps must go back in time 3 times at least
        ok = running.fx.wait_for(lambda: _backward_jumps(running.col) >= 3, 60.0)
        assert ok, (_backward_jumps(running.col), read_log(running.log),
                    (tmp_path / 'play.log').read_text())
        assert not running.col.malformed
        report.record('time', test='bag play --loop --clock, node use_sim_time:=true',
                      loops_seen=_backward_jumps(running.col) + 1, fused=running.col.count())
    finally:
        if player is not None:
            stop_process(player)
        running.close()


def _backward_jumps(col: soak.Collector) -> int:
    with col.lock:
        stamps = [s for _, s in col.arrivals]
    return sum(1 for a, b in zip(stamps, stamps[1:]) if b < a)


@pytest.fixture(scope='module')
def full_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of the full-size network (seconds per frame on this CPU)."""
    from sfdfuse_core.config import SFDFuseConfig
    from sfdfuse_core.model import build_model
    from sfdfuse_core.weights import save_weights
    torch.manual_seed(0)
    return save_weights(build_model(SFDFuseConfig()),
                        tmp_path_factory.mktemp('w') / 'w.safetensors', SFDFuseConfig())


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_while_fusing_exits_cleanly(env: dict, tmp_path: Path, full_weights: Path,
                                           sig: int) -> None:
    """Regression: status -6 'terminate called without an active exception' on Ctrl-C."""
    weights = full_weights
    running = RunningNode(env, tmp_path, {'method': 'sfdfuse', 'weights': str(weights)}, 'sig')
    try:
        big = PairPublisher(running.fx, '/sig/thermal/image', '/sig/rgb/image', None,
                            thermal_hw=(128, 160), rgb_hw=(256, 320))
        assert big.wait_matched(START_TIMEOUT), read_log(running.log)
        big.run(1.5, thermal_hz=30.0, rgb_hz=30.0)  # the worker is now fusing (s/frame)
        running.proc.send_signal(sig)
        t0 = time.monotonic()
        code = running.proc.wait(70.0)
        stop_s = time.monotonic() - t0
    finally:
        running.close()
    text = read_log(running.log)
    assert code == 0, (code, text)
    assert 'terminate called' not in text and 'Traceback' not in text, text
    report.record('signals', test=f'{signal.Signals(sig).name} while fusing (sfdfuse, CPU, '
                  '320x256)', exit_status=code, stop_s=round(stop_s, 2),
                  landed_during_a_frame='waiting for the frame being fused' in text)


def test_diagnostics_type_is_published(node: RunningNode) -> None:
    """The module fixture's node still reports (sanity for the counters the soak reads)."""
    got = node.fx.collect(DiagnosticArray, '/diagnostics')
    assert node.fx.wait_for(lambda: len(got) >= 1, 5.0)
    assert stamp_ns_of(got[-1]) > 0


def test_resent_pair_is_paired_once() -> None:
    """Regression: a re-sent frame whose first copy was paired was paired (and fused) again."""
    from sfdfuse_core.sync import ApproximateTimePairer, RGB, THERMAL
    pairer = ApproximateTimePairer(slop=0.05)
    pairs = []
    for i in range(20):
        stamp = 10**9 + i * 33_000_000
        for _ in range(2):  # every frame of both cameras sent twice
            pairs += pairer.add(RGB, stamp, i)
            pairs += pairer.add(THERMAL, stamp, i)
    pairs += pairer.flush()
    assert len(pairs) == 20
    assert [p[0] for p in pairs] == [10**9 + i * 33_000_000 for i in range(20)]
    assert [(th, rgb) for _, th, rgb in pairs] == [(i, i) for i in range(20)]
    stats = pairer.stats
    for stream in (THERMAL, RGB):  # every copy is counted: late or superseded
        assert stats.dropped[stream]['late'] + stats.dropped[stream]['superseded'] == 20
