"""``sfdfuse prepare``: cut infrared / visible image folders into an HDF5 file of patches."""
import argparse
import sys

HELP = 'cut ir/vi image folders into 128x128 training patches in one HDF5 file'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``sfdfuse prepare``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--ir', action='append', required=True, metavar='DIR',
                        help='folder of infrared images (repeat, paired in order with --vi)')
    parser.add_argument('--vi', action='append', required=True, metavar='DIR',
                        help='folder of visible images; files pair with --ir by name')
    parser.add_argument('--out', required=True, metavar='FILE.h5', help='HDF5 file to write')
    parser.add_argument('--patch', type=int, default=128, help='patch side (default 128)')
    parser.add_argument('--stride', type=int, default=200, help='patch grid step (default 200)')
    parser.add_argument('--min-contrast', type=float, default=0.1,
                        help='drop a patch where (p90-p10)/p90 of either image is below this '
                             '(default 0.1)')
    parser.add_argument('--compression', choices=('gzip', 'lzf', 'none'), default='gzip',
                        help='HDF5 filter (default gzip)')
    parser.add_argument('--level', type=int, default=4, help='gzip level 0..9 (default 4)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
    """Run ``sfdfuse prepare``.

    :param args: parsed options.
    :return: exit status (0 on success, 2 on bad input).
    """
    from sfdfuse_core.data.prepare import PrepareError, prepare_patches

    if len(args.ir) != len(args.vi):
        print(f'error: give --ir and --vi the same number of times '
              f'({len(args.ir)} --ir, {len(args.vi)} --vi)', file=sys.stderr)
        return 2
    progress = None
    if not args.quiet:
        from functools import partial

        from sfdfuse_core.progress import progress as display  # lines when not a terminal
        progress = partial(display, desc='pairs', unit='pair', leave=False)
    try:
        report = prepare_patches(list(zip(args.ir, args.vi)), args.out, patch=args.patch,
                                 stride=args.stride, min_contrast=args.min_contrast,
                                 compression=args.compression, compression_level=args.level,
                                 progress=progress)
    except PrepareError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'{report.out}: {report.kept} patches kept, {report.dropped} dropped as low-contrast, '
          f'from {report.pairs} pairs; {len(report.skipped)} pairs skipped; '
          f'{report.file_bytes / 2 ** 20:.1f} MiB')
    for name, reason in report.skipped:
        print(f'  skipped {name}: {reason}')
    if report.unmatched:
        print(f'  {len(report.unmatched)} files without a partner, e.g. {report.unmatched[:3]}')
    return 0
