"""End-to-end tests of ``sfdfuse fuse`` on tiny generated image folders."""
from pathlib import Path
from typing import Dict

import cv2
import numpy as np
import pytest
import torch

from sfdfuse_core import weights as weights_module
from sfdfuse_core.cli import main
from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.fusion import Fuser
from sfdfuse_core.model import build_model
from sfdfuse_core.weights import save_weights

H, W = 24, 32
TINY = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1, encoder_convformer_blocks=1,
                     decoder_restormer_blocks=1, decoder_convformer_blocks=1, detail_nodes=1,
                     cga_reduction=4, head_channels=4)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def folders(tmp_path: Path, rng: np.random.Generator) -> Dict[str, object]:
    """ir/ and vi/ with two good pairs and three that must be skipped."""
    ir_dir, vi_dir = tmp_path / 'ir', tmp_path / 'vi'
    good = {
        'gray.png': (rng.integers(0, 256, (H, W), dtype=np.uint8),
                     rng.integers(0, 256, (H, W), dtype=np.uint8)),
        # colour visible image, 3-channel (gray-looking) infrared as in LLVIP, BMP in, PNG out
        'color.bmp': (rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                      np.repeat(rng.integers(0, 256, (H, W, 1), dtype=np.uint8), 3, axis=2)),
    }
    for name, (vi, ir) in good.items():
        _write(vi_dir / name, vi)
        _write(ir_dir / name, ir)
    _write(ir_dir / 'only_ir.png', np.zeros((H, W), np.uint8))
    _write(ir_dir / 'corrupt.png', np.zeros((H, W), np.uint8))
    (vi_dir / 'corrupt.png').write_bytes(b'not an image at all')
    _write(ir_dir / 'size.png', np.zeros((H, W), np.uint8))
    _write(vi_dir / 'size.png', np.zeros((H - 4, W), np.uint8))
    return {'ir': ir_dir, 'vi': vi_dir, 'out': tmp_path / 'out', 'good': good}


def _args(folders: Dict[str, object], *extra: str) -> list:
    return ['fuse', '--ir', str(folders['ir']), '--vi', str(folders['vi']),
            '--out', str(folders['out']), '--no-progress', *extra]


def _check_skips(out_dir: Path, stdout: str) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == ['color.png', 'gray.png']
    assert 'fused 2' in stdout and 'skipped 3' in stdout
    assert 'only_ir.png: no visible image' in stdout
    assert 'corrupt.png: cannot decode image' in stdout
    assert 'size.png: visible and infrared images differ in size' in stdout


def test_max(folders: Dict[str, object], capsys: pytest.CaptureFixture) -> None:
    assert main(_args(folders, '--method', 'max')) == 1
    _check_skips(folders['out'], capsys.readouterr().out)
    vi, ir = folders['good']['gray.png']
    out = cv2.imread(str(folders['out'] / 'gray.png'), cv2.IMREAD_UNCHANGED)
    assert out.shape == (H, W) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.maximum(vi, ir))
    vi, ir = folders['good']['color.bmp']
    out = cv2.imread(str(folders['out'] / 'color.png'), cv2.IMREAD_UNCHANGED)
    assert out.shape == (H, W, 3)
    ycrcb = cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)
    fused = np.maximum(ycrcb[:, :, 0], ir[:, :, 0])
    np.testing.assert_array_equal(out, cv2.cvtColor(
        np.dstack((fused, ycrcb[:, :, 1], ycrcb[:, :, 2])), cv2.COLOR_YCrCb2BGR))


def test_mean(folders: Dict[str, object], capsys: pytest.CaptureFixture) -> None:
    assert main(_args(folders, '--method', 'mean')) == 1
    _check_skips(folders['out'], capsys.readouterr().out)
    vi, ir = folders['good']['gray.png']
    out = cv2.imread(str(folders['out'] / 'gray.png'), cv2.IMREAD_UNCHANGED)
    assert np.abs(out - (vi.astype(float) + ir) / 2).max() <= 0.5


