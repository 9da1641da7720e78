"""``fuse_node`` with no parameters at all fuses with the shipped compact network over DDS."""
from __future__ import annotations

from pathlib import Path
import signal

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import pytest
from rosutil import FixtureNode, PairPublisher, read_log, ros_test_env, start_node, stop_process
from sensor_msgs.msg import Image

pytestmark = [pytest.mark.ros]

THERMAL_HW = (48, 64)
RGB_HW = (96, 128)
#: Start-up of a node process (imports torch, exports the network to ONNX) on a loaded machine.
START_TIMEOUT = 90.0


def test_node_without_parameters_fuses_with_the_compact_network(tmp_path: Path) -> None:
    """No params file, no overrides: method sfdfuse, the shipped sfdfuse-lite weights, on CPU."""
    env = ros_test_env()
    env['CUDA_VISIBLE_DEVICES'] = ''  # the CPU default, whatever the machine has
    log = tmp_path / 'node.log'
    proc = start_node([], env, log)
    fx = FixtureNode('lite_default_test')
    try:
        fused = fx.collect(Image, 'fused/image')
        diags = fx.collect(DiagnosticArray, '/diagnostics')
        pub = PairPublisher(fx, thermal_hw=THERMAL_HW, rgb_hw=RGB_HW)
        assert pub.wait_matched(START_TIMEOUT), read_log(log)
        pub.run(30.0, until=lambda: len(fused) >= 5 and bool(diags))
        assert len(fused) >= 5, f'{len(fused)} fused images; log:\n{read_log(log)}'
        msg = fused[-1]
        assert (msg.encoding, msg.height, msg.width) == ('bgr8', *RGB_HW)
        image = np.frombuffer(msg.data, np.uint8).reshape(*RGB_HW, 3)
        assert image.std() > 5.0
        text = read_log(log)
        assert 'method=sfdfuse' in text and 'network=sfdfuse-lite' in text, text
        assert 'backend=torch' in text, text  # the CPU backend measured faster for it
        from sfdfuse_core.inference.engine import available_cores
        assert f'threads={max(1, available_cores() - 1)},' in text, text  # one core left to ROS
        assert 'sfdfuse_lite_ivf.safetensors' in text, text
        values = {kv.key: kv.value for array in diags for status in array.status
                  for kv in status.values}
        assert values.get('network') == 'sfdfuse-lite', values
        assert values.get('weights', '').endswith('sfdfuse_lite_ivf.safetensors'), values
        assert values.get('device') == 'cpu', values
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30.0) == 0, read_log(log)
    finally:
        stop_process(proc)
        fx.close()
