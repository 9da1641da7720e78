"""The fast inference engine used by the CLI, the bag tool and the ROS node (through ``Fuser``).

- :mod:`~sfdfuse_core.inference.engine`: :class:`FusionEngine` (device pre/post-processing,
  bf16 autocast, ``torch.compile`` and CUDA graphs on the GPU; fp32 or ONNX Runtime on the CPU);
- :mod:`~sfdfuse_core.inference.ops`: the protocol's colour conversions as torch ops;
- :mod:`~sfdfuse_core.inference.onnx_export`: the ONNX export of the network;
- :mod:`~sfdfuse_core.inference.cost`: FLOP and memory-traffic counts, matmul rate.
"""
from sfdfuse_core.inference.engine import (BACKENDS, COMPILE_MODES, PRECISIONS, FusionEngine,
                                           available_cores)

__all__ = ['FusionEngine', 'PRECISIONS', 'COMPILE_MODES', 'BACKENDS', 'available_cores']
