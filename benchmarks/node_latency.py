"""Node latency: ``fuse_node`` over a replayed bag, split into engine time and ROS overhead.

Builds a generated scene bag (thermal ``mono16`` at 9 Hz, or ``--thermal-hz``, started 13 ms
after the RGB camera, half the RGB resolution; RGB ``bgr8`` at 30 Hz, with camera info), starts
``sfdfuse_ros.fuse_node`` as a child process (its logger at debug level, so it logs the timing
of every pair it fuses), plays the bag into it with
:class:`sfdfuse_ros.bag_play.BagPlayer` and collects the fused frames and ``/diagnostics`` in
this process. A short warm-up bag is played first (ONNX Runtime's first run, ``torch.compile``
and CUDA graph capture on a GPU) and left out of the figures.

Per fused pair (milliseconds, ``time.monotonic``: CLOCK_MONOTONIC, shared by the processes):

* ``engine``: the node's ``fuser(vi, ir)`` call alone (the network for ``sfdfuse``);
* ``convert``: messages -> arrays (thermal 16 -> 8 bit, alignment) and fused array -> message;
* ``sync``: the node received the pair's second message -> its pairer released the pair (at
  9/30 Hz the ``optimal`` policy waits for the next RGB frame to be sure of the closest partner;
  ``--sync-policy greedy`` pairs at once); ``wait``: pair
  released -> the node's worker starts on it; ``publish``: the publish call;
* ``node_latency``: the node received the pair's second message (callback) -> it published the
  fused image; ``node_overhead = node_latency - engine``; ``processing_overhead =
  node_overhead - sync`` (the pairing wait is about one RGB period of *bag* time, so it grows
  as ``1 / rate`` when the bag is played slowly; the rest does not);
* ``inbound``: the player published that message -> the node's callback received it;
  ``outbound``: the node published -> this process received the fused image;
* ``end_to_end``: the player published the pair's second message -> the fused image was
  received here (what a camera stamping at publication would see as stamp -> receipt; the bag's
  own stamps are from the recording), ``end_to_end_overhead = end_to_end - engine``.

Results go to ``OUT/node_latency_<device>.json`` and ``.md``; a run replaces an earlier run of
the same method, size, device, rate, sync policy, thermal rate and precision there, other runs
are kept.
Examples (run from the repository root)::

    .venv/bin/python benchmarks/node_latency.py --method mean --device cpu --size 640x512
    .venv/bin/python benchmarks/node_latency.py --method mean --thermal-hz 10 --sync-policy greedy
    .venv/bin/python benchmarks/node_latency.py --method sfdfuse --random-weights --device cuda

Speed does not depend on weight values, so ``--random-weights`` (a randomly initialised
full-size network saved to the run's temporary folder) measures what trained weights would.
"""
import argparse
from importlib import metadata
import json
import os
import platform
import random
import re
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported lazily at run time, with a clear error when missing
    from sfdfuse_ros.node_process import NodeProcess

REPO = Path(__file__).resolve().parents[1]
FUSED_TOPIC = '/fused/image'
#: Stamps of the warm-up bag start here; the measured bag starts 1000 s later (no time jump).
WARMUP_START_NS = 1_700_000_000_000_000_000
MEASURE_START_NS = WARMUP_START_NS + 1000 * 10 ** 9
WARMUP_FRAMES = 12
#: Per-pair figures, in the order the tables show them.
METRICS = ('engine', 'convert', 'sync', 'wait', 'publish', 'node_latency', 'node_overhead',
           'processing_overhead', 'inbound', 'outbound', 'end_to_end', 'end_to_end_overhead')
METRIC_TEXT = {
    'engine': 'engine: `fuser(vi, ir)` call',
    'convert': 'conversion: msgs -> arrays (thermal 8-bit, align) + array -> msg',
    'sync': 'second msg received -> pairer releases the pair',
    'wait': 'pair released -> worker starts',
    'publish': 'publish call',
    'node_latency': '**node: second msg received -> fused published**',
    'node_overhead': '**node overhead = node latency - engine**',
    'processing_overhead': 'node overhead without the pairing wait (- sync)',
    'inbound': 'player publish -> node callback (DDS in)',
    'outbound': 'node publish -> subscriber callback (DDS out)',
    'end_to_end': '**end to end: second msg published -> fused received**',
    'end_to_end_overhead': '**end-to-end overhead = end to end - engine**',
}
_TIMING_LINE = re.compile(r'pair timing (.*)$')


