"""Cut registered infrared / visible image pairs into training patches stored in one HDF5 file.

The recipe is the one published with CDDFuse (Zhao et al., CVPR 2023) and reused by SFDFuse
(``dataprocessing.py`` of both repositories): the visible image becomes its luma
``Y = 0.299 R + 0.587 G + 0.114 B``, the infrared image stays gray, both are cut into
``128 x 128`` patches on a grid of stride 200, and a patch position is dropped when either
modality is low-contrast there (``(p90 - p10) / p90 < 0.1``, scikit-image's
``is_low_contrast`` rule with the 10th and 90th percentiles).

Differences from the published script, all deliberate:

* patches are stored as ``uint8`` (the published file holds ``float32``), compressed and chunked
  per patch, in two datasets ``ir`` and ``vi`` of shape ``(N, 1, P, P)`` instead of one dataset
  per patch, with the recipe and the sources written as attributes;
* ``Y`` is rounded to ``uint8`` before the contrast test, so the test judges exactly the pixels
  the network will see;
* a patch whose 90th percentile is 0 (black) counts as low-contrast instead of dividing by zero;
* pairs are matched by file name, not by position in two sorted lists.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from sfdfuse_core.imageio import ImageReadError, is_gray_color, list_pairs, read_image
from sfdfuse_core.fsutil import fsync_dir

__all__ = ['PrepareError', 'PrepareReport', 'Y_WEIGHTS', 'FORMAT_VERSION', 'patch_positions',
           'low_contrast', 'to_luma', 'to_infrared_gray', 'prepare_patches']

PathLike = Union[str, Path]

#: Weights of R, G and B in the luma the network sees (ITU-R BT.601, as the published recipe).
Y_WEIGHTS = (0.299, 0.587, 0.114)
#: Version of the HDF5 layout written here (attribute ``format_version``).
FORMAT_VERSION = 1
#: HDF5 filters that may be asked for.
COMPRESSIONS = ('gzip', 'lzf', 'none')
#: Folder fragment of the evaluation sets, which must never be trained on.
TEST_FRAGMENT = ('ivf', 'test')


class PrepareError(ValueError):
    """The inputs of a data preparation are invalid (bad folders, options, or a test set)."""


@dataclass
class PrepareReport:
    """What a preparation did.

    :param out: the HDF5 file written.
    :param pairs: pairs read.
    :param kept: patches written.
    :param dropped: patch positions dropped as low-contrast.
    :param skipped: ``(name, reason)`` of every pair that was not used.
    :param unmatched: file names present in only one folder of a source.
    :param file_bytes: size of the written file.
    """

    out: Path
    pairs: int = 0
    kept: int = 0
    dropped: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    unmatched: List[str] = field(default_factory=list)
    file_bytes: int = 0


def patch_positions(height: int, width: int, patch: int, stride: int) -> List[Tuple[int, int]]:
    """Top-left corners of the patch grid, row by row (the published ``Im2Patch`` grid).

    :param height: image height.
    :param width: image width.
    :param patch: patch side.
    :param stride: distance between neighbouring corners.
    :return: ``(top, left)`` of every patch that lies fully inside the image.
    """
    if patch <= 0 or stride <= 0:
        raise PrepareError(f'patch and stride must be > 0, got patch={patch}, stride={stride}')
    return [(top, left) for top in range(0, height - patch + 1, stride)
            for left in range(0, width - patch + 1, stride)]


def low_contrast(patch: np.ndarray, min_contrast: float = 0.1) -> bool:
    """Whether a patch is low-contrast: ``(p90 - p10) / p90 < min_contrast``.

    Percentiles are NumPy's (linear interpolation), as scikit-image's ``is_low_contrast``.
    A patch with ``p90 == 0`` is low-contrast.

    :param patch: ``(H, W)`` array of any real dtype.
    :param min_contrast: the threshold.
    :return: ``True`` when the patch should be dropped.
    """
    p10, p90 = np.percentile(np.asarray(patch, dtype=np.float64), [10, 90])
    if p90 <= 0:
        return True
    return bool((p90 - p10) / p90 < min_contrast)


def to_luma(img: np.ndarray) -> np.ndarray:
    """Compute the luma ``Y`` of an 8-bit BGR image, rounded to ``uint8`` (gray: unchanged).

    :param img: ``(H, W)`` or ``(H, W, 3)`` BGR ``uint8`` array.
    :return: ``(H, W)`` ``uint8`` array.
    """
    if img.dtype != np.uint8:
        raise PrepareError(f'expected an 8-bit visible image, got {img.dtype}')
    if img.ndim == 2:
        return img
    if img.ndim != 3 or img.shape[2] != 3:
        raise PrepareError(f'expected (H, W) or (H, W, 3), got {img.shape}')
    b, g, r = (img[:, :, i].astype(np.float64) for i in range(3))
    y = Y_WEIGHTS[0] * r + Y_WEIGHTS[1] * g + Y_WEIGHTS[2] * b
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def to_infrared_gray(img: np.ndarray) -> np.ndarray:
    """Reduce an 8-bit infrared image to one gray channel.

    A three-channel file whose channels are equal (LLVIP stores its infrared images so) gives
    that channel; a coloured one (a false-colour palette) is refused, since its luma is not a
    temperature.

    :param img: ``(H, W)`` or ``(H, W, 3)`` ``uint8`` array.
    :return: ``(H, W)`` ``uint8`` array.
    """
    if img.dtype != np.uint8:
        raise PrepareError(f'expected an 8-bit infrared image, got {img.dtype} '
                           '(map 16-bit thermal images to 8 bit first)')
    if img.ndim == 2:
        return img
    if is_gray_color(img):
        return np.ascontiguousarray(img[:, :, 0])
    raise PrepareError(f'infrared image has {img.shape[2]} different channels '
                       '(a false-colour palette?); expected gray')


def _check_not_test_set(path: Path) -> None:
    parts = [p.lower() for p in path.resolve().parts]
    for i in range(len(parts) - 1):
        if (parts[i], parts[i + 1]) == TEST_FRAGMENT:
            raise PrepareError(f'refusing to build training data from an evaluation set: {path} '
                               '(TNO and RoadScene under ivf/test are for evaluation only)')


def prepare_patches(sources: Sequence[Tuple[PathLike, PathLike]], out: PathLike,
                    patch: int = 128, stride: int = 200, min_contrast: float = 0.1,
                    compression: str = 'gzip', compression_level: int = 4,
                    progress: Optional[Callable[[Iterable], Iterable]] = None) -> PrepareReport:
    """Turn folders of image pairs into one HDF5 file of training patches.

    The file holds ``ir`` and ``vi``: ``uint8`` datasets of shape ``(N, 1, patch, patch)``
    chunked one patch per chunk, ``origin``: ``int32`` ``(N, 4)`` rows of
    ``(source, pair, top, left)``, and attributes with the recipe, the source folders, the pair
    names and the counts. It is written to a temporary name and renamed when complete.

    :param sources: ``(ir_dir, vi_dir)`` folders; pairs share a file name.
    :param out: the HDF5 file to write (replaced if it exists).
    :param patch: patch side in pixels.
    :param stride: step of the patch grid in pixels.
    :param min_contrast: a patch position is dropped when either modality's
        ``(p90 - p10) / p90`` is below this.
    :param compression: ``'gzip'``, ``'lzf'`` or ``'none'``.
    :param compression_level: gzip level 0..9 (ignored otherwise).
    :param progress: optional wrapper of an iterable (e.g. ``tqdm``).
    :return: what was done.
    :raises PrepareError: bad options, missing folders, no pair, or an evaluation-set folder.
    """
    import h5py

    if compression not in COMPRESSIONS:
        raise PrepareError(f'compression must be one of {COMPRESSIONS}, got {compression!r}')
    if not 0 <= compression_level <= 9:
        raise PrepareError(f'compression_level must be in 0..9, got {compression_level}')
    if not 0.0 <= min_contrast < 1.0:
        raise PrepareError(f'min_contrast must be in [0, 1), got {min_contrast}')
    if patch <= 0 or stride <= 0:
        raise PrepareError(f'patch and stride must be > 0, got patch={patch}, stride={stride}')
    if not sources:
        raise PrepareError('no source folders given')
    out = Path(out)
    report = PrepareReport(out=out)
    listings = []
    for ir_dir, vi_dir in sources:
        ir_dir, vi_dir = Path(ir_dir), Path(vi_dir)
        _check_not_test_set(ir_dir)
        _check_not_test_set(vi_dir)
        try:
            listing = list_pairs(ir_dir, vi_dir)
        except ImageReadError as exc:
            raise PrepareError(str(exc)) from exc
        report.unmatched += [f'{ir_dir}/{n}' for n in listing.ir_only]
        report.unmatched += [f'{vi_dir}/{n}' for n in listing.vi_only]
        listings.append((ir_dir, vi_dir, listing))
    if not any(listing.pairs for _, _, listing in listings):
        raise PrepareError('no image pairs found (pairs share a file name in the ir and vi '
                           f'folders): {[(str(a), str(b)) for a, b in sources]}')

    filters: Dict[str, object] = {}
    if compression == 'gzip':
        filters = {'compression': 'gzip', 'compression_opts': compression_level}
    elif compression == 'lzf':
        filters = {'compression': 'lzf'}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    shape = (0, 1, patch, patch)
    names: List[List[str]] = []
    try:
        with h5py.File(tmp, 'w') as h5:
            ds = {key: h5.create_dataset(key, shape=shape, maxshape=(None, 1, patch, patch),
                                         dtype=np.uint8, chunks=(1, 1, patch, patch), **filters)
                  for key in ('ir', 'vi')}
            origin = h5.create_dataset('origin', shape=(0, 4), maxshape=(None, 4),
                                       dtype=np.int32, chunks=(1024, 4))
            for src, (ir_dir, vi_dir, listing) in enumerate(listings):
                names.append([name for name, _, _ in listing.pairs])
                items = list(enumerate(listing.pairs))
                for index, (name, ir_path, vi_path) in (progress(items) if progress else items):
                    try:
                        ir = to_infrared_gray(read_image(ir_path))
                        vi = to_luma(read_image(vi_path))
                    except (ImageReadError, PrepareError) as exc:
                        report.skipped.append((name, str(exc)))
                        continue
                    if ir.shape != vi.shape:
                        report.skipped.append((name, f'sizes differ: ir {ir.shape[::-1]} vs '
                                                     f'vi {vi.shape[::-1]} (W, H)'))
                        continue
                    positions = patch_positions(ir.shape[0], ir.shape[1], patch, stride)
                    if not positions:
                        report.skipped.append((name, f'smaller than one {patch}x{patch} patch: '
                                                     f'{ir.shape[1]}x{ir.shape[0]}'))
                        continue
                    report.pairs += 1
                    keep_ir, keep_vi, keep_at = [], [], []
                    for top, left in positions:
                        p_ir = ir[top:top + patch, left:left + patch]
                        p_vi = vi[top:top + patch, left:left + patch]
                        if low_contrast(p_ir, min_contrast) or low_contrast(p_vi, min_contrast):
                            report.dropped += 1
                            continue
                        keep_ir.append(p_ir)
                        keep_vi.append(p_vi)
                        keep_at.append((src, index, top, left))
                    if not keep_at:
                        continue
                    start, stop = report.kept, report.kept + len(keep_at)
                    for key, arrays in (('ir', keep_ir), ('vi', keep_vi)):
                        ds[key].resize(stop, axis=0)
                        ds[key][start:stop] = np.stack(arrays)[:, None]  # (n, 1, P, P)
                    origin.resize(stop, axis=0)
                    origin[start:stop] = np.asarray(keep_at, dtype=np.int32)
                    report.kept = stop
            attrs = {
                'format_version': FORMAT_VERSION,
                'recipe': 'CDDFuse/SFDFuse dataprocessing.py: Y of visible, gray infrared, '
                          'patch grid, drop low-contrast patches',
                'patch': patch, 'stride': stride, 'min_contrast': min_contrast,
                'contrast_rule': '(p90 - p10) / p90 < min_contrast in either modality; '
                                 'p90 == 0 counts as low',
                'y_weights_rgb': list(Y_WEIGHTS), 'dtype': 'uint8 (divide by 255)',
                'sources': json.dumps([[str(a), str(b)] for a, b, _ in listings]),
                'pair_names': json.dumps(names),
                'origin_columns': 'source, pair, top, left',
                'pairs_used': report.pairs, 'patches_kept': report.kept,
                'patches_dropped': report.dropped,
                'pairs_skipped': json.dumps(report.skipped),
                'compression': compression,
            }
            for key, value in attrs.items():
                h5.attrs[key] = value
            h5.flush()
        with open(tmp, 'rb+') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    report.file_bytes = out.stat().st_size
    return report
