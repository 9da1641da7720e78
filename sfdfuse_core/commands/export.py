"""``sfdfuse export``: write the fusion network as an ONNX model (ONNX Runtime, TensorRT).

Inputs ``vi`` and ``ir`` are ``(1, 1, H, W)`` float32 in ``[0, 1]``, output ``fused`` the same;
``H`` and ``W`` are dynamic but must be multiples of 2 and at least 4: pad odd images bottom/right
by reflection (replicate if smaller than the pad) and crop the output (see
:mod:`sfdfuse_core.inference.onnx_export`). DEConv kernels are folded. After writing, the model is
checked with ONNX Runtime at two sizes against PyTorch.

Exit status: 0 on success, 1 when the check fails, 2 for usage errors (missing weights, bad opset).
"""
import argparse
import sys
from pathlib import Path

HELP = 'export the fusion network to ONNX (dynamic height and width)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``export`` options to ``parser``.

    :param parser: the sub-command's parser.
    """
    parser.add_argument('--onnx', required=True, type=Path, metavar='PATH',
                        help='output .onnx file')
    parser.add_argument('--weights', default=None, metavar='PATH|NAME',
                        help='weights file (.safetensors), checkpoint (.pt) or shipped network '
                             '(sfdfuse-lite, sfdfuse) (default: the shipped compact network)')
    parser.add_argument('--opset', type=int, default=17, metavar='N',
                        help='ONNX opset (default: %(default)s)')
    parser.add_argument('--dynamo', action='store_true',
                        help='use the torch.export-based exporter (default: the TorchScript one, '
                             'faster and robust with dynamic sizes on torch 2.13)')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the ONNX Runtime check at two sizes')


def _error(message: str) -> int:
    print(f'sfdfuse export: error: {message}', file=sys.stderr)
    return 2


def check_onnx(model, path: Path, sizes=((64, 96), (50, 38))) -> float:
    """Run the ONNX file with ONNX Runtime at several aligned sizes and compare with PyTorch.

    :param model: the network (eval mode).
    :param path: the ``.onnx`` file.
    :param sizes: ``(height, width)`` pairs, even and ``>= 4``.
    :return: the largest absolute difference over all sizes.
    """
    import numpy as np
    import torch

    from sfdfuse_core.inference.onnx_export import open_session

    session = open_session(path)
    worst = 0.0
    gen = torch.Generator().manual_seed(0)
    for height, width in sizes:
        vi = torch.rand(1, 1, height, width, generator=gen)
        ir = torch.rand(1, 1, height, width, generator=gen)
        with torch.no_grad():
            ref = model(vi, ir).numpy()
        out = session.run(['fused'], {'vi': vi.numpy(), 'ir': ir.numpy()})[0]
        if out.shape != ref.shape:
            raise RuntimeError(f'ONNX output {out.shape} at {height}x{width}, expected '
                               f'{ref.shape}')
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def run(args: argparse.Namespace) -> int:
    """Export, then check at two sizes.

    :param args: the parsed options (see :func:`add_arguments`).
    :return: 0 on success, 1 when the check fails, 2 for a usage error.
    """
    from sfdfuse_core.inference.onnx_export import export_onnx
    from sfdfuse_core.model import network_of
    from sfdfuse_core.weights import WeightsError, load_model

    if args.opset < 14:
        return _error(f'--opset must be >= 14, got {args.opset}')
    try:
        model = load_model(args.weights, device='cpu').eval()
    except WeightsError as exc:
        if args.weights is None:
            return _error(f'{exc}; pass --weights PATH')
        return _error(str(exc))
    path = export_onnx(model, args.onnx, opset=args.opset, dynamo=args.dynamo)
    print(f'wrote {path} from {model.weights_path} ({network_of(model)}; inputs vi, ir: '
          f'(1, 1, H, W) float32 in [0, 1], H and W multiples of {model.size_multiple} and '
          f'>= {model.min_size}; output fused)')
    if args.no_check:
        return 0
    diff = check_onnx(model.fold_deconv(), path)
    print(f'ONNX Runtime vs PyTorch at 96x64 and 38x50: max abs diff {diff:.2e}')
    if diff >= 1e-4:
        print('sfdfuse export: check failed: difference >= 1e-4', file=sys.stderr)
        return 1
    return 0
