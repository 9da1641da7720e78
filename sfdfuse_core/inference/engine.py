"""The fast inference engine: SFDFuse fusion with every step on the device.

:class:`FusionEngine` runs the same protocol as :class:`sfdfuse_core.fusion.Fuser` (CDDFuse /
SFDFuse test protocol, Zhao et al., CVPR 2023: fuse the visible luminance with the infrared image,
put the visible chroma back, 8-bit output, no min-max stretch) but fast:

- the model is in eval mode with its DEConv kernels folded (one 3x3 conv instead of five);
- on the GPU it runs in bfloat16 (or float16) autocast with channels-last weights, compiled with
  ``torch.compile`` (Inductor) and replayed as a CUDA graph per padded input shape (a small LRU
  cache of graphs), so a frame costs one graph launch instead of ~500 kernel launches;
- uint8 -> float, BGR -> YCbCr and back, padding and cropping run in torch on the device
  (:mod:`sfdfuse_core.inference.ops`, bit-exact with OpenCV for uint8), so only the 8-bit images
  cross PCIe, through pinned host buffers with asynchronous copies;
- on the CPU, 8-bit pairs take OpenCV's own colour conversions instead (the same bytes, one
  vectorised pass each instead of a dozen int32 tensor ops);
- given ``warmup_shapes``, compilation and graph capture happen in the constructor, so the first
  frame is not slow.

On the CPU it runs float32 with all available cores by default, through the backend each
network was measured fastest with (``cpu_backend``: torch with fused kernels for the compact
network, ONNX Runtime for the full one when it is installed; see ``docs/PERFORMANCE.md``).
``precision='bf16'`` on the CPU runs bfloat16 autocast: faster where the CPU computes bf16
natively (AVX512-BF16, AMX), a few 8-bit levels away from float32; where it does not, it may
well be slower (not measured).
If a compile mode fails on this machine the engine warns and falls back to the next simpler one
(``inductor+cudagraphs`` -> ``inductor`` -> ``cudagraphs`` -> ``none``), so it always runs.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from sfdfuse_core.color import ycbcr_to_bgr
from sfdfuse_core.device import resolve_device
from sfdfuse_core.inference import ops
from sfdfuse_core.inputs import gray_plane, split_luma, validate_pair
from sfdfuse_core.weights import load_model

__all__ = ['FusionEngine', 'PRECISIONS', 'COMPILE_MODES', 'BACKENDS', 'available_cores',
           'keep_freed_memory']

#: Accepted ``precision`` values.
PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
#: Accepted ``compile`` values.
COMPILE_MODES = ('auto', 'none', 'inductor', 'cudagraphs', 'inductor+cudagraphs')
#: Accepted ``backend`` values.
BACKENDS = ('auto', 'torch', 'onnxruntime')

_AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}
# What to try next when a compile mode fails on this machine.
_FALLBACK = {'inductor+cudagraphs': 'inductor', 'inductor': 'cudagraphs', 'cudagraphs': 'none'}

Runner = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_NON_FINITE = ('the model produced non-finite values (NaN or inf); the weights may be '
               'damaged')


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``).

    ``SFDFUSE_THREADS=N`` in the environment caps it (e.g. in a node sharing its cores).

    :return: at least 1.
    """
    cap = os.environ.get('SFDFUSE_THREADS', '').strip()
    if cap.isdigit() and int(cap) >= 1:
        return int(cap)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class _GraphRunner:
    """One CUDA graph of ``fn`` for fixed input shapes, with static input and output buffers."""

    def __init__(self, fn: Runner, vi: torch.Tensor, ir: torch.Tensor, pool: tuple) -> None:
        """Warm ``fn`` up on a side stream (this also compiles it), then capture it.

        :param fn: ``(vi, ir) -> fused`` on CUDA tensors.
        :param vi: example visible input; its shape, dtype and device are frozen.
        :param ir: example infrared input.
        :param pool: a graph memory pool shared by the engine's graphs.
        """
        self.static_vi = vi.clone()
        self.static_ir = ir.clone()
        stream = torch.cuda.Stream(device=vi.device)
        stream.wait_stream(torch.cuda.current_stream(vi.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn(self.static_vi, self.static_ir)
        torch.cuda.current_stream(vi.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.static_out = fn(self.static_vi, self.static_ir)

    def __call__(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Copy the inputs into the static buffers and replay; the output buffer is reused."""
        self.static_vi.copy_(vi, non_blocking=True)
        self.static_ir.copy_(ir, non_blocking=True)
        self.graph.replay()
        return self.static_out


def _onnxruntime_available() -> bool:
    """Tell whether ONNX Runtime and the ONNX exporter's needs can be imported."""
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in ('onnxruntime', 'onnx'))


#: glibc ``mallopt`` parameters: ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD``.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_KEPT = False


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Make glibc keep freed blocks up to ``limit_bytes`` in the heap instead of unmapping them.

    By default glibc serves blocks over 128 KiB with ``mmap`` and returns them to the kernel on
    ``free``, so eager torch on the CPU page-faults every large activation again on each call
    (measured here: a 16-channel CNN at 640x512 took 180-210 ms per pair that way and 55-65 ms
    with the threshold raised). Process-wide and idempotent; a no-op where glibc is absent.

    :param limit_bytes: blocks up to this size come from (and go back to) the heap.
    :return: whether the setting was applied (now or before).
    """
    global _HEAP_KEPT
    if _HEAP_KEPT:
        return True
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, int(limit_bytes)) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, int(limit_bytes)) == 1)
    except (OSError, AttributeError):  # not glibc
        return False
    _HEAP_KEPT = bool(ok)
    return _HEAP_KEPT


class _OrtRunner:
    """The network as an ONNX Runtime session (CPU), fed with padded ``(1, 1, H, W)`` tensors."""

    def __init__(self, model: nn.Module, threads: int) -> None:
        """Export the model to ONNX in memory and open a session.

        :param model: folded SFDFuse network on the CPU.
        :param threads: intra-op threads.
        """
        from sfdfuse_core.inference.onnx_export import export_onnx_bytes, open_session
        # The in-memory export is an implementation detail here: its tracer and deprecation
        # notes (checked in test_export.py) would only confuse a node's log.
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
            warnings.simplefilter('ignore', category=DeprecationWarning)
            warnings.simplefilter('ignore', category=UserWarning)
            onnx_bytes = export_onnx_bytes(model)
        self.session = open_session(onnx_bytes, threads=threads)

    def __call__(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Run the session on CPU float32 tensors, one batch item at a time.

        The exported graph has a fixed batch of 1 (the trace folds the network's internal
        ``2B`` batch into constants); height and width are dynamic.
        """
        outs = []
        for i in range(vi.shape[0]):  # (1, 1, H, W) each
            feeds = {'vi': np.ascontiguousarray(vi[i:i + 1].float().numpy()),
                     'ir': np.ascontiguousarray(ir[i:i + 1].float().numpy())}
            outs.append(torch.from_numpy(self.session.run(['fused'], feeds)[0]))
        return torch.cat(outs)


class FusionEngine:
    """Fuses image pairs fast with SFDFuse; same inputs and outputs as ``Fuser('sfdfuse')``.

    ``engine.fuse(vi, ir)`` (or ``engine(vi, ir)``) returns the fused uint8 image: gray ``(H, W)``
    for a gray(-looking) visible image, else BGR ``(H, W, 3)`` with the visible chroma. Inputs as
    :func:`sfdfuse_core.fusion.validate_pair` accepts (uint8, or float in ``[0, 1]``).

    :param weights: weights file or checkpoint; ``None`` (and no ``model``) loads the shipped
        weights.
    :param model: an already built network to use instead. The engine takes it over: it is moved
        to ``device``, put in eval mode, folded in place and (with ``channels_last``) converted to
        channels-last; pass a copy if you keep training it.
    :param device: ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'``, ``'cuda:N'``.
    :param precision: ``'auto'`` (bf16 on a GPU that supports it, else fp32), ``'fp32'``,
        ``'bf16'`` or ``'fp16'`` (autocast: convolutions and matrix products in reduced
        precision, norms and softmax in float32; weights stay float32).
    :param compile: ``'auto'`` (``'inductor+cudagraphs'`` on CUDA, ``'none'`` on the CPU, where
        Inductor was measured not to help, see ``docs/PERFORMANCE.md``), ``'none'`` (eager),
        ``'inductor'`` (``torch.compile``), ``'cudagraphs'`` (eager kernels captured in CUDA
        graphs) or ``'inductor+cudagraphs'``. Graph modes need CUDA.
    :param channels_last: run convolutions in NHWC layout (usually faster with cuDNN/oneDNN).
    :param warmup_shapes: ``(height, width)`` sizes to compile/capture for in the constructor.
    :param backend: ``'auto'`` (on the CPU in fp32 the backend the network's ``cpu_backend``
        names, measured faster for it: ``'onnxruntime'`` for the full SFDFuse when the package
        is installed, ``'torch'`` for SFDFuse-Lite; else ``'torch'``), ``'torch'`` (on the CPU
        with the network's conv + activation pairs fused into one oneDNN kernel where it has
        ``fuse_for_cpu``) or ``'onnxruntime'`` (CPU, fp32 only; the network is exported to ONNX
        in memory at start).
    :param threads: CPU threads for torch / ONNX Runtime; ``None``: all available cores. Setting
        torch's thread count is process-wide (``torch.set_num_threads``).
    :param cache_size: padded shapes kept compiled/captured at once (least recently used are
        dropped).
    :param fuse: with the CPU torch backend in fp32, call the network's ``fuse_for_cpu`` (fused
        convolution + activation kernels, folded fixed transforms) where it has one; ``False``
        runs the plain eager layers (for comparison). bf16 and fp16 always run the plain layers.
    :raises ValueError: unknown option, a GPU-only option on the CPU, both ``weights`` and
        ``model``, or an invalid warm-up shape.
    :raises TypeError: ``model`` is not an ``nn.Module``.
    :raises sfdfuse_core.weights.WeightsError: the weights cannot be loaded.
    """

    def __init__(self, weights: Optional[Union[str, os.PathLike]] = None,
                 model: Optional[nn.Module] = None,
                 device: Union[str, torch.device] = 'auto', precision: str = 'auto',
                 compile: str = 'auto', channels_last: bool = True,
                 warmup_shapes: Iterable[Tuple[int, int]] = (), backend: str = 'auto',
                 threads: Optional[int] = None, cache_size: int = 4,
                 fuse: bool = True) -> None:
        """Resolve the options, prepare the model and warm up (see the class docstring)."""
        for name, value, allowed in (('precision', precision, PRECISIONS),
                                     ('compile', compile, COMPILE_MODES),
                                     ('backend', backend, BACKENDS)):
            if value not in allowed:
                raise ValueError(f'unknown {name} {value!r}; expected one of {allowed}')
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f'cache_size must be an int >= 1, got {cache_size!r}')
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f'threads must be None or an int >= 1, got {threads!r}')
        self.device = resolve_device(device)
        cuda = self.device.type == 'cuda'
        if model is not None:
            if weights is not None:
                raise ValueError('give either weights or model, not both')
            if not isinstance(model, nn.Module):
                raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
        if precision == 'auto':
            precision = 'bf16' if cuda and torch.cuda.is_bf16_supported() else 'fp32'
        if 'cudagraphs' in compile and not cuda:
            raise ValueError(f'compile={compile!r} needs a CUDA device, got {str(self.device)!r}')
        self._check_onnxruntime(backend, cuda, precision, compile)
        if model is None:
            model = load_model(weights, device=self.device)
        if backend == 'auto':
            # each network says which CPU backend was measured faster for it (the full network:
            # ONNX Runtime; the compact one: torch with fused convolutions)
            preferred = getattr(model, 'cpu_backend', 'onnxruntime')
            backend = ('onnxruntime' if not cuda and precision == 'fp32' and preferred ==
                       'onnxruntime' and compile in ('auto', 'none') and _onnxruntime_available()
                       else 'torch')
        if compile == 'auto':
            compile = 'inductor+cudagraphs' if cuda and backend == 'torch' else 'none'
        self.precision = precision
        self.compile = compile
        self.backend = backend
        self.channels_last = bool(channels_last)
        self.cache_size = cache_size
        self.threads = threads if threads is not None else available_cores()
        if not cuda:
            torch.set_num_threads(self.threads)
            if backend == 'torch':
                keep_freed_memory()  # ONNX Runtime has its own arena

        model = model.to(self.device).eval()
        fold = getattr(model, 'fold_deconv', None)
        if callable(fold):
            fold()
        fuse_for_cpu = getattr(model, 'fuse_for_cpu', None)
        if (fuse and not cuda and backend == 'torch' and precision == 'fp32'
                and callable(fuse_for_cpu)):
            # conv + activation as one float32 kernel where the network has them; under bf16
            # autocast the plain layers were measured faster (docs/PERFORMANCE.md)
            fuse_for_cpu()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.size_multiple = int(getattr(model, 'size_multiple', 1))
        self.min_size = int(getattr(model, 'min_size', 1))

        self._amp_dtype = _AMP_DTYPES.get(precision)
        self._runners: 'OrderedDict[Tuple[int, int, int], Runner]' = OrderedDict()
        self._compiled: Optional[Runner] = None
        self._pool = torch.cuda.graph_pool_handle() if cuda else None
        self._staging: Dict[tuple, torch.Tensor] = {}
        self._ort: Optional[_OrtRunner] = (_OrtRunner(model, self.threads)
                                           if backend == 'onnxruntime' else None)
        self.warmup(warmup_shapes)

    def _check_onnxruntime(self, backend: str, cuda: bool, precision: str, compile: str) -> None:
        """Refuse options that ONNX Runtime cannot run with, before any weights are loaded."""
        if backend != 'onnxruntime':
            return
        if cuda:
            raise ValueError("backend='onnxruntime' is the CPU backend; got device "
                             f'{str(self.device)!r} (use the torch backend on the GPU)')
        if precision != 'fp32' or compile not in ('auto', 'none'):
            raise ValueError("backend='onnxruntime' runs fp32 without torch.compile, got "
                             f'precision={precision!r}, compile={compile!r}')

    def __repr__(self) -> str:
        """Describe the settings."""
        return (f'FusionEngine(device={str(self.device)!r}, precision={self.precision!r}, '
                f'compile={self.compile!r}, backend={self.backend!r}, '
                f'channels_last={self.channels_last})')

    # ------------------------------------------------------------------------------------------
    # the network on padded tensors
    # ------------------------------------------------------------------------------------------

    def _forward(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Run the network on aligned ``(B, 1, H', W')`` tensors in the engine's precision."""
        enabled = self._amp_dtype is not None
        dtype = self._amp_dtype if enabled else torch.float32
        with torch.autocast(self.device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
            return self.model(vi, ir).float()

    def _build_runner(self, mode: str, vi: torch.Tensor, ir: torch.Tensor) -> Runner:
        """Make the callable for one padded shape in compile ``mode``; run it once."""
        if self._ort is not None:
            runner: Runner = self._ort
        elif mode == 'none':
            runner = self._forward
        else:
            fn: Runner = self._forward
            if mode.startswith('inductor'):
                if self._compiled is None:
                    self._compiled = torch.compile(self._forward, dynamic=False)
                fn = self._compiled
            runner = _GraphRunner(fn, vi, ir, self._pool) if 'cudagraphs' in mode else fn
        runner(vi, ir)  # compiles (inductor) or checks the graph on first use
        return runner

    def _runner(self, vi: torch.Tensor, ir: torch.Tensor) -> Runner:
        """Return the cached runner for this padded shape, built (with fallbacks) on first use."""
        key = tuple(vi.shape[0:1]) + tuple(vi.shape[-2:])
        runner = self._runners.get(key)
        if runner is not None:
            self._runners.move_to_end(key)
            return runner
        while True:
            try:
                runner = self._build_runner(self.compile, vi, ir)
                break
            except Exception as exc:  # compilers and graph capture fail in many ways
                fallback = _FALLBACK.get(self.compile)
                while fallback and 'cudagraphs' in fallback and self.device.type != 'cuda':
                    fallback = _FALLBACK.get(fallback)
                if fallback is None or self._ort is not None:
                    raise
                warnings.warn(f'FusionEngine: compile={self.compile!r} failed on '
                              f'{str(self.device)} ({type(exc).__name__}: {exc}); falling back '
                              f'to {fallback!r}', RuntimeWarning, stacklevel=3)
                self.compile = fallback
                self._runners.clear()
        self._runners[key] = runner
        while len(self._runners) > self.cache_size:
            self._runners.popitem(last=False)
        return runner

    @property
    def cached_shapes(self) -> Tuple[Tuple[int, int, int], ...]:
        """Padded ``(batch, H', W')`` shapes that have a compiled/captured runner, oldest first."""
        return tuple(self._runners)

    def fuse_luma_tensor(self, y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Fuse luminance and infrared tensors already on the device.

        :param y: visible luminance ``(B, 1, H, W)`` float in ``[0, 1]`` on :attr:`device`.
        :param ir: infrared ``(B, 1, H, W)``, same shape, dtype and device.
        :return: fused ``(B, 1, H, W)`` float32 in ``(0, 1)`` on the device (a new tensor).
        :raises TypeError: not floating-point tensors.
        :raises ValueError: wrong or different shapes, empty, or on another device.
        """
        for name, x in (('y', y), ('ir', ir)):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
                raise TypeError(f'{name} must be a floating-point tensor in [0, 1], got {got}')
            if x.ndim != 4 or x.shape[1] != 1 or x.numel() == 0:
                raise ValueError(f'{name} must have shape (B, 1, H, W) with B, H, W >= 1, got '
                                 f'{tuple(x.shape)}')
            if x.device != self.device and not (x.device.type == self.device.type == 'cuda'
                                                and self.device.index is None):
                raise ValueError(f'{name} is on {x.device}, the engine runs on {self.device}')
        if y.shape != ir.shape:
            raise ValueError(f'y and ir must have the same shape, got {tuple(y.shape)} and '
                             f'{tuple(ir.shape)}')
        h, w = y.shape[-2:]
        with torch.inference_mode():
            y_p = ops.pad_to_multiple(y.float(), self.size_multiple, self.min_size)
            ir_p = ops.pad_to_multiple(ir.float(), self.size_multiple, self.min_size)
            out = self._runner(y_p, ir_p)(y_p, ir_p)
            return out[:, :, :h, :w].clone()

    # ------------------------------------------------------------------------------------------
    # host images in, host image out
    # ------------------------------------------------------------------------------------------

    def _upload(self, img: np.ndarray, name: str) -> torch.Tensor:
        """Copy a numpy image to the device (a reused pinned buffer and an async copy on CUDA)."""
        if not img.flags.c_contiguous:
            img = np.ascontiguousarray(img)
        host = torch.from_numpy(img)
        if self.device.type != 'cuda':
            return host
        key = (name, tuple(img.shape), host.dtype)
        staging = self._staging.get(key)
        if staging is None:
            if len(self._staging) >= 4 * self.cache_size:
                self._staging.clear()
            staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
            self._staging[key] = staging
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def _download(self, tensors: Sequence[torch.Tensor]) -> list:
        """Device tensors -> numpy copies, one synchronisation for all of them."""
        if self.device.type != 'cuda':
            return [t.numpy() for t in tensors]
        hosts = []
        for i, t in enumerate(tensors):
            key = ('out', i, tuple(t.shape), t.dtype)
            staging = self._staging.get(key)
            if staging is None:
                staging = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                self._staging[key] = staging
            staging.copy_(t, non_blocking=True)
            hosts.append(staging)
        torch.cuda.current_stream(self.device).synchronize()
        return [h.numpy().copy() for h in hosts]

    def _fuse_device(self, vi: torch.Tensor, ir: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Run the protocol on device tensors: return (uint8 image, finite flag, gray flag)."""
        gray_flag = None
        chroma = None
        if vi.ndim == 2:
            y = vi
        else:
            y, cb, cr = ops.bgr_to_ycbcr(vi)
            chroma = (cb, cr)
            gray_flag = ops.is_gray_bgr(vi)
        ir_plane = ir if ir.ndim == 2 else ops.bgr_to_gray(ir)
        fused = self.fuse_luma_tensor(ops.to_unit(y)[None, None],
                                      ops.to_unit(ir_plane)[None, None])[0, 0]  # (H, W)
        finite = torch.isfinite(fused).all()
        if chroma is None:
            return ops.unit_to_uint8(fused), finite, None
        cb, cr = chroma
        if vi.dtype == torch.uint8:
            # The protocol's path: 8-bit fused Y + the visible 8-bit chroma, OpenCV's inverse.
            out = ops.ycbcr_to_bgr(ops.unit_to_uint8(fused), cb, cr)
        else:
            out = ops.unit_to_uint8(ops.ycbcr_to_bgr(fused.to(cb.dtype), cb, cr))
        return out, finite, gray_flag

    def fuse(self, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """Fuse one visible/infrared pair (host arrays in, host array out).

        :param vi: visible image, ``(H, W)`` or ``(H, W, 3)`` BGR, uint8 or float in ``[0, 1]``.
        :param ir: infrared image of the same size, ``(H, W)`` or ``(H, W, 3)``.
        :return: uint8 fused image: ``(H, W)`` for a gray(-looking) visible image, else BGR
            ``(H, W, 3)`` with the visible image's chroma.
        :raises sfdfuse_core.fusion.FusionInputError: see
            :func:`sfdfuse_core.fusion.validate_pair`.
        :raises RuntimeError: the network produced non-finite values.
        """
        validate_pair(vi, ir)
        return self._fuse_checked(vi, ir)

    __call__ = fuse

    def _fuse_checked(self, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """:meth:`fuse` without the input validation (the caller validated)."""
        if self.device.type == 'cpu' and vi.dtype == np.uint8 and ir.dtype == np.uint8:
            return self._fuse_host_uint8(vi, ir)
        with torch.inference_mode():
            vi_t = self._upload(vi, 'vi')
            ir_t = self._upload(ir, 'ir')
            out, finite, gray_flag = self._fuse_device(vi_t, ir_t)
            flags = finite if gray_flag is None else torch.stack((finite, gray_flag))
            out_np, flags_np = self._download([out, flags])
        flags_np = np.atleast_1d(flags_np)
        if not flags_np[0]:
            raise RuntimeError(_NON_FINITE)
        if gray_flag is not None and flags_np[1]:
            # Equal channels: Cb = Cr = neutral, so every BGR channel is the fused luminance.
            return np.ascontiguousarray(out_np[:, :, 0])
        return out_np

    def _fuse_host_uint8(self, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """:meth:`fuse` of 8-bit images on the CPU: the colour steps of :class:`Fuser` (OpenCV).

        The same bytes as the torch ops of :meth:`_fuse_device` (those are bit-exact with
        ``cv2.cvtColor``), but one vectorised OpenCV pass per conversion instead of a dozen
        full-resolution int32 tensor ops.
        """
        y, chroma = split_luma(vi)
        with torch.inference_mode():
            y_t = ops.to_unit(torch.from_numpy(np.ascontiguousarray(y)))[None, None]
            ir_t = ops.to_unit(torch.from_numpy(np.ascontiguousarray(gray_plane(ir))))[None, None]
            fused = self.fuse_luma_tensor(y_t, ir_t)[0, 0]  # (H, W)
            if not bool(torch.isfinite(fused).all()):
                raise RuntimeError(_NON_FINITE)
            fused_u8 = ops.unit_to_uint8(fused).numpy()
        return fused_u8 if chroma is None else ycbcr_to_bgr(fused_u8, *chroma)

    def warmup(self, shapes: Iterable[Tuple[int, int]], repeats: Optional[int] = None) -> None:
        """Compile/capture for each ``(height, width)`` and run it, so later frames are fast.

        :param shapes: image sizes ``(height, width)``, each ``>= 1``.
        :param repeats: fused pairs per shape (colour inputs); ``None``: 2 when compiling, 1 in
            eager mode.
        :raises ValueError: a shape is not two positive ints.
        """
        shapes = list(shapes)
        for shape in shapes:
            if (not isinstance(shape, (tuple, list)) or len(shape) != 2
                    or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in shape)):
                raise ValueError(f'warm-up shapes must be (height, width) pairs of ints >= 1, '
                                 f'got {shape!r}')
        if repeats is None:
            repeats = 1 if self.compile == 'none' else 2
        rng = np.random.default_rng(0)
        for height, width in shapes:
            vi = rng.integers(0, 256, (int(height), int(width), 3), dtype=np.uint8)
            ir = rng.integers(0, 256, (int(height), int(width)), dtype=np.uint8)
            for _ in range(repeats):
                self._fuse_checked(vi, ir)
