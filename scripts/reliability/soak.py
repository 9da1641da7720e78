"""Soak ``fuse_node``: feed it thermal + RGB for a long time and account for every frame.

The node runs as a child process (``method: mean``), a fixture node in this process publishes
RGB (``bgr8``) and thermal (``mono16``, 14-bit) frames with real stamps, collects every
``fused/image`` and ``/diagnostics``, and samples the node's resident memory (``VmRSS`` in
``/proc/PID/status``). At the end it checks that

* memory is flat: RSS growth after the warm-up stays under ``--rss-limit`` percent,
* latency (header stamp -> receipt of the fused image here) stays bounded,
* every frame is accounted for: published = received by the node + lost in transport;
  received = paired + dropped (by reason) + still queued (<= queue_size); pairs = fused +
  superseded + conversion/fusion errors; fused (node counter) = fused images received here,
* every fused image is well formed (RGB size, ``bgr8``, ``len(data) == height * step``),
* SIGINT stops the node with exit status 0 and no traceback.

``--burst`` publishes 200 Hz bursts (1 s of 200 pairs/s, then 1 s pause) instead of 30 Hz.

    .venv/bin/python scripts/reliability/soak.py --duration 600          # the 10-minute soak
    .venv/bin/python scripts/reliability/soak.py --duration 60 --burst   # 200 Hz bursts
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys
import threading
import time
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402  (the script's own folder)

report.ensure_test_path()
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosutil import (FixtureNode, PairPublisher, read_log, ros_test_env, stamp_ns_of,  # noqa: E402
                     start_node, stop_process, write_params)
from sensor_msgs.msg import Image  # noqa: E402

HARDWARE_ID = 'soak_rig'
QUEUE_SIZE = 10
START_TIMEOUT = 90.0


def rss_kib(pid: int) -> Optional[int]:
    """Read a process's resident set size.

    :param pid: process id.
    :return: ``VmRSS`` in KiB, or ``None`` when the process is gone.
    """
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Collector:
    """Records every fused image (receipt time, stamp, well-formedness) and the diagnostics."""

    def __init__(self, fx: FixtureNode, rgb_hw: tuple[int, int], topic: str = 'fused/image',
                 hardware_id: str = HARDWARE_ID) -> None:
        self.fx, self.rgb_hw, self.hardware_id = fx, rgb_hw, hardware_id
        self.lock = threading.Lock()
        self.arrivals: list[tuple[int, int]] = []  # (receipt ns, stamp ns)
        self.malformed: list[str] = []
        self.sizes: dict[int, tuple[int, int]] = {}  # stamp ns -> (H, W) of the fused image
        self.diag: dict[str, str] = {}
        self.diag_count = 0
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        fx.node.create_subscription(Image, topic, self._on_fused, qos)
        fx.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    def _on_fused(self, msg: Image) -> None:
        now = self.fx.now_ns()
        problem = check_fused(msg, self.rgb_hw)
        with self.lock:
            self.arrivals.append((now, stamp_ns_of(msg)))
            self.sizes[stamp_ns_of(msg)] = (msg.height, msg.width)
            if problem:
                self.malformed.append(problem)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.hardware_id == self.hardware_id:
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in status.values}
                    self.diag_count += 1

    def count(self) -> int:
        """Return the number of fused images received so far."""
        with self.lock:
            return len(self.arrivals)


def check_fused(msg: Image, rgb_hw: Optional[tuple[int, int]]) -> str:
    """Check that a fused image is well formed.

    :param msg: the fused image.
    :param rgb_hw: the expected ``(H, W)`` (``None``: any size).
    :return: ``''`` when it is fine, else what is wrong.
    """
    channels = {'bgr8': 3, 'mono8': 1}.get(msg.encoding)
    if channels is None:
        return f'undeclared encoding {msg.encoding!r}'
    if rgb_hw is not None and (msg.height, msg.width) != tuple(rgb_hw):
        return f'size {msg.height}x{msg.width}, expected {rgb_hw[0]}x{rgb_hw[1]}'
    if msg.step != msg.width * channels or len(msg.data) != msg.height * msg.step:
        return (f'step {msg.step} / data {len(msg.data)} for {msg.height}x{msg.width} '
                f'{msg.encoding}')
    return ''


def diag_int(diag: dict[str, str], key: str) -> int:
    """Read an integer diagnostics value (0 when absent).

    :param diag: key -> value of the node's status.
    :param key: the key.
    :return: the value.
    """
    return int(float(diag.get(key, '0')))


def accounting(diag: dict[str, str], published: tuple[int, int], fused_received: int,
               queue_size: int = QUEUE_SIZE) -> dict[str, Any]:
    """Reconcile what was published with the node's counters and what came back.

    :param diag: the node's last diagnostics values (taken after the input stopped).
    :param published: frames published ``(thermal, rgb)``.
    :param fused_received: fused images received by the test.
    :param queue_size: the node's ``queue_size`` (bound of the frames still queued per stream).
    :return: the figures and ``problems`` (empty when every frame is accounted for).
    """
    out: dict[str, Any] = {'problems': []}
    paired = diag_int(diag, 'sync_paired')
    for i, name in enumerate(('thermal', 'rgb')):
        received = diag_int(diag, f'sync_received_{name}')
        dropped = {k[len(f'sync_dropped_{name}_'):]: diag_int(diag, k) for k in diag
                   if k.startswith(f'sync_dropped_{name}_')}
        pending = received - paired - sum(dropped.values())
        out[name] = {'published': published[i], 'received': received,
                     'lost_in_transport': published[i] - received, 'paired': paired,
                     'dropped': dropped, 'still_queued': pending}
        if not 0 <= pending <= queue_size:
            out['problems'].append(f'{name}: {pending} frames neither paired nor dropped')
        if received > published[i]:
            out['problems'].append(f'{name}: node received {received} > published')
    fused = diag_int(diag, 'pairs_fused')
    superseded = diag_int(diag, 'pairs_dropped_superseded')
    errors = (diag_int(diag, 'conversion_errors_thermal') + diag_int(diag, 'conversion_errors_rgb')
              + diag_int(diag, 'fusion_errors'))
    out.update(paired=paired, fused=fused, superseded=superseded, errors=errors,
               fused_received=fused_received)
    if paired != fused + superseded + errors:
        out['problems'].append(f'pairs {paired} != fused {fused} + superseded {superseded} + '
                               f'errors {errors}')
    if fused != fused_received:
        out['problems'].append(f'node fused {fused}, test received {fused_received}')
    return out


def _publish_burst(pub: PairPublisher, duration: float, burst_hz: float = 200.0,
                   on_s: float = 1.0, off_s: float = 1.0) -> None:
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < duration:
        burst_end = time.monotonic() + on_s
        nxt = time.monotonic()
        while time.monotonic() < burst_end:
            stamp = pub.fixture.now_ns()
            pub.publish_rgb(stamp, i)
            pub.publish_thermal(stamp, i)
            i += 1
            nxt += 1.0 / burst_hz
            time.sleep(max(0.0, nxt - time.monotonic()))
        time.sleep(off_s)


def percentile(values: list[float], q: float) -> float:
    """Give the ``q``-th percentile of the values (0 when there are none).

    :param values: samples.
    :param q: percentile, 0..100.
    :return: the value.
    """
    return float(np.percentile(values, q)) if values else 0.0


def run_soak(duration_s: float, work_dir: Path, rate_hz: float = 30.0,
             rgb_hw: tuple[int, int] = (256, 320), thermal_hw: tuple[int, int] = (128, 160),
             warmup_s: Optional[float] = None, burst: bool = False,
             rss_period_s: float = 1.0, env: Optional[dict[str, str]] = None
             ) -> dict[str, Any]:
    """Run the node under load and measure memory, latency and accounting.

    :param duration_s: seconds of publishing.
    :param work_dir: folder for the parameters file and the node's log.
    :param rate_hz: rate of both cameras (ignored with ``burst``).
    :param rgb_hw: RGB ``(H, W)``.
    :param thermal_hw: thermal ``(H, W)``.
    :param warmup_s: seconds excluded from the memory and latency figures (default: 10 % of the
        run, at least 5 s).
    :param burst: publish 200 Hz bursts instead of a steady rate.
    :param rss_period_s: seconds between memory samples.
    :param env: ROS environment from ``rosutil.ros_test_env`` (default: a new private domain).
    :return: the figures (see the module docstring) and ``problems``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    warmup_s = max(5.0, 0.1 * duration_s) if warmup_s is None else warmup_s
    env = env if env is not None else ros_test_env()
    params = write_params(work_dir / 'params.yaml', {
        'method': 'mean', 'device': 'cpu', 'queue_size': QUEUE_SIZE, 'diagnostics_period': 1.0,
        'hardware_id': HARDWARE_ID})
    log = work_dir / 'node.log'
    proc = start_node(['--params-file', params], env, log)
    fx = FixtureNode('soak_fixture', domain_id=int(env['ROS_DOMAIN_ID']))
    rss: list[tuple[float, int]] = []
    stop = threading.Event()
    result: dict[str, Any] = {'duration_s': duration_s, 'rate_hz': 'burst 200' if burst
                              else rate_hz, 'rgb_hw': rgb_hw, 'thermal_hw': thermal_hw,
                              'warmup_s': warmup_s, 'problems': []}
    try:
        col = Collector(fx, rgb_hw)
        pub = PairPublisher(fx, thermal_hw=thermal_hw, rgb_hw=rgb_hw, info_topic=None)
        if not pub.wait_matched(START_TIMEOUT):
            raise RuntimeError(f'fuse_node did not subscribe in {START_TIMEOUT} s:\n'
                               + read_log(log))
        time.sleep(1.0)  # let the node's discovery settle too

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(rss_period_s):
                value = rss_kib(proc.pid)
                if value is not None:
                    rss.append((time.monotonic() - t0, value))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_start_ns = fx.now_ns()
        if burst:
            _publish_burst(pub, duration_s)
        else:
            pub.run(duration_s, thermal_hz=rate_hz, rgb_hz=rate_hz)
        published = (len(pub.thermal_stamps), len(pub.rgb_stamps))
        # Let the node finish and report: counters stable over two diagnostics messages.
        last, stable_since = None, time.monotonic()
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            with col.lock:
                now = (col.diag.get('pairs_fused'), col.diag.get('sync_received_rgb'),
                       len(col.arrivals))
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 2.5:
                break
            time.sleep(0.1)
        stop.set()
        sampler.join(5.0)
        with col.lock:
            diag, arrivals, malformed = dict(col.diag), list(col.arrivals), list(col.malformed)
        acc = accounting(diag, published, len(arrivals))
        result['accounting'] = acc
        result['problems'] += acc.pop('problems')
        if malformed:
            result['problems'].append(f'{len(malformed)} malformed fused images: {malformed[:3]}')
        warm_ns = t_start_ns + int(warmup_s * 1e9)
        lat = [(r - s) / 1e6 for r, s in arrivals if s >= warm_ns]
        result['latency_ms'] = {'samples': len(lat), 'p50': percentile(lat, 50),
                                'p95': percentile(lat, 95), 'p99': percentile(lat, 99),
                                'max': max(lat, default=0.0)}
        result['node_latency_max_ms_last_window'] = diag.get('latency_max_ms')
        after = [v for t, v in rss if t >= warmup_s]
        if len(after) >= 4:
            k = max(1, len(after) // 10)
            base, end = float(np.median(after[:k])), float(np.median(after[-k:]))
            result['rss_kib'] = {'samples': len(rss), 'first': rss[0][1], 'after_warmup': base,
                                 'end': end, 'max': max(v for _, v in rss),
                                 'growth_pct': 100.0 * (end - base) / base,
                                 'max_growth_pct': 100.0 * (max(after) - base) / base}
        else:
            result['problems'].append(f'only {len(after)} memory samples after the warm-up')
        result['output_rate_hz'] = len(arrivals) / duration_s
    finally:
        stop.set()
        t0 = time.monotonic()
        code = stop_process(proc, timeout=15.0)
        result['sigint_exit_status'] = code
        result['sigint_stop_s'] = round(time.monotonic() - t0, 2)
        fx.close()
    text = read_log(log)
    result['log_tracebacks'] = text.count('Traceback')
    if code != 0:
        result['problems'].append(f'exit status {code} after SIGINT')
    if 'Traceback' in text or 'terminate called' in text:
        result['problems'].append('traceback or C++ terminate in the node log')
    return result


def markdown(res: dict[str, Any], command: str) -> str:
    """Render the soak results as Markdown.

    :param res: what :func:`run_soak` returned.
    :param command: the command that ran it.
    :return: the section body.
    """
    acc, lat, mem = res.get('accounting', {}), res.get('latency_ms', {}), res.get('rss_kib', {})
    rows = []
    for name in ('thermal', 'rgb'):
        s = acc.get(name, {})
        dropped = ', '.join(f'{k} {v}' for k, v in s.get('dropped', {}).items() if v) or 'none'
        rows.append((name, s.get('published'), s.get('received'), s.get('lost_in_transport'),
                     s.get('paired'), dropped, s.get('still_queued')))
    lines = [
        f'Input: {res["rgb_hw"][1]}x{res["rgb_hw"][0]} bgr8 RGB + {res["thermal_hw"][1]}x'
        f'{res["thermal_hw"][0]} mono16 thermal, rate {res["rate_hz"]} Hz, '
        f'{res["duration_s"]:.0f} s, method mean, warm-up {res["warmup_s"]:.0f} s excluded.',
        '',
        report.table(rows, ('stream', 'published', 'received by node', 'lost in DDS',
                            'paired', 'dropped by the pairer', 'still queued at the end')),
        '',
        f'- Pairs: {acc.get("paired")} = fused {acc.get("fused")} + superseded (fusion busy, '
        f'newer pair taken) {acc.get("superseded")} + bad frames {acc.get("errors")}; fused '
        f'images received by the test: {acc.get("fused_received")} '
        f'(output {res.get("output_rate_hz", 0):.1f} Hz).',
        f'- Latency, header stamp -> receipt of the fused image in another process, after '
        f'warm-up ({lat.get("samples")} images): p50 {lat.get("p50", 0):.1f} ms, p95 '
        f'{lat.get("p95", 0):.1f} ms, p99 {lat.get("p99", 0):.1f} ms, max '
        f'{lat.get("max", 0):.1f} ms.',
    ]
    if mem:
        lines.append(
            f'- Node RSS ({mem["samples"]} samples of VmRSS, 1 s apart): {mem["first"] / 1024:.1f}'
            f' MiB at the first sample, {mem["after_warmup"] / 1024:.1f} MiB after warm-up, '
            f'{mem["end"] / 1024:.1f} MiB at the end: growth **{mem["growth_pct"]:+.2f} %** '
            f'(largest excursion {mem["max_growth_pct"]:+.2f} %; limit 5 %).')
    lines.append(f'- SIGINT at the end: exit status {res.get("sigint_exit_status")} after '
                 f'{res.get("sigint_stop_s")} s; tracebacks in the log: '
                 f'{res.get("log_tracebacks")}.')
    verdict = 'PASS' if not res['problems'] else 'FAIL: ' + '; '.join(res['problems'])
    lines += ['', f'Result: **{verdict}**.']
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the soak from the command line and write its section of the document.

    :param argv: arguments (default: ``sys.argv[1:]``).
    :return: 0 when every check passed, else 1.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=600.0, help='seconds of input')
    parser.add_argument('--rate', type=float, default=30.0, help='camera rate (Hz)')
    parser.add_argument('--burst', action='store_true', help='200 Hz bursts instead')
    parser.add_argument('--rss-limit', type=float, default=5.0, help='allowed RSS growth (%%)')
    parser.add_argument('--no-doc', action='store_true', help='do not update the document')
    args = parser.parse_args(argv)
    key = 'burst' if args.burst else 'soak'
    res = run_soak(args.duration, report.OUT_DIR / key, rate_hz=args.rate, burst=args.burst)
    mem = res.get('rss_kib')
    if mem and mem['growth_pct'] > args.rss_limit:
        res['problems'].append(f'RSS grew {mem["growth_pct"]:.2f} % > {args.rss_limit} %')
    report.save_json(key, res)
    command = ('.venv/bin/python scripts/reliability/soak.py --duration '
               f'{args.duration:.0f}' + (' --burst' if args.burst else ''))
    title = ('Burst load: 200 Hz pairs for 1 s, 1 s pause' if args.burst else
             f'Soak: {args.duration / 60:.0f} minutes at {args.rate:.0f} Hz')
    text = markdown(res, command)
    print(text)
    if not args.no_doc:
        report.write_section(key, title, text, command)
    return 0 if not res['problems'] else 1


if __name__ == '__main__':
    sys.exit(main())