class BenchError(RuntimeError):
    """The benchmark cannot run or failed; the message says why (and shows the node's log)."""


def parse_size(text: str) -> Tuple[int, int]:
    """Parse ``WxH``.

    :param text: e.g. ``640x512``.
    :return: ``(width, height)``.
    :raises argparse.ArgumentTypeError: when malformed or below 16 pixels.
    """
    match = re.fullmatch(r'(\d+)x(\d+)', text.strip())
    if not match or min(int(match.group(1)), int(match.group(2))) < 16:
        raise argparse.ArgumentTypeError(f'size must be WxH with both >= 16, got {text!r}')
    return int(match.group(1)), int(match.group(2))


def summarize(values: List[float]) -> Dict[str, float]:
    """Summarise milliseconds.

    :param values: per-pair values.
    :return: ``n``, ``mean``, ``min``, ``p50``, ``p90``, ``p99``, ``max`` (``n`` 0 and nothing
        else when empty).
    """
    if not values:
        return {'n': 0}
    arr = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(arr, [50.0, 90.0, 99.0])
    return {'n': int(arr.size), 'mean': float(arr.mean()), 'min': float(arr.min()),
            'p50': float(p50), 'p90': float(p90), 'p99': float(p99), 'max': float(arr.max())}


def parse_node_log(path: Path) -> Dict[int, Dict[str, float]]:
    """Read the ``pair timing`` debug lines of ``fuse_node``.

    :param path: the node's log.
    :return: RGB stamp (ns) -> ``{'received_monotonic_s': ..., 'latency_ms': ..., ...}``.
    """
    out: Dict[int, Dict[str, float]] = {}
    with open(path, 'r', errors='replace') as f:
        for line in f:
            match = _TIMING_LINE.search(line.rstrip())
            if not match:
                continue
            fields = dict(kv.split('=', 1) for kv in match.group(1).split() if '=' in kv)
            try:
                stamp = int(fields.pop('stamp_ns'))
                out[stamp] = {k: float(v) for k, v in fields.items()}
            except (KeyError, ValueError):
                continue
    return out


