"""``sfdfuse results``: write ``docs/RESULTS.md``, our numbers next to the published tables.

Example (from the repository root; the data sets are never part of the repository)::

    sfdfuse results --data ../shared/data/ivf/test --methods mean,max,sfdfuse --out docs

For each set under ``--data`` (``TNO/``, ``RoadScene/``, each with ``ir/`` and ``vi/``) every pair
is fused with each method (the baselines ``mean`` and ``max`` always) and scored as the published
tables are; ``OUT/RESULTS.md``, ``OUT/results/results.json`` and one grid picture per set
(``OUT/results/grid_<set>.png``) are written (:mod:`sfdfuse_core.results`). Without a weights
file the ``sfdfuse`` row says that the network is not trained yet instead of showing numbers.

Exit status: 0 when the page was written, 1 when it was written but some method scored no image
of a set, 2 for usage errors (missing data folders, unknown method, missing or broken
``--weights``, unavailable device).
"""
import argparse
import shlex
import sys
from pathlib import Path
from typing import List

HELP = 'fuse and score TNO and RoadScene, and write RESULTS.md next to the published numbers'

DEVICE_CHOICES = ('auto', 'cpu', 'cuda')


def _names(text: str) -> List[str]:
    """Parse ``'mean,max'`` into ``['mean', 'max']`` (spaces and empty items ignored)."""
    names = [item.strip() for item in text.split(',') if item.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f'expected a comma-separated list, got {text!r}')
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``results`` options to ``parser``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--data', required=True, type=Path, metavar='DIR',
                        help='folder holding TNO/ and RoadScene/, each with ir/ and vi/ '
                             '(e.g. ../shared/data/ivf/test)')
    parser.add_argument('--weights', type=Path, default=None, metavar='PATH',
                        help='weights file (.safetensors) or checkpoint (.pt) for the row of the '
                             'network it holds (default: each network row uses its shipped '
                             'weights; a network without them says "not trained yet")')
    parser.add_argument('--methods', type=_names, default=['mean', 'max', 'sfdfuse-lite',
                                                           'sfdfuse'],
                        metavar='M,...',
                        help='rows among mean, max (always included), sfdfuse-lite, sfdfuse '
                             '(default: mean,max,sfdfuse-lite,sfdfuse)')
    parser.add_argument('--sets', type=_names, default=['TNO', 'RoadScene'], metavar='S,...',
                        help='evaluation sets under --data (default: TNO,RoadScene)')
    parser.add_argument('--device', choices=DEVICE_CHOICES, default='auto',
                        help='where the network runs (default: %(default)s)')
    parser.add_argument('--out', type=Path, default=Path('docs'), metavar='DIR',
                        help='where RESULTS.md and results/ are written (default: docs)')
    parser.add_argument('--grid-pairs', type=int, default=4, metavar='N',
                        help='pairs per set shown in the grid picture, 0 for none '
                             '(default: %(default)s)')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bars')


def command_line(args: argparse.Namespace) -> str:
    """Return the full ``sfdfuse results`` command line that reproduces ``args``.

    :param args: the parsed options of :func:`add_arguments`.
    :return: the command, shell-quoted, every option spelled out.
    """
    parts = ['sfdfuse', 'results', '--data', str(args.data)]
    if args.weights is not None:
        parts += ['--weights', str(args.weights)]
    parts += ['--methods', ','.join(args.methods), '--sets', ','.join(args.sets),
              '--device', args.device, '--out', str(args.out),
              '--grid-pairs', str(args.grid_pairs)]
    return ' '.join(shlex.quote(part) for part in parts)


def _error(message: str) -> int:
    print(f'sfdfuse results: error: {message}', file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Fuse, score and write the results page; print where it went and the summary.

    :param args: the parsed options of :func:`add_arguments`.
    :return: 0 when written, 1 when some method scored no image of a set, 2 for usage errors.
    """
    from sfdfuse_core.results import ResultsError, make_results
    from sfdfuse_core.weights import WeightsError

    try:
        report = make_results(args.data, args.out, methods=args.methods, weights=args.weights,
                              device=args.device, grid_pairs=args.grid_pairs, sets=args.sets,
                              command=command_line(args), progress=not args.no_progress,
                              log=print)
    except (ResultsError, WeightsError, ValueError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f'cannot write the results: {exc}')

    failed = []
    for set_name, entry in report['sets'].items():
        for method, result in entry['methods'].items():
            if result['status'] == 'ok':
                beats = result['beats_cddfuse']
                print(f'{set_name:9s} {method:8s} {result["evaluated"]}/{entry["pairs"]} pairs, '
                      f'beats CDDFuse on {beats["count"]}/{beats["of"]} published metrics')
            elif result['status'] == 'not_trained':
                print(f'{set_name:9s} {method:8s} {result["message"]}')
            else:
                failed.append(f'{set_name} {method}')
                print(f'{set_name:9s} {method:8s} no image could be scored')
    print(f'wrote {args.out / "RESULTS.md"} and {args.out / "results"}/')
    return 1 if failed else 0
