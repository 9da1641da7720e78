"""``sfdfuse demo``: a moving scene through the real ROS 2 node, with a contact sheet at the end.

The work happens on the ROS side (``sfdfuse_ros.demo``, found through
:func:`sfdfuse_core.plugins.ros_command`; it needs rclpy). With
``--bag-only`` the command just writes the scene bag, which needs no ROS at all.
"""
import argparse
import sys
from typing import Tuple

HELP = 'run the demo: a moving thermal + RGB scene -> bag -> fuse_node -> fused frames'


def _size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WIDTHxHEIGHT like 320x256, got {text!r}')
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f'width and height must be >= 16, got {text!r}')
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sfdfuse demo``."""
    parser.add_argument('--ir', metavar='DIR', default=None,
                        help='folder of infrared images (with --vi; pairs by file name); '
                        'default: a generated night street scene')
    parser.add_argument('--vi', metavar='DIR', default=None,
                        help='folder of visible images with the same file names as --ir')
    parser.add_argument('--method', choices=('sfdfuse', 'mean', 'max'), default=None,
                        help='fusion method of the node (default: sfdfuse, the shipped compact '
                        'network, when its weights are installed, else mean)')
    parser.add_argument('--frames', type=int, default=60,
                        help='RGB frames in the bag, at 30 Hz; thermal at 9 Hz (default: '
                        '%(default)s)')
    parser.add_argument('--size', type=_size, default=None, metavar='WxH',
                        help='RGB image size (default: 320x256, or 160x128 for the published '
                        'network on a CPU; the generated thermal is half of it)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the generated scene')
    parser.add_argument('--rate', type=float, default=None,
                        help='playback speed factor (default: 1, or 0.25 for the published '
                        'network on a CPU)')
    parser.add_argument('--device', default='auto', help="the node's torch device (default: "
                        '%(default)s)')
    parser.add_argument('--weights', default=None, help="the node's weights file or shipped "
                        'network (sfdfuse-lite, sfdfuse; default: the shipped compact network)')
    parser.add_argument('--columns', type=int, default=6,
                        help='frames on the contact sheet (default: %(default)s)')
    parser.add_argument('--out', default='out/demo', metavar='DIR',
                        help='output folder (default: %(default)s)')
    parser.add_argument('--start-timeout', type=float, default=90.0,
                        help='seconds the node may take to start (default: %(default)s)')
    parser.add_argument('--tail-timeout', type=float, default=120.0,
                        help='seconds the node may take to finish its pairs after the bag '
                        'ended (default: %(default)s)')
    parser.add_argument('--bag-only', action='store_true',
                        help='only write the scene bag to OUT/scene_bag (no ROS needed)')


def _bag_only(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sfdfuse_core.scene import (SceneError, frames_from_folders, make_scene,
                                    write_scene_bag)

    if (args.ir is None) != (args.vi is None):
        print('sfdfuse demo: give both --ir DIR and --vi DIR, or neither', file=sys.stderr)
        return 2
    path = Path(args.out) / 'scene_bag'
    if path.exists():
        print(f'sfdfuse demo: {path} exists; remove it first', file=sys.stderr)
        return 2
    try:
        if args.ir:
            frames = frames_from_folders(args.ir, args.vi, args.frames, args.size, max_side=320)
        else:
            frames = make_scene(args.frames, args.size or (320, 256), args.seed)
        info = write_scene_bag(path, frames)
    except (SceneError, ValueError) as exc:
        print(f'sfdfuse demo: {exc}', file=sys.stderr)
        return 2
    print(f'wrote {path}: {len(info.thermal)} thermal, {len(info.rgb)} RGB, '
          f'{info.camera_info} camera-info messages')
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 on success, 1 with a message when something failed."""
    if args.bag_only:
        return _bag_only(args)
    from sfdfuse_core.plugins import PluginError, ros_command

    try:
        run_from_args = ros_command('demo')
    except PluginError as exc:
        print(f'sfdfuse demo: {exc}', file=sys.stderr)
        return 1
    return run_from_args(args)