class Collector:
    """Records when each fused image arrives and keeps the node's latest diagnostics.

    :param node: an rclpy node spun by an executor in another thread.
    """

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.frames: List[Tuple[int, float, str]] = []  # (stamp_ns, monotonic, 'WxH enc')
        self.diag: Dict[str, str] = {}
        self.diag_time = 0.0
        self._lock = threading.Lock()
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                         reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Image, FUSED_TOPIC, self._on_image, qos)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    def _on_image(self, msg: Any) -> None:
        now = time.monotonic()
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        with self._lock:
            self.frames.append((stamp, now, f'{msg.width}x{msg.height} {msg.encoding}'))

    def _on_diag(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.endswith('thermal/RGB fusion'):
                with self._lock:
                    self.diag = {kv.key: kv.value for kv in status.values}
                    self.diag_time = time.monotonic()

    def received(self, stamps: set) -> List[Tuple[int, float, str]]:
        """Return the fused frames received so far whose stamp is in ``stamps``."""
        with self._lock:
            return [f for f in self.frames if f[0] in stamps]

    def node_idle(self, since: float) -> Optional[Dict[str, str]]:
        """Return diagnostics sent after ``since`` if they show every pair handled, else None.

        :param since: ``time.monotonic()`` after which the diagnostics must have arrived.
        :return: the diagnostics key/values, or ``None``.
        """
        with self._lock:
            diag, when, received = dict(self.diag), self.diag_time, len(self.frames)
        if when < since + 0.05:
            return None
        try:
            handled = sum(int(diag[k]) for k in (
                'pairs_fused', 'pairs_dropped_superseded', 'fusion_errors',
                'conversion_errors_thermal', 'conversion_errors_rgb'))
            idle = handled >= int(diag['sync_paired']) and received >= int(diag['pairs_fused'])
        except (KeyError, ValueError):
            return None
        return diag if idle else None


def _counter(diag: Dict[str, str], prefix: str) -> int:
    return sum(int(v) for k, v in diag.items() if k.startswith(prefix) and v.lstrip('-').isdigit())


def _wait(cond, timeout: float, node: 'NodeProcess', doing: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if not node.alive():
            raise BenchError(node.describe(doing))
        if time.monotonic() > deadline:
            raise BenchError(node.describe(f'after {timeout:.0f} s {doing}'))
        time.sleep(poll)


def _versions() -> Dict[str, str]:
    out = {'python': platform.python_version()}
    for name in ('torch', 'onnxruntime', 'rclpy', 'numpy'):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = 'not installed'
    return out


def _write_bag(path: Path, size: Tuple[int, int], frames: int, start_ns: int, seed: int,
               thermal_hz: float = 9.0):
    from sfdfuse_core.scene import make_scene, write_scene_bag

    return write_scene_bag(path, make_scene(frames, size, seed), start_ns=start_ns, seed=seed,
                           thermal_hz=thermal_hz)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run one measurement (see the module docstring).

    :param args: the parsed command line.
    :return: the run's result (JSON-ready).
    :raises BenchError: when the node fails to start, dies, or fuses nothing.
    """
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        from sfdfuse_core.bag import pair_stamps
        from sfdfuse_core.scene import RGB_INFO_TOPIC, RGB_TOPIC, THERMAL_TOPIC
        from sfdfuse_ros.bag_play import BagPlayer
        from sfdfuse_ros.demo import find_config_file
        from sfdfuse_ros.node_process import NodeProcess, tail_log
    except ImportError as exc:
        raise BenchError(f'cannot import the package or ROS 2 ({exc}); run with the project '
                         "venv (bash scripts/run_tests.sh creates it, then .venv/bin/python) or "
                         "pip install -e '.[ros]'") from exc

    domain = args.domain_id if args.domain_id is not None else random.Random(
        os.getpid() * 7919 + time.monotonic_ns()).randint(1, 200)
    os.environ['ROS_DOMAIN_ID'] = str(domain)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                          str(find_config_file('fastdds_profile.xml')))
    env = dict(os.environ, PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='1')

    work = Path(tempfile.mkdtemp(prefix='node_latency_', dir=args.work_dir))
    log(f'work folder: {work} (ROS_DOMAIN_ID={domain})')
    weights_note = ''
    overrides = {'method': args.method, 'device': args.device, 'diagnostics_period': '1.0',
                 'sync_policy': args.sync_policy, 'threads': str(args.threads),
                 'precision': args.precision}
    if args.method == 'sfdfuse':
        if args.random_weights:
            import torch

            from sfdfuse_core.model import build_model
            from sfdfuse_core.weights import save_weights

            torch.manual_seed(0)
            weights = save_weights(build_model(), work / 'random_full_size.safetensors')
            weights_note = 'random (full-size network, randomly initialised)'
        else:
            weights = Path(args.weights).resolve()
            if not weights.is_file():
                raise BenchError(f'--weights {weights}: no such file')
            weights_note = str(weights)
        overrides['weights'] = str(weights)

    t0 = time.monotonic()
    warm_info = _write_bag(work / 'warmup_bag', args.size, WARMUP_FRAMES, WARMUP_START_NS,
                           args.seed + 1, args.thermal_hz)
    info = _write_bag(work / 'bag', args.size, args.frames, MEASURE_START_NS, args.seed,
                      args.thermal_hz)
    log(f'bags written in {time.monotonic() - t0:.1f} s: {len(info.rgb)} RGB '
        f'{args.size[0]}x{args.size[1]} at 30 Hz + {len(info.thermal)} thermal '
        f'{max(16, args.size[0] // 2)}x{max(16, args.size[1] // 2)} mono16 at '
        f'{args.thermal_hz:g} Hz')
    expected = pair_stamps([s for _, s, _ in info.thermal], [s for _, s, _ in info.rgb],
                           policy=args.sync_policy)
    thermal_of = {rgb: th for _, th, rgb in expected}
    warm_stamps = {rgb for _, _, rgb in pair_stamps([s for _, s, _ in warm_info.thermal],
                                                    [s for _, s, _ in warm_info.rgb],
                                                    policy=args.sync_policy)}
    header_of = {(t, b): s for t, rows in ((THERMAL_TOPIC, info.thermal), (RGB_TOPIC, info.rgb))
                 for b, s, _ in rows}

    log_path = work / 'node.log'
    load_before = os.getloadavg()
    node = NodeProcess(log_path, find_config_file('fuse.yaml'), overrides, env,
                       extra_ros_args=('--log-level', 'fuse_node:=debug'))
    log(f'started fuse_node (method {args.method}, device {args.device}, sync_policy '
        f'{args.sync_policy}); log: {log_path}')
    context = rclpy.Context()
    executor = None
    spin_thread = None
    published: Dict[Tuple[str, int], float] = {}
    play_report = None
    status = None
    try:
        rclpy.init(context=context)
        topics = [THERMAL_TOPIC, RGB_TOPIC, RGB_INFO_TOPIC]
        warm_player = BagPlayer(work / 'warmup_bag', topics=topics,
                                node_name='node_latency_warmup', context=context)
        player = BagPlayer(work / 'bag', topics=topics, node_name='node_latency_player',
                           context=context)
        listener = Node('node_latency_listener', context=context)
        collector = Collector(listener)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(listener)
        spin_thread = threading.Thread(target=executor.spin, daemon=True)
        spin_thread.start()

        _wait(lambda: (warm_player.wait_for_subscribers(0.0)
                       and player.wait_for_subscribers(0.0)
                       and listener.count_publishers(FUSED_TOPIC) > 0),
              args.start_timeout, node, 'while waiting for the node to start')
        log(f'node up after {time.monotonic() - t0:.1f} s; warm-up '
            f'({len(warm_stamps)} pairs, not counted)')

        # Real time: a slow node just fuses fewer warm-up pairs (it keeps the newest).
        warm_player.play(rate=1.0, start_delay=0.2, should_stop=lambda: not node.alive())
        since = time.monotonic()
        _wait(lambda: collector.received(warm_stamps), args.warmup_timeout, node,
              'while waiting for the first fused frame (warm-up)')
        base = _wait(lambda: collector.node_idle(since), args.warmup_timeout, node,
                     'while waiting for the warm-up pairs to finish')
        log(f'warm-up done after {time.monotonic() - since:.1f} s; playing the bag at '
            f'{args.rate:g}x ({len(expected)} pairs)')

        def on_publish(topic: str, bag_ns: int, wall: float) -> None:
            stamp = header_of.get((topic, bag_ns))
            if stamp is not None:
                published[(topic, stamp)] = wall

        play_start = time.monotonic()
        play_report = player.play(rate=args.rate, start_delay=0.2, on_publish=on_publish,
                                  should_stop=lambda: not node.alive())
        play_end = time.monotonic()
        if not node.alive():
            raise BenchError(node.describe('while the bag played'))
        try:
            final = _wait(lambda: collector.node_idle(play_end), args.tail_timeout, node,
                          'waiting for the node to finish its pairs after the bag ended')
        except BenchError:
            if not node.alive():
                raise
            log(f'warning: the node still had pairs {args.tail_timeout:.0f} s after the bag '
                'ended; measuring what arrived')
            final = dict(collector.diag)
        frames = collector.received(set(thermal_of))
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if spin_thread is not None:
            spin_thread.join(timeout=5.0)
        rclpy.try_shutdown(context=context)
        status = node.stop(timeout=90.0)
    load_after = os.getloadavg()
    if status != 0:
        log(f'warning: fuse_node exited with status {status}; last log lines:\n'
            f'{tail_log(log_path, 8)}')

    timings = parse_node_log(log_path)
    per_pair: Dict[str, List[float]] = {m: [] for m in METRICS}
    unmatched = 0
    rows: List[Dict[str, float]] = []
    for stamp, received, _ in frames:
        t = timings.get(stamp)
        sent = [published.get((RGB_TOPIC, stamp)),
                published.get((THERMAL_TOPIC, thermal_of[stamp]))]
        if t is None or None in sent or 'sync_ms' not in t:
            unmatched += 1
            continue
        completed = max(sent)
        node_published = t['received_monotonic_s'] + t['latency_ms'] / 1e3
        row = {
            'engine': t['engine_ms'], 'convert': t['convert_ms'], 'sync': t['sync_ms'],
            'wait': t['wait_ms'], 'publish': t['publish_ms'], 'node_latency': t['latency_ms'],
            'node_overhead': t['overhead_ms'],
            'inbound': (t['received_monotonic_s'] - completed) * 1e3,
            'outbound': (received - node_published) * 1e3,
            'end_to_end': (received - completed) * 1e3,
        }
        row['processing_overhead'] = row['node_overhead'] - row['sync']
        row['end_to_end_overhead'] = row['end_to_end'] - row['engine']
        for key, value in row.items():
            per_pair[key].append(value)
        rows.append({'stamp_ns': stamp, **{k: round(v, 3) for k, v in row.items()}})
    if not frames:
        raise BenchError(f'no fused frame of the measured bag arrived ({len(expected)} pairs '
                         f'played); the node log ({log_path}):\n{tail_log(log_path)}')
    if not timings:
        raise BenchError(f'the node log has no "pair timing" lines: this fuse_node does not '
                         f'record per-pair times ({log_path})')

    superseded = (int(final.get('pairs_dropped_superseded', 0))
                  - int(base.get('pairs_dropped_superseded', 0)))
    result = {
        'method': args.method, 'device': args.device,
        'size': f'{args.size[0]}x{args.size[1]}',
        'thermal_size': f'{max(16, args.size[0] // 2)}x{max(16, args.size[1] // 2)}',
        'rate': args.rate, 'frames': args.frames, 'weights': weights_note or None,
        'sync_policy': args.sync_policy, 'thermal_hz': args.thermal_hz, 'threads': args.threads,
        'precision': args.precision,
        'command': 'python benchmarks/node_latency.py ' + shlex.join(sys.argv[1:]),
        'date': time.strftime('%Y-%m-%d %H:%M:%S %z'),
        'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(),
                    'processor': platform.processor() or platform.machine(),
                    'loadavg_before': [round(v, 2) for v in load_before],
                    'loadavg_after': [round(v, 2) for v in load_after]},
        'versions': _versions(),
        'played': {'thermal': len(info.thermal), 'rgb': len(info.rgb),
                   'seconds': round(play_end - play_start, 2),
                   'max_late_ms': round(play_report.max_late * 1e3, 1) if play_report else None},
        'pairs_expected': len(expected),
        'pairs_fused': len(frames),
        'pairs_dropped': max(0, len(expected) - len(frames)),
        'node_counters': {
            'superseded': superseded,
            'sync_dropped': _counter(final, 'sync_dropped_') - _counter(base, 'sync_dropped_'),
            'paired': int(final.get('sync_paired', 0)) - int(base.get('sync_paired', 0)),
            'fusion_errors': int(final.get('fusion_errors', 0)),
            'conversion_errors': (int(final.get('conversion_errors_thermal', 0))
                                  + int(final.get('conversion_errors_rgb', 0))),
        },
        'unmatched_frames': unmatched,
        'output': sorted({f[2] for f in frames}),
        'node_exit_status': status,
        'ms': {m: summarize(per_pair[m]) for m in METRICS},
        'pairs': rows,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _fmt(value: Any) -> str:
    return '-' if value is None else f'{value:.1f}' if abs(value) >= 10 else f'{value:.2f}'


def render_markdown(device: str, runs: List[Dict[str, Any]]) -> str:
    """Render the runs of one device as Markdown.

    :param device: ``cpu`` or ``cuda``.
    :param runs: results of :func:`run`.
    :return: the page.
    """
    lines = [f'# Node latency, {device}', '',
             'Written by `benchmarks/node_latency.py`. Milliseconds per fused pair, warm-up '
             'excluded. `fuse_node` in a child process; bag player and subscriber in the '
             'benchmark process. Timings on a shared machine are noisy. Publish times are '
             'taken when `publish()` has returned, so "DDS in" and "DDS out" can be slightly '
             'negative. '
             '"Unpaired": frames without a partner (at 9/30 Hz, 2 of 3 RGB frames). '
             '"sync": the `sync_policy` parameter (`optimal` waits until a pair cannot be '
             'improved, `greedy` pairs at once) and the thermal rate.', '',
             '| method | size | rate | sync | pairs fused / expected | engine p50 | node latency '
             'p50 / p99 | node overhead p50 (pairing wait + processing) | DDS in + out p50 '
             '| end to end p50 / p99 |',
             '| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in runs:
        ms = r['ms']

        def p(m: str, q: str) -> str:
            return _fmt(ms[m].get(q))

        lines.append(f"| {_method_text(r)} | {r['size']} | {r['rate']:g} | {_sync_text(r)} "
                     f"| {r['pairs_fused']} / "
                     f"{r['pairs_expected']} | {p('engine', 'p50')} "
                     f"| {p('node_latency', 'p50')} / {p('node_latency', 'p99')} "
                     f"| {p('node_overhead', 'p50')} ({p('sync', 'p50')} + "
                     f"{p('processing_overhead', 'p50')}) "
                     f"| {p('inbound', 'p50')} + {p('outbound', 'p50')} "
                     f"| {p('end_to_end', 'p50')} / {p('end_to_end', 'p99')} |")
    for r in runs:
        c = r['node_counters']
        lines += ['', f"## {_method_text(r)}, {r['size']} (thermal {r['thermal_size']}), "
                      f"{r['device']}, bag at {r['rate']:g}x, {_sync_text(r)}", '',
                  f"`{r['command']}`", '',
                  f"{r['date']}; {r['machine']['cpus']} CPUs, load average "
                  f"{r['machine']['loadavg_before'][0]} before / "
                  f"{r['machine']['loadavg_after'][0]} after; weights: {r['weights'] or '-'}; "
                  + ', '.join(f'{k} {v}' for k, v in r['versions'].items()) + '.', '',
                  f"Played {r['played']['rgb']} RGB + {r['played']['thermal']} thermal in "
                  f"{r['played']['seconds']} s -> {r['pairs_expected']} pairs; fused "
                  f"{r['pairs_fused']}, dropped {r['pairs_dropped']} (node: superseded "
                  f"{c['superseded']}, unpaired {c['sync_dropped']}, errors "
                  f"{c['fusion_errors'] + c['conversion_errors']}); output "
                  f"{', '.join(r['output'])}.", '',
                  '| ms per pair | n | min | mean | p50 | p90 | p99 | max |',
                  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
        for m in METRICS:
            s = r['ms'][m]
            lines.append(f"| {METRIC_TEXT[m]} | {s['n']} | " + ' | '.join(
                _fmt(s.get(q)) for q in ('min', 'mean', 'p50', 'p90', 'p99', 'max')) + ' |')
    return '\n'.join(lines) + '\n'


def _sync_text(r: Dict[str, Any]) -> str:
    """Say the sync policy and thermal rate of a run (runs from before both: optimal, 9 Hz)."""
    return f"{r.get('sync_policy', 'optimal')}, thermal {r.get('thermal_hz', 9.0):g} Hz"


def _method_text(run: Dict[str, Any]) -> str:
    """The method, with the precision when it is not the default."""
    precision = run.get('precision', 'auto')
    return run['method'] if precision == 'auto' else f"{run['method']} ({precision})"


def save(out_dir: Path, result: Dict[str, Any]) -> Tuple[Path, Path]:
    """Merge a run into ``node_latency_<device>.json`` and rewrite the Markdown beside it.

    :param out_dir: results folder (created).
    :param result: one run.
    :return: the JSON and Markdown paths.
    :raises BenchError: when the JSON file there is not one of this script.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    device = result['device']
    json_path = out_dir / f'node_latency_{device}.json'
    runs: List[Dict[str, Any]] = []
    if json_path.is_file():
        try:
            runs = json.loads(json_path.read_text())['runs']
        except (ValueError, KeyError, TypeError) as exc:
            raise BenchError(f'{json_path} is not a results file of this script ({exc}); move '
                             'it away') from exc

    def key(r: Dict[str, Any]) -> tuple:
        return (r['method'], r['size'], r['device'], r['rate'], r.get('sync_policy', 'optimal'),
                r.get('thermal_hz', 9.0), r.get('precision', 'auto'))

    runs = [r for r in runs if key(r) != key(result)] + [result]
    json_path.write_text(json.dumps({'runs': runs}, indent=2) + '\n')
    md_path = json_path.with_suffix('.md')
    md_path.write_text(render_markdown(device, runs))
    return json_path, md_path


def log(text: str) -> None:
    """Print a progress line."""
    print(f'[node_latency] {text}', flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    :return: the parser.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--method', choices=('sfdfuse', 'mean', 'max'), default='mean')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--size', type=parse_size, default=(640, 512),
                        help='RGB WxH (thermal is half of it); default 640x512')
    parser.add_argument('--frames', type=int, default=300,
                        help='RGB frames of the measured bag (30 Hz; thermal --thermal-hz)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (below 1 when the node cannot keep up)')
    parser.add_argument('--sync-policy', choices=('optimal', 'greedy'), default='optimal',
                        help="the node's sync_policy parameter (default: %(default)s)")
    parser.add_argument('--precision', choices=('auto', 'fp32', 'bf16', 'fp16'), default='auto',
                        help="the node's precision parameter (default: %(default)s)")
    parser.add_argument('--threads', type=int, default=0,
                        help="the node's threads parameter (0: all cores but one; default: "
                        '%(default)s)')
    parser.add_argument('--thermal-hz', type=float, default=9.0,
                        help='thermal rate of the bag, <= 30 (default: %(default)s)')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--weights', help='weights file for --method sfdfuse')
    group.add_argument('--random-weights', action='store_true',
                       help='--method sfdfuse with a randomly initialised full-size network '
                            '(speed does not depend on weight values)')
    parser.add_argument('--out', type=Path, default=REPO / 'benchmarks' / 'results',
                        help='results folder (node_latency_<device>.json/.md)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--domain-id', type=int, help='ROS_DOMAIN_ID; default random 1..200')
    parser.add_argument('--start-timeout', type=float, default=600.0,
                        help='seconds the node may take to start (model load, ONNX export)')
    parser.add_argument('--warmup-timeout', type=float, default=600.0,
                        help='seconds the warm-up may take (torch.compile on a GPU)')
    parser.add_argument('--tail-timeout', type=float, default=300.0,
                        help='seconds the node may take to finish after the bag ended')
    parser.add_argument('--work-dir', help='parent of the temporary work folder')
    parser.add_argument('--keep', action='store_true', help='keep the bags and the node log')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the command line, measure, write the results.

    :param argv: arguments (default ``sys.argv[1:]``).
    :return: 0 on success, 1 when the measurement failed, 2 for a bad command line.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames < 4:
        parser.error(f'--frames must be >= 4, got {args.frames}')
    if not args.rate > 0:
        parser.error(f'--rate must be > 0, got {args.rate}')
    if not 0 < args.thermal_hz <= 30:
        parser.error(f'--thermal-hz must be in (0, 30], got {args.thermal_hz}')
    if args.method == 'sfdfuse' and not (args.weights or args.random_weights):
        default = REPO / 'sfdfuse_core' / 'weights' / 'sfdfuse_lite_ivf.safetensors'
        if not default.is_file():
            parser.error(f'--method sfdfuse needs --weights PATH or --random-weights: the '
                         f'shipped compact weights {default} are missing')
        args.weights = str(default)
    if args.method != 'sfdfuse' and (args.weights or args.random_weights):
        parser.error(f'--weights/--random-weights only apply to --method sfdfuse, not '
                     f'{args.method}')
    try:
        result = run(args)
        json_path, md_path = save(args.out, result)
    except BenchError as exc:
        print(f'node_latency: error: {exc}', file=sys.stderr)
        return 1
    ms = result['ms']
    log(f"fused {result['pairs_fused']} of {result['pairs_expected']} pairs; p50 ms: engine "
        f"{_fmt(ms['engine'].get('p50'))}, node overhead {_fmt(ms['node_overhead'].get('p50'))}, "
        f"end to end {_fmt(ms['end_to_end'].get('p50'))}")
    log(f'wrote {json_path} and {md_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
