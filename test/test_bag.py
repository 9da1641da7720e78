"""Tests of the bag tools: ``sfdfuse bag fuse`` (offline, rosbags) and ``sfdfuse bag play``.

Bags are written here with ``rosbags`` directly: a thermal camera (``mono16``, 14-bit, 9 Hz,
smaller than the RGB image) and an RGB camera (``rgb8`` or ``bgr8``, 30 Hz) for two seconds,
plus one thermal message with an unknown encoding and one truncated RGB message, so every
counter of the report has something to count.
"""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from bagutil import header_message, IMAGE, image_message, TS
from sfdfuse_core import cli
from sfdfuse_core.bag import BagError, BagOutputExistsError, BagTopicError, fuse_bag, pair_stamps
from sfdfuse_core.fusion import Fuser
from sfdfuse_core.imgmsg import image_msg_to_array
from sfdfuse_core.scene import SceneError, frames_from_folders, make_scene, write_scene_bag

T0 = 1_700_000_000_000_000_000
THERMAL_HW = (12, 16)
RGB_HW = (24, 32)
N_THERMAL = 18   # 9 Hz for 2 s
N_RGB = 60       # 30 Hz for 2 s


def thermal_stamps() -> list:
    return [T0 + 13_000_000 + k * 1_000_000_000 // 9 for k in range(N_THERMAL)]


def rgb_stamps() -> list:
    return [T0 + i * 1_000_000_000 // 30 for i in range(N_RGB)]


def write_test_bag(path: Path, storage: str = 'mcap', rgb_encoding: str = 'bgr8') -> dict:
    """Write the two-camera bag described in the module docstring; return what was written."""
    writer = Writer(path, version=9, storage_plugin={'mcap': StoragePlugin.MCAP,
                                                     'sqlite3': StoragePlugin.SQLITE3}[storage])
    writer.open()
    c_th = writer.add_connection('/thermal/image', IMAGE, typestore=TS)
    c_rgb = writer.add_connection('/rgb/image', IMAGE, typestore=TS)
    c_info = writer.add_connection('/rgb/camera_info', 'sensor_msgs/msg/CameraInfo',
                                   typestore=TS)
    rng = np.random.default_rng(0)
    msgs = []
    for k, stamp in enumerate(thermal_stamps()):
        arr = (rng.integers(6000, 9000, THERMAL_HW) + 200 * k).astype(np.uint16)
        msgs.append((stamp + 5_000_000, c_th,
                     TS.serialize_cdr(image_message(stamp, 'thermal', arr, 'mono16'), IMAGE)))
    for i, stamp in enumerate(rgb_stamps()):
        arr = rng.integers(0, 256, RGB_HW + (3,), dtype=np.uint8)
        msgs.append((stamp + 2_000_000, c_rgb,
                     TS.serialize_cdr(image_message(stamp, 'rgb', arr, rgb_encoding), IMAGE)))
    # Bad thermal: an encoding nobody knows. Bad RGB: CDR cut in the middle of the pixels.
    odd = image_message(T0 + 500_000_000, 'thermal', np.zeros(THERMAL_HW, np.uint16), 'mono16')
    odd.encoding = 'yuv9000'
    msgs.append((T0 + 505_000_000, c_th, TS.serialize_cdr(odd, IMAGE)))
    cut = TS.serialize_cdr(image_message(T0 + 1_002_000_000, 'rgb',
                                         np.zeros(RGB_HW + (3,), np.uint8), rgb_encoding), IMAGE)
    msgs.append((T0 + 1_004_000_000, c_rgb, bytes(cut[:len(cut) // 2])))
    info = TS.types['sensor_msgs/msg/CameraInfo']
    cam = info(header=header_message(T0, 'rgb'), height=RGB_HW[0], width=RGB_HW[1],
               distortion_model='plumb_bob', d=np.zeros(5), k=np.eye(3).ravel(),
               r=np.eye(3).ravel(), p=np.zeros(12), binning_x=0, binning_y=0,
               roi=TS.types['sensor_msgs/msg/RegionOfInterest'](
                   x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    msgs.append((T0 + 1_000, c_info, TS.serialize_cdr(cam, 'sensor_msgs/msg/CameraInfo')))
    msgs.sort(key=lambda m: m[0])
    for bag_t, conn, raw in msgs:
        writer.write(conn, bag_t, raw)
    writer.close()
    return {'thermal': N_THERMAL + 1, 'rgb': N_RGB + 1}


def expected_rgb_stamps() -> list:
    """The RGB stamp nearest to every thermal stamp (each within 17 ms, inside the slop)."""
    rgb = np.array(rgb_stamps())
    return sorted(int(rgb[np.argmin(np.abs(rgb - t))]) for t in thermal_stamps())


def read_topic(path: Path, topic: str) -> list:
    with Reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, c.msgtype, raw) for c, t, raw in reader.messages(connections=conns)]


@pytest.fixture(scope='module')
def mean_fuser() -> Fuser:
    return Fuser(method='mean', device='cpu')


@pytest.mark.parametrize('storage,rgb_encoding', [('mcap', 'rgb8'), ('sqlite3', 'bgr8')])
def test_fuse_bag_pairs_counts_and_output(tmp_path, mean_fuser, storage, rgb_encoding):
    bag = tmp_path / 'in'
    written = write_test_bag(bag, storage, rgb_encoding)
    out = tmp_path / 'out'
    report = fuse_bag(bag, out, thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                      fuser=mean_fuser, storage=storage)
    assert report.read == {'/thermal/image': written['thermal'], '/rgb/image': written['rgb']}
    assert report.declared == report.read  # an intact bag: everything its index declares
    assert report.unreadable == {'/thermal/image': 0, '/rgb/image': 0} and report.complete
    assert report.pairs == N_THERMAL
    assert report.fused == N_THERMAL
    assert report.bad == {'thermal: bad image': 1, 'rgb: cannot deserialise': 1}
    assert sum(report.dropped.values()) == N_RGB - N_THERMAL
    assert all(k.startswith('rgb: ') for k in report.dropped)
    assert report.balanced
    summary = report.summary()
    assert 'pairs found: 18' in summary and 'bad, rgb: cannot deserialise: 1' in summary

    with Reader(out) as reader:
        assert reader.topics.keys() == {'/fused/image'}
        assert reader.connections[0].msgtype == IMAGE
    fused = read_topic(out, '/fused/image')
    assert len(fused) == report.fused
    msgs = [TS.deserialize_cdr(raw, IMAGE) for _, _, raw in fused]
    stamps = sorted(m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec for m in msgs)
    assert stamps == expected_rgb_stamps()
    for m in msgs:
        assert m.header.frame_id == 'rgb'
        assert (m.height, m.width, m.encoding) == (RGB_HW[0], RGB_HW[1], 'bgr8')
        img = image_msg_to_array(m)
        assert img.shape == RGB_HW + (3,) and img.dtype == np.uint8
    storage_files = list(out.glob('*.mcap' if storage == 'mcap' else '*.db3'))
    assert len(storage_files) == 1
    assert not list(tmp_path.glob('.out.partial*'))


def test_fuse_bag_sync_policy_pairs_as_the_node_would(tmp_path, mean_fuser):
    """sync_policy='greedy' gives pair_stamps' greedy pairs; a bad policy writes nothing."""
    bag = tmp_path / 'in'
    write_test_bag(bag, 'mcap', 'rgb8')
    with pytest.raises(BagError, match='policy must be one of'):
        fuse_bag(bag, tmp_path / 'bad', thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                 fuser=mean_fuser, sync_policy='fastest')
    assert not (tmp_path / 'bad').exists() and not list(tmp_path.glob('.bad*'))
    out = tmp_path / 'greedy'
    report = fuse_bag(bag, out, thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                      fuser=mean_fuser, sync_policy='greedy')
    msgs = [TS.deserialize_cdr(raw, IMAGE) for _, _, raw in read_topic(out, '/fused/image')]
    stamps = sorted(m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec for m in msgs)
    greedy = sorted(rgb for _, _, rgb in pair_stamps(thermal_stamps(), rgb_stamps(),
                                                     policy='greedy'))
    assert report.fused == len(greedy) and stamps == greedy


def test_fuse_bag_include_inputs_copies_raw_bytes_and_reads_single_file(tmp_path, mean_fuser):
    bag = tmp_path / 'in'
    write_test_bag(bag)
    out = tmp_path / 'out'
    single_file = next(bag.glob('*.mcap'))
    report = fuse_bag(single_file, out, thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                      fuser=mean_fuser, include_inputs=True, output_encoding='mono8')
    assert report.copied == {'/thermal/image': N_THERMAL + 1, '/rgb/image': N_RGB + 1}
    assert report.declared == report.read == report.copied and report.complete  # no metadata
    for topic in ('/thermal/image', '/rgb/image'):
        assert read_topic(out, topic) == read_topic(bag, topic)
    fused = [TS.deserialize_cdr(raw, IMAGE) for _, _, raw in read_topic(out, '/fused/image')]
    assert {m.encoding for m in fused} == {'mono8'}


def test_existing_output_refused_without_force(tmp_path, mean_fuser, capsys):
    bag = tmp_path / 'in'
    write_test_bag(bag)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    with pytest.raises(BagOutputExistsError):
        fuse_bag(bag, out, thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                 fuser=mean_fuser)
    args = ['bag', 'fuse', str(bag), str(out), '--thermal-topic', '/thermal/image',
            '--rgb-topic', '/rgb/image', '--method', 'mean', '--device', 'cpu', '--no-progress']
    assert cli.main(args) == 2
    assert 'output exists' in capsys.readouterr().err
    assert (out / 'keep.txt').read_text() == 'precious'
    assert cli.main(args + ['--force', '--format', 'sqlite3']) == 0
    printed = capsys.readouterr().out
    assert 'fused: 18' in printed
    assert not (out / 'keep.txt').exists()
    assert len(read_topic(out, '/fused/image')) == N_THERMAL


def test_missing_topic_and_wrong_type_list_the_topics(tmp_path, mean_fuser, capsys):
    bag = tmp_path / 'in'
    write_test_bag(bag)
    with pytest.raises(BagTopicError) as info:
        fuse_bag(bag, tmp_path / 'o1', thermal_topic='/ir', rgb_topic='/rgb/image',
                 fuser=mean_fuser)
    text = str(info.value)
    assert "'/ir' not in the bag" in text
    assert '/thermal/image (sensor_msgs/msg/Image, 19 msgs)' in text
    assert '/rgb/camera_info (sensor_msgs/msg/CameraInfo, 1 msgs)' in text
    with pytest.raises(BagTopicError, match='CameraInfo'):
        fuse_bag(bag, tmp_path / 'o2', thermal_topic='/thermal/image',
                 rgb_topic='/rgb/camera_info', fuser=mean_fuser)
    assert cli.main(['bag', 'fuse', str(bag), str(tmp_path / 'o3'), '--thermal-topic', '/x',
                     '--rgb-topic', '/rgb/image', '--method', 'mean', '--no-progress']) == 2
    assert '/thermal/image (sensor_msgs/msg/Image' in capsys.readouterr().err
    with pytest.raises(BagError, match='not found'):
        fuse_bag(tmp_path / 'nope', tmp_path / 'o4', thermal_topic='/a', rgb_topic='/b',
                 fuser=mean_fuser)
    assert not any(p.name.startswith(('o1', 'o2', 'o3', 'o4', '.o')) for p in tmp_path.iterdir())


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path):
    bag = tmp_path / 'in'
    write_test_bag(bag)
    calls = []

    def fuser(vi, ir):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return vi

    with pytest.raises(KeyboardInterrupt):
        fuse_bag(bag, tmp_path / 'out', thermal_topic='/thermal/image', rgb_topic='/rgb/image',
                 fuser=fuser)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']


def test_failed_fusion_counts_both_messages_as_bad(tmp_path):
    bag = tmp_path / 'in'
    write_test_bag(bag)
    calls = []

    def fuser(vi, ir):
        calls.append(1)
        if len(calls) % 6 == 0:
            raise ValueError('test failure')
        return vi

    report = fuse_bag(bag, tmp_path / 'out', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=fuser)
    assert report.pairs == N_THERMAL
    assert report.bad['pair: fusion failed'] == 2 * (N_THERMAL // 6)
    assert report.fused == N_THERMAL - N_THERMAL // 6
    assert report.balanced
    assert any('test failure' in e for e in report.bad_examples)


def test_fuse_bag_compressed_rgb(tmp_path, mean_fuser):
    from sfdfuse_core.imgmsg import encode_compressed

    writer = Writer(tmp_path / 'in', version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    c_th = writer.add_connection('/ir', IMAGE, typestore=TS)
    c_rgb = writer.add_connection('/rgb/compressed', 'sensor_msgs/msg/CompressedImage',
                                  typestore=TS)
    compressed = TS.types['sensor_msgs/msg/CompressedImage']
    for k, stamp in enumerate(thermal_stamps()[:6]):
        ir = np.full(THERMAL_HW, 7000 + 100 * k, np.uint16)
        writer.write(c_th, stamp,
                     TS.serialize_cdr(image_message(stamp, 'ir', ir, 'mono16'), IMAGE))
    for stamp in rgb_stamps()[:18]:
        fmt, data = encode_compressed(np.full(RGB_HW + (3,), 90, np.uint8), 'png')
        msg = compressed(header=header_message(stamp, 'cam'), format=fmt,
                         data=np.frombuffer(data, np.uint8))
        writer.write(c_rgb, stamp, TS.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
    writer.close()
    report = fuse_bag(tmp_path / 'in', tmp_path / 'out', thermal_topic='/ir',
                      rgb_topic='/rgb/compressed', fuser=mean_fuser)
    assert report.fused == 6 and report.balanced and not report.bad
    fused = read_topic(tmp_path / 'out', '/fused/image')
    msgs = [TS.deserialize_cdr(raw, IMAGE) for _, _, raw in fused]
    assert {(m.header.frame_id, m.width, m.height) for m in msgs} == {('cam', 32, 24)}


# --- the generated scene ------------------------------------------------------------------------

def test_make_scene_shapes_determinism_and_motion():
    frames = list(make_scene(4, (64, 48), seed=3))
    again = list(make_scene(4, (64, 48), seed=3))
    th, rgb = frames[0]
    assert th.shape == (24, 32) and th.dtype == np.uint16 and th.max() < 2 ** 14
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(frames, again))
    assert not np.array_equal(frames[0][1], frames[3][1])
    assert int(th.max()) - int(th.min()) > 2000  # warm objects stand out
    with pytest.raises(SceneError, match='got'):
        next(make_scene(2, (8, 8)))


def test_frames_from_folders_pans_pairs(tmp_path):
    import cv2
    (tmp_path / 'ir').mkdir()
    (tmp_path / 'vi').mkdir()
    for name in ('a.png', 'b.png'):
        cv2.imwrite(str(tmp_path / 'ir' / name), np.random.default_rng(1).integers(
            0, 255, (40, 60), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / 'vi' / name), np.random.default_rng(2).integers(
            0, 255, (40, 60, 3), dtype=np.uint8))
    frames = list(frames_from_folders(tmp_path / 'ir', tmp_path / 'vi', 7, (32, 24)))
    assert len(frames) == 7
    assert all(ir.shape == (24, 32) and vi.shape == (24, 32, 3) for ir, vi in frames)
    assert not np.array_equal(frames[0][1], frames[2][1])
    with pytest.raises(SceneError, match='no image pairs'):
        list(frames_from_folders(tmp_path / 'ir', tmp_path, 3))


def test_write_scene_bag_rates_and_fuses(tmp_path, mean_fuser):
    info = write_scene_bag(tmp_path / 'scene', make_scene(30, (64, 48)), storage='sqlite3')
    assert len(info.rgb) == 30 and info.camera_info == 30
    assert len(info.thermal) == 9
    dt = np.diff([s for _, s, _ in info.thermal]) / 1e9
    assert np.allclose(dt, 1 / 9, atol=0.01)
    report = fuse_bag(tmp_path / 'scene', tmp_path / 'fused', thermal_topic='/thermal/image',
                      rgb_topic='/rgb/image', fuser=mean_fuser)
    assert report.fused == 9 and report.balanced and not report.bad


# --- bag play (rclpy) ---------------------------------------------------------------------------

@pytest.fixture
def ros_env():
    pytest.importorskip('rclpy')
    from rosutil import ros_test_env
    return ros_test_env()


@pytest.mark.ros
def test_bag_play_round_trip_order_timing_and_clock(tmp_path, ros_env):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock
    from rosutil import FixtureNode, stop_process
    from sensor_msgs.msg import Image

    bag = tmp_path / 'in'
    write_test_bag(bag)
    expected = [raw for _, _, raw in read_topic(bag, '/rgb/image')]
    expected_th = [raw for _, _, raw in read_topic(bag, '/thermal/image')]
    rate = 2.0
    with FixtureNode('bag_play_test') as fx:
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        received, arrival = [], []

        def on_rgb(msg):
            received.append(msg)
            arrival.append(time.monotonic())

        fx.node.create_subscription(Image, '/rgb/image', on_rgb, qos)
        thermal = fx.collect(Image, '/thermal/image', qos)
        clock = fx.collect(Clock, '/clock', qos)
        log = open(tmp_path / 'play.log', 'wb')
        proc = subprocess.Popen(
            [sys.executable, '-m', 'sfdfuse_core', 'bag', 'play', str(bag), '--rate', str(rate),
             '--clock', '--wait-for-subscribers', '20', '--topics', '/rgb/image',
             '/thermal/image'], env=ros_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert proc.wait(timeout=40) == 0, (tmp_path / 'play.log').read_text()
            assert fx.wait_for(lambda: len(received) >= N_RGB, timeout=5)
        finally:
            stop_process(proc)
            log.close()
    # The truncated message does not deserialise: the player skips (and counts) it; every other
    # message arrives, in order, byte for byte.
    good = [raw for raw in expected if not _truncated(raw)]
    assert len(good) == N_RGB
    assert 'not published' in (tmp_path / 'play.log').read_text()
    # (Compared field by field: rclpy leaves CDR padding bytes uninitialised when serialising.)
    assert received == [deserialize_message(raw, Image) for raw in good]
    assert thermal == [deserialize_message(raw, Image) for raw in expected_th]
    span = arrival[-1] - arrival[0]
    bag_span = (rgb_stamps()[-1] - rgb_stamps()[0]) / 1e9
    assert bag_span / rate * 0.8 < span < bag_span / rate + 1.0
    assert len(clock) > 10
    clock_ns = [c.clock.sec * 10 ** 9 + c.clock.nanosec for c in clock]
    assert T0 <= clock_ns[0] and clock_ns[-1] <= T0 + 2 * 10 ** 9


def _truncated(raw: bytes) -> bool:
    try:
        TS.deserialize_cdr(raw, IMAGE)
    except Exception:
        return True
    return False


@pytest.mark.ros
def test_bag_play_loop_replays_with_time_going_back(tmp_path, ros_env):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosutil import FixtureNode
    from sensor_msgs.msg import Image

    from sfdfuse_ros.bag_play import BagPlayer, PlayError

    bag = tmp_path / 'scene'
    n = len(write_scene_bag(bag, make_scene(9, (32, 24))).thermal)
    with FixtureNode('bag_loop_test') as fx:
        got = fx.collect(Image, '/thermal/image',  # best effort: matches sensor_data
                         QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
        player = BagPlayer(bag, topics=['/thermal/image'], qos='sensor_data',
                           context=fx.context)
        try:
            assert player.wait_for_subscribers(20.0)
            report = player.play(rate=4.0, loop=True, max_loops=3)
            assert report.loops == 3 and report.published == {'/thermal/image': 3 * n}
            assert fx.wait_for(lambda: len(got) >= 3 * n, timeout=5)
        finally:
            player.destroy_node()
        with pytest.raises(PlayError, match='/nope'):
            BagPlayer(bag, topics=['/nope'], context=fx.context)
    stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec for m in got]
    backwards = sum(1 for a, b in zip(stamps, stamps[1:]) if b < a)
    assert len(got) == 3 * n
    assert backwards == 2


@pytest.mark.ros
def test_bag_play_main_reports_bad_requests(tmp_path, ros_env, capsys):
    from sfdfuse_ros.bag_play import main

    assert main([str(tmp_path / 'missing')]) == 2
    assert 'bag not found' in capsys.readouterr().err
    bag = tmp_path / 'in'
    write_test_bag(bag)
    assert main([str(bag), '--topics', '/nope', '--ros-args', '-r', '__node:=player']) == 2
    assert '/thermal/image (sensor_msgs/msg/Image, 19 msgs)' in capsys.readouterr().err
    assert main([str(bag), '--rate', '0']) == 2
