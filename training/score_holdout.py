"""Score candidate weights on the held-out training pairs, to choose among training runs.

Fuses every held-out pair (``training/holdout.py``) with each candidate and with ``mean`` and
``max``, scores it with the published metrics and protocol (as ``sfdfuse results``), and ranks
the candidates: for each of the 8 published metrics the best candidate gets rank 1; the
candidate with the lowest mean rank is the choice (ties: the lower held-out loss decides, so
look at the table). TNO and RoadScene are never read.

    python training/score_holdout.py --holdout out/ivf_split/holdout \\
        --weights runs/a/final.safetensors runs/b/final.safetensors --out out/select.json \\
        --grid out/select.png     # optional: a few held-out pairs with every fuser, to look at

Several ``--holdout`` folders (for example the pairs and their mid-grey copy written by
``training/exposure_holdout.py``) give one table each and one mean rank over every metric of
every folder; the grid shows the first folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def held_out_pairs(holdout: Path, source: str) -> list[tuple[str, Path, Path]]:
    """Return ``(source/name, ir path, visible path)`` of one source's held-out pairs, sorted."""
    from sfdfuse_core.imageio import list_pairs

    listing = list_pairs(holdout / source / 'ir', holdout / source / 'vi')
    return [(f'{source}/{n}', ir, vi) for n, ir, vi in listing.pairs]


def score(holdout: Path, sources: list[str], candidates: dict[str, object],
          progress: bool = True) -> dict[str, dict[str, float]]:
    """Return ``{name: {metric: mean over all held-out pairs}}`` for each fuser."""
    from sfdfuse_core.results import _evaluate_method, _means

    pairs = [pair for source in sources for pair in held_out_pairs(holdout, source)]
    if not pairs:
        raise ValueError(f'no held-out pairs under {holdout}')
    table = {}
    for name, fuser in candidates.items():
        per_image, skipped, _, seconds = _evaluate_method(fuser, pairs, (), progress, name)
        if skipped:
            raise RuntimeError(f'{name}: {len(skipped)} pairs failed, e.g. '
                               f'{next(iter(skipped.items()))}')
        table[name] = dict(_means(per_image), pairs=len(per_image), seconds=seconds)
    return table


def _label(name: str) -> str:
    """Return a short column label: ``runs/X/final.safetensors`` -> ``X``, a file -> its stem."""
    path = Path(name)
    if path.suffix != '.safetensors':
        return name
    return path.parent.name if path.name == 'final.safetensors' else path.stem


def write_grid(path: Path, holdout: Path, sources: list[str], fusers: dict[str, object],
               count: int) -> None:
    """Write a picture: ``count`` held-out pairs per source, infrared | visible | each fuser."""
    import cv2

    from sfdfuse_core.imageio import read_image
    from sfdfuse_core.results import make_grid, select_grid_pairs

    rows = []
    for source in sources:
        by_name = {name: (ir, vi) for name, ir, vi in held_out_pairs(holdout, source)}
        for name in select_grid_pairs(list(by_name), count):
            ir, vi = (read_image(path) for path in by_name[name])
            rows.append((name, [ir, vi] + [f(vi, ir) for f in fusers.values()]))
    labels = ['infrared', 'visible'] + [_label(n) for n in fusers]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), make_grid(rows, labels)):
        raise OSError(f'cannot write {path}')


def ranks(tables: list[dict[str, dict[str, float]]], names: list[str]) -> dict[str, float]:
    """Mean rank of each candidate over the 8 published metrics of every table (one table per
    held-out view; 1: best; all metrics higher-better)."""
    from sfdfuse_core.results import PUBLISHED_METRICS

    total = {n: 0.0 for n in names}
    for view in tables:
        for metric in PUBLISHED_METRICS:
            order = sorted(names, key=lambda n: -view[n][metric])
            for rank, n in enumerate(order, 1):
                total[n] += rank
    return {n: total[n] / (len(PUBLISHED_METRICS) * len(tables)) for n in names}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--holdout', type=Path, nargs='+', required=True,
                        help='held-out folder(s); with several (e.g. the pairs and their '
                        'mid-grey copy, training/exposure_holdout.py) the mean rank runs over '
                        'every metric of every folder')
    parser.add_argument('--sources', default='MSRS,LLVIP')
    parser.add_argument('--weights', nargs='+', required=True, help='candidate weights files')
    parser.add_argument('--out', type=Path, help='JSON file for the table')
    parser.add_argument('--grid', type=Path, help='PNG: held-out pairs with every fuser')
    parser.add_argument('--grid-pairs', type=int, default=2, help='pairs per source in --grid')
    parser.add_argument('--no-progress', action='store_true')
    args = parser.parse_args(argv)

    from sfdfuse_core.fusion import Fuser
    from sfdfuse_core.results import PUBLISHED_METRICS

    fusers: dict[str, object] = {m: Fuser(method=m, device='cpu') for m in ('mean', 'max')}
    names = []
    for path in args.weights:
        name = str(path)
        fusers[name] = Fuser(method='sfdfuse', weights=path, device='cpu')
        names.append(name)
    tables = {str(h): score(h, args.sources.split(','), fusers, not args.no_progress)
              for h in args.holdout}
    mean_rank = ranks(list(tables.values()), names)
    view_rank = {view: ranks([table], names) for view, table in tables.items()}
    width = max(len(n) for n in fusers)
    for view, table in tables.items():
        if len(tables) > 1:
            print(f'{view}:')
        print(f'{"":{width}s} ' + ' '.join(f'{m:>6s}' for m in PUBLISHED_METRICS)
              + '  mean rank')
        for name, row in table.items():
            rank = f'{view_rank[view][name]:9.2f}' if name in mean_rank else ''
            print(f'{name:{width}s} ' + ' '.join(f'{row[m]:6.3f}' for m in PUBLISHED_METRICS)
                  + f'  {rank}')
    if len(tables) > 1:
        print('mean rank over every metric of the ' + str(len(tables)) + ' views: '
              + ', '.join(f'{n} {mean_rank[n]:.2f}' for n in names))
    best = min(names, key=lambda n: mean_rank[n])
    print(f'choice (lowest mean rank): {best}')
    if args.grid:
        write_grid(args.grid, args.holdout[0], args.sources.split(','), fusers, args.grid_pairs)
        print(f'picture: {args.grid}')
    if args.out:
        report = {'table': tables[str(args.holdout[0])], 'mean_rank': mean_rank, 'choice': best}
        if len(tables) > 1:
            report['views'] = tables
            report['view_mean_rank'] = view_rank
        args.out.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == '__main__':
    sys.exit(main())
