"""``sfdfuse evaluate``: the nine fusion metrics of published tables for a folder of results.

Example::

    sfdfuse evaluate --ir data/TNO/ir --vi data/TNO/vi --fused out/TNO --json out/TNO.json

Prints one row per image and the mean; ``--json`` writes ``{"mean": {...}, "per_image":
{NAME: {...}}, "skipped": {NAME: reason}}``. The default SSIM data range (2) reproduces
published numbers; ``--ssim-data-range 255`` is the correct one (see :mod:`sfdfuse_core.metrics`).
"""
import argparse
import json
import sys
from pathlib import Path

HELP = 'Compute EN, SD, SF, AG, MI, SCD, VIF, Qabf and SSIM of fused images against their pairs.'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to ``parser``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--ir', required=True, type=Path, metavar='DIR',
                        help='folder of infrared images')
    parser.add_argument('--vi', required=True, type=Path, metavar='DIR',
                        help='folder of visible images (same file names as --ir)')
    parser.add_argument('--fused', required=True, type=Path, metavar='DIR',
                        help='folder of fused images (same names; NAME.png also matches '
                             'NAME.jpg)')
    parser.add_argument('--json', type=Path, metavar='PATH',
                        help='also write the mean, per-image and skipped results as JSON')
    parser.add_argument('--ssim-data-range', type=float, default=2.0, choices=(2.0, 255.0),
                        metavar='{2,255}',
                        help='SSIM data range: 2 reproduces published tables (old '
                             'scikit-image default for float images), 255 is correct for '
                             '8-bit images (default: 2)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')


def run(args: argparse.Namespace) -> int:
    """Evaluate the fused folder, print the table, optionally write JSON.

    :param args: the parsed options of :func:`add_arguments`.
    :return: 0 on success, 1 when no image could be evaluated or the JSON cannot be written,
        2 when a folder is missing.
    """
    for option, folder in (('--ir', args.ir), ('--vi', args.vi), ('--fused', args.fused)):
        if not folder.is_dir():
            print(f'sfdfuse evaluate: error: {option} folder not found: {folder}',
                  file=sys.stderr)
            return 2

    from sfdfuse_core import metrics

    try:
        result = metrics.evaluate_folders(args.ir, args.vi, args.fused,
                                          ssim_data_range=args.ssim_data_range,
                                          progress=not args.no_progress)
    except ValueError as exc:  # MetricError, ImageReadError: no pair could be evaluated
        print(f'sfdfuse evaluate: error: {exc}', file=sys.stderr)
        return 1

    rows = dict(result['per_image'])
    rows['mean'] = result['mean']
    print(metrics.format_table(rows))
    print(f'{len(result["per_image"])} image(s) evaluated, SSIM data range '
          f'{args.ssim_data_range:g}')
    if result['skipped']:
        print(f'{len(result["skipped"])} image(s) skipped:', file=sys.stderr)
        for name, reason in result['skipped'].items():
            print(f'  {name}: {reason}', file=sys.stderr)

    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + '\n')
        except OSError as exc:
            print(f'sfdfuse evaluate: error: cannot write {args.json}: {exc}', file=sys.stderr)
            return 1
        print(f'wrote {args.json}')
    return 0
