"""Tests of weights files (:mod:`sfdfuse_core.weights`): round trips and every failure mode."""
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_save

from sfdfuse_core.config import SFDFuseConfig, SFDFuseLiteConfig
from sfdfuse_core.model import SFDFuse, SFDFuseLite, build_model
from sfdfuse_core.weights import (FORMAT_VERSION, WeightsError, WeightsNotFoundError,
                                  default_network, default_weights_path, load_model,
                                  read_weights_info, resolve_weights,
                                  save_weights)

TINY = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1, encoder_convformer_blocks=1,
                     decoder_restormer_blocks=1, decoder_convformer_blocks=1, detail_nodes=1,
                     cga_reduction=4, head_channels=4)


@pytest.fixture(scope='module')
def tiny_model() -> SFDFuse:
    torch.manual_seed(0)
    return build_model(TINY)


@pytest.fixture
def saved(tmp_path: Path, tiny_model: SFDFuse) -> Path:
    return save_weights(tiny_model, tmp_path / 'tiny.safetensors', TINY,
                        metadata={'data': 'MSRS', 'step': 10})


def _write_raw(path: Path, tensors: dict, config: dict, **extra: str) -> Path:
    """Write a safetensors file with sfdfuse metadata, bypassing save_weights' checks."""
    meta = {'format': 'pt', 'sfdfuse.format_version': str(FORMAT_VERSION),
            'sfdfuse.config': json.dumps(config), 'sfdfuse.metadata': '{}'}
    meta.update(extra)
    path.write_bytes(safetensors_save({k: v.contiguous().clone() for k, v in tensors.items()},
                                      metadata=meta))
    return path


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------

def test_round_trip(saved: Path, tiny_model: SFDFuse) -> None:
    model = load_model(saved)
    assert isinstance(model, SFDFuse)
    assert model.config == TINY and not model.training
    _same_state(model, tiny_model)
    assert [p.name for p in saved.parent.iterdir()] == ['tiny.safetensors'], 'temp file left'


def test_info(saved: Path, tiny_model: SFDFuse) -> None:
    info = read_weights_info(saved)
    assert info['kind'] == 'safetensors'
    assert info['format_version'] == FORMAT_VERSION
    assert SFDFuseConfig.from_dict(info['config']) == TINY
    assert info['metadata'] == {'data': 'MSRS', 'step': 10}
    assert info['tensors'] == len(tiny_model.state_dict())
    assert info['parameters'] == sum(t.numel() for t in tiny_model.state_dict().values())
    assert info['size_bytes'] == saved.stat().st_size


