"""Reliability of ``sfdfuse bag fuse`` on damaged bags and when killed mid-way.

* truncated ``.mcap`` / ``.db3`` (a recorder that died): refused with a message that names the
  file and the damage, exit status 2, nothing written;
* bytes zeroed at seeded offsets of ``.mcap`` / ``.db3``: the tool either refuses with a
  :class:`BagError` or writes a complete, readable output bag; never another exception, never a
  left-over temporary folder;
* a topic missing, a topic of the wrong type (``.db3``): exit status 2, the bag's topics listed;
* ``kill -9`` mid-way: the output path does not exist (only a hidden ``.NAME.partial-*`` folder
  remains), and a re-run writes the complete bag.

* a damaged ``.mcap`` chunk that the reader skips silently: the messages the bag's index
  declares but the reader never yields are reported as unreadable (``read + unreadable ==
  declared`` per topic), in the report and in the CLI's output.

Known gap, pinned with a strict xfail (it fails once fixed, then the xfail must go): a truncated
bag yields nothing although its first chunks are intact.
"""
from __future__ import annotations

import os
from pathlib import Path
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from sfdfuse_core.bag import BagError, fuse_bag
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


@pytest.mark.parametrize('storage', list(STORAGES))
def test_truncated_bag_is_refused_naming_the_file(bags: dict, tmp_path: Path, storage: str
                                                  ) -> None:
    cut = _damaged_copy(bags[storage], tmp_path / 'cut', 0.6, truncate=True)
    proc = _cli(str(cut), str(tmp_path / 'out'), *TOPICS)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f'cannot open bag {cut}' in proc.stderr
    assert ('end magic' in proc.stderr) or ('malformed' in proc.stderr), proc.stderr
    assert not (tmp_path / 'out').exists() and not _no_partials(tmp_path)
    assert 'Traceback' not in proc.stderr
    report.record('bags', test=f'truncated .{STORAGES[storage][1:]} (60 % kept)',
                  exit_status=proc.returncode, message=proc.stderr.strip().replace(
                      str(tmp_path), '<tmp>'))


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


@pytest.mark.xfail(strict=True, raises=BagError,
                   reason='bag.py/rosbags: a truncated .mcap (recorder died) is refused; the '
                   'intact chunks before the cut could be fused')
def test_known_gap_truncated_mcap_prefix_is_recovered(bags: dict, fuser: Fuser, tmp_path: Path
                                                      ) -> None:
    bag = _damaged_copy(bags['mcap'], tmp_path / 'in', 0.6, truncate=True)
    result = fuse_bag(bag, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    assert result.fused > 0


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
        assert all(p.startswith('.') for p in _no_partials(tmp_path))
        kills.append(len(_no_partials(tmp_path)))
    proc = _cli(str(bag), str(out), *TOPICS)
    assert proc.returncode == 0, proc.stderr
    with Reader(out) as reader:
        fused = [c for c in reader.connections if c.topic == '/fused/image']
        assert fused and fused[0].msgcount == 72  # 240 RGB frames at 30 Hz, thermal 9 Hz
    np.testing.assert_equal(sorted(p.name for p in tmp_path.iterdir() if not
                                   p.name.startswith('.')), ['big', 'out'])
    report.record('bags', test='kill -9 of bag fuse mid-way, twice, then a re-run',
                  killed_runs=len(kills), output_path_after_kill='absent',
                  hidden_partial_folders_left=kills[-1], rerun_fused=72)
