"""``sfdfuse calibrate``: the thermal -> RGB homography from checkerboard pairs, as node params.

Pairs come from two folders matched by file name (``--ir DIR --vi DIR``, as ``sfdfuse fuse``)
or from a bag (``--bag BAG --thermal-topic T --rgb-topic R``, paired by header stamp as the node
pairs). The board's inner corners are found in both images of each pair
(:mod:`sfdfuse_core.calibrate`), the homography is estimated and written as a ROS params file
for ``fuse_node`` (``homography`` and ``homography_coords``); the per-pair errors are printed,
and a picture of the thermal edges over the RGB image, before and after, is written beside it.

Exit status: 0 when the file was written (pairs without a board are listed and skipped), 1 when
no calibration could be made (board not found, no pairs ...), 2 for usage errors (missing
folders or bag, a bad ``--board``, an output that exists without ``--force``).
"""
import argparse
import math
import shlex
import sys
from pathlib import Path

HELP = 'find the thermal -> RGB homography from checkerboard pairs and write it as node params'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibrate`` options to ``parser``.

    :param parser: the sub-command's parser.
    """
    src = parser.add_argument_group('pairs (either folders or a bag)')
    src.add_argument('--ir', type=Path, metavar='DIR', help='folder of thermal images')
    src.add_argument('--vi', type=Path, metavar='DIR',
                     help='folder of RGB images (same file names as --ir)')
    src.add_argument('--bag', type=Path, metavar='BAG', help='ROS 2 bag: folder, .mcap or .db3')
    src.add_argument('--thermal-topic', metavar='T', help='thermal topic of --bag')
    src.add_argument('--rgb-topic', metavar='R', help='RGB topic of --bag')
    src.add_argument('--slop', type=float, default=0.02,
                     help='--bag: largest stamp difference of a pair in seconds; small, since '
                     'the board moves (default: %(default)s)')
    src.add_argument('--max-pairs', type=int, default=40,
                     help='--bag: most pairs used, evenly spread over the recording (default: '
                     '%(default)s)')
    parser.add_argument('--board', required=True, metavar='COLSxROWS',
                        help='inner corners of the checkerboard, e.g. 9x6 for 10 x 7 squares')
    parser.add_argument('--square', type=float, default=None, metavar='METRES',
                        help='square size; only sets the unit of the printed board distances '
                        'and baseline (the homography does not depend on it)')
    parser.add_argument('--out', required=True, type=Path, metavar='FILE.yaml',
                        help='ROS params file to write for fuse_node')
    parser.add_argument('--overlay', type=Path, default=None, metavar='FILE.png',
                        help='before/after picture (default: FILE.png beside --out)')
    parser.add_argument('--coords', choices=('resized', 'raw'), default='resized',
                        help="homography_coords to write (default: %(default)s, the node's "
                        'default)')
    parser.add_argument('--polarity', choices=('any', 'normal', 'inverted'), default='any',
                        help='how the board looks in thermal: normal (dark squares dark), '
                        'inverted, or any (default: %(default)s)')
    parser.add_argument('--force', action='store_true', help='replace an existing --out file')


def _error(message: str, status: int = 2) -> int:
    print(f'sfdfuse calibrate: error: {message}', file=sys.stderr)
    return status


def _fmt(value: float, unit: str = '') -> str:
    return '-' if math.isnan(value) else f'{value:.2f}{unit}'


def run(args: argparse.Namespace) -> int:
    """Calibrate, print the per-pair errors, write the params file and the picture.

    :param args: the parsed options (see :func:`add_arguments`).
    :return: 0 when the file was written, 1 when no calibration could be made, 2 for a usage
        error.
    """
    import cv2

    from sfdfuse_core.calibrate import (CalibrationError, calibrate, overlay_image,
                                        params_yaml, parse_board, read_bag_pairs,
                                        read_folder_pairs)

    folders = args.ir is not None or args.vi is not None
    bag = args.bag is not None or args.thermal_topic is not None or args.rgb_topic is not None
    if folders == bag:
        return _error('give either --ir DIR --vi DIR or --bag BAG --thermal-topic T '
                      '--rgb-topic R')
    if folders and (args.ir is None or args.vi is None):
        return _error('--ir and --vi go together')
    if bag and None in (args.bag, args.thermal_topic, args.rgb_topic):
        return _error('--bag needs --thermal-topic and --rgb-topic')
    try:
        board = parse_board(args.board)
    except CalibrationError as exc:
        return _error(str(exc))
    if args.square is not None and not (math.isfinite(args.square) and args.square > 0):
        return _error(f'--square must be a positive number of metres, got {args.square}')
    if args.out.suffix.lower() not in ('.yaml', '.yml'):
        return _error(f'--out must be a .yaml file, got {args.out}')
    if args.out.exists() and not args.force:
        return _error(f'{args.out} exists (pass --force to replace it)')
    overlay = args.overlay or args.out.with_suffix('.png')

    try:
        if folders:
            for flag, folder in (('--ir', args.ir), ('--vi', args.vi)):
                if not folder.is_dir():
                    return _error(f'{flag} folder not found: {folder}')
            pairs, skipped = read_folder_pairs(args.ir, args.vi)
            source = f'--ir {args.ir} --vi {args.vi}'
        else:
            if not args.bag.exists():
                return _error(f'bag not found: {args.bag}')
            pairs, skipped, total = read_bag_pairs(args.bag, args.thermal_topic, args.rgb_topic,
                                                   slop=args.slop, max_pairs=args.max_pairs)
            print(f'{total} thermal/RGB pairs in {args.bag}; calibrating from {len(pairs)}')
            source = (f'--bag {args.bag} --thermal-topic {args.thermal_topic} --rgb-topic '
                      f'{args.rgb_topic}')
        images = {}

        def remember(pairs):
            for name, thermal, rgb in pairs:
                images[name] = (thermal, rgb)
                yield name, thermal, rgb
        cal, corners = calibrate(remember(pairs), board, square=args.square or 1.0,
                                 polarity=args.polarity, skipped=skipped)
    except CalibrationError as exc:
        return _error(str(exc), status=1)

    unit = ' m' if args.square else ' sq'
    print(f'{"pair":<24} {"used":<5} {"homography px rms/max":>22} {"model px":>9} '
          f'{"distance":>9}')
    for rep in sorted(cal.pairs, key=lambda r: r.name):
        if rep.used:
            print(f'{rep.name:<24} {"yes":<5} {_fmt(rep.rms) + " / " + _fmt(rep.max):>22} '
                  f'{_fmt(rep.model_rms):>9} {_fmt(rep.distance, unit):>9}')
        else:
            print(f'{rep.name:<24} {"no":<5} skipped: {rep.reason}')
    described = {'infinity': 'homography at infinity (intrinsics + rotation, stereoCalibrate)',
                 'plane': "the board plane's homography (one pose)",
                 'joint-plane': 'one RANSAC homography over all pairs'}[cal.method]
    print(f'method: {described}')
    if cal.note:
        print(f'note: {cal.note}')
    print(f'error on the board corners: RMS {cal.rms:.3f} px, max {cal.max:.3f} px (RGB pixels'
          + (', parallax of the board distance included)' if cal.method == 'infinity' else ')'))
    if cal.baseline is not None:
        print(f'calibration reprojection error: {cal.model_rms:.3f} px RMS; baseline '
              f'{float((cal.baseline ** 2).sum() ** 0.5):.3f}{unit}')

    command = 'sfdfuse calibrate ' + source + f' --board {args.board}' + (
        f' --square {args.square}' if args.square else '')
    text = params_yaml(cal, coords=args.coords, source=command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f'wrote {args.out} ({len(cal.used)} pairs, homography_coords {args.coords})')

    shown = sorted((p for p in corners if p.name in cal.used),
                   key=lambda p: next(r.rms for r in cal.pairs if r.name == p.name))
    pick = shown[len(shown) // 2]
    thermal, rgb = images[pick.name]
    picture = overlay_image(thermal, rgb, cal.homography, pick, label=pick.name)
    if cv2.imwrite(str(overlay), picture):
        print(f'wrote {overlay} (thermal edges in magenta over the RGB image of {pick.name}, '
              'before and after)')
    else:
        print(f'note: cannot write {overlay}', file=sys.stderr)
    print('load it: ros2 run sfdfuse_ros fuse_node --ros-args --params-file '
          f'{shlex.quote(str(args.out))}')
    return 0