def test_save_overwrites_and_creates_folders(tmp_path: Path, tiny_model: SFDFuse) -> None:
    path = tmp_path / 'a' / 'b' / 'w.safetensors'
    save_weights(tiny_model, path, TINY.to_dict())
    save_weights(tiny_model, path, None, metadata={'run': 2})
    assert read_weights_info(path)['metadata'] == {'run': 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ['w.safetensors']


def test_save_rejects_bad_arguments(tmp_path: Path, tiny_model: SFDFuse) -> None:
    with pytest.raises(ValueError, match='.safetensors'):
        save_weights(tiny_model, tmp_path / 'w.pt', TINY)
    with pytest.raises(TypeError, match='JSON'):
        save_weights(tiny_model, tmp_path / 'w.safetensors', TINY, metadata={'x': object()})
    with pytest.raises(ValueError, match='differs'):
        save_weights(tiny_model, tmp_path / 'w.safetensors', SFDFuseConfig())
    with pytest.raises(ValueError, match='unknown'):
        save_weights(tiny_model, tmp_path / 'w.safetensors', {'width': 3})
    with pytest.raises(TypeError, match='nn.Module'):
        save_weights({'a': torch.zeros(1)}, tmp_path / 'w.safetensors', TINY)
    assert not list(tmp_path.iterdir())


def test_checkpoint(tmp_path: Path, tiny_model: SFDFuse) -> None:
    path = tmp_path / 'last.pt'
    torch.save({'model': tiny_model.state_dict(), 'config': TINY.to_dict(), 'step': 7,
                'optimizer': {'lr': 1e-4}}, path)
    model = load_model(path)
    _same_state(model, tiny_model)
    info = read_weights_info(path)
    assert info['kind'] == 'checkpoint' and info['metadata'] == {'step': 7}


def test_default_weights_path() -> None:
    """The CPU default is the compact network's shipped file; names resolve to shipped files."""
    path = default_weights_path('cpu')
    assert path.parts[-3:] == ('sfdfuse_core', 'weights', 'sfdfuse_lite_ivf.safetensors')
    assert default_network('cpu') == 'sfdfuse-lite'
    assert resolve_weights(None, 'cpu') == path == resolve_weights('', 'cpu')
    assert resolve_weights('sfdfuse-lite') == path
    assert resolve_weights('sfdfuse').name == 'sfdfuse_ivf.safetensors'
    assert resolve_weights('some/file.pt') == Path('some/file.pt')


def test_lite_round_trip_names_its_network(tmp_path: Path) -> None:
    """A compact-network file says which network it holds and rebuilds it from the file alone."""
    torch.manual_seed(0)
    lite = SFDFuseLite(SFDFuseLiteConfig(dim=8, detail_nodes=1))
    path = save_weights(lite, tmp_path / 'lite.safetensors', metadata={'steps': 1})
    info = read_weights_info(path)
    assert info['network'] == 'sfdfuse-lite' and info['config']['dim'] == 8
    model = load_model(path)
    assert isinstance(model, SFDFuseLite) and model.config == lite.config
    _same_state(model, lite)
    ckpt = tmp_path / 'last.pt'
    torch.save({'model': lite.state_dict(), 'config': lite.config.to_dict(),
                'network': 'sfdfuse-lite'}, ckpt)
    assert isinstance(load_model(ckpt), SFDFuseLite)


def test_unknown_network_is_named(tmp_path: Path) -> None:
    """A file naming a network this version does not know fails with the file and the name."""
    path = tmp_path / 'future.pt'
    torch.save({'model': {}, 'config': {}, 'network': 'sfdfuse-xl'}, path)
    with pytest.raises(WeightsError, match=r'future\.pt.*unknown network .sfdfuse-xl'):
        load_model(path)


# ----------------------------------------------------------------------------------------------
# failures
# ----------------------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / 'nope.safetensors'
    with pytest.raises(WeightsNotFoundError, match='not found') as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert issubclass(WeightsNotFoundError, WeightsError)
    assert issubclass(WeightsError, RuntimeError)


def test_folder_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / 'w.safetensors'
    folder.mkdir()
    with pytest.raises(WeightsError, match='not a regular file'):
        load_model(folder)


@pytest.mark.parametrize('keep', [3, 100, -10])
def test_truncated(saved: Path, keep: int) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    with pytest.raises(WeightsError, match='truncated') as info:
        load_model(saved)
    assert str(saved) in str(info.value)
    with pytest.raises(WeightsError, match='truncated'):
        read_weights_info(saved)


def test_trailing_bytes(saved: Path) -> None:
    saved.write_bytes(saved.read_bytes() + b'junk')
    with pytest.raises(WeightsError, match='unexpected bytes'):
        load_model(saved)


def test_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / 'png.safetensors'
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)
    with pytest.raises(WeightsError, match='not a safetensors file'):
        load_model(path)


def test_bad_header_json(tmp_path: Path) -> None:
    path = tmp_path / 'bad.safetensors'
    header = b'{"a": {"dtype": "F32", '
    path.write_bytes(struct.pack('<Q', len(header)) + header)
    with pytest.raises(WeightsError, match='corrupt safetensors header'):
        load_model(path)


