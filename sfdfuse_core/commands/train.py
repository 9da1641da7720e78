"""``sfdfuse train``: the two-phase SFDFuse training (see :mod:`sfdfuse_core.train.trainer`).

Several GPUs: ``torchrun --nproc_per_node N -m sfdfuse_core train --config ... --data ...``.
"""
import argparse
import os
import sys
from pathlib import Path

HELP = 'train SFDFuse (reconstruction then fusion phase) on an HDF5 patch file'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``sfdfuse train``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--config', metavar='YAML',
                        help='training config (e.g. training/sfdfuse.yaml); with --resume the '
                             "run folder's config.yaml is used when omitted")
    parser.add_argument('--data', metavar='FILE.h5[,FILE.h5...]',
                        help='patch file(s) from `sfdfuse prepare`, comma-separated')
    parser.add_argument('--out', metavar='DIR', help='run folder (default: out in the config)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a config key, e.g. phase1_epochs=1 or model.dim=16 '
                             '(repeatable)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --out from its last checkpoint')
    parser.add_argument('--max-steps-per-epoch', type=int, metavar='N',
                        help='at most N steps per epoch (short schedules)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'),
                        help='where to train (default: device in the config, auto)')


def run(args: argparse.Namespace) -> int:
    """Run ``sfdfuse train``.

    :param args: parsed options.
    :return: exit status: 0 done (or stopped by its step budget), 2 bad config or checkpoint.
    """
    from sfdfuse_core.data.dataset import PatchDatasetError
    from sfdfuse_core.train.checkpoint import CheckpointError
    from sfdfuse_core.train.config import ConfigError, load_config
    from sfdfuse_core.train.trainer import main

    config_path = args.config
    if config_path is None:
        if args.resume and args.out and (Path(args.out) / 'config.yaml').is_file():
            config_path = Path(args.out) / 'config.yaml'
        else:
            print('error: --config is required (or --resume --out RUN_DIR with a saved '
                  'config.yaml)', file=sys.stderr)
            return 2
    try:
        config = load_config(config_path, args.set, data=args.data, out=args.out,
                             max_steps_per_epoch=args.max_steps_per_epoch, device=args.device)
        result = main(config, resume=args.resume)
    except (ConfigError, CheckpointError, PatchDatasetError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if os.environ.get('RANK', '0') != '0':  # torchrun: rank 0 reports
        return 0
    state = 'finished' if result.finished else 'stopped (resume with --resume)'
    print(f'{state}: {result.step} steps, epoch {result.epoch}; run folder {result.run_dir}')
    return 0
