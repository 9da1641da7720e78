"""Tests of ``sfdfuse bench`` (:mod:`sfdfuse_core.inference.benchmark`) on a tiny schedule."""
import json

import pytest
import torch

from sfdfuse_core.config import SFDFuseLiteConfig
from sfdfuse_core.inference.benchmark import (PLAIN_CNN_PATH, BenchSettings, PlainCNN,
                                              run_benchmark, to_markdown, write_results)


def test_plain_cnn_is_the_stated_yardstick():
    """The yardstick has the size its docstring and the docs state, and keeps the image size."""
    cnn = PlainCNN()
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16] * 6 + [1]
    assert sum(p.numel() for p in cnn.parameters()) == 12049
    weights = sum(c.weight.numel() for c in convs)
    assert 2 * weights * 640 * 512 / 1e9 == pytest.approx(7.8, abs=0.05)
    with torch.no_grad():
        out = cnn(torch.rand(1, 1, 9, 13), torch.rand(1, 1, 9, 13))
    assert out.shape == (1, 1, 9, 13) and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0


def test_cpu_run_times_the_yardstick_beside_the_engines(tmp_path):
    """A CPU run has the eager reference, the yardstick and the engine rows for every size."""
    settings = BenchSettings(device=torch.device('cpu'), sizes=[(24, 40), (17, 30)], repeats=2,
                             eager_repeats=2, warmup=1, network='sfdfuse-lite',
                             onnxruntime=False, train_repeats=1, train_batch=2, train_size=32,
                             config=SFDFuseLiteConfig(dim=8), command='test')
    results = run_benchmark(settings)
    paths = [(row['size'], row['path']) for row in results['latency']]
    for size in ('40x24', '30x17'):
        assert (size, 'eager fp32 (reference)') in paths
        assert (size, PLAIN_CNN_PATH) in paths
        assert (size, 'engine fp32 (torch)') in paths
    yardstick = [r for r in results['latency'] if r['path'] == PLAIN_CNN_PATH]
    assert all(r['median_ms'] > 0 and r['psnr_vs_eager_db'] is None for r in yardstick)
    assert len(results['environment']['load_average']) == 3
    text = to_markdown(results)
    assert PLAIN_CNN_PATH in text and 'Load average at the start' in text
    json_path, md_path = write_results(results, tmp_path)
    assert json.loads(json_path.read_text())['runs'][0]['latency'][1]['path'] == PLAIN_CNN_PATH
    assert PLAIN_CNN_PATH in md_path.read_text()


def test_cpu_bf16_adds_a_row_close_to_eager():
    """precision='bf16' on the CPU: a bf16 engine row beside the fp32 ones."""
    settings = BenchSettings(device=torch.device('cpu'), sizes=[(32, 48)], repeats=1,
                             eager_repeats=1, warmup=0, network='sfdfuse-lite',
                             onnxruntime=False, train_repeats=0, plain_cnn=False,
                             precision='bf16', config=SFDFuseLiteConfig(dim=8))
    rows = {row['path']: row for row in run_benchmark(settings)['latency']}
    assert {'engine fp32 (torch)', 'engine bf16 (torch)'} <= set(rows)
    assert 30.0 < rows['engine bf16 (torch)']['psnr_vs_eager_db'] < float('inf')


def test_yardstick_can_be_left_out():
    """``plain_cnn=False`` times only the network's own paths."""
    settings = BenchSettings(device=torch.device('cpu'), sizes=[(16, 16)], repeats=1,
                             eager_repeats=1, warmup=0, network='sfdfuse-lite',
                             onnxruntime=False, train_repeats=0, plain_cnn=False,
                             config=SFDFuseLiteConfig(dim=8))
    paths = [row['path'] for row in run_benchmark(settings)['latency']]
    assert PLAIN_CNN_PATH not in paths and 'eager fp32 (reference)' in paths
