"""``sfdfuse bag``: fuse a ROS 2 bag offline (``bag fuse``) or play one with rclpy (``bag play``).

``bag fuse`` needs only ``rosbags``; ``bag play`` needs rclpy (a ROS 2 install or the ROS
wheels) and imports it only when run.
"""
import argparse
import sys

from sfdfuse_core.commands import add_precision_argument

HELP = 'work with ROS 2 bags: fuse a bag offline, or play one into the node'

#: Exit status for a refused or impossible request (existing output, missing topic ...).
EXIT_USAGE = 2


def add_fuse_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sfdfuse bag fuse``."""
    parser.add_argument('input', metavar='IN', help='input bag: folder, .mcap or .db3 file')
    parser.add_argument('output', metavar='OUT', help='output bag folder')
    parser.add_argument('--thermal-topic', required=True,
                        help='thermal sensor_msgs/Image or CompressedImage topic')
    parser.add_argument('--rgb-topic', required=True,
                        help='RGB sensor_msgs/Image or CompressedImage topic')
    parser.add_argument('--fused-topic', default='/fused/image', help='output topic '
                        '(default: %(default)s)')
    parser.add_argument('--method', default='sfdfuse', choices=('sfdfuse', 'mean', 'max'),
                        help='fusion method (default: %(default)s)')
    parser.add_argument('--weights', default=None,
                        help='weights file, checkpoint or shipped network (sfdfuse-lite, '
                        'sfdfuse) (default: the shipped compact network on the CPU)')
    parser.add_argument('--device', default='auto', help='torch device: auto, cpu, cuda, ... '
                        '(default: %(default)s)')
    add_precision_argument(parser)
    parser.add_argument('--slop', type=float, default=0.05,
                        help='largest stamp difference of a pair in seconds (default: '
                        '%(default)s)')
    parser.add_argument('--queue-size', type=int, default=10,
                        help='messages the pairer keeps per stream (default: %(default)s)')
    parser.add_argument('--sync-policy', choices=('optimal', 'greedy'), default='optimal',
                        help="pairing policy, as the node's sync_policy: optimal (the most "
                        'pairs, each frame with its closest partner) or greedy (each frame at '
                        'once with the closest queued partner) (default: %(default)s)')
    parser.add_argument('--include-inputs', action='store_true',
                        help='copy the thermal and RGB topics into the output too')
    parser.add_argument('--thermal-range', choices=('auto', 'fixed'), default='auto',
                        help='16-bit thermal to 8 bit: auto (per-frame robust range) or fixed '
                        '(--thermal-min..--thermal-max) (default: %(default)s)')
    parser.add_argument('--thermal-min', type=float, default=None,
                        help='raw thermal value mapped to 0 (with --thermal-range fixed)')
    parser.add_argument('--thermal-max', type=float, default=None,
                        help='raw thermal value mapped to 255 (with --thermal-range fixed)')
    parser.add_argument('--output-encoding', choices=('bgr8', 'mono8'), default='bgr8',
                        help='fused image encoding (default: %(default)s)')
    parser.add_argument('--format', choices=('mcap', 'sqlite3'), default='mcap',
                        help='output storage (default: %(default)s)')
    parser.add_argument('--force', action='store_true', help='replace an existing output')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def add_play_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sfdfuse bag play`` (also used by ``python -m sfdfuse_ros.bag_play``)."""
    parser.add_argument('bag', metavar='BAG', help='bag: folder, .mcap or .db3 file')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor (default: %(default)s)')
    parser.add_argument('--loop', action='store_true', help='play again and again')
    parser.add_argument('--clock', action='store_true',
                        help='publish the bag time on /clock (rosgraph_msgs/Clock)')
    parser.add_argument('--clock-hz', type=float, default=40.0,
                        help='/clock publishing rate (default: %(default)s)')
    parser.add_argument('--topics', nargs='+', default=None, metavar='TOPIC',
                        help='topics to play (default: every topic of an importable type)')
    parser.add_argument('--start-delay', type=float, default=0.0,
                        help='seconds to wait after creating the publishers (default: '
                        '%(default)s)')
    parser.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                        help='wait up to S seconds until every publisher has a subscriber')
    parser.add_argument('--qos', choices=('reliable', 'sensor_data'), default='reliable',
                        help='publisher QoS (default: %(default)s)')
    parser.add_argument('--quiet', action='store_true', help='no summary at the end')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fuse`` and ``play`` sub-commands."""
    sub = parser.add_subparsers(dest='bag_command', metavar='{fuse,play}')
    sub.required = True
    fuse = sub.add_parser('fuse', help='fuse a bag offline into a new bag',
                          description='Pair the thermal and RGB images of a bag by header stamp, '
                          'fuse them and write a new bag with the fused topic.')
    add_fuse_arguments(fuse)
    play = sub.add_parser('play', help='publish a bag through rclpy with its timing',
                          description='Publish the topics of a bag with their original timing '
                          '(like ros2 bag play), e.g. into fuse_node.')
    add_play_arguments(play)


def build_normalizer(args: argparse.Namespace):
    """Build the thermal normaliser the ``--thermal-*`` options ask for."""
    from sfdfuse_core.thermal import ThermalNormalizer

    if args.thermal_range == 'fixed':
        if args.thermal_min is None or args.thermal_max is None:
            raise ValueError('--thermal-range fixed needs --thermal-min and --thermal-max')
        return ThermalNormalizer(mode='fixed', low=args.thermal_min, high=args.thermal_max)
    return ThermalNormalizer(mode='auto')


def run_fuse(args: argparse.Namespace) -> int:
    """Run ``sfdfuse bag fuse``."""
    from sfdfuse_core.bag import BagError, fuse_bag
    from sfdfuse_core.fusion import Fuser
    from sfdfuse_core.weights import WeightsError

    try:
        normalizer = build_normalizer(args)
    except ValueError as exc:
        print(f'sfdfuse bag fuse: {exc}', file=sys.stderr)
        return EXIT_USAGE
    from pathlib import Path
    out = Path(args.output)
    if (out.exists() or out.is_symlink()) and not args.force:
        print(f'sfdfuse bag fuse: output exists: {out} (refusing to overwrite; pass --force to '
              'replace it)', file=sys.stderr)
        return EXIT_USAGE
    try:
        fuser = Fuser(method=args.method, weights=args.weights, device=args.device,
                      precision=args.precision)
    except (ValueError, TypeError, OSError, WeightsError) as exc:
        print(f'sfdfuse bag fuse: cannot set up fusion: {exc}', file=sys.stderr)
        return 1
    try:
        report = fuse_bag(args.input, args.output, thermal_topic=args.thermal_topic,
                          rgb_topic=args.rgb_topic, fuser=fuser, fused_topic=args.fused_topic,
                          slop=args.slop, queue_size=args.queue_size,
                          sync_policy=args.sync_policy, thermal_normalizer=normalizer,
                          include_inputs=args.include_inputs,
                          output_encoding=args.output_encoding,
                          storage=args.format, overwrite=args.force,
                          progress=not args.no_progress)
    except BagError as exc:  # BagOutputExistsError included (a race with another writer)
        print(f'sfdfuse bag fuse: {exc}', file=sys.stderr)
        return EXIT_USAGE
    print(report.summary())
    if report.truncated:  # a recording cut short (or damaged): fused up to where it stops
        print(f'sfdfuse bag fuse: WARNING: {report.input_problem()}', file=sys.stderr)
    if not report.complete:
        lost = ', '.join(f'{topic} {n} of {report.declared[topic]}'
                         for topic, n in report.unreadable.items() if n)
        print(f'sfdfuse bag fuse: WARNING: the bag is damaged: {sum(report.unreadable.values())} '
              f'messages its index declares could not be read ({lost}); they are missing from '
              'the output', file=sys.stderr)
    if report.fused == 0:
        print('sfdfuse bag fuse: no pair was fused (see the counts above)', file=sys.stderr)
        return 1
    return 0


def run_play(args: argparse.Namespace) -> int:
    """Run ``sfdfuse bag play`` (imports rclpy lazily)."""
    from sfdfuse_core.plugins import PluginError, ros_command

    try:
        run_from_args = ros_command('bag_play')
    except PluginError as exc:
        print(f'sfdfuse bag play: {exc}', file=sys.stderr)
        return 1
    return run_from_args(args)


def run(args: argparse.Namespace) -> int:
    """Dispatch to ``fuse`` or ``play``."""
    if args.bag_command == 'fuse':
        return run_fuse(args)
    return run_play(args)
