"""Tests of ``sfdfuse prepare``: the patch grid, the low-contrast rule, the HDF5 layout."""
import json
import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from sfdfuse_core.cli import main as cli_main
from sfdfuse_core.data import H5PatchDataset, PatchDatasetError, PrepareError, low_contrast
from sfdfuse_core.data import patch_positions, prepare_patches, to_luma


def _texture(rng: np.random.Generator, h: int, w: int, lo: int = 20, hi: int = 235) -> np.ndarray:
    return rng.integers(lo, hi, size=(h, w), dtype=np.uint8)


def _y(bgr: np.ndarray) -> np.ndarray:
    """Luma computed independently: 0.299 R + 0.587 G + 0.114 B, rounded."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    return np.rint(0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8)


@pytest.fixture
def folders(tmp_path: Path, rng: np.random.Generator) -> dict:
    """Two pairs on the published grid (patch 128, stride 200), a bad pair and a stray file.

    ``a.png`` is 528x328 (W x H): corners rows {0, 200} x columns {0, 200, 400} = 6 positions.
    The visible image is flat at (0, 0) and the infrared one black at (200, 400): 2 dropped.
    ``b.png`` is 328x128 with a three-channel gray infrared image: 2 positions, both kept.
    """
    ir_dir, vi_dir = tmp_path / 'src' / 'ir', tmp_path / 'src' / 'vi'
    ir_dir.mkdir(parents=True)
    vi_dir.mkdir(parents=True)
    ir_a = _texture(rng, 328, 528)
    ir_a[200:328, 400:528] = 0
    vi_a = np.stack([_texture(rng, 328, 528) for _ in range(3)], axis=-1)
    vi_a[0:128, 0:128] = (90, 100, 110)
    ir_b = _texture(rng, 128, 328)
    vi_b = np.stack([_texture(rng, 128, 328) for _ in range(3)], axis=-1)
    cv2.imwrite(str(ir_dir / 'a.png'), ir_a)
    cv2.imwrite(str(vi_dir / 'a.png'), vi_a)
    cv2.imwrite(str(ir_dir / 'b.png'), np.stack([ir_b] * 3, axis=-1))
    cv2.imwrite(str(vi_dir / 'b.png'), vi_b)
    cv2.imwrite(str(ir_dir / 'c.png'), _texture(rng, 200, 200))  # sizes differ: skipped
    cv2.imwrite(str(vi_dir / 'c.png'), _texture(rng, 210, 200))
    cv2.imwrite(str(ir_dir / 'd.png'), _texture(rng, 100, 100))  # too small: skipped
    cv2.imwrite(str(vi_dir / 'd.png'), _texture(rng, 100, 100))
    cv2.imwrite(str(ir_dir / 'stray.png'), _texture(rng, 10, 10))  # no partner
    return {'ir': ir_dir, 'vi': vi_dir, 'ir_a': ir_a, 'vi_a': vi_a, 'ir_b': ir_b, 'vi_b': vi_b}


def test_patch_positions_follow_the_published_grid():
    assert patch_positions(480, 640, 128, 200) == [(t, left) for t in (0, 200)
                                                   for left in (0, 200, 400)]
    assert len(patch_positions(1024, 1280, 128, 200)) == 5 * 6  # LLVIP
    assert patch_positions(127, 500, 128, 200) == []


def test_low_contrast_rule_values():
    assert low_contrast(np.full((8, 8), 100, np.uint8))  # flat: ratio 0
    assert low_contrast(np.zeros((8, 8), np.uint8))  # p90 == 0 guarded, dropped
    half = np.array([100] * 50 + [200] * 50, np.uint8).reshape(10, 10)
    assert not low_contrast(half)  # (200 - 100) / 200 = 0.5
    # 0..99 in steps of 1: p10 = 9.9, p90 = 89.1 -> ratio 0.889
    assert not low_contrast(np.arange(100).reshape(10, 10))
    # values 95 (20 %) and 100 (80 %): p10 = 95, p90 = 100 -> 0.05 < 0.1
    assert low_contrast(np.array([95] * 20 + [100] * 80).reshape(10, 10))
    # values 85 and 100: ratio 0.15 >= 0.1 kept; with threshold 0.2 dropped
    mixed = np.array([85] * 20 + [100] * 80).reshape(10, 10)
    assert not low_contrast(mixed, 0.1)
    assert low_contrast(mixed, 0.2)


def test_to_luma_weights():
    bgr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    np.testing.assert_array_equal(to_luma(bgr)[0], [29, 150, 76, 22])


def test_prepare_counts_drops_and_contents(folders, tmp_path):
    out = tmp_path / 'out' / 'train.h5'
    report = prepare_patches([(folders['ir'], folders['vi'])], out)
    assert (report.pairs, report.kept, report.dropped) == (2, 6, 2)
    assert sorted(name for name, _ in report.skipped) == ['c.png', 'd.png']
    assert any('sizes differ' in why for _, why in report.skipped)
    assert any('smaller than one 128x128' in why for _, why in report.skipped)
    assert report.unmatched == [f'{folders["ir"]}/stray.png']
    assert report.file_bytes == out.stat().st_size
    assert not list(out.parent.glob('*.tmp'))
    with h5py.File(out, 'r') as h5:
        for key in ('ir', 'vi'):
            ds = h5[key]
            assert ds.shape == (6, 1, 128, 128) and ds.dtype == np.uint8
            assert ds.chunks == (1, 1, 128, 128) and ds.compression == 'gzip'
        origin = h5['origin'][:]
        ir, vi = h5['ir'][:, 0], h5['vi'][:, 0]
        attrs = dict(h5.attrs)
    kept_a = [(0, 200), (0, 400), (200, 0), (200, 200)]
    assert [tuple(o) for o in origin] == ([(0, 0, t, left) for t, left in kept_a]
                                          + [(0, 1, 0, 0), (0, 1, 0, 200)])
    y_a, y_b = _y(folders['vi_a']), _y(folders['vi_b'])
    for i, (t, left) in enumerate(kept_a):
        np.testing.assert_array_equal(ir[i], folders['ir_a'][t:t + 128, left:left + 128])
        np.testing.assert_array_equal(vi[i], y_a[t:t + 128, left:left + 128])
    np.testing.assert_array_equal(ir[5], folders['ir_b'][:, 200:328])
    np.testing.assert_array_equal(vi[4], y_b[:, 0:128])
    assert (attrs['patch'], attrs['stride'], attrs['min_contrast']) == (128, 200, 0.1)
    assert (attrs['patches_kept'], attrs['patches_dropped'], attrs['pairs_used']) == (6, 2, 2)
    assert json.loads(attrs['sources']) == [[str(folders['ir']), str(folders['vi'])]]
    assert json.loads(attrs['pair_names']) == [['a.png', 'b.png', 'c.png', 'd.png']]


def test_dataset_reads_floats_lazily(folders, tmp_path):
    out = tmp_path / 'train.h5'
    prepare_patches([(folders['ir'], folders['vi'])], out, compression='lzf')
    ds = H5PatchDataset(out)
    assert len(ds) == 6 and ds._h5 is None  # nothing open until the first item
    vi, ir = ds[5]
    assert vi.dtype == torch.float32 and vi.shape == (1, 128, 128)
    assert 0.0 <= float(ir.min()) and float(ir.max()) <= 1.0
    np.testing.assert_allclose(ir[0].numpy() * 255, folders['ir_b'][:, 200:328], atol=1e-3)
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no handle
    assert clone._h5 is None and torch.equal(clone[0][0], ds[0][0])
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(PatchDatasetError, match='not found'):
        H5PatchDataset(tmp_path / 'missing.h5')


def test_refuses_evaluation_sets_and_bad_options(tmp_path):
    test_dir = tmp_path / 'data' / 'ivf' / 'test' / 'TNO'
    (test_dir / 'ir').mkdir(parents=True)
    (test_dir / 'vi').mkdir()
    with pytest.raises(PrepareError, match='evaluation'):
        prepare_patches([(test_dir / 'ir', test_dir / 'vi')], tmp_path / 'x.h5')
    with pytest.raises(PrepareError, match='compression'):
        prepare_patches([(tmp_path, tmp_path)], tmp_path / 'x.h5', compression='zip')
    with pytest.raises(PrepareError, match='no image pairs'):
        prepare_patches([(tmp_path, tmp_path)], tmp_path / 'x.h5')


def test_cli_reports_counts(folders, tmp_path, capsys):
    out = tmp_path / 'cli.h5'
    code = cli_main(['prepare', '--ir', str(folders['ir']), '--vi', str(folders['vi']),
                     '--ir', str(folders['ir']), '--vi', str(folders['vi']),
                     '--out', str(out), '--quiet'])
    text = capsys.readouterr().out
    assert code == 0
    assert '12 patches kept, 4 dropped' in text and '4 pairs skipped' in text
    assert 'skipped c.png: sizes differ' in text
    assert cli_main(['prepare', '--ir', str(folders['ir']), '--out', str(out),
                     '--vi', str(folders['vi']), '--vi', str(folders['vi'])]) == 2
