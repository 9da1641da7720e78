"""Tests of the compact network (:mod:`sfdfuse_core.model.lite`) and its shipped weights."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from sfdfuse_core.config import SFDFuseLiteConfig
from sfdfuse_core.fusion import Fuser
from sfdfuse_core.inference import FusionEngine
from sfdfuse_core.inference.cost import model_cost
from sfdfuse_core.model import SFDFuseLite, build_model, network_of, shipped_weights_path
from sfdfuse_core.scene import make_scene
from sfdfuse_core.weights import WeightsError, load_model, read_weights_info

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / 'training' / 'sfdfuse_lite.yaml'
#: The shipped compact network's output on the generated pair of :func:`_reference_pair`,
#: written by ``python test/test_lite.py --write-reference`` when the weights change on purpose.
REFERENCE = Path(__file__).resolve().parent / 'data' / 'lite_reference.png'
SHIPPED = shipped_weights_path('sfdfuse-lite')


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """One intra-op thread: small convolutions gain little from more on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_lite(seed: int = 0, **changes) -> SFDFuseLite:
    torch.manual_seed(seed)
    return SFDFuseLite(SFDFuseLiteConfig(**changes)).eval()


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(1, 1), (3, 5), (7, 9), (32, 48), (33, 64), (64, 31)])
def test_any_size_gives_the_exact_size_in_range(size) -> None:
    model = _random_lite()
    vi, ir = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = model(vi, ir)
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_cost_and_size_fit_the_cpu_budget() -> None:
    """Per 640x512 pair at most 10 GFLOP and 1 GB of eager traffic; 10 k to 100 k parameters."""
    model = build_model(SFDFuseLiteConfig())
    assert network_of(model) == 'sfdfuse-lite'
    params = sum(p.numel() for p in model.parameters())
    assert 10_000 <= params <= 100_000
    cost = model_cost(model, 512, 640)
    assert cost['flops'] <= 10e9 and cost['bytes_eager'] <= 1e9, cost


def test_pieces_check_their_inputs() -> None:
    model = _random_lite()
    with pytest.raises(ValueError, match='even'):
        model.encode(torch.rand(1, 1, 7, 8))
    with pytest.raises(TypeError, match='floating-point'):
        model(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match='same shape'):
        model(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 10))
    base, detail = model.encode(torch.rand(1, 1, 8, 8))
    assert base.shape == detail.shape == (1, 16, 4, 4)
    with pytest.raises(ValueError, match='base and detail must have shape'):
        model.decode(torch.rand(1, 1, 16, 16), base, detail)
    with pytest.raises(ValueError, match='detail_i'):
        model.fuse_features(base, detail, base, detail[:, :8])
    with pytest.raises(ValueError, match='even'):
        SFDFuseLiteConfig(dim=15)
    with pytest.raises(TypeError, match='dim must be int'):
        SFDFuseLiteConfig(dim=16.0)
    with pytest.raises(ValueError, match='unknown SFDFuseLiteConfig keys'):
        SFDFuseLiteConfig.from_dict({'dims': 8})


def test_engine_backends_equal_the_eager_network() -> None:
    """ONNX Runtime and torch engine paths give the eager output (uint8, odd size, colour)."""
    rng = np.random.default_rng(0)
    vi = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (37, 50), dtype=np.uint8)
    expected = _EagerFuser(_random_lite())(vi, ir)  # eager forward, OpenCV colour
    for backend in ('torch', 'onnxruntime'):
        engine = FusionEngine(model=_random_lite(), device='cpu', backend=backend,
                              channels_last=False)
        out = engine(vi, ir)
        assert out.shape == expected.shape
        assert int(np.abs(out.astype(int) - expected).max()) <= 1, backend


def test_fused_conv_activation_changes_no_number_and_only_runs_in_cpu_inference() -> None:
    """fuse_for_cpu: the same output in inference; training and autograd keep the plain path."""
    from sfdfuse_core.model.lite import ConvAct

    plain = _random_lite()
    fused = _random_lite()
    assert fused.fuse_for_cpu()
    assert all(m.fused for m in fused.modules() if isinstance(m, ConvAct))
    assert fused.state_dict().keys() == plain.state_dict().keys()  # folded copies not saved
    vi, ir = torch.rand(2, 1, 41, 57), torch.rand(2, 1, 41, 57)  # odd: padded path too
    for memory_format in (torch.contiguous_format, torch.channels_last):
        a, b = plain.to(memory_format=memory_format), fused.to(memory_format=memory_format)
        with torch.inference_mode():
            assert torch.allclose(a(vi, ir), b(vi, ir), atol=1e-5)
    layer = next(m for m in fused.modules() if isinstance(m, ConvAct))
    x = torch.rand(1, layer.conv.in_channels, 8, 8)
    with torch.no_grad():
        assert layer._can_fuse(x)
        assert not layer._can_fuse(x.double())
    assert not layer._can_fuse(x)  # autograd on: plain path
    fused.train()
    out = fused(vi, ir)
    out.mean().backward()  # gradients flow through the plain path
    assert all(p.grad is not None for p in fused.parameters())


