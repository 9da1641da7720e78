"""Sub-commands of the ``sfdfuse`` command line, one module each (see :mod:`sfdfuse_core.cli`)."""
import argparse

#: :data:`sfdfuse_core.inference.engine.PRECISIONS`, written here so that parsing the command
#: line does not import torch (``test_cli_fuse.py`` keeps the two in step).
PRECISION_CHOICES = ('auto', 'fp32', 'bf16', 'fp16')


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--precision`` (the engine's precision) to a command that fuses with the network."""
    parser.add_argument('--precision', choices=PRECISION_CHOICES, default='auto',
                        help='network precision: auto (bf16 on a GPU, fp32 on the CPU); bf16 '
                        'is faster on CPUs with native bf16 (AVX512-BF16, AMX), a few 8-bit '
                        'levels from fp32 (default: %(default)s)')
