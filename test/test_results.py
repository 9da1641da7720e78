"""Tests of ``sfdfuse results`` (:mod:`sfdfuse_core.results`) on small generated sets."""
import argparse
import json
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
import torch

from sfdfuse_core import results
from sfdfuse_core.commands import results as command
from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.fusion import Fuser
from sfdfuse_core.imageio import read_gray, read_image, to_gray
from sfdfuse_core.metrics import METRIC_NAMES, evaluate_pair
from sfdfuse_core.model import build_model
from sfdfuse_core.weights import save_weights

#: Pair sizes (height, width) of the generated sets: >= 41 (VIF), odd sizes included.
SIZES = {'TNO': [(64, 80), (57, 71), (48, 96)], 'RoadScene': [(60, 90), (49, 63), (72, 72)]}


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Return a textured uint8 image: gradient, a bright box, noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = 40 + 120 * xx / width + 40 * np.sin(yy / 5.0)
    img[height // 4:height // 2, width // 3:width // 2] += 60
    img += rng.normal(0, 12, (height, width))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def data_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Build TNO/ (gray-looking 3-channel PNGs) and RoadScene/ (1-channel IR, colour JPEG)."""
    root = tmp_path / 'data'
    for set_name, sizes in SIZES.items():
        (root / set_name / 'ir').mkdir(parents=True)
        (root / set_name / 'vi').mkdir(parents=True)
        for i, (height, width) in enumerate(sizes):
            ir = _scene(rng, height, width)
            vi = _scene(rng, height, width)[::-1].copy()
            if set_name == 'TNO':
                name = f'{i + 1:02d}.png'
                ir, vi = cv2.merge([ir] * 3), cv2.merge([vi] * 3)
            else:
                name = f'FLIR_{i:05d}.jpg'
                vi = cv2.merge([vi, np.roll(vi, 7, axis=1), 255 - vi])
            assert cv2.imwrite(str(root / set_name / 'ir' / name), ir)
            assert cv2.imwrite(str(root / set_name / 'vi' / name), vi)
    return root


@pytest.fixture
def no_shipped_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the shipped weights at a file that does not exist (whatever the checkout holds)."""
    missing = tmp_path / 'shipped'
    monkeypatch.setattr('sfdfuse_core.model.shipped_weights_path', lambda name: missing / name)
    return missing


def _run(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv + ['--device', 'cpu', '--no-progress']))


def _expected(data: Path, set_name: str, method: str, weights=None) -> dict:
    """Fuse and score every pair independently of the results code."""
    fuser = Fuser(method=method, weights=weights, device='cpu')
    rows = {}
    for ir_path in sorted((data / set_name / 'ir').iterdir()):
        vi_path = data / set_name / 'vi' / ir_path.name
        fused = fuser(read_image(vi_path), read_image(ir_path))
        rows[ir_path.name] = evaluate_pair(to_gray(fused), read_gray(ir_path),
                                           read_gray(vi_path))
    return rows


def test_baselines_and_untrained_network(data_dir: Path, tmp_path: Path,
                                         no_shipped_weights: Path) -> None:
    """Mean/max rows carry evaluate_pair's numbers; sfdfuse without weights shows no numbers."""
    out = tmp_path / 'docs'
    rc = _run(['--data', str(data_dir), '--methods', 'mean,max,sfdfuse', '--out', str(out),
               '--grid-pairs', '2'])
    assert rc == 0
    page = (out / 'RESULTS.md').read_text()
    report = json.loads((out / 'results' / 'results.json').read_text())

    for set_name, sizes in SIZES.items():
        entry = report['sets'][set_name]
        section = page.split(f'## {set_name} ')[1].split('\n## ')[0]
        assert entry['pairs'] == len(sizes)
        for method in ('mean', 'max'):
            result = entry['methods'][method]
            expected = _expected(data_dir, set_name, method)
            assert result['status'] == 'ok' and result['skipped'] == {}
            assert result['per_image'] == expected
            for name in METRIC_NAMES:
                assert result['mean'][name] == pytest.approx(
                    np.mean([row[name] for row in expected.values()]), rel=1e-12)
            row = next(line for line in section.splitlines()
                       if line.startswith(f'| {method} (ours) | {len(sizes)}/{len(sizes)} |'))
            assert f'{result["mean"]["SD"]:.2f}' in row
            assert row.rstrip(' |').endswith(f'/{result["beats_cddfuse"]["of"]}')
        sfdfuse = entry['methods']['sfdfuse']
        assert sfdfuse == {'status': 'not_trained', 'message': results.NOT_TRAINED}

        grid_file = out / 'results' / f'grid_{set_name.lower()}.png'
        grid = cv2.imread(str(grid_file), cv2.IMREAD_UNCHANGED)
        assert grid.shape[:2] == results.grid_size(2, 4) == (26 + 2 * 202, 4 * 240 + 5 * 4)
        assert entry['grid']['columns'] == ['infrared', 'visible', 'mean', 'max']
        assert entry['grid']['pairs'] == [sorted((data_dir / set_name / 'ir').iterdir())[i].name
                                          for i in (0, 2)]
        assert f']({entry["grid"]["file"]})' in section

    untrained = [line for line in page.splitlines() if line.startswith('| sfdfuse (ours)')]
    assert len(untrained) == 2
    for line in untrained:
        assert results.NOT_TRAINED in line
        assert not any(ch.isdigit() for ch in line.replace(results.NOT_TRAINED, ''))
    assert '| CDDFuse (published) | - | 7.12 | 46.00 | 13.15 | - | 2.19 |' in page
    assert '| CDDFuse (published) | - | 7.44 | 54.67 | 16.36 | - | 2.30 |' in page
    assert f'`{command.command_line(argparse.Namespace(**_defaults(data_dir, out)))}`' in page
    assert report['weights'] == {}


