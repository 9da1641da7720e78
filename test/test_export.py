"""Tests of the ONNX export (:mod:`sfdfuse_core.inference.onnx_export`, ``sfdfuse export``).

The reference is the PyTorch network itself; ONNX Runtime (CPU) runs the exported file at two
different sizes, which checks that height and width stayed dynamic.
"""
import numpy as np
import onnx
import pytest
import torch

from sfdfuse_core.cli import main
from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.inference.onnx_export import export_onnx, open_session
from sfdfuse_core.model import build_model
from sfdfuse_core.weights import save_weights

TINY = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1, encoder_convformer_blocks=1,
                     decoder_restormer_blocks=1, decoder_convformer_blocks=1, detail_nodes=1,
                     cga_reduction=4, head_channels=4)


@pytest.fixture(scope='module')
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


def _compare(model: torch.nn.Module, path, sizes) -> None:
    session = open_session(path)
    for height, width in sizes:
        vi, ir = torch.rand(1, 1, height, width), torch.rand(1, 1, height, width)
        with torch.no_grad():
            ref = model(vi, ir).numpy()
        out = session.run(['fused'], {'vi': vi.numpy(), 'ir': ir.numpy()})[0]
        assert out.shape == (1, 1, height, width)
        assert np.abs(out - ref).max() < 1e-4, (height, width)


def test_export_runs_at_two_sizes(tmp_path, tiny_model: torch.nn.Module) -> None:
    path = export_onnx(tiny_model, tmp_path / 'net.onnx')
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ['vi', 'ir']
    assert [o.name for o in graph.output] == ['fused']
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param, 'height and width must be dynamic'
    assert not any('central' in init.name for init in graph.initializer), 'DEConv not folded'
    _compare(tiny_model, path, [(16, 24), (38, 22), (4, 6)])


def test_export_leaves_the_model_untouched(tmp_path, tiny_model: torch.nn.Module) -> None:
    keys = set(tiny_model.state_dict())
    export_onnx(tiny_model, tmp_path / 'net.onnx')
    assert set(tiny_model.state_dict()) == keys


def test_export_rejects_bad_options(tmp_path, tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match='opset'):
        export_onnx(tiny_model, tmp_path / 'net.onnx', opset=9)
    with pytest.raises(ValueError, match='example_size'):
        export_onnx(tiny_model, tmp_path / 'net.onnx', example_size=(15, 16))
    with pytest.raises(TypeError, match='SFDFuse'):
        export_onnx(torch.nn.Conv2d(1, 1, 1), tmp_path / 'net.onnx')


def test_cli_export(tmp_path, tiny_model: torch.nn.Module, capsys) -> None:
    weights = save_weights(build_model(TINY), tmp_path / 'tiny.safetensors', TINY)
    out = tmp_path / 'sub' / 'net.onnx'
    assert main(['export', '--onnx', str(out), '--weights', str(weights)]) == 0
    assert out.is_file()
    assert 'max abs diff' in capsys.readouterr().out
    assert main(['export', '--onnx', str(out), '--weights', str(tmp_path / 'no.safetensors')]) \
        == 2
    assert 'not found' in capsys.readouterr().err
