"""``sfdfuse bench``: the eager fp32 path against the fast engine, on one machine, in one run.

Measured per size (``--sizes WxH,...``), on a synthetic colour visible + gray infrared pair:

- **eager fp32**: the plain model forward as the reference code runs it (DEConv *not* folded,
  ``torch.no_grad``, OpenCV colour on the host), host uint8 in -> host uint8 out;
- **engine** (:class:`sfdfuse_core.inference.FusionEngine`): on a GPU bf16 + channels-last +
  ``torch.compile`` + CUDA graphs; on the CPU fp32 torch and the ONNX Runtime backend;

each with latency per pair end to end (median, p99), throughput (pairs/s, one pair at a time),
peak GPU memory, PSNR of its output against the eager fp32 output, and the achieved GFLOP/s
against the model's FLOP count (:mod:`sfdfuse_core.inference.cost`). Also the training step
(phase II, the real loss of :mod:`sfdfuse_core.train.losses`, Adam) eager fp32 vs. fast, and with
``--quality-data DIR`` the PSNR and the evaluation metrics of engine vs. eager on real pairs.

Each network of ``--networks`` (default: the compact and the published one, side by side) runs
with its shipped weights when they are installed, else randomly initialised (seed 0: speed does
not depend on weight values); ``--weights FILE`` benchmarks the network a file holds instead.
Results go to ``OUT/bench_<cpu|cuda>.json`` and ``.md``, one section per network.
"""
import argparse
import sys
from pathlib import Path
from typing import List, Tuple

HELP = 'benchmark the eager fp32 path against the fast inference engine'

DEVICE_CHOICES = ('auto', 'cpu', 'cuda')


def _sizes(text: str) -> List[Tuple[int, int]]:
    """Parse ``'640x480,1280x1024'`` (width x height) into ``[(height, width), ...]``."""
    sizes = []
    for item in text.split(','):
        parts = item.strip().lower().split('x')
        try:
            width, height = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f'sizes must look like 640x480,1280x1024 '
                                             f'(W x H), got {item!r}') from None
        if width < 1 or height < 1:
            raise argparse.ArgumentTypeError(f'sizes must be positive, got {item!r}')
        sizes.append((height, width))
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--device', choices=DEVICE_CHOICES, default='auto',
                        help='where to run (default: %(default)s)')
    parser.add_argument('--sizes', type=_sizes, default=_sizes('640x480,640x512,1280x1024'),
                        metavar='WxH,...', help='image sizes (default: 640x480,640x512,1280x1024)')
    parser.add_argument('--repeats', type=int, default=20, metavar='N',
                        help='timed pairs per size and path (default: %(default)s)')
    parser.add_argument('--eager-repeats', type=int, default=None, metavar='N',
                        help='timed pairs for the eager path (default: --repeats)')
    parser.add_argument('--warmup', type=int, default=3, metavar='N',
                        help='untimed pairs before timing (default: %(default)s)')
    parser.add_argument('--networks', default='sfdfuse-lite,sfdfuse', metavar='NAMES',
                        help='comma-separated networks to benchmark one after the other, each '
                             'with its shipped weights or random ones (default: %(default)s)')
    parser.add_argument('--weights', default=None, metavar='PATH|NAME',
                        help='benchmark the network of this weights file instead of --networks')
    parser.add_argument('--out', type=Path, default=Path('benchmarks/results'), metavar='DIR',
                        help='folder for the JSON and Markdown results (default: %(default)s)')
    parser.add_argument('--quality-data', type=Path, default=None, metavar='DIR',
                        help='folder of pair sets (DIR/NAME/ir, DIR/NAME/vi, or DIR/ir, DIR/vi) '
                             'to check PSNR and metrics of the engine against eager fp32')
    parser.add_argument('--quality-limit', type=int, default=0, metavar='N',
                        help='at most N pairs per set for the quality check (0: all)')
    parser.add_argument('--precision', default='auto', choices=('auto', 'fp32', 'bf16', 'fp16'),
                        help="the engine's precision (default: %(default)s: bf16 on a GPU; "
                             'on the CPU the fp32 rows always run, and bf16 or fp16 adds a row '
                             'in that precision)')
    parser.add_argument('--compile', default='auto',
                        choices=('auto', 'none', 'inductor', 'cudagraphs', 'inductor+cudagraphs'),
                        help="the engine's compile mode (default: %(default)s)")
    parser.add_argument('--no-onnxruntime', action='store_true',
                        help='on the CPU, skip the ONNX Runtime backend')
    parser.add_argument('--cpu-inductor', action='store_true',
                        help='on the CPU, also time the engine with compile=inductor')
    parser.add_argument('--train-repeats', type=int, default=10, metavar='N',
                        help='timed training steps per setting (0 skips; default: %(default)s)')
    parser.add_argument('--train-batch', type=int, default=8, metavar='B',
                        help='training batch (default: %(default)s)')
    parser.add_argument('--train-size', type=int, default=128, metavar='S',
                        help='training patch side (default: %(default)s)')


def _error(message: str) -> int:
    print(f'sfdfuse bench: error: {message}', file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and write ``OUT/bench_<kind>.json`` and ``.md``.

    :param args: the parsed options (see :func:`add_arguments`).
    :return: 0 on success, 2 for a usage error.
    """
    from sfdfuse_core.fusion import resolve_device
    from sfdfuse_core.inference.benchmark import BenchSettings, run_benchmark, write_results
    from sfdfuse_core.weights import WeightsError

    for name in ('repeats', 'warmup', 'train_repeats', 'quality_limit'):
        if getattr(args, name) < 0 or (name == 'repeats' and args.repeats < 1):
            return _error(f'--{name.replace("_", "-")} must be >= {int(name == "repeats")}, '
                          f'got {getattr(args, name)}')
    if args.quality_data is not None and not args.quality_data.is_dir():
        return _error(f'--quality-data folder not found: {args.quality_data}')
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        return _error(str(exc))
    from sfdfuse_core.model import NETWORKS

    networks = [n.strip() for n in args.networks.split(',') if n.strip()]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown or not networks:
        return _error(f'--networks: unknown {unknown or networks}; known: {sorted(NETWORKS)}')
    if args.weights is not None:
        networks = [None]
    common = dict(
        device=device, sizes=args.sizes, repeats=args.repeats,
        eager_repeats=args.eager_repeats or args.repeats, warmup=args.warmup,
        weights=args.weights, quality_data=args.quality_data, quality_limit=args.quality_limit,
        precision=args.precision, compile=args.compile, onnxruntime=not args.no_onnxruntime,
        cpu_inductor=args.cpu_inductor, train_repeats=args.train_repeats,
        train_batch=args.train_batch, train_size=args.train_size,
        command=' '.join(['sfdfuse'] + sys.argv[1:]) if sys.argv[1:2] == ['bench']
        else 'sfdfuse bench (called from Python)')
    results = []
    for network in networks:
        settings = BenchSettings(network=network or 'sfdfuse', **common)
        try:
            results.append(run_benchmark(
                settings, log=lambda msg: print(msg, file=sys.stderr, flush=True)))
        except (WeightsError, ValueError) as exc:
            return _error(str(exc))
    json_path, md_path = write_results(results, args.out)
    print(md_path.read_text())
    print(f'wrote {json_path} and {md_path}')
    return 0