def test_all_fused_exits_zero(tmp_path: Path, rng: np.random.Generator,
                              capsys: pytest.CaptureFixture) -> None:
    for name in ('a.png', 'b.png'):
        _write(tmp_path / 'ir' / name, rng.integers(0, 256, (H, W), dtype=np.uint8))
        _write(tmp_path / 'vi' / name, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    argv = ['fuse', '--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'),
            '--out', str(tmp_path / 'o' / 'deep'), '--method', 'mean']
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert 'fused 2' in captured.out and 'skipped' not in captured.out
    assert 'fusing' in captured.err, 'no progress bar on stderr'
    assert sorted(p.name for p in (tmp_path / 'o' / 'deep').iterdir()) == ['a.png', 'b.png']


def test_sfdfuse_with_weights(folders: Dict[str, object], tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = build_model(TINY)
    path = save_weights(model, tmp_path / 'tiny.safetensors', TINY)
    assert main(_args(folders, '--method', 'sfdfuse', '--weights', str(path),
                      '--device', 'cpu')) == 1
    _check_skips(folders['out'], capsys.readouterr().out)
    fuser = Fuser(model=model, device='cpu')
    for name, (vi, ir) in folders['good'].items():
        out = cv2.imread(str(folders['out'] / Path(name).with_suffix('.png')),
                         cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(out, fuser(vi, ir))


def test_bf16_precision_fuses_close_to_fp32(folders: Dict[str, object]) -> None:
    """--precision bf16 with the shipped default network: a few 8-bit levels from fp32."""
    from sfdfuse_core.commands import PRECISION_CHOICES
    from sfdfuse_core.inference import PRECISIONS

    assert PRECISION_CHOICES == PRECISIONS  # the command line offers what the engine takes
    assert main(_args(folders, '--device', 'cpu', '--precision', 'bf16')) == 1
    fuser = Fuser(device='cpu', precision='fp32')
    for name, (vi, ir) in folders['good'].items():
        out = cv2.imread(str(folders['out'] / Path(name).with_suffix('.png')),
                         cv2.IMREAD_UNCHANGED)
        diff = np.abs(out.astype(int) - fuser(vi, ir))
        assert diff.max() <= 8 and diff.mean() < 1.5, (name, diff.max(), diff.mean())


def test_missing_default_weights(folders: Dict[str, object], tmp_path: Path, monkeypatch,
                                 capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / 'none' / 'sfdfuse_lite_ivf.safetensors'
    monkeypatch.setattr(weights_module, 'default_weights_path', lambda device=None: missing)
    assert main(_args(folders, '--device', 'cpu')) == 2
    err = capsys.readouterr().err
    assert 'not found' in err and str(missing) in err
    assert '--weights' in err and '--method mean' in err
    assert 'Traceback' not in err
    assert not folders['out'].exists()


def test_broken_weights(folders: Dict[str, object], tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x00' * 4)
    assert main(_args(folders, '--weights', str(bad), '--device', 'cpu')) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and 'truncated' in err


def test_missing_folder(folders: Dict[str, object], tmp_path: Path,
                        capsys: pytest.CaptureFixture) -> None:
    folders = dict(folders, vi=tmp_path / 'nowhere')
    assert main(_args(folders, '--method', 'max')) == 2
    err = capsys.readouterr().err
    assert '--vi folder not found' in err and 'Traceback' not in err


def test_out_equal_to_input_is_refused(folders: Dict[str, object],
                                       capsys: pytest.CaptureFixture) -> None:
    folders = dict(folders, out=folders['vi'])
    assert main(_args(folders, '--method', 'max')) == 2
    assert '--out must differ' in capsys.readouterr().err


def test_empty_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / 'ir').mkdir()
    (tmp_path / 'vi').mkdir()
    argv = ['fuse', '--ir', str(tmp_path / 'ir'), '--vi', str(tmp_path / 'vi'),
            '--out', str(tmp_path / 'out'), '--method', 'max']
    assert main(argv) == 2
    assert 'no images found' in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_cuda_without_cuda(folders: Dict[str, object], capsys: pytest.CaptureFixture) -> None:
    assert main(_args(folders, '--method', 'max', '--device', 'cuda')) == 2
    assert 'CUDA is not available' in capsys.readouterr().err


def test_bad_method_is_a_usage_error(folders: Dict[str, object]) -> None:
    with pytest.raises(SystemExit) as info:
        main(_args(folders, '--method', 'median'))
    assert info.value.code == 2
