"""Reliability of ``sfdfuse bag fuse`` on damaged bags and when killed mid-way.

* truncated ``.mcap`` / ``.db3`` (a recorder that died): every message of the intact prefix is
  fused, the output written, and the report and the CLI say that the input was truncated and
  where reading stopped; the accounting stays exact (the messages ``metadata.yaml`` declares
  beyond the cut are unreadable); also an ``.mcap`` laid out as ``ros2 bag record`` writes it
  (schemas and channels before zstd chunks), cut inside a chunk;
* bytes zeroed at seeded offsets of ``.mcap`` / ``.db3``: the tool either refuses with a
  :class:`BagError` or writes a complete, readable output bag; never another exception, never a
  left-over temporary folder;
* a topic missing, a topic of the wrong type (``.db3``): exit status 2, the bag's topics listed;
* ``kill -9`` mid-way: the output path does not exist (only a hidden ``.NAME.partial-*`` folder
  remains, which no reader takes for a bag), the next run removes the folders of dead runs
  (never one of a run still going), and a re-run writes the complete bag.

* a damaged ``.mcap`` chunk that the reader skips silently: the messages the bag's index
  declares but the reader never yields are reported as unreadable (``read + unreadable ==
  declared`` per topic), in the report and in the CLI's output.
"""
from __future__ import annotations

from contextlib import closing
import os
from pathlib import Path
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from sfdfuse_core.bag import (BagError, fuse_bag, open_reader, PARTIAL_MARKER,
                              remove_stale_partials)
from sfdfuse_core.bagsalvage import SalvageReader
from sfdfuse_core.fusion import Fuser
from sfdfuse_core.scene import make_scene, write_scene_bag

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts' / 'reliability'))
import report  # noqa: E402  (scripts/reliability/report.py: records figures for the doc)

STORAGES = {'mcap': '.mcap', 'sqlite3': '.db3'}
TOPICS = ['--thermal-topic', '/thermal/image', '--rgb-topic', '/rgb/image']
#: Offsets (fractions of the file) zeroed in the corruption test; more with RELIABILITY_BAG_CUTS.
N_CUTS = int(os.environ.get('RELIABILITY_BAG_CUTS', '12'))


@pytest.fixture(scope='module')
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('rel_bags')
    out = {}
    for storage in STORAGES:
        out[storage] = folder / f'scene_{storage}'
        write_scene_bag(out[storage], make_scene(60, (64, 48)), storage=storage)
    return out


@pytest.fixture(scope='module')
def fuser() -> Fuser:
    return Fuser(method='mean', device='cpu')


def _bag_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in STORAGES.values())


def _damaged_copy(bag: Path, dest: Path, offset_frac: float, length: int = 64,
                  truncate: bool = False) -> Path:
    shutil.copytree(bag, dest)
    path = _bag_file(dest)
    raw = bytearray(path.read_bytes())
    offset = int(len(raw) * offset_frac)
    if truncate:
        del raw[offset:]
    else:
        raw[offset:offset + length] = bytes(min(length, len(raw) - offset))
    path.write_bytes(bytes(raw))
    return dest


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sfdfuse_core', 'bag', 'fuse', *args,
                           '--method', 'mean', '--device', 'cpu', '--no-progress'],
                          capture_output=True, text=True, timeout=120)


def _no_partials(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if '.partial-' in p.name]


def _messages(bag: Path) -> list[tuple[str, int]]:
    """Return ``(topic, bag_time)`` of every message of an intact bag, in time order."""
    with Reader(bag) as reader:
        return [(c.topic, t) for c, t, _ in reader.messages()]