def _defaults(data: Path, out: Path) -> dict:
    return {'data': data, 'weights': None, 'methods': ['mean', 'max', 'sfdfuse'],
            'sets': ['TNO', 'RoadScene'], 'device': 'cpu', 'out': out, 'grid_pairs': 2}


def test_tiny_weights_give_numbers(data_dir: Path, tmp_path: Path) -> None:
    """With a (random, tiny) weights file the sfdfuse row is measured and the file described."""
    torch.manual_seed(0)
    config = SFDFuseConfig(dim=8, num_heads=1, encoder_restormer_blocks=1,
                           encoder_convformer_blocks=1, decoder_restormer_blocks=1,
                           decoder_convformer_blocks=1, detail_nodes=1, head_channels=8)
    weights = save_weights(build_model(config), tmp_path / 'tiny.safetensors',
                           metadata={'trained_on': 'nothing (test)', 'steps': 0})
    out = tmp_path / 'docs'
    rc = _run(['--data', str(data_dir), '--sets', 'TNO', '--methods', 'sfdfuse',
               '--weights', str(weights), '--out', str(out), '--grid-pairs', '3'])
    assert rc == 0
    report = json.loads((out / 'results' / 'results.json').read_text())
    entry = report['sets']['TNO']
    assert list(entry['methods']) == ['mean', 'max', 'sfdfuse']  # baselines always
    result = entry['methods']['sfdfuse']
    assert result['status'] == 'ok' and result['evaluated'] == 3
    assert result['per_image'] == _expected(data_dir, 'TNO', 'sfdfuse', weights)
    assert list(report['weights']) == ['sfdfuse']
    assert report['weights']['sfdfuse']['metadata'] == {'trained_on': 'nothing (test)',
                                                        'steps': 0}
    assert report['weights']['sfdfuse']['config']['dim'] == 8
    assert report['weights']['sfdfuse']['network'] == 'sfdfuse'
    page = (out / 'RESULTS.md').read_text()
    row = next(line for line in page.splitlines() if line.startswith('| sfdfuse (ours)'))
    assert results.NOT_TRAINED not in row and f'{result["mean"]["EN"]:.2f}' in row
    assert '"trained_on": "nothing (test)"' in page and str(weights) in page
    assert 'RoadScene' not in report['sets']
    grid = cv2.imread(str(out / 'results' / 'grid_tno.png'), cv2.IMREAD_UNCHANGED)
    assert grid.shape[:2] == results.grid_size(3, 5)
    assert results.grid_size(4, 5)[1] <= 1600


def test_usage_errors(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A missing --weights file, data folder or unknown method is a usage error (2)."""
    out = tmp_path / 'docs'
    assert _run(['--data', str(data_dir), '--weights', str(tmp_path / 'none.safetensors'),
                 '--out', str(out)]) == 2
    assert 'none.safetensors' in capsys.readouterr().err
    assert _run(['--data', str(tmp_path / 'nowhere'), '--out', str(out)]) == 2
    assert 'nowhere' in capsys.readouterr().err
    assert _run(['--data', str(data_dir), '--methods', 'mean,best', '--out', str(out)]) == 2
    assert "'best'" in capsys.readouterr().err
    assert not out.exists()


def test_count_beats_published_rows() -> None:
    """SFDFuse's own published numbers beat CDDFuse's on 6/8 (TNO) and 3/8 (RoadScene)."""
    for set_name, wins in (('TNO', 6), ('RoadScene', 3)):
        sfd = {k: v for k, v in results.PUBLISHED[set_name]['SFDFuse'].items() if v is not None}
        beats = results.count_beats(sfd, results.PUBLISHED[set_name]['CDDFuse'])
        assert (beats['count'], beats['of']) == (wins, 8)
    cdd = results.PUBLISHED['TNO']['CDDFuse']
    tie = {'EN': 7.1249, 'SD': 46.0051, 'AG': 99.0}
    assert results.count_beats(tie, cdd) == {'count': 1, 'of': 2,
                                             'metrics': {'EN': False, 'SD': True}}


def test_grid_layout_and_selection() -> None:
    """Grid cells letterbox any size; pairs are picked evenly, first and last included."""
    pictures = [np.zeros((30, 200), np.uint8), np.full((300, 20, 3), 128, np.uint8)]
    grid = results.make_grid([('a', pictures), ('b', pictures[::-1])], ['x', 'y'])
    assert grid.shape == results.grid_size(2, 2) + (3,) and grid.dtype == np.uint8
    with pytest.raises(ValueError, match='2 column labels'):
        results.make_grid([('a', pictures[:1])], ['x', 'y'])
    names = [f'{i:02d}' for i in range(25)]
    assert results.select_grid_pairs(names, 4) == ['00', '08', '16', '24']
    assert results.select_grid_pairs(names[:2], 4) == ['00', '01']
    assert results.select_grid_pairs(names, 0) == []