def test_engine_picks_the_cpu_backend_the_network_names() -> None:
    """backend='auto' on the CPU: torch with fused convolutions for the compact network."""
    engine = FusionEngine(model=_random_lite(), device='cpu')
    assert engine.backend == 'torch'
    from sfdfuse_core.model.lite import ConvAct
    assert all(m.fused for m in engine.model.modules() if isinstance(m, ConvAct))
    ort = FusionEngine(model=_random_lite(), device='cpu', backend='onnxruntime')
    assert ort.backend == 'onnxruntime'
    assert not any(m.fused for m in ort.model.modules() if isinstance(m, ConvAct))


def test_cpu_bf16_runs_the_plain_layers_close_to_fp32() -> None:
    """precision='bf16' on the CPU: autocast over the plain layers, a few levels from fp32."""
    from sfdfuse_core.model.lite import ConvAct

    vi, ir = _reference_pair()
    engines = {precision: FusionEngine(weights='sfdfuse-lite', device='cpu', precision=precision)
               for precision in ('fp32', 'bf16')}
    bf16 = engines['bf16']
    assert bf16.precision == 'bf16' and bf16.backend == 'torch'
    assert not any(m.fused for m in bf16.model.modules() if isinstance(m, ConvAct))
    diff = np.abs(bf16(vi, ir).astype(int) - engines['fp32'](vi, ir))
    assert 0 < diff.max() <= 8 and diff.mean() < 1.0, (diff.max(), diff.mean())


def test_structure_keys_are_checked_and_old_files_keep_their_structure(tmp_path: Path) -> None:
    """A stored config without the newer structure keys builds the structure it was saved with."""
    import json

    from safetensors.torch import load_file, save_file

    with pytest.raises(ValueError, match='gate_kernel must be odd'):
        SFDFuseLiteConfig(gate_kernel=2)
    with pytest.raises(ValueError, match='detail_blocks must be >= 0'):
        SFDFuseLiteConfig(detail_blocks=-1)
    old = SFDFuseLiteConfig(**SFDFuseLiteConfig.ABSENT_KEY_VALUES, detail_nodes=2)
    model = _random_lite(**old.to_dict())
    assert sum(p.numel() for p in model.parameters()) == 27_352  # the first shipped structure
    path = tmp_path / 'old.safetensors'
    from sfdfuse_core.weights import save_weights
    save_weights(model, path)
    from safetensors import safe_open
    with safe_open(str(path), 'pt') as f:
        metadata = dict(f.metadata())
    key = next(k for k, v in metadata.items() if 'gate_kernel' in v)
    stored = json.loads(metadata[key])
    config = stored['config'] if 'config' in stored else stored
    for name in SFDFuseLiteConfig.ABSENT_KEY_VALUES:
        del config[name]
    metadata[key] = json.dumps(stored)
    save_file(load_file(str(path)), str(path), metadata=metadata)
    loaded = load_model(path, device='cpu')
    assert loaded.config == old
    vi, ir = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(vi, ir), model(vi, ir))