@pytest.mark.parametrize('storage', list(STORAGES))
def test_truncated_bag_fuses_its_intact_prefix(bags: dict, fuser: Fuser, tmp_path: Path,
                                               storage: str) -> None:
    """A recorder killed mid-write: the prefix is fused, the cut said, every message counted."""
    full = fuse_bag(bags[storage], tmp_path / 'full', thermal_topic='/thermal/image',
                    rgb_topic='/rgb/image', fuser=fuser)
    cut = _damaged_copy(bags[storage], tmp_path / 'cut', 0.6, truncate=True)
    proc = _cli(str(cut), str(tmp_path / 'out'), *TOPICS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Traceback' not in proc.stderr
    assert 'INPUT TRUNCATED' in proc.stdout and 'reading stopped' in proc.stdout, proc.stdout
    assert _bag_file(cut).name in proc.stdout
    assert 'WARNING: the input was truncated' in proc.stderr, proc.stderr
    assert not _no_partials(tmp_path)
    result = fuse_bag(cut, tmp_path / 'api', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    assert result.was_truncated and len(result.truncated) == 1, result.summary()
    assert result.cut_short and result.input_problem().startswith('the input was truncated')
    assert result.balanced and result.declared == full.read, result.summary()
    for topic, n in result.declared.items():  # read + unreadable == declared, per topic
        assert result.read[topic] + result.unreadable[topic] == n
    # the intact prefix: every message up to the last one read, none after
    with closing(SalvageReader(cut)) as salvage:
        last = salvage.truncations[0].last_bag_time
    prefix = [m for m in _messages(bags[storage]) if m[1] <= last]
    for topic in ('/thermal/image', '/rgb/image'):
        assert result.read[topic] == sum(1 for t, _ in prefix if t == topic), result.summary()
    assert 0.4 * full.fused <= result.fused <= full.fused
    with Reader(tmp_path / 'out') as reader:
        assert reader.message_count == result.fused
        stamps = [t for _, t, _ in reader.messages()]
    with Reader(tmp_path / 'full') as reader:
        full_stamps = {t for _, t, _ in reader.messages()}
    # the same pairs as the complete bag, except at the cut (the last pair lost its partner)
    assert len(set(stamps) - full_stamps) <= 1
    report.record('bags', test=f'truncated .{STORAGES[storage][1:]} (60 % kept)',
                  exit_status=proc.returncode, fused=result.fused, fused_complete_bag=full.fused,
                  read=sum(result.read.values()), unreadable=sum(result.unreadable.values()),
                  stopped=result.truncated[0].replace(str(tmp_path), '<tmp>')[:160])


@pytest.mark.parametrize('storage', list(STORAGES))
def test_truncated_storage_file_without_metadata(bags: dict, fuser: Fuser, tmp_path: Path,
                                                 storage: str) -> None:
    """The storage file alone (a recorder that never wrote metadata.yaml), cut at 30 %."""
    cut = _damaged_copy(bags[storage], tmp_path / 'cut', 0.3, truncate=True)
    (cut / 'metadata.yaml').unlink()
    result = fuse_bag(cut, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    # nothing declares more than what was read: nothing known to be lost, the cut still said
    assert result.was_truncated and result.complete and result.balanced, result.summary()
    assert result.fused > 0 and 'INPUT TRUNCATED' in result.summary()


def _write_mcap_as_ros2_bag_record(src: Path, dest: Path, per_chunk: int) -> int:
    """Rewrite a bag as ``ros2 bag record`` lays an ``.mcap`` out; return the message count.

    Header, then every schema and channel record, then zstd-compressed chunks of ``per_chunk``
    messages (with their CRC), each followed by its message index, then a data-end record and a
    footer without summary (the layout of the MCAP specification, mcap.dev/spec).
    """
    from backports import zstd

    def record(op: int, body: bytes) -> bytes:
        return bytes([op]) + struct.pack('<Q', len(body)) + body

    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack('<I', len(raw)) + raw

    out = bytearray(b'\x89MCAP0\r\n') + record(1, string('ros2') + string('test'))
    with Reader(src) as reader:
        conns = list(reader.connections)
        for k, c in enumerate(conns, 1):
            out += record(3, struct.pack('<H', k) + string(c.msgtype) + string('ros2msg')
                          + string(c.msgdef.data))
            out += record(4, struct.pack('<HH', c.id, k) + string(c.topic) + string('cdr')
                          + struct.pack('<I', 0))
        msgs = list(reader.messages())
    for start in range(0, len(msgs), per_chunk):
        group = msgs[start:start + per_chunk]
        raw = b''.join(record(5, struct.pack('<HIQQ', c.id, 0, t, t) + data)
                       for c, t, data in group)
        packed = zstd.compress(raw)
        body = struct.pack('<QQQI', group[0][1], group[-1][1], len(raw), zlib.crc32(raw))
        body += string('zstd') + struct.pack('<Q', len(packed)) + packed
        out += record(6, body)
    out += record(0x0F, struct.pack('<I', 0))
    out += record(2, struct.pack('<QQI', 0, 0, 0)) + b'\x89MCAP0\r\n'
    dest.write_bytes(bytes(out))
    return len(msgs)


def test_truncated_mcap_as_ros2_bag_record_writes_it(bags: dict, fuser: Fuser,
                                                     tmp_path: Path) -> None:
    """Channels before the chunks, zstd chunks of 10 messages; cut inside the 7th chunk."""
    whole = tmp_path / 'rec.mcap'
    total = _write_mcap_as_ros2_bag_record(bags['mcap'], whole, per_chunk=10)
    with Reader(whole) as reader:  # the file is a valid MCAP (rosbags scans it)
        assert reader.message_count == total
    with closing(SalvageReader(whole)) as salvage:  # the salvage reader reads it all too
        assert sum(1 for _ in salvage.messages()) == total and not salvage.truncations
    raw = whole.read_bytes()
    cut = tmp_path / 'cut.mcap'
    # cut 40 % of the way into the 7th chunk's compressed data
    seventh = _chunk_offsets(raw)[6]
    end = seventh[0] + int(0.4 * (seventh[1] - seventh[0]))
    cut.write_bytes(raw[:end])
    with pytest.raises(BagError, match='end magic'):
        open_reader(cut)
    with closing(SalvageReader(cut)) as salvage:
        got = sum(1 for _ in salvage.messages())
        (trunc,) = salvage.truncations
    assert 60 <= got < 70 and trunc.messages == got, trunc.describe()
    assert f'the chunk at byte {seventh[0]}' in trunc.describe()
    result = fuse_bag(cut, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    assert result.was_truncated and result.balanced and result.fused > 0, result.summary()
    assert sum(result.read.values()) == sum(1 for c in _messages(bags['mcap'])[:got]
                                            if c[0].endswith('/image'))


def test_damage_inside_an_mcap_without_its_end_is_said_as_damage(
        bags: dict, fuser: Fuser, tmp_path: Path) -> None:
    """Zeroed bytes at a record boundary (no MCAP record there), the end missing too."""
    whole = tmp_path / 'rec.mcap'
    _write_mcap_as_ros2_bag_record(bags['mcap'], whole, per_chunk=10)
    raw = bytearray(whole.read_bytes())
    third = _chunk_offsets(bytes(raw))[2][0]
    raw[third:third + 64] = bytes(64)
    damaged = tmp_path / 'damaged.mcap'
    damaged.write_bytes(bytes(raw[:-100]))
    result = fuse_bag(damaged, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    assert result.was_truncated and not result.cut_short, result.summary()
    assert f'stopped at byte {third}' in result.truncated[0] and 'damaged' in result.truncated[0]
    assert 'INPUT DAMAGED' in result.summary() and result.balanced
    assert sum(result.read.values()) == sum(  # the first two chunks, 20 messages
        1 for topic, _ in _messages(bags['mcap'])[:20] if topic.endswith('/image'))


def _chunk_offsets(raw: bytes) -> list[tuple[int, int]]:
    """Return ``(start, end)`` of every top-level chunk record of an MCAP file."""
    pos, out = 8, []
    while pos + 9 <= len(raw):
        op = raw[pos]
        (length,) = struct.unpack_from('<Q', raw, pos + 1)
        if op == 6:
            out.append((pos, pos + 9 + length))
        if op == 2:
            break
        pos += 9 + length
    return out


@pytest.mark.parametrize('storage', list(STORAGES))
def test_zeroed_bytes_give_a_complete_output_or_a_bag_error(bags: dict, fuser: Fuser,
                                                            tmp_path: Path, storage: str) -> None:
    outcomes = {'fused': 0, 'refused': 0}
    refusals = []
    for k in range(N_CUTS):
        frac = (k + 0.5) / N_CUTS
        bag = _damaged_copy(bags[storage], tmp_path / f'in{k}', frac)
        out = tmp_path / f'out{k}'
        try:
            result = fuse_bag(bag, out, thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                              fuser=fuser)
        except BagError as exc:
            assert str(bag) in str(exc)
            assert not out.exists()
            outcomes['refused'] += 1
            refusals.append(str(exc).replace(str(tmp_path), '<tmp>')[:160])
            continue
        assert result.balanced, result.summary()
        with Reader(out) as reader:  # complete and readable
            assert reader.message_count == result.fused
        outcomes['fused'] += 1
    assert not _no_partials(tmp_path)
    report.record('bags', test=f'64 zeroed bytes at {N_CUTS} offsets of a {storage} bag',
                  **outcomes, refusals=refusals)
    assert outcomes['fused'] >= N_CUTS // 2, outcomes


def test_vanished_messages_are_reported_as_unreadable(bags: dict, fuser: Fuser,
                                                      tmp_path: Path) -> None:
    """Regression: a damaged .mcap chunk made messages vanish, and the report said nothing."""
    bag = _damaged_copy(bags['mcap'], tmp_path / 'in', 16 / 40)
    with Reader(bag) as reader:
        per_topic = {c.topic: c.msgcount for c in reader.connections
                     if c.topic.endswith('/image')}
    indexed = sum(per_topic.values())
    result = fuse_bag(bag, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    summary = result.summary()
    assert sum(result.read.values()) + sum(result.bad.values()) >= indexed, summary
    assert result.declared == per_topic, summary
    for topic, n in per_topic.items():
        assert result.read[topic] + result.unreadable[topic] == n, summary
    lost = sum(result.unreadable.values())
    assert lost > 0 and not result.complete and result.balanced, summary
    assert sum(v for k, v in result.bad.items() if k.endswith(': unreadable')) == lost
    assert f'{lost} UNREADABLE (damaged bag)' in summary and f'= {indexed} of {indexed}' in summary
    proc = _cli(str(bag), str(tmp_path / 'out_cli'), *TOPICS)
    assert proc.returncode == 0, proc.stderr  # the readable part is fused ...
    assert f'{lost} UNREADABLE' in proc.stdout, proc.stdout  # ... and the loss is said clearly
    assert f'WARNING: the bag is damaged: {lost} messages' in proc.stderr, proc.stderr
    report.record('bags', test='64 zeroed bytes inside a .mcap chunk (silently skipped)',
                  declared=indexed, read=sum(result.read.values()), unreadable=lost,
                  fused=result.fused)


def test_truncated_mcap_prefix_is_recovered(bags: dict, fuser: Fuser, tmp_path: Path) -> None:
    """Formerly a strict xfail: a truncated .mcap was refused although its start was intact."""
    bag = _damaged_copy(bags['mcap'], tmp_path / 'in', 0.6, truncate=True)
    result = fuse_bag(bag, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    assert result.fused > 0 and result.was_truncated and result.balanced


def test_missing_topic_and_wrong_type_in_a_db3(bags: dict, tmp_path: Path) -> None:
    bag = str(_bag_file(bags['sqlite3']))  # the single .db3 file, without metadata.yaml
    proc = _cli(bag, str(tmp_path / 'o1'), '--thermal-topic', '/ir/image', '--rgb-topic',
                '/rgb/image')
    assert proc.returncode == 2 and "'/ir/image' not in the bag" in proc.stderr, proc.stderr
    assert '/thermal/image (sensor_msgs/msg/Image' in proc.stderr
    proc = _cli(bag, str(tmp_path / 'o2'), '--thermal-topic', '/thermal/image', '--rgb-topic',
                '/rgb/camera_info')
    assert proc.returncode == 2 and 'CameraInfo' in proc.stderr, proc.stderr
    assert not (tmp_path / 'o1').exists() and not (tmp_path / 'o2').exists()


def test_kill_9_mid_way_leaves_no_output_that_looks_complete(tmp_path: Path) -> None:
    from sfdfuse_core.config import SFDFuseConfig
    from sfdfuse_core.model import build_model
    from sfdfuse_core.weights import save_weights
    bag = tmp_path / 'big'
    write_scene_bag(bag, make_scene(240, (320, 256)))
    tiny = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1,
                         encoder_convformer_blocks=1, decoder_restormer_blocks=1,
                         decoder_convformer_blocks=1, detail_nodes=1, cga_reduction=4,
                         head_channels=4)
    weights = save_weights(build_model(tiny), tmp_path / '.w.safetensors', tiny)
    out = tmp_path / 'out'
    rng = random.Random(int(os.environ.get('RELIABILITY_SEED', '5')))
    kills: list[int] = []
    for trial in range(2):
        proc = subprocess.Popen(
            [sys.executable, '-m', 'sfdfuse_core', 'bag', 'fuse', str(bag), str(out), *TOPICS,
             '--method', 'sfdfuse', '--weights', str(weights), '--device', 'cpu',
             '--no-progress', '--include-inputs'],  # the network: slow enough to kill
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not _no_partials(tmp_path) and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(10)
        assert proc.returncode == -signal.SIGKILL, 'the run ended before the kill'
        assert not out.exists(), 'a killed run left the output path'
        left = _no_partials(tmp_path)
        assert all(p.startswith('.') for p in left)
        # the run removed what the killed run before it left: one unfinished folder at most
        assert len(left) == 1, left
        partial = tmp_path / left[0]
        assert (partial / PARTIAL_MARKER).is_file()
        with pytest.raises(BagError, match='unfinished output'):  # never taken for a bag
            open_reader(partial / 'out')
        kills.append(len(left))
    proc = _cli(str(bag), str(out), *TOPICS)
    assert proc.returncode == 0, proc.stderr
    assert 'removed the unfinished output of an interrupted run' in proc.stdout, proc.stdout
    assert not _no_partials(tmp_path)
    with Reader(out) as reader:
        fused = [c for c in reader.connections if c.topic == '/fused/image']
        assert fused and fused[0].msgcount == 72  # 240 RGB frames at 30 Hz, thermal 9 Hz
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir() if not
                                   p.name.startswith('.')), ['big', 'out'])
    report.record('bags', test='kill -9 of bag fuse mid-way, twice, then a re-run',
                  killed_runs=len(kills), output_path_after_kill='absent',
                  hidden_partial_folders_after_each_kill=kills,
                  hidden_partial_folders_after_rerun=0, rerun_fused=72)


def test_partial_folders_of_live_runs_stay_and_dead_ones_go(tmp_path: Path) -> None:
    """Only folders of runs that are gone are removed; another live run's folder stays."""
    out = tmp_path / 'out'
    sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                              capture_output=True, text=True, check=True)
        names = {'dead': f'.out.partial-{int(dead.stdout)}-1',
                 'live': f'.out.partial-{sleeper.pid}-2',
                 'other_output': f'.other.partial-{int(dead.stdout)}-3'}
        for name in names.values():
            (tmp_path / name / 'out').mkdir(parents=True)
        assert remove_stale_partials(out) == [names['dead']]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [names['live'], names['other_output']])
        # a marker written by another process that had this PID: the PID was reused
        (tmp_path / names['live'] / PARTIAL_MARKER).write_text(
            '{"pid": %d, "process_start": "1"}' % sleeper.pid)
        assert remove_stale_partials(out) == [names['live']]
    finally:
        sleeper.kill()
        sleeper.wait()
