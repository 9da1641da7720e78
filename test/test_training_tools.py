"""Tests of the model-selection tools in ``training/``: the held-out split and its scoring."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from sfdfuse_core.config import SFDFuseLiteConfig
from sfdfuse_core.model import SFDFuseLite
from sfdfuse_core.weights import save_weights

REPO = Path(__file__).resolve().parent.parent


def _pairs(root: Path, source: str, count: int, size=(48, 64)) -> None:
    rng = np.random.default_rng(0)
    for kind in ('ir', 'vi'):
        (root / source / kind).mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(root / source / 'ir' / f'{i:03d}.png'),
                    rng.integers(0, 256, size, dtype=np.uint8))
        cv2.imwrite(str(root / source / 'vi' / f'{i:03d}.png'),
                    rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_holdout_split_links_every_nth_pair_and_is_repeatable(tmp_path: Path) -> None:
    data, out = tmp_path / 'train', tmp_path / 'split'
    _pairs(data, 'A', 7)
    _pairs(data, 'B', 3)
    for _ in range(2):  # a second run over the same tree changes nothing
        run = _run('training/holdout.py', '--data', str(data), '--sources', 'A,B', '--every',
                   '3', '--out', str(out))
        assert run.returncode == 0, run.stderr
    assert 'A: 5 training pairs, 2 held out' in run.stdout
    held = sorted(p.name for p in (out / 'holdout' / 'A' / 'ir').iterdir())
    assert held == ['002.png', '005.png']
    link = out / 'train' / 'A' / 'vi' / '000.png'
    assert link.is_symlink() and link.resolve() == (data / 'A' / 'vi' / '000.png').resolve()
    assert not (out / 'train' / 'A' / 'ir' / '002.png').exists()  # never in both parts
    bad = _run('training/holdout.py', '--data', str(data), '--every', '1', '--out', str(out))
    assert bad.returncode == 1 and '--every must be >= 2' in bad.stderr


def test_score_holdout_ranks_candidates_with_the_published_metrics(tmp_path: Path) -> None:
    data = tmp_path / 'holdout'
    _pairs(data, 'A', 2)
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(save_weights(SFDFuseLite(SFDFuseLiteConfig(dim=8)),
                                  tmp_path / f'w{seed}.safetensors'))
    out = tmp_path / 'table.json'
    run = _run('training/score_holdout.py', '--holdout', str(data), '--sources', 'A',
               '--weights', *map(str, files), '--out', str(out), '--no-progress')
    assert run.returncode == 0, run.stderr
    import json
    report = json.loads(out.read_text())
    assert set(report['table']) == {'mean', 'max', *map(str, files)}
    assert report['table']['mean']['pairs'] == 2
    assert report['choice'] in map(str, files)
    ranks = report['mean_rank']
    assert sum(ranks.values()) == 3.0  # ranks 1 and 2 on each metric
    assert ranks[report['choice']] == min(ranks.values())
    assert 'choice (lowest mean rank)' in run.stdout


def test_score_holdout_ranks_over_every_metric_of_several_views(tmp_path: Path) -> None:
    import json
    first, second = tmp_path / 'pairs', tmp_path / 'mid'
    _pairs(first, 'A', 2)
    _pairs(second, 'A', 1, size=(56, 60))
    files = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        files.append(str(save_weights(SFDFuseLite(SFDFuseLiteConfig(dim=8)),
                                      tmp_path / f'w{seed}.safetensors')))
    out = tmp_path / 'table.json'
    run = _run('training/score_holdout.py', '--holdout', str(first), str(second), '--sources',
               'A', '--weights', *files, '--out', str(out), '--no-progress')
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert set(report['views']) == {str(first), str(second)}
    assert report['views'][str(second)]['mean']['pairs'] == 1
    assert report['table'] == report['views'][str(first)]
    # the overall mean rank is the mean of the two views' mean ranks (8 cells each)
    for name in files:
        both = [report['view_mean_rank'][str(v)][name] for v in (first, second)]
        assert abs(report['mean_rank'][name] - sum(both) / 2) < 1e-9
    assert abs(sum(report['mean_rank'].values()) - 6.0) < 1e-9  # ranks 1, 2, 3 per cell
    assert report['choice'] == min(files, key=lambda n: report['mean_rank'][n])
    assert 'mean rank over every metric of the 2 views' in run.stdout


def test_score_holdout_grid_shows_every_fuser_on_the_held_out_pairs(tmp_path: Path) -> None:
    from sfdfuse_core.results import grid_size
    data = tmp_path / 'holdout'
    _pairs(data, 'A', 3)
    _pairs(data, 'B', 1)
    torch.manual_seed(0)
    weights = save_weights(SFDFuseLite(SFDFuseLiteConfig(dim=8)), tmp_path / 'cand.safetensors')
    grid = tmp_path / 'pics' / 'grid.png'
    run = _run('training/score_holdout.py', '--holdout', str(data), '--sources', 'A,B',
               '--weights', str(weights), '--grid', str(grid), '--grid-pairs', '2',
               '--no-progress')
    assert run.returncode == 0, run.stderr
    picture = cv2.imread(str(grid))
    # rows: 2 of A's 3 pairs + B's only one; columns: infrared, visible, mean, max, the candidate
    assert picture is not None and picture.shape[:2] == grid_size(3, 5)
    assert f'picture: {grid}' in run.stdout


def test_exposure_holdout_maps_each_image_to_mid_grey_keeping_names_and_hues(tmp_path: Path
                                                                             ) -> None:
    data, out = tmp_path / 'holdout', tmp_path / 'mid'
    rng = np.random.default_rng(1)
    for kind in ('ir', 'vi'):
        (data / 'A' / kind).mkdir(parents=True)
    dark_ir = rng.integers(0, 60, (40, 50), dtype=np.uint8)  # dim, as MSRS at night
    dark_vi = rng.integers(0, 80, (40, 50, 3), dtype=np.uint8)
    dark_vi[..., 2] //= 2  # less red than blue: the hue order must survive
    cv2.imwrite(str(data / 'A' / 'ir' / '000.png'), dark_ir)
    cv2.imwrite(str(data / 'A' / 'vi' / '000.png'), dark_vi)
    run = _run('training/exposure_holdout.py', '--holdout', str(data), '--out', str(out))
    assert run.returncode == 0, run.stderr
    assert 'A: 1 pairs' in run.stdout
    ir = cv2.imread(str(out / 'A' / 'ir' / '000.png'), cv2.IMREAD_UNCHANGED)
    vi = cv2.imread(str(out / 'A' / 'vi' / '000.png'), cv2.IMREAD_UNCHANGED)
    assert ir.shape == dark_ir.shape and vi.shape == dark_vi.shape
    assert abs(ir.mean() / 255 - 0.5) < 0.01
    # colour: the exponent that maps the grey level, applied to each channel (near, not exact)
    assert abs(cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY).mean() / 255 - 0.5) < 0.05
    # a monotonic curve: the order of grey levels is kept (ties may merge, none swap)
    order = np.argsort(dark_ir.ravel(), kind='stable')
    assert np.all(np.diff(ir.ravel()[order].astype(int)) >= 0)
    assert vi[..., 2].mean() < vi[..., 0].mean()
    bad = _run('training/exposure_holdout.py', '--holdout', str(data), '--out', str(out),
               '--target', '1.5')
    assert bad.returncode == 1 and '--target must be in (0, 1)' in bad.stderr
