"""The ``sfdfuse`` command line.

Each sub-command lives in its own module under :mod:`sfdfuse_core.commands` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. Command modules keep
their heavy imports (torch, rclpy) inside ``run`` so that ``sfdfuse --help`` stays fast.
"""
import argparse
import importlib
import sys
from typing import List, Optional

#: Sub-command name -> module under ``sfdfuse_core.commands``.
COMMANDS = {
    'fuse': 'fuse',
    'evaluate': 'evaluate',
    'prepare': 'prepare',
    'train': 'train',
    'bag': 'bag',
    'bench': 'bench',
    'export': 'export',
    'demo': 'demo',
    'results': 'results',
    'calibrate': 'calibrate',
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command that is installed."""
    parser = argparse.ArgumentParser(
        prog='sfdfuse',
        description='Infrared + visible image fusion with SFDFuse: fuse, evaluate, train, '
                    'benchmark, export, and work with ROS 2 bags.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module('sfdfuse_core.commands.' + module_name)
        except ModuleNotFoundError as exc:
            if exc.name != 'sfdfuse_core.commands.' + module_name:
                raise
            continue
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