def test_bad_header_entry(tmp_path: Path) -> None:
    path = tmp_path / 'bad.safetensors'
    header = json.dumps({'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 4]}}).encode()
    path.write_bytes(struct.pack('<Q', len(header)) + header + bytes(4))
    with pytest.raises(WeightsError, match="tensor 'a'"):
        load_model(path)


def test_plain_safetensors_without_config(tmp_path: Path) -> None:
    path = tmp_path / 'plain.safetensors'
    path.write_bytes(safetensors_save({'a': torch.zeros(2)}))
    with pytest.raises(WeightsError, match='not an SFDFuse weights file'):
        load_model(path)


def test_newer_format_version(tmp_path: Path, tiny_model: SFDFuse) -> None:
    path = _write_raw(tmp_path / 'w.safetensors', tiny_model.state_dict(), TINY.to_dict(),
                      **{'sfdfuse.format_version': str(FORMAT_VERSION + 1)})
    with pytest.raises(WeightsError, match='newer'):
        load_model(path)


def test_unknown_config_key(tmp_path: Path, tiny_model: SFDFuse) -> None:
    config = dict(TINY.to_dict(), width=3)
    path = _write_raw(tmp_path / 'w.safetensors', tiny_model.state_dict(), config)
    with pytest.raises(WeightsError, match='unknown SFDFuseConfig keys') as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_missing_key(tmp_path: Path, tiny_model: SFDFuse) -> None:
    state = dict(tiny_model.state_dict())
    removed = sorted(state)[0]
    del state[removed]
    path = _write_raw(tmp_path / 'w.safetensors', state, TINY.to_dict())
    with pytest.raises(WeightsError, match='missing keys') as info:
        load_model(path)
    assert removed in str(info.value) and str(path) in str(info.value)


def test_unexpected_key(tmp_path: Path, tiny_model: SFDFuse) -> None:
    state = dict(tiny_model.state_dict(), extra_weight=torch.zeros(3))
    path = _write_raw(tmp_path / 'w.safetensors', state, TINY.to_dict())
    with pytest.raises(WeightsError, match=r'unexpected keys \[extra_weight\]'):
        load_model(path)


def test_shape_mismatch(tmp_path: Path, tiny_model: SFDFuse) -> None:
    """Weights of the tiny network described as a wider one."""
    wider = dict(TINY.to_dict(), dim=16)
    path = _write_raw(tmp_path / 'w.safetensors', tiny_model.state_dict(), wider)
    with pytest.raises(WeightsError, match='shape mismatch'):
        load_model(path)


def test_folded_model_is_refused(tmp_path: Path) -> None:
    model = build_model(TINY).fold_deconv()
    with pytest.raises(ValueError, match='fold_deconv'):
        save_weights(model, tmp_path / 'folded.safetensors', TINY)
    assert not list(tmp_path.iterdir())
    path = _write_raw(tmp_path / 'folded.safetensors', model.state_dict(), TINY.to_dict())
    with pytest.raises(WeightsError, match='do not match'):
        load_model(path)


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / 'bad.pt'
    path.write_bytes(b'PK\x03\x04 not really a zip')
    with pytest.raises(WeightsError, match='not a readable PyTorch checkpoint'):
        load_model(path)


def test_truncated_checkpoint(tmp_path: Path, tiny_model: SFDFuse) -> None:
    path = tmp_path / 'cut.pt'
    torch.save({'model': tiny_model.state_dict(), 'config': TINY.to_dict()}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(WeightsError, match='cut.pt'):
        load_model(path)


def test_checkpoint_with_flipped_bytes_in_tensor_data_is_refused(
        tmp_path: Path, tiny_model: SFDFuse) -> None:
    """torch.load does not check the zip CRCs: the altered tensor would load as weights."""
    path = tmp_path / 'flipped.pt'
    torch.save({'model': tiny_model.state_dict(), 'config': TINY.to_dict()}, path)
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=f'{path}: corrupt PyTorch checkpoint: CRC-32 '
                       'mismatch in member'):
        load_model(path)
    with pytest.raises(WeightsError, match='CRC-32'):
        read_weights_info(path)


class _Arbitrary:
    pass


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / 'pickle.pt'
    torch.save({'model': {}, 'config': {}, 'obj': _Arbitrary()}, path)
    with pytest.raises(WeightsError, match='not a readable PyTorch checkpoint'):
        load_model(path)


@pytest.mark.parametrize('content, match', [
    ({'state_dict': {}}, "keys 'model' and 'config'"),
    ([1, 2], "keys 'model' and 'config'"),
    ({'model': {'a': 1}, 'config': {}}, 'map names to tensors'),
    ({'model': {}, 'config': [1]}, "'config' must be a dict"),
])
def test_checkpoint_wrong_layout(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / 'wrong.pt'
    torch.save(content, path)
    with pytest.raises(WeightsError, match=match):
        load_model(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / 'w.onnx'
    path.write_bytes(b'x')
    with pytest.raises(WeightsError, match='unsupported weights file type'):
        load_model(path)
