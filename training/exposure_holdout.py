"""Write a mid-grey exposure copy of the held-out pairs, a second view for choosing among runs.

MSRS and LLVIP are dim scenes: their infrared images average about 24/255 and 72/255 and their
visible images about 62/255. A network chosen on them only is chosen for dark infrared; well
exposed cameras give images near mid-grey. This script maps every held-out image, infrared and
visible independently, by the gamma curve ``x ** g`` (``x`` in ``[0, 1]``) whose exponent brings
the image's mean grey level to ``--target`` (0.5 by default, the photographic mid-grey; no test
set is read or used for the choice of ``g``). A colour visible image gets one exponent for its
three channels, computed on its grey level, so its hues stay (its grey mean then lands near
the target, not exactly on it: 0.52 for a dim random test image). ``training/score_holdout.py`` then
scores candidates on ``OUT`` as on the original held-out folder.

    python training/exposure_holdout.py --holdout out/ivf_split/holdout \\
        --out out/ivf_split/holdout_mid
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def exposure_exponent(gray: np.ndarray, target: float) -> float:
    """Return ``g`` such that the mean of ``(gray / max) ** g`` is about ``target``.

    Solved on the image's own histogram by bisection on ``log g`` (the mean of ``x ** g`` falls
    as ``g`` grows), so it is exact for the image, not an approximation from its mean alone.

    :param gray: ``(H, W)`` uint8 or uint16 image.
    :param target: wanted mean in ``(0, 1)``.
    :return: the exponent, in ``[1/16, 16]``.
    :raises ValueError: ``target`` outside ``(0, 1)`` or an image of one value.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f'target must be in (0, 1), got {target!r}')
    top = float(np.iinfo(gray.dtype).max)
    values, counts = np.unique(gray, return_counts=True)
    if len(values) < 2:
        raise ValueError('an image of a single grey level has no exposure to change')
    x, w = values.astype(np.float64) / top, counts / counts.sum()
    lo, hi = math.log(1.0 / 16.0), math.log(16.0)
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if float((w * x ** math.exp(mid)).sum()) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2.0)


def apply_exponent(img: np.ndarray, g: float) -> np.ndarray:
    """Return ``img`` (gray or BGR, uint8 or uint16) mapped by ``x ** g``, same dtype."""
    top = float(np.iinfo(img.dtype).max)
    lut = np.round((np.arange(int(top) + 1) / top) ** g * top).astype(img.dtype)
    return lut[img]


def write_copy(holdout: Path, out: Path, target: float) -> dict[str, int]:
    """Write the mapped copy of every pair under ``holdout``; return pairs written per source."""
    import cv2

    from sfdfuse_core.imageio import list_pairs, read_image, to_gray

    written = {}
    for source in sorted(p.name for p in holdout.iterdir() if p.is_dir()):
        listing = list_pairs(holdout / source / 'ir', holdout / source / 'vi')
        for name, ir_path, vi_path in listing.pairs:
            for kind, path in (('ir', ir_path), ('vi', vi_path)):
                img = read_image(path)
                mapped = apply_exponent(img, exposure_exponent(to_gray(img), target))
                dest = out / source / kind / (Path(name).stem + '.png')
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(dest), mapped):
                    raise OSError(f'cannot write {dest}')
        written[source] = len(listing.pairs)
    return written


def main(argv: list[str] | None = None) -> int:
    """Run the command line; see the module docstring."""
    from sfdfuse_core.imageio import ImageReadError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--holdout', type=Path, required=True,
                        help='held-out folder of training/holdout.py (SOURCE/ir, SOURCE/vi)')
    parser.add_argument('--out', type=Path, required=True, help='output folder (PNG files)')
    parser.add_argument('--target', type=float, default=0.5,
                        help='mean grey level of every mapped image, in (0, 1) (default: 0.5)')
    args = parser.parse_args(argv)
    try:
        if not 0.0 < args.target < 1.0:
            raise ValueError(f'--target must be in (0, 1), got {args.target}')
        if not args.holdout.is_dir():
            raise ValueError(f'no held-out folder {args.holdout}')
        written = write_copy(args.holdout, args.out, args.target)
    except (OSError, ValueError, ImageReadError) as exc:
        print(f'exposure_holdout: {exc}', file=sys.stderr)
        return 1
    for source, count in written.items():
        print(f'{source}: {count} pairs -> {args.out / source}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
