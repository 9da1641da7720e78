"""Tests of :mod:`sfdfuse_core.metrics` and the ``sfdfuse evaluate`` command."""
import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sfdfuse_core import metrics
from sfdfuse_core.cli import main
from sfdfuse_core.imageio import list_pairs, read_gray

# --------------------------------------------------------------------------------------------
# Outside reference: the published evaluator on TNO
# --------------------------------------------------------------------------------------------

#: Means over the 25 TNO pairs computed with CDDFuse's ``utils/Evaluator.py`` (commit 40de058
#: of Zhaozixiang1228/MMIF-CDDFuse, scikit-image 0.19.2 as its requirements pin), for two simple
#: fusions of the gray-read pairs: ``round((A + B) / 2)`` and ``max(A, B)``.
TNO_REFERENCE = {
    'mean': {'EN': 6.2329, 'SD': 26.1149, 'SF': 6.9549, 'AG': 2.6675, 'MI': 1.6016,
             'SCD': 1.5414, 'VIF': 0.5727, 'Qabf': 0.3564, 'SSIM': 1.0139},
    'max': {'EN': 6.8127, 'SD': 40.0084, 'SF': 10.0571, 'AG': 3.7728, 'MI': 4.7125,
            'SCD': 1.5399, 'VIF': 0.9243, 'Qabf': 0.5988, 'SSIM': 1.0002},
}


def _fuse_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # numpy's round-half-to-even reproduces the reference; rounding .5 up instead gives
    # EN 6.4213 (+3 %) and MI 1.6139 (+0.8 %), outside the tolerance.
    return np.round((a.astype(np.float64) + b.astype(np.float64)) / 2.0).astype(np.uint8)


TNO_FUSIONS = {'mean': _fuse_mean, 'max': np.maximum}


@pytest.fixture(scope='module')
def tno_pairs(tno_dir: Path) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """The 25 TNO pairs read as 8-bit gray, as the evaluator reads them."""
    listing = list_pairs(tno_dir / 'ir', tno_dir / 'vi')
    assert len(listing.pairs) == 25, f'expected 25 TNO pairs in {tno_dir}'
    return [(name, read_gray(ir), read_gray(vi)) for name, ir, vi in listing.pairs]


@pytest.mark.slow
@pytest.mark.parametrize('fusion', sorted(TNO_FUSIONS))
def test_tno_means_match_published_evaluator(tno_pairs, fusion: str) -> None:
    """Means over TNO of all nine metrics are within 0.5 % of CDDFuse's Evaluator.

    Provenance: the values of :data:`TNO_REFERENCE` were computed with the evaluator that
    published infrared-visible tables use (``utils/Evaluator.py`` of MMIF-CDDFuse, with
    scikit-image 0.19.2, so SSIM used data_range 2) on ``ivf/test/TNO`` of the shared data, for
    F = round((A + B) / 2) (numpy rounding, half to even) and F = max(A, B).
    """
    fuse = TNO_FUSIONS[fusion]
    rows = [metrics.evaluate_pair(fuse(a, b), a, b) for _, a, b in tno_pairs]
    for name in metrics.METRIC_NAMES:
        ours = float(np.mean([r[name] for r in rows]))
        expected = TNO_REFERENCE[fusion][name]
        assert ours == pytest.approx(expected, rel=5e-3), (
            f'{fusion} fusion, {name}: ours {ours:.4f}, published evaluator {expected:.4f}')


def test_uint8_and_float_inputs_agree(tno_pairs) -> None:
    """The evaluator reads float32 images; uint8, float32 and float64 give the same numbers."""
    _, a, b = tno_pairs[0]
    f = np.maximum(a, b)
    ref = metrics.evaluate_pair(f, a, b)
    for dtype in (np.float32, np.float64):
        got = metrics.evaluate_pair(f.astype(dtype), a.astype(dtype), b.astype(dtype))
        for name in metrics.METRIC_NAMES:
            assert got[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name


# --------------------------------------------------------------------------------------------
# SSIM against scikit-image
# --------------------------------------------------------------------------------------------

def _smooth_random(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    noise = rng.uniform(0, 255, shape)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize('shape', [(7, 7), (31, 48), (64, 65), (120, 97)])
def test_ssim_255_matches_skimage(rng, shape) -> None:
    """With data_range=255, ours equals skimage.metrics.structural_similarity (7x7 window)."""
    f, a, b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3))
    expected = (structural_similarity(f, a, data_range=255)
                + structural_similarity(f, b, data_range=255))
    assert metrics.ssim(f, a, b, data_range=255) == pytest.approx(expected, rel=1e-9)
    ff, af, bf = (x * (254.5 / 255) + rng.uniform(0, 0.5, shape) for x in (f, a, b))
    expected = (structural_similarity(ff, af, data_range=255)
                + structural_similarity(ff, bf, data_range=255))
    assert metrics.ssim(ff, af, bf, data_range=255) == pytest.approx(expected, rel=1e-9)


