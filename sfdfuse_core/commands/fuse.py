"""``sfdfuse fuse``: fuse every infrared/visible pair of two folders into PNG files.

Pairs share a file name (``ir/NAME`` with ``vi/NAME``, :func:`sfdfuse_core.imageio.list_pairs`);
the fused image is written as ``OUT/STEM.png``. Pairs that cannot be fused (no partner, unreadable
file, sizes that differ, unsupported pixel type) are skipped and listed at the end.

Exit status: 0 when every pair was fused, 1 when some were skipped, 2 for usage errors (missing
folders, missing or broken weights, unavailable device).
"""
import argparse
import sys
from pathlib import Path
from typing import List, Tuple

from sfdfuse_core.commands import add_precision_argument

HELP = 'fuse the infrared/visible image pairs of two folders into PNG files'

METHOD_CHOICES = ('sfdfuse', 'mean', 'max')
DEVICE_CHOICES = ('auto', 'cpu', 'cuda')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fuse`` options to ``parser``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--ir', required=True, type=Path, metavar='DIR',
                        help='folder of infrared images')
    parser.add_argument('--vi', required=True, type=Path, metavar='DIR',
                        help='folder of visible images (same file names as --ir)')
    parser.add_argument('--out', required=True, type=Path, metavar='DIR',
                        help='output folder for the fused PNGs (created if missing)')
    parser.add_argument('--method', choices=METHOD_CHOICES, default='sfdfuse',
                        help='fusion method: the SFDFuse network or a classic baseline on the '
                             'luminance (default: %(default)s)')
    parser.add_argument('--weights', metavar='PATH|NAME', default=None,
                        help='weights file (.safetensors), training checkpoint (.pt) or shipped '
                             'network (sfdfuse-lite, sfdfuse) for --method sfdfuse (default: '
                             'the shipped compact network on the CPU)')
    parser.add_argument('--device', choices=DEVICE_CHOICES, default='auto',
                        help='where the network runs (default: %(default)s)')
    add_precision_argument(parser)
    parser.add_argument('--no-progress', action='store_true',
                        help='do not show the progress bar')


def _error(message: str) -> int:
    print(f'sfdfuse fuse: error: {message}', file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Fuse every pair and report what was fused and what was skipped.

    :param args: the parsed options (see :func:`add_arguments`).
    :return: 0 if all pairs were fused, 1 if some were skipped, 2 for a usage error.
    """
    import cv2
    from sfdfuse_core.fusion import Fuser, FusionInputError
    from sfdfuse_core.imageio import ImageReadError, list_pairs, read_image
    from sfdfuse_core.progress import progress
    from sfdfuse_core.weights import WeightsError, WeightsNotFoundError

    for flag, folder in (('--ir', args.ir), ('--vi', args.vi)):
        if not folder.is_dir():
            return _error(f'{flag} folder not found: {folder}')
    out_dir = args.out.resolve()
    if out_dir in (args.ir.resolve(), args.vi.resolve()):
        return _error(f'--out must differ from the input folders, got {args.out}')
    if args.weights is not None and args.method != 'sfdfuse':
        print(f'note: --weights is ignored with --method {args.method}', file=sys.stderr)
    try:
        fuser = Fuser(method=args.method,
                      weights=args.weights if args.method == 'sfdfuse' else None,
                      device=args.device, precision=args.precision)
    except WeightsNotFoundError as exc:
        return _error(f'{exc}; pass --weights PATH, or use a baseline that needs none: '
                      '--method mean or --method max')
    except (WeightsError, ValueError) as exc:
        return _error(str(exc))

    listing = list_pairs(args.ir, args.vi)
    skipped: List[Tuple[str, str]] = []
    skipped += [(name, f'no visible image of that name in {args.vi}') for name in listing.ir_only]
    skipped += [(name, f'no infrared image of that name in {args.ir}')
                for name in listing.vi_only]
    if not listing.pairs and not skipped:
        return _error(f'no images found in {args.ir} and {args.vi}')

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    fused = 0
    for name, ir_path, vi_path in progress(listing.pairs, desc='fusing', unit='pair',
                                           file=sys.stderr, disable=args.no_progress):
        out_name = Path(name).with_suffix('.png').name
        if out_name in written:
            skipped.append((name, f'output {out_name} is already written for {written[out_name]}'))
            continue
        try:
            ir = read_image(ir_path)
            vi = read_image(vi_path)
            image = fuser(vi, ir)
        except (ImageReadError, FusionInputError) as exc:
            skipped.append((name, str(exc)))
            continue
        if not cv2.imwrite(str(out_dir / out_name), image):
            skipped.append((name, f'cannot write {out_dir / out_name}'))
            continue
        written[out_name] = name
        fused += 1

    what = args.method
    if fuser.model is not None:
        what = f'{what} ({fuser.network}, {fuser.weights_path})'
    print(f'fused {fused} pair(s) with {what} into {out_dir}')
    if skipped:
        print(f'skipped {len(skipped)}:')
        for name, reason in sorted(skipped):
            print(f'  {name}: {reason}')
        return 1
    return 0
