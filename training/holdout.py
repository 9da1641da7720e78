"""Split the training pairs into a training part and a held-out part for model selection.

Every ``--every``-th pair of each source (sorted by name) goes to ``OUT/holdout/<source>``, the
rest to ``OUT/train/<source>``, as symbolic links (nothing is copied). ``sfdfuse prepare`` cuts
patches from the training part only; ``training/score_holdout.py`` scores candidate weights on the
held-out pairs with the published metrics. TNO and RoadScene are never used for either.

    python training/holdout.py --data ../shared/data/ivf/train --sources MSRS,LLVIP \\
        --every 10 --out out/ivf_split
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sfdfuse_core.imageio import ImageReadError, list_pairs


def split(data: Path, sources: list[str], every: int, out: Path) -> dict[str, tuple[int, int]]:
    """Write the two link trees; return ``{source: (train pairs, held-out pairs)}``.

    :raises ValueError: ``every`` < 2, or an existing ``out`` that is not a split of this data.
    """
    if every < 2:
        raise ValueError(f'--every must be >= 2, got {every}')
    counts = {}
    for source in sources:
        listing = list_pairs(data / source / 'ir', data / source / 'vi')
        held = train = 0
        for index, (name, ir, vi) in enumerate(sorted(listing.pairs)):
            part = 'holdout' if index % every == every - 1 else 'train'
            held, train = held + (part == 'holdout'), train + (part == 'train')
            for kind, target in (('ir', ir), ('vi', vi)):
                link = out / part / source / kind / Path(target).name
                link.parent.mkdir(parents=True, exist_ok=True)
                if link.is_symlink() or link.exists():
                    if Path(os.readlink(link)) != Path(target).resolve():
                        raise ValueError(f'{link} exists and points elsewhere; remove {out}')
                    continue
                link.symlink_to(Path(target).resolve())
        counts[source] = (train, held)
    return counts


def main(argv: list[str] | None = None) -> int:
    """Run the command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, required=True, help='folder with one folder per '
                        'source, each with ir/ and vi/')
    parser.add_argument('--sources', default='MSRS,LLVIP', help='comma-separated sources')
    parser.add_argument('--every', type=int, default=10, help='hold out every N-th pair')
    parser.add_argument('--out', type=Path, required=True, help='where train/ and holdout/ go')
    args = parser.parse_args(argv)
    try:
        counts = split(args.data, args.sources.split(','), args.every, args.out)
    except (OSError, ValueError, ImageReadError) as exc:
        print(f'holdout: {exc}', file=sys.stderr)
        return 1
    for source, (train, held) in counts.items():
        print(f'{source}: {train} training pairs, {held} held out')
    return 0


if __name__ == '__main__':
    sys.exit(main())