def test_ssim_default_is_the_published_data_range(rng) -> None:
    """The default reproduces scikit-image 0.19's float default (data_range 2), not 255."""
    f, a, b = (_smooth_random(rng, (80, 90)) for _ in range(3))
    expected = sum(structural_similarity(f.astype(np.float64), x.astype(np.float64),
                                         data_range=2) for x in (a, b))
    assert metrics.ssim(f, a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.PUBLISHED_SSIM_DATA_RANGE == 2.0
    assert metrics.evaluate_pair(f, a, b)['SSIM'] == pytest.approx(expected, rel=1e-9)
    correct = metrics.evaluate_pair(f, a, b, ssim_data_range=255)['SSIM']
    assert correct == pytest.approx(metrics.ssim(f, a, b, data_range=255), rel=1e-12)
    assert correct != pytest.approx(expected, rel=1e-3)


# --------------------------------------------------------------------------------------------
# Known values
# --------------------------------------------------------------------------------------------

def test_identical_inputs_give_the_extremes(rng) -> None:
    """F = A = B: SSIM 2, VIF 2, MI = 2 H(F) (nats), Qabf at its ceiling, SCD undefined."""
    img = _smooth_random(rng, (96, 80))
    assert metrics.ssim(img, img, img) == pytest.approx(2.0, abs=1e-12)
    assert metrics.ssim(img, img, img, data_range=255) == pytest.approx(2.0, abs=1e-12)
    assert metrics.vif(img, img, img) == pytest.approx(2.0, abs=1e-9)
    entropy_nats = metrics.entropy(img) * math.log(2.0)
    assert metrics.mutual_information(img, img, img) == pytest.approx(2 * entropy_nats, rel=1e-12)
    # Equal gradients: strength sigmoid saturated (the reference uses g_F >= 1 as the ratio),
    # orientation sigmoid at 1: the value lies between Tg * Ta * s(1) terms and Tg * Ta.
    low = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    high = 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert low - 1e-12 <= metrics.qabf(img, img, img) <= high + 1e-12
    with pytest.raises(metrics.MetricUndefinedError, match='SCD'):
        metrics.scd(img, img, img)


def test_image_statistics_known_values() -> None:
    """EN, SD, SF and AG on images whose values are known by hand."""
    uniform = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert metrics.entropy(uniform) == pytest.approx(8.0, abs=1e-12)
    assert metrics.standard_deviation(uniform) == pytest.approx(np.sqrt((256 ** 2 - 1) / 12))
    two = np.zeros((4, 4), np.uint8)
    two[:2] = 200
    assert metrics.entropy(two) == pytest.approx(1.0, abs=1e-12)
    assert metrics.standard_deviation(two) == pytest.approx(100.0)
    ramp = np.tile(np.arange(0, 250, 5, dtype=np.float64), (20, 1))  # d/dx = 5, d/dy = 0
    assert metrics.spatial_frequency(ramp) == pytest.approx(5.0)
    assert metrics.average_gradient(ramp) == pytest.approx(5.0 / math.sqrt(2.0))
    # EN rounds float values into the 256 bins half to even, as np.round: 0, 2, 2, 2 (rounding
    # half up would give 0, 2, 3, 2 and 1.5 bits).
    quarter = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert metrics.entropy(np.array([[0.4, 1.6], [2.5, 1.5]])) == pytest.approx(quarter)


def _mi_by_counting(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information (nats) from a dictionary of value pairs: the plain definition."""
    n = x.size
    joint: Dict[Tuple[float, float], int] = {}
    for u, v in zip(x.ravel().tolist(), y.ravel().tolist()):
        joint[(u, v)] = joint.get((u, v), 0) + 1
    px: Dict[float, int] = {}
    py: Dict[float, int] = {}
    for (u, v), c in joint.items():
        px[u] = px.get(u, 0) + c
        py[v] = py.get(v, 0) + c
    return sum(c / n * math.log(c * n / (px[u] * py[v])) for (u, v), c in joint.items())


def test_mutual_information_one_bin_per_value(rng) -> None:
    """MI bins every distinct value (8-bit values and arbitrary float values alike)."""
    f, a, b = (rng.integers(0, 12, (30, 40)).astype(np.uint8) for _ in range(3))
    expected = _mi_by_counting(f, a) + _mi_by_counting(f, b)
    assert metrics.mutual_information(f, a, b) == pytest.approx(expected, rel=1e-12)
    ff = f + rng.choice([0.0, 0.25, 0.5], f.shape)
    expected = _mi_by_counting(ff, a) + _mi_by_counting(ff, b)
    assert metrics.mutual_information(ff, a, b) == pytest.approx(expected, rel=1e-12)


def test_scd_is_the_sum_of_correlations(rng) -> None:
    f, a, b = (rng.uniform(0, 255, (40, 50)) for _ in range(3))
    expected = (np.corrcoef((f - b).ravel(), a.ravel())[0, 1]
                + np.corrcoef((f - a).ravel(), b.ravel())[0, 1])
    assert metrics.scd(f, a, b) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------
# Failures are reported, never replaced by a number
# --------------------------------------------------------------------------------------------

def test_constant_fused_image_is_reported(rng) -> None:
    """A constant F is refused by evaluate_pair; each metric alone gives its exact limit."""
    a, b = _smooth_random(rng, (64, 64)), _smooth_random(rng, (64, 64))
    f = np.full((64, 64), 128, np.uint8)
    with pytest.raises(metrics.MetricUndefinedError, match='constant'):
        metrics.evaluate_pair(f, a, b)
    assert metrics.entropy(f) == 0.0
    assert metrics.standard_deviation(f) == 0.0
    assert metrics.spatial_frequency(f) == 0.0
    assert metrics.average_gradient(f) == 0.0
    assert metrics.mutual_information(f, a, b) == 0.0
    assert metrics.vif(f, a, b) == pytest.approx(0.0, abs=1e-12)


def test_constant_source_raises_where_the_reference_substitutes(rng) -> None:
    """The reference returns VIF 1.0 for a constant source and NaN for SCD/Qabf: we raise."""
    f = _smooth_random(rng, (64, 64))
    flat = np.full((64, 64), 50, np.uint8)
    b = _smooth_random(rng, (64, 64))
    with pytest.raises(metrics.MetricUndefinedError, match='VIF.*ir'):
        metrics.vif(f, flat, b)
    with pytest.raises(metrics.MetricUndefinedError, match='SCD'):
        metrics.scd(f, flat, b)
    # Qabf's zero padding gives a constant non-zero image edges on its border, so only black
    # sources leave it with no gradient at all (0/0).
    black = np.zeros((64, 64), np.uint8)
    with pytest.raises(metrics.MetricUndefinedError, match='Qabf'):
        metrics.qabf(f, black, black)
    with pytest.raises(metrics.MetricUndefinedError):
        metrics.evaluate_pair(f, flat, b)


GOOD = np.zeros((48, 48), np.uint8)
GOOD[10:30, 5:40] = 200


@pytest.mark.parametrize('bad, match', [
    (np.zeros((48, 47), np.uint8), 'shape mismatch'),
    (GOOD.astype(np.int32), 'int32'),
    (GOOD.astype(np.uint16), 'uint16'),
    (GOOD.astype(bool), 'bool'),
    (np.zeros((48, 48, 3), np.uint8), r'\(48, 48, 3\)'),
    (np.zeros((0, 48), np.uint8), 'empty'),
    (np.where(GOOD > 0, np.nan, 0.0), 'non-finite'),
    (np.where(GOOD > 0, np.inf, 0.0), 'non-finite'),
    (GOOD.astype(np.float64) * 2, 'max 400'),
    (GOOD.astype(np.float64) - 1, 'min -1'),
    (GOOD.tolist(), 'list'),
])
def test_invalid_inputs_raise_value_error(bad, match: str) -> None:
    for call in (lambda: metrics.evaluate_pair(bad, GOOD, GOOD),
                 lambda: metrics.evaluate_pair(GOOD, GOOD, bad),
                 lambda: metrics.ssim(GOOD, bad, GOOD)):
        with pytest.raises(ValueError, match=match):
            call()
    if not isinstance(bad, list) and bad.shape == GOOD.shape:
        for fn in (metrics.entropy, metrics.standard_deviation, metrics.spatial_frequency,
                   metrics.average_gradient):
            with pytest.raises(ValueError, match=match):
                fn(bad)


def test_too_small_and_bad_options_raise() -> None:
    small = np.zeros((40, 60), np.uint8)
    with pytest.raises(metrics.MetricInputError, match=r'at least 41x41'):
        metrics.vif(small, small, small)
    with pytest.raises(metrics.MetricInputError, match=r'at least 7x7'):
        metrics.ssim(small[:6], small[:6], small[:6])
    with pytest.raises(metrics.MetricInputError, match='data_range'):
        metrics.ssim(GOOD, GOOD, GOOD, data_range=0)
    with pytest.raises(metrics.MetricInputError, match='data_range'):
        metrics.evaluate_pair(GOOD, GOOD, GOOD, ssim_data_range=float('nan'))


# --------------------------------------------------------------------------------------------
# Folders, table and the command line
# --------------------------------------------------------------------------------------------

def test_format_table() -> None:
    rows = {'CDDFuse': {m: 1.23456 for m in metrics.METRIC_NAMES},
            'a-much-longer-name': {'EN': 7.0}}
    table = metrics.format_table(rows).splitlines()
    assert table[0].split() == ['name', *metrics.METRIC_NAMES]
    assert table[2].split() == ['CDDFuse'] + ['1.2346'] * 9
    assert table[3].split() == ['a-much-longer-name', '7.0000'] + ['-'] * 8
    assert len({len(line) for line in table}) == 1
    assert metrics.format_table(rows, decimals=2).splitlines()[2].split()[1] == '1.23'


@pytest.fixture
def small_set(tmp_path: Path, rng) -> Dict[str, Path]:
    """Three 64x64 pairs; fused images for two (one as .png for a .jpg pair), one missing."""
    dirs = {k: tmp_path / k for k in ('ir', 'vi', 'fused')}
    for d in dirs.values():
        d.mkdir()
    for name in ('a.png', 'b.png', 'c.jpg'):
        ir, vi = _smooth_random(rng, (64, 64)), _smooth_random(rng, (64, 64))
        cv2.imwrite(str(dirs['ir'] / name), ir)
        cv2.imwrite(str(dirs['vi'] / name), cv2.merge([vi, vi, vi]))
        if name != 'b.png':
            fused = np.maximum(read_gray(dirs['ir'] / name), read_gray(dirs['vi'] / name))
            cv2.imwrite(str(dirs['fused'] / (Path(name).stem + '.png')), fused)
    return dirs


def test_evaluate_folders(small_set) -> None:
    d = small_set
    result = metrics.evaluate_folders(d['ir'], d['vi'], d['fused'], progress=False)
    assert set(result) == {'mean', 'per_image', 'skipped'}
    assert sorted(result['per_image']) == ['a.png', 'c.jpg']
    assert list(result['skipped']) == ['b.png'] and 'no fused image' in result['skipped']['b.png']
    a = read_gray(d['ir'] / 'a.png')
    v = read_gray(d['vi'] / 'a.png')
    assert result['per_image']['a.png'] == metrics.evaluate_pair(np.maximum(a, v), a, v)
    for m in metrics.METRIC_NAMES:
        per = [r[m] for r in result['per_image'].values()]
        assert result['mean'][m] == pytest.approx(np.mean(per), rel=1e-12)

    cv2.imwrite(str(d['fused'] / 'a.png'), np.full((64, 64), 9, np.uint8))
    cv2.imwrite(str(d['fused'] / 'b.png'), np.zeros((32, 64), np.uint8))
    result = metrics.evaluate_folders(d['ir'], d['vi'], d['fused'], progress=False)
    assert list(result['per_image']) == ['c.jpg']
    assert 'constant' in result['skipped']['a.png']
    assert 'shape mismatch' in result['skipped']['b.png']


def test_cli_evaluate_end_to_end(small_set, tmp_path: Path, capsys) -> None:
    d = small_set
    out = tmp_path / 'res' / 'metrics.json'
    code = main(['evaluate', '--ir', str(d['ir']), '--vi', str(d['vi']),
                 '--fused', str(d['fused']), '--json', str(out), '--ssim-data-range', '255'])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].split() == ['name', *metrics.METRIC_NAMES]
    assert [line.split()[0] for line in lines[2:5]] == ['a.png', 'c.jpg', 'mean']
    assert 'b.png' in captured.err and 'no fused image' in captured.err
    data = json.loads(out.read_text())
    assert set(data) == {'mean', 'per_image', 'skipped'}
    assert list(data['mean']) == list(metrics.METRIC_NAMES)
    assert all(list(v) == list(metrics.METRIC_NAMES) for v in data['per_image'].values())
    assert list(data['skipped']) == ['b.png']
    expected = metrics.evaluate_folders(d['ir'], d['vi'], d['fused'], ssim_data_range=255,
                                        progress=False)
    assert data['mean'] == pytest.approx(expected['mean'], rel=1e-12)


def test_cli_evaluate_missing_folder_exits_2(small_set, tmp_path: Path, capsys) -> None:
    d = small_set
    code = main(['evaluate', '--ir', str(d['ir']), '--vi', str(d['vi']),
                 '--fused', str(tmp_path / 'nope'), '--no-progress'])
    err = capsys.readouterr().err
    assert code == 2
    assert '--fused folder not found' in err and 'nope' in err and 'Traceback' not in err


def test_cli_evaluate_nothing_to_evaluate_exits_1(small_set, tmp_path: Path, capsys) -> None:
    d = small_set
    empty = tmp_path / 'empty'
    empty.mkdir()
    code = main(['evaluate', '--ir', str(d['ir']), '--vi', str(d['vi']),
                 '--fused', str(empty), '--no-progress'])
    assert code == 1
    assert 'no image could be evaluated' in capsys.readouterr().err