class _EagerFuser(Fuser):
    """A Fuser whose network path is the eager model forward (no engine)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(method='mean', device='cpu')
        self.method, self.model = 'sfdfuse', model

    def _run_model(self, y: np.ndarray, ir: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(y)[None, None],
                              torch.from_numpy(ir)[None, None])[0, 0].numpy()


# ----------------------------------------------------------------------------------------------
# the recipe
# ----------------------------------------------------------------------------------------------

def test_recipe_smoke_trains_the_compact_network(tmp_path: Path) -> None:
    """The shipped recipe, on a tiny schedule, writes final weights of the compact network."""
    from sfdfuse_core.train.config import load_config
    from sfdfuse_core.train.trainer import main

    data = tmp_path / 'tiny.h5'
    rng = np.random.default_rng(0)
    with h5py.File(data, 'w') as h5:
        h5['ir'] = rng.integers(0, 256, (12, 1, 32, 32), dtype=np.uint8)
        h5['vi'] = rng.integers(0, 256, (12, 1, 32, 32), dtype=np.uint8)
    config = load_config(RECIPE, ['phase2_epochs=2', 'max_steps_per_epoch=2', 'batch_size=4',
                                  'val_patches=4', 'num_workers=0', 'progress=false'],
                         data=str(data), out=str(tmp_path / 'run'))
    assert config.network == 'sfdfuse-lite' and isinstance(config.model, SFDFuseLiteConfig)
    result = main(config)
    assert result.finished and result.step == 4
    model = load_model(result.final_weights)
    assert isinstance(model, SFDFuseLite)
    assert read_weights_info(result.final_weights)['network'] == 'sfdfuse-lite'


# ----------------------------------------------------------------------------------------------
# the shipped weights
# ----------------------------------------------------------------------------------------------

def _reference_pair() -> tuple:
    """A generated night-street pair: BGR visible 160x128 and 8-bit thermal resized to it."""
    thermal, rgb = next(iter(make_scene(1, (160, 128), seed=3)))
    ir = np.clip(thermal.astype(np.float64) / 16383.0 * 255.0, 0, 255).round().astype(np.uint8)
    ir = cv2.resize(ir, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return rgb, ir


def test_shipped_weights_are_the_compact_network_trained_on_the_training_sets() -> None:
    assert SHIPPED.is_file(), f'the shipped weights are missing: {SHIPPED}'
    assert SHIPPED.stat().st_size < 1_000_000
    info = read_weights_info(SHIPPED)
    assert info['network'] == 'sfdfuse-lite'
    # the training image folders (ivf/train, or training/holdout.py's links into it), never
    # the evaluation sets
    sources = info['metadata']['sources']
    assert sources and all('/train/' in s and 'ivf/test' not in s for s in sources), sources
    assert any('MSRS' in s for s in sources) and any('LLVIP' in s for s in sources)
    assert 'non-commercial' in info['metadata']['licence']
    assert isinstance(load_model('sfdfuse-lite'), SFDFuseLite)
    assert isinstance(load_model(None, device='cpu'), SFDFuseLite)  # the CPU default


def test_shipped_weights_reproduce_the_stored_output() -> None:
    """Regression pin: an accidental change of the network or of the file changes this output."""
    vi, ir = _reference_pair()
    fused = Fuser(device='cpu')(vi, ir)  # no weights: the shipped default on the CPU
    expected = cv2.imread(str(REFERENCE), cv2.IMREAD_UNCHANGED)
    assert expected is not None, f'missing {REFERENCE}'
    assert fused.shape == expected.shape
    diff = np.abs(fused.astype(int) - expected)
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    assert np.abs(fused.astype(int) - vi).mean() > 1.0  # a real fusion, not the visible image


def test_a_damaged_shipped_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / SHIPPED.name
    data = SHIPPED.read_bytes()
    bad.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=str(bad).replace('.', r'\.')):
        Fuser(weights=bad, device='cpu')


def test_cli_defaults_need_no_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``sfdfuse fuse`` and ``sfdfuse export`` without --weights run the shipped network."""
    from sfdfuse_core.cli import main

    vi, ir = _reference_pair()
    for name in ('ir', 'vi'):
        (tmp_path / name).mkdir()
    assert cv2.imwrite(str(tmp_path / 'vi' / 'a.png'), vi)
    assert cv2.imwrite(str(tmp_path / 'ir' / 'a.png'), ir)
    out = tmp_path / 'out'
    assert main(['fuse', '--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'),
                 '--out', str(out), '--device', 'cpu', '--no-progress']) == 0
    text = capsys.readouterr().out
    assert 'sfdfuse-lite' in text and SHIPPED.name in text, text
    fused = cv2.imread(str(out / 'a.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(fused, Fuser(device='cpu')(vi, ir))
    assert main(['export', '--onnx', str(tmp_path / 'lite.onnx')]) == 0
    text = capsys.readouterr().out
    assert 'sfdfuse-lite' in text and (tmp_path / 'lite.onnx').is_file(), text


@pytest.mark.slow
def test_a_pip_install_ships_and_loads_the_weights(tmp_path: Path) -> None:
    """The wheel holds the weights, and the package installed from it fuses with them."""
    source = tmp_path / 'source'  # a copy: building writes build/ and *.egg-info/ in place
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'out', 'runs', 'build', 'install', 'log', '*.egg-info', '__pycache__'))
    wheels = tmp_path / 'wheels'
    build = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                            '--no-build-isolation', '-q', '-w', str(wheels), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob('sfdfuse_ros-*.whl'))
    with zipfile.ZipFile(wheel) as archive:
        assert f'sfdfuse_core/weights/{SHIPPED.name}' in archive.namelist()
    target = tmp_path / 'site'
    install = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q',
                              '--target', str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    code = ('import sfdfuse_core.weights as w; m = w.load_model(None, "cpu"); '
            'print(type(m).__name__, m.weights_path)')
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=tmp_path, env={'PYTHONPATH': str(target), 'PATH': '/usr/bin:/bin'},
                         timeout=120)
    assert run.returncode == 0, run.stderr
    name, path = run.stdout.split()
    assert name == 'SFDFuseLite' and Path(path).is_relative_to(target), run.stdout


if __name__ == '__main__':  # pragma: no cover - maintenance: re-pin after a deliberate change
    if sys.argv[1:] == ['--write-reference']:
        torch.set_num_threads(1)
        vi, ir = _reference_pair()
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(REFERENCE), Fuser(device='cpu')(vi, ir))
        print(f'wrote {REFERENCE}')
