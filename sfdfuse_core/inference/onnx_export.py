"""Export the fusion network to ONNX (for ONNX Runtime and TensorRT, e.g. on Jetson robots).

The exported graph is the network on *aligned* inputs: ``vi`` and ``ir`` are ``(1, 1, H, W)``
float32 in ``[0, 1]`` with ``H`` and ``W`` dynamic, **multiples of 2 (``size_multiple``) and at
least 4 (``min_size``)**; the output ``fused`` has the same shape. :meth:`SFDFuse.forward` pads
odd or tiny images in Python, which a trace would freeze to the export size, so the padding stays
outside the graph: pad bottom/right with reflection (as :func:`sfdfuse_core.inference.ops.
pad_to_multiple` does, replicate when the image is smaller than the pad) and crop the output.
The DEConv kernels are folded before export.
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path
from typing import Tuple, Union

import torch
from torch import nn

__all__ = ['AlignedFusionNet', 'export_onnx', 'export_onnx_bytes', 'open_session',
           'DEFAULT_OPSET']

#: Opset used unless asked otherwise (supported by ONNX Runtime >= 1.14 and TensorRT >= 8.6).
DEFAULT_OPSET = 17


class AlignedFusionNet(nn.Module):
    """``SFDFuse`` without its Python-level pad/crop: ``(vi, ir) -> fused`` on aligned inputs."""

    def __init__(self, model: nn.Module) -> None:
        """Wrap a (folded) network.

        :param model: an :class:`sfdfuse_core.model.SFDFuse`.
        """
        super().__init__()
        self.model = model

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Fuse.

        :param vi: ``(1, 1, H, W)`` float in ``[0, 1]``; ``H``, ``W`` even and ``>= min_size``.
        :param ir: same shape.
        :return: ``(1, 1, H, W)`` in ``(0, 1)``.
        """
        net = self.model
        both = torch.cat([vi, ir], dim=0)  # (2, 1, H, W)
        base, detail = net.encoder(both)  # each (2, dim, H, W)
        base_f = net.base_fusion(base[:1], base[1:])
        detail_f = net.detail_fusion(detail[:1], detail[1:])
        return net.decoder(vi, base_f, detail_f)


def _prepared(model: nn.Module) -> AlignedFusionNet:
    """Return a folded float32 CPU copy of ``model`` in eval mode, wrapped."""
    if not all(hasattr(model, name) for name in ('encoder', 'base_fusion', 'detail_fusion',
                                                 'decoder')):
        raise TypeError(f'expected an SFDFuse network, got {type(model).__name__}')
    net = copy.deepcopy(model).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    fold = getattr(net, 'fold_deconv', None)
    if callable(fold):
        fold()
    return AlignedFusionNet(net).eval()


def _export(model: nn.Module, target: Union[str, os.PathLike, io.BytesIO], opset: int,
            example_size: Tuple[int, int], dynamo: bool) -> None:
    if not isinstance(opset, int) or opset < 14:
        raise ValueError(f'opset must be an int >= 14, got {opset!r}')
    height, width = example_size
    if height % 2 or width % 2 or min(height, width) < 8:
        raise ValueError(f'example_size must be even and >= 8, got {example_size}')
    wrapper = _prepared(model)
    vi = torch.rand(1, 1, height, width)
    ir = torch.rand(1, 1, height, width)
    if dynamo:
        half_h = torch.export.Dim('half_height', min=2, max=8192)
        half_w = torch.export.Dim('half_width', min=2, max=8192)
        shape = {2: 2 * half_h, 3: 2 * half_w}
        program = torch.onnx.export(wrapper, (vi, ir), dynamo=True, opset_version=opset,
                                    input_names=['vi', 'ir'], output_names=['fused'],
                                    dynamic_shapes={'vi': shape, 'ir': shape})
        program.save(target if isinstance(target, io.BytesIO) else str(target))
        return
    axes = {2: 'height', 3: 'width'}
    with torch.no_grad():
        torch.onnx.export(wrapper, (vi, ir), target, dynamo=False, opset_version=opset,
                          input_names=['vi', 'ir'], output_names=['fused'],
                          dynamic_axes={'vi': axes, 'ir': axes, 'fused': axes})


def export_onnx(model: nn.Module, path: Union[str, os.PathLike], opset: int = DEFAULT_OPSET,
                example_size: Tuple[int, int] = (64, 64), dynamo: bool = False) -> Path:
    """Write the network as an ONNX file (see the module docstring for inputs and outputs).

    :param model: an :class:`sfdfuse_core.model.SFDFuse` (copied; the original is untouched).
    :param path: output ``.onnx`` file (its folder is created).
    :param opset: ONNX opset, ``>= 14``.
    :param example_size: ``(height, width)`` traced; even and ``>= 8``. Any aligned size runs.
    :param dynamo: use the ``torch.export``-based exporter instead of the TorchScript one.
    :return: the path written.
    :raises ValueError: bad ``opset`` or ``example_size``.
    :raises TypeError: ``model`` is not an SFDFuse network.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _export(model, path, opset, example_size, dynamo)
    return path


def export_onnx_bytes(model: nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """Export to ONNX in memory (the engine's ONNX Runtime backend uses this).

    :param model: an :class:`sfdfuse_core.model.SFDFuse`.
    :param opset: ONNX opset.
    :return: the serialised ONNX model.
    """
    buffer = io.BytesIO()
    _export(model, buffer, opset, (64, 64), dynamo=False)
    return buffer.getvalue()


def open_session(model: Union[bytes, str, os.PathLike], threads: int = 0):
    """Open an ONNX Runtime CPU session with all graph optimisations.

    :param model: serialised model or path to a ``.onnx`` file.
    :param threads: intra-op threads (0: ONNX Runtime's default, the physical cores).
    :return: an ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=['CPUExecutionProvider'])
