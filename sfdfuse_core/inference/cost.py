"""What the network costs: FLOPs and memory traffic per image, and what a machine can do.

Used by ``sfdfuse bench`` and ``docs/PERFORMANCE.md`` to say how far a measured latency is from
the arithmetic and memory-traffic floors. Counting runs on the ``meta`` device (shapes only, no
arithmetic), so it is instant even for 1280x1024 on a laptop.

FLOPs are those of :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix
products (2 per multiply-add); element-wise ops, norms and softmax are not counted (they are
memory-bound, and the traffic estimate covers them).
"""
from __future__ import annotations

import copy
import time
from typing import Dict

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['model_cost', 'matmul_gflops']

#: Ops whose inputs and outputs are counted in the "fused" traffic estimate (a compiler can fold
#: the element-wise work between them into their prologues/epilogues).
_HEAVY_OPS = ('convolution', 'mm', 'bmm', 'addmm', 'baddbmm', 'matmul')


class _TrafficMode(TorchDispatchMode):
    """Sum the bytes each non-view op reads and writes (element counts x element size)."""

    def __init__(self, element_bytes: int) -> None:
        super().__init__()
        self.element_bytes = element_bytes
        self.all_bytes = 0
        self.heavy_bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.__name__.split('.')[0]
        if func.is_view or name in ('detach', 'alias', '_to_copy', 'lift_fresh'):
            return out
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        moved = sum(t.numel() for t in tensors + outs) * self.element_bytes
        self.all_bytes += moved
        self.ops += 1
        if name in _HEAVY_OPS:
            self.heavy_bytes += moved
        return out


def model_cost(model: nn.Module, height: int, width: int, element_bytes: int = 2
               ) -> Dict[str, float]:
    """Count the FLOPs and the activation traffic of one fused pair at ``height x width``.

    The model is copied to the ``meta`` device (the original is untouched) and its DEConvs are
    folded, as the inference engine runs it.

    :param model: an :class:`sfdfuse_core.model.SFDFuse` (any device, folded or not).
    :param height: image height ``>= 1``.
    :param width: image width ``>= 1``.
    :param element_bytes: bytes per activation element for the traffic estimate (2: bf16).
    :return: ``{'flops', 'flops_per_pixel', 'bytes_eager', 'bytes_fused', 'ops', 'height',
        'width'}``. ``bytes_eager``: every non-view op reads its inputs and writes its outputs
        from memory (an upper bound for eager execution); ``bytes_fused``: only convolutions and
        matrix products touch memory (a lower-bound estimate for a compiler that fuses all
        element-wise work into them). Weights are ignored (2.3 M parameters, a few MB).
    :raises ValueError: a size is below 1.
    """
    if height < 1 or width < 1:
        raise ValueError(f'height and width must be >= 1, got {height}x{width}')
    meta = copy.deepcopy(model).to('meta').eval()
    fold = getattr(meta, 'fold_deconv', None)
    if callable(fold):
        fold()
    vi = torch.empty(1, 1, height, width, device='meta')
    ir = torch.empty(1, 1, height, width, device='meta')
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(vi, ir)
    traffic = _TrafficMode(element_bytes)
    with torch.no_grad(), traffic:
        meta(vi, ir)
    flops = float(counter.get_total_flops())
    return {'height': height, 'width': width, 'flops': flops,
            'flops_per_pixel': flops / (height * width),
            'bytes_eager': float(traffic.all_bytes), 'bytes_fused': float(traffic.heavy_bytes),
            'ops': traffic.ops}


def matmul_gflops(device: torch.device | str = 'cpu', size: int = 2048,
                  dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Measure the achievable dense matmul rate of a device (best of ``repeats``).

    :param device: where to measure.
    :param size: side of the square matrices.
    :param dtype: element type (float32 on CPU; bfloat16 shows a GPU's tensor-core rate).
    :param repeats: timed products after one warm-up.
    :return: GFLOP/s (``2 * size**3`` FLOPs per product).
    :raises ValueError: ``size`` or ``repeats`` below 1.
    """
    if size < 1 or repeats < 1:
        raise ValueError(f'size and repeats must be >= 1, got {size} and {repeats}')
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    a @ b
    sync()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9
