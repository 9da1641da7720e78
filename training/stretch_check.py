"""Measure how much of a gap to the published numbers the public scripts' min-max stretch is.

The public test scripts of CDDFuse and its successors stretch every fused luminance to its own
minimum and maximum, ``(F - min F) / (max F - min F)``, before saving and scoring it; this
package does not (a dark scene stays dark, see ``sfdfuse_core/fusion.py``). This diagnostic
scores one network's fused luminance both ways on each set with the published metrics and
protocol. It reads the evaluation sets only to describe the protocol: no choice of recipe or
weights may depend on it.

    python training/stretch_check.py --data ../shared/data/ivf/test --sets RoadScene,TNO
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def fused_luma(engine, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Return the network's fused luminance, float in ``[0, 1]`` (clamped as inference does)."""
    from sfdfuse_core.color import bgr_to_ycbcr
    from sfdfuse_core.imageio import to_gray

    y = vi if vi.ndim == 2 else bgr_to_ycbcr(vi)[0]
    ir = ir if ir.ndim == 2 else to_gray(ir)

    def tensor(a: np.ndarray) -> torch.Tensor:
        scale = 255.0 if a.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / scale)[None, None]

    with torch.inference_mode():
        return engine.fuse_luma_tensor(tensor(y), tensor(ir))[0, 0].float().numpy()


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float ``[0, 1]`` -> uint8, rounded and clipped."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def stretch(x: np.ndarray) -> np.ndarray:
    """Stretch to the image's own minimum and maximum, as the public scripts do (flat: as is)."""
    span = float(x.max() - x.min())
    return (x - x.min()) / span if span > 0 else x


def main(argv: list[str] | None = None) -> int:
    """Print, per set, the mean metrics of the plain and of the stretched output."""
    from sfdfuse_core.imageio import list_pairs, read_image, to_gray
    from sfdfuse_core.inference.engine import FusionEngine
    from sfdfuse_core.metrics import METRIC_NAMES, PUBLISHED_SSIM_DATA_RANGE, evaluate_pair

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', required=True, help='folder with <set>/ir and <set>/vi')
    parser.add_argument('--sets', default='RoadScene,TNO')
    parser.add_argument('--weights', default='sfdfuse-lite', help='file or shipped name')
    args = parser.parse_args(argv)
    engine = FusionEngine(args.weights, device='cpu')
    print('set        output    ' + ' '.join(f'{m:>6}' for m in METRIC_NAMES))
    for name in args.sets.split(','):
        listing = list_pairs(f'{args.data}/{name}/ir', f'{args.data}/{name}/vi')
        scores: dict[str, list[dict[str, float]]] = {'plain': [], 'stretched': []}
        for _, ir_path, vi_path in listing.pairs:
            ir, vi = read_image(ir_path), read_image(vi_path)
            fused = fused_luma(engine, vi, ir)
            for kind, img in (('plain', fused), ('stretched', stretch(fused))):
                scores[kind].append(evaluate_pair(to_uint8(img), to_gray(ir), to_gray(vi),
                                                  ssim_data_range=PUBLISHED_SSIM_DATA_RANGE))
        for kind, rows in scores.items():
            means = ' '.join(f'{np.mean([r[m] for r in rows]):6.3f}' for m in METRIC_NAMES)
            print(f'{name:<10} {kind:<9} {means}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
