"""The measurements behind ``sfdfuse bench`` (see :mod:`sfdfuse_core.commands.bench`).

The reference path is what the research code runs: the unfolded network in float32 eager mode
under ``torch.no_grad``, OpenCV colour conversion on the host. Every figure is measured in the
same process on the same machine as the engine it is compared with.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from sfdfuse_core.inference.cost import matmul_gflops, model_cost
from sfdfuse_core.inference.engine import FusionEngine, available_cores

__all__ = ['BenchSettings', 'EagerReference', 'PlainCNN', 'run_benchmark', 'write_results',
           'psnr', 'synthetic_pair', 'time_calls']

#: Name of the latency row of :class:`PlainCNN` (CPU runs).
PLAIN_CNN_PATH = 'plain CNN 16 ch x 6 layers, eager fp32 (speed yardstick)'


@dataclass
class BenchSettings:
    """What to measure (the ``sfdfuse bench`` options)."""

    device: torch.device
    sizes: List[Tuple[int, int]] = field(default_factory=lambda: [(480, 640)])
    repeats: int = 20
    eager_repeats: int = 20
    warmup: int = 3
    weights: Optional[Path] = None
    network: str = 'sfdfuse'
    quality_data: Optional[Path] = None
    quality_limit: int = 0
    precision: str = 'auto'
    compile: str = 'auto'
    onnxruntime: bool = True
    cpu_inductor: bool = False
    train_repeats: int = 10
    train_batch: int = 8
    train_size: int = 128
    command: str = ''
    config: Any = None  # a network config for tests; None: the shipped size of ``network``
    #: On the CPU, also time :class:`PlainCNN` the same way as the eager reference.
    plain_cnn: bool = True


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images (``inf`` when identical).

    :param a: uint8 image.
    :param b: uint8 image, same shape.
    :return: ``10 log10(255^2 / MSE)``.
    """
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float('inf') if mse == 0.0 else 10.0 * float(np.log10(255.0 ** 2 / mse))


def synthetic_pair(height: int, width: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Make a smooth random colour visible image and a gray infrared image (uint8).

    :param height: image height.
    :param width: image width.
    :param seed: random seed.
    :return: ``(vi (H, W, 3), ir (H, W))``.
    """
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 4)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(1.0, min(height, width) / 40))
    smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-6)
    detail = 0.15 * rng.random((height, width, 4)).astype(np.float32)
    img = np.clip((0.85 * smooth + detail) * 255.0, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3]), np.ascontiguousarray(img[:, :, 3])


class EagerReference:
    """The reference path: unfolded fp32 network, eager, OpenCV colour on the host."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        """Hold an eval-mode copy of ``model`` on ``device`` (not folded).

        :param model: the network.
        :param device: where it runs.
        """
        self.model = copy.deepcopy(model).float().to(device).eval()
        self.device = device

    def __call__(self, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
        """Fuse like ``Fuser`` did before the engine (uint8 inputs)."""
        from sfdfuse_core.color import ycbcr_to_bgr
        from sfdfuse_core.inputs import gray_plane, split_luma, to_uint8, unit_float, validate_pair

        validate_pair(vi, ir)
        y, chroma = split_luma(vi)
        vi_t = torch.from_numpy(unit_float(y))[None, None].to(self.device)
        ir_t = torch.from_numpy(unit_float(gray_plane(ir)))[None, None].to(self.device)
        with torch.no_grad():
            fused = to_uint8(self.model(vi_t, ir_t)[0, 0].cpu().numpy())
        if chroma is None:
            return fused
        return ycbcr_to_bgr(fused, *chroma)


class PlainCNN(nn.Module):
    """A speed yardstick: a plain 16-channel, 6-layer 3x3 CNN at full resolution.

    The CPU speed target of the compact network is stated against such a network (about 8
    GFLOP per 640x512 pair; "about as fast as a plain CNN of this size runs in eager torch").
    Timing it in the same run as the engine makes that comparison independent of how fast the
    shared machine happens to be. Its weights are random: it is never used to fuse.

    Layers: ``[Y, I]`` (2 channels) -> 16, five 16 -> 16 (six 16-channel layers), then 16 -> 1;
    each a 3x3 convolution with a LeakyReLU except the last (12,049 parameters, 24 kFLOP per
    pixel: 7.8 GFLOP per 640x512 pair).
    """

    def __init__(self, width: int = 16, hidden_layers: int = 5) -> None:
        """Create the layers; see the class docstring."""
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(2, width, 3, padding=1), nn.LeakyReLU(0.1)]
        for _ in range(hidden_layers):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1)]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` twice -> ``(B, 1, H, W)`` in ``[0, 1]``."""
        return (vi + self.body(torch.cat([vi, ir], dim=1))).clamp(0.0, 1.0)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device
               ) -> Dict[str, float]:
    """Time ``fn`` end to end (host result in hand): median, p99, mean, throughput.

    :param fn: the call to time; it returns host data, so it has synchronised.
    :param repeats: timed calls (>= 1).
    :param warmup: untimed calls first.
    :param device: synchronised before timing starts.
    :return: ``{'median_ms', 'p99_ms', 'mean_ms', 'min_ms', 'pairs_per_s', 'repeats'}``.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    total = time.perf_counter() - start_all
    ms = np.array(times) * 1e3
    return {'median_ms': float(np.median(ms)), 'p99_ms': float(np.percentile(ms, 99)),
            'mean_ms': float(ms.mean()), 'min_ms': float(ms.min()),
            'pairs_per_s': repeats / total, 'repeats': repeats}


def _device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return f'{line.split(":", 1)[1].strip()} ({available_cores()} cores)'
    except OSError:
        pass
    return f'{platform.processor() or platform.machine()} ({available_cores()} cores)'


def _environment(device: torch.device) -> Dict[str, Any]:
    env = {'device': _device_name(device), 'device_type': device.type,
           'torch': torch.__version__, 'cuda': torch.version.cuda,
           'cudnn': torch.backends.cudnn.version() if device.type == 'cuda' else None,
           'python': platform.python_version(), 'host': platform.node(),
           'cpu_threads': torch.get_num_threads(), 'available_cores': available_cores(),
           'time': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    if hasattr(os, 'getloadavg'):
        env['load_average'] = list(os.getloadavg())  # the machine is shared: how busy it was
    try:
        import onnxruntime
        env['onnxruntime'] = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        env['onnxruntime'] = None
    return env


def _build_model(settings: BenchSettings) -> Tuple[nn.Module, str]:
    from sfdfuse_core.model import build_model, network_spec, shipped_weights_path
    from sfdfuse_core.weights import load_model

    if settings.weights is not None:
        model = load_model(settings.weights, device='cpu').eval()
        return model, model.weights_path
    shipped = shipped_weights_path(settings.network)
    if settings.config is None and shipped.is_file():
        return load_model(shipped, device='cpu').eval(), f'shipped: {shipped}'
    torch.manual_seed(0)
    config = settings.config or network_spec(settings.network).config_class()
    what = 'shipped-size' if settings.config is None else 'test-size'
    return (build_model(config).eval(),
            f'random {what} {settings.network} network, seed 0 (no trained weights installed; '
            'speed does not depend on weight values)')


def _peak_mib(device: torch.device) -> Optional[float]:
    if device.type != 'cuda':
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def _reset_peak(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _engines(model: nn.Module, settings: BenchSettings, log: Callable[[str], None]
             ) -> Dict[str, Tuple[FusionEngine, float]]:
    """Build the engines to compare, each warmed up at every size; returns name -> (engine, s)."""
    device = settings.device
    shapes = list(settings.sizes)
    cache = max(4, len(shapes))
    specs: List[Tuple[str, Dict[str, Any]]] = []
    if device.type == 'cuda':
        specs.append(('engine', dict(precision=settings.precision, compile=settings.compile)))
        specs.append(('engine fp32 eager-folded', dict(precision='fp32', compile='none')))
    else:
        specs.append(('engine fp32 (torch)', dict(precision='fp32', compile='none',
                                                  backend='torch')))
        if callable(getattr(model, 'fuse_for_cpu', None)):
            specs.append(('engine fp32 (torch, unfused)', dict(precision='fp32', compile='none',
                                                               backend='torch', fuse=False)))
        if settings.precision in ('bf16', 'fp16'):  # asked for: reduced precision on the CPU
            specs.append((f'engine {settings.precision} (torch)',
                          dict(precision=settings.precision, compile='none', backend='torch')))
        if settings.onnxruntime:
            specs.append(('engine fp32 (onnxruntime)', dict(backend='onnxruntime',
                                                            channels_last=False)))
        if settings.cpu_inductor:
            specs.append(('engine fp32 (inductor)', dict(precision='fp32', compile='inductor',
                                                         backend='torch')))
    engines = {}
    for name, kwargs in specs:
        log(f'building {name} and warming up at {shapes} ...')
        start = time.perf_counter()
        engine = FusionEngine(model=copy.deepcopy(model), device=device, cache_size=cache,
                              warmup_shapes=shapes, **kwargs)
        _sync(device)
        engines[name] = (engine, time.perf_counter() - start)
        log(f'  {engine!r} ready in {engines[name][1]:.1f} s')
    return engines


def _latency(model: nn.Module, engines: Dict[str, Tuple[FusionEngine, float]],
             settings: BenchSettings, costs: Dict[str, Dict[str, float]],
             log: Callable[[str], None]) -> List[Dict[str, Any]]:
    device = settings.device
    eager = EagerReference(model, device)
    rows = []
    for height, width in settings.sizes:
        key = f'{width}x{height}'
        vi, ir = synthetic_pair(height, width)
        flops = costs[key]['flops']
        log(f'{key}: eager fp32 ...')
        ref = eager(vi, ir)
        _reset_peak(device)
        stats = time_calls(lambda: eager(vi, ir), settings.eager_repeats,
                           max(0, settings.warmup - 1), device)
        rows.append({'size': key, 'path': 'eager fp32 (reference)', **stats,
                     'peak_mib': _peak_mib(device), 'psnr_vs_eager_db': float('inf'),
                     'achieved_gflops': flops / (stats['median_ms'] * 1e-3) / 1e9})
        log(f'  median {stats["median_ms"]:.1f} ms')
        if device.type == 'cpu' and settings.plain_cnn:
            rows.append(_plain_cnn_row(key, vi, ir, settings, log))
        for name, (engine, _) in engines.items():
            log(f'{key}: {name} ...')
            out = engine(vi, ir)
            _reset_peak(device)
            stats = time_calls(lambda: engine(vi, ir), settings.repeats, settings.warmup, device)
            rows.append({'size': key, 'path': name, **stats, 'peak_mib': _peak_mib(device),
                         'psnr_vs_eager_db': psnr(out, ref),
                         'max_abs_diff': int(np.abs(out.astype(int) - ref).max()),
                         'achieved_gflops': flops / (stats['median_ms'] * 1e-3) / 1e9})
            log(f'  median {stats["median_ms"]:.1f} ms, '
                f'PSNR {rows[-1]["psnr_vs_eager_db"]:.1f} dB')
    return rows


def _plain_cnn_row(key: str, vi: np.ndarray, ir: np.ndarray, settings: BenchSettings,
                   log: Callable[[str], None]) -> Dict[str, Any]:
    """Time :class:`PlainCNN` through the eager reference path (same colour handling)."""
    torch.manual_seed(0)
    cnn = PlainCNN()
    yardstick = EagerReference(cnn, settings.device)
    log(f'{key}: {PLAIN_CNN_PATH} ...')
    stats = time_calls(lambda: yardstick(vi, ir), settings.eager_repeats,
                       max(0, settings.warmup - 1), settings.device)
    height, width = vi.shape[:2]
    flops = 2 * sum(m.weight.numel() for m in cnn.modules() if isinstance(m, nn.Conv2d))
    log(f'  median {stats["median_ms"]:.1f} ms')
    return {'size': key, 'path': PLAIN_CNN_PATH, **stats, 'peak_mib': None,
            'psnr_vs_eager_db': None,
            'achieved_gflops': flops * height * width / (stats['median_ms'] * 1e-3) / 1e9}


def _pair_sets(root: Path) -> List[Tuple[str, Path, Path]]:
    if (root / 'ir').is_dir() and (root / 'vi').is_dir():
        return [(root.name, root / 'ir', root / 'vi')]
    return [(d.name, d / 'ir', d / 'vi') for d in sorted(root.iterdir())
            if (d / 'ir').is_dir() and (d / 'vi').is_dir()]


def _quality(model: nn.Module, engine: FusionEngine, settings: BenchSettings,
             log: Callable[[str], None]) -> Dict[str, Any]:
    """PSNR and evaluation metrics of engine vs. eager fp32 on real pairs."""
    from sfdfuse_core.imageio import list_pairs, read_image, to_gray
    from sfdfuse_core.metrics import METRIC_NAMES, MetricError, evaluate_pair

    eager = EagerReference(model, settings.device)
    report: Dict[str, Any] = {}
    for set_name, ir_dir, vi_dir in _pair_sets(settings.quality_data):
        pairs = list_pairs(ir_dir, vi_dir).pairs
        if settings.quality_limit:
            pairs = pairs[:settings.quality_limit]
        psnrs, rel = [], {m: [] for m in METRIC_NAMES}
        for name, ir_path, vi_path in pairs:
            ir, vi = read_image(ir_path), read_image(vi_path)
            if ir.dtype != np.uint8 or vi.dtype != np.uint8:
                continue
            ref, out = eager(vi, ir), engine(vi, ir)
            psnrs.append(psnr(out, ref))
            try:
                m_ref = evaluate_pair(to_gray(ref), to_gray(ir), to_gray(vi))
                m_out = evaluate_pair(to_gray(out), to_gray(ir), to_gray(vi))
            except MetricError as exc:
                log(f'  {set_name}/{name}: metrics skipped ({exc})')
                continue
            for metric in METRIC_NAMES:
                denom = max(abs(m_ref[metric]), 1e-12)
                rel[metric].append(abs(m_out[metric] - m_ref[metric]) / denom)
        if not psnrs:
            continue
        worst = {m: (max(v) * 100.0 if v else None) for m, v in rel.items()}
        report[set_name] = {
            'pairs': len(psnrs), 'psnr_min_db': min(psnrs),
            'psnr_mean_db': float(np.mean([p for p in psnrs if np.isfinite(p)] or [np.inf])),
            'metric_max_rel_diff_pct': worst,
            'metrics_within_1pct': all(v is None or v <= 1.0 for v in worst.values()),
            'psnr_above_40db': min(psnrs) > 40.0}
        log(f'  {set_name}: {len(psnrs)} pairs, PSNR min {min(psnrs):.1f} dB')
    return report


def _training(model: nn.Module, settings: BenchSettings, log: Callable[[str], None]
              ) -> List[Dict[str, Any]]:
    """Time one phase-II training step (forward, loss, backward, Adam) eager vs. fast."""
    from sfdfuse_core.train.losses import FusionLoss, ReconstructionLoss
    from sfdfuse_core.train.trainer import TrainingStep

    device = settings.device
    cuda = device.type == 'cuda'
    b, s = settings.train_batch, settings.train_size
    gen = torch.Generator().manual_seed(0)
    vi = torch.rand(b, 1, s, s, generator=gen).to(device)
    ir = torch.rand(b, 1, s, s, generator=gen).to(device)
    variants = [('eager fp32', dict(amp=False, channels_last=False, compile=False))]
    if cuda:
        variants.append(('bf16 + channels-last + torch.compile',
                         dict(amp=True, channels_last=True, compile=True)))
        variants.append(('bf16 + channels-last', dict(amp=True, channels_last=True,
                                                      compile=False)))
    else:
        variants.append(('fp32 + channels-last', dict(amp=False, channels_last=True,
                                                      compile=False)))
    rows = []
    for name, opt in variants:
        net = copy.deepcopy(model).float().to(device).train()
        if opt['channels_last']:
            net = net.to(memory_format=torch.channels_last)
        step = TrainingStep(net, 2, ReconstructionLoss(), FusionLoss(),
                            (device.type, opt['amp']))
        fn = torch.compile(step) if opt['compile'] else step
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

        def one_step() -> float:
            optimizer.zero_grad(set_to_none=True)
            loss = fn(vi, ir)['loss']
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        log(f'training step: {name} ...')
        start = time.perf_counter()
        try:
            one_step()
        except Exception as exc:  # report a failed compile instead of losing the whole run
            rows.append({'setting': name, 'error': f'{type(exc).__name__}: {exc}'})
            log(f'  failed: {exc}')
            continue
        first = time.perf_counter() - start
        _reset_peak(device)
        stats = time_calls(one_step, settings.train_repeats,
                           max(0, min(settings.warmup, 3) - 1), device)
        rows.append({'setting': name, 'batch': b, 'size': s, 'first_step_s': first,
                     'peak_mib': _peak_mib(device), **stats})
        log(f'  median {stats["median_ms"]:.1f} ms (first step {first:.1f} s)')
    return rows


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = lambda msg: None
                  ) -> Dict[str, Any]:
    """Run every measurement of ``sfdfuse bench``.

    :param settings: what to measure.
    :param log: progress messages.
    :return: the results (JSON-serialisable dict).
    :raises ValueError: no sizes.
    :raises sfdfuse_core.weights.WeightsError: ``settings.weights`` cannot be loaded.
    """
    if not settings.sizes:
        raise ValueError('no sizes to benchmark')
    device = settings.device
    from sfdfuse_core.model import network_of

    model, weights = _build_model(settings)
    results: Dict[str, Any] = {'command': settings.command, 'environment': _environment(device),
                               'network': network_of(model), 'weights': weights,
                               'parameters': sum(p.numel() for p in model.parameters())}
    log(f'device: {results["environment"]["device"]}, torch {torch.__version__}')
    costs = {f'{w}x{h}': model_cost(model, h, w) for h, w in settings.sizes}
    results['cost'] = costs
    peak_dtype = torch.bfloat16 if device.type == 'cuda' else torch.float32
    results['matmul_gflops'] = {str(peak_dtype).replace('torch.', ''):
                                matmul_gflops(device, 4096 if device.type == 'cuda' else 2048,
                                              peak_dtype)}
    if device.type == 'cuda':
        results['matmul_gflops']['float32'] = matmul_gflops(device, 4096, torch.float32)
    engines = _engines(model, settings, log)
    results['engine_build_s'] = {name: t for name, (_, t) in engines.items()}
    results['engines'] = {name: repr(e) for name, (e, _) in engines.items()}
    results['latency'] = _latency(model, engines, settings, costs, log)
    if settings.quality_data is not None:
        first = next(iter(engines.values()))[0]
        results['quality'] = _quality(model, first, settings, log)
    if settings.train_repeats:
        results['training'] = _training(model, settings, log)
    return results


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return 'inf' if value == float('inf') else f'{value:.{digits}f}'
    return str(value)


def to_markdown(results: Dict[str, Any]) -> str:
    """Render the results as Markdown tables.

    :param results: as returned by :func:`run_benchmark`.
    :return: Markdown text.
    """
    env = results['environment']
    lines = [f'### {results.get("network", "sfdfuse")} on {env["device"]}: torch {env["torch"]}'
             + (f', CUDA {env["cuda"]}' if env['device_type'] == 'cuda' else '')
             + f', {env["time"]}', '',
             f'Command: `{results["command"]}`  ', f'Weights: {results["weights"]}  ',
             f'Parameters: {results["parameters"]:,}  ',
             'Matmul rate: ' + ', '.join(f'{k} {v:.0f} GFLOP/s'
                                         for k, v in results['matmul_gflops'].items())
             + ('  ' if env.get('load_average') else ''),
             *(['Load average at the start (1, 5, 15 min): '
                + ', '.join(f'{v:.2f}' for v in env['load_average'])]
               if env.get('load_average') else []), '',
             '| size | path | median ms | p99 ms | pairs/s | peak GPU MiB | PSNR vs eager dB '
             '| GFLOP/s |', '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for row in results['latency']:
        lines.append(f'| {row["size"]} | {row["path"]} | {_fmt(row["median_ms"])} | '
                     f'{_fmt(row["p99_ms"])} | {_fmt(row["pairs_per_s"], 2)} | '
                     f'{_fmt(row["peak_mib"], 0)} | {_fmt(row["psnr_vs_eager_db"])} | '
                     f'{_fmt(row["achieved_gflops"], 0)} |')
    lines += ['', '| size | GFLOP per pair | MB moved (bf16, eager ops) | MB moved (bf16, fused '
              'estimate) |', '| --- | ---: | ---: | ---: |']
    for size, cost in results['cost'].items():
        lines.append(f'| {size} | {cost["flops"] / 1e9:.1f} | {cost["bytes_eager"] / 1e6:.0f} | '
                     f'{cost["bytes_fused"] / 1e6:.0f} |')
    if results.get('engine_build_s'):
        lines += ['', 'Engine build + warm-up (all sizes): ' + ', '.join(
            f'{k} {v:.1f} s' for k, v in results['engine_build_s'].items())]
    if results.get('training'):
        lines += ['', '| training step | batch x size | median ms | p99 ms | first step s | '
                  'peak GPU MiB |', '| --- | --- | ---: | ---: | ---: | ---: |']
        for row in results['training']:
            if 'error' in row:
                lines.append(f'| {row["setting"]} | failed: {row["error"][:80]} | | | | |')
                continue
            lines.append(f'| {row["setting"]} | {row["batch"]} x {row["size"]}^2 | '
                         f'{_fmt(row["median_ms"])} | {_fmt(row["p99_ms"])} | '
                         f'{_fmt(row["first_step_s"])} | {_fmt(row["peak_mib"], 0)} |')
    if results.get('quality'):
        lines += ['', '| quality set | pairs | PSNR min dB | PSNR mean dB | worst metric diff % '
                  '| metrics within 1% |', '| --- | ---: | ---: | ---: | ---: | --- |']
        for name, q in results['quality'].items():
            worst = max((v for v in q['metric_max_rel_diff_pct'].values() if v is not None),
                        default=None)
            lines.append(f'| {name} | {q["pairs"]} | {_fmt(q["psnr_min_db"])} | '
                         f'{_fmt(q["psnr_mean_db"])} | {_fmt(worst, 3)} | '
                         f'{q["metrics_within_1pct"]} |')
    return '\n'.join(lines) + '\n'


def write_results(results: Union[Dict[str, Any], Sequence[Dict[str, Any]]],
                  out_dir: os.PathLike) -> Tuple[Path, Path]:
    """Write ``bench_<device type>.json`` and ``.md`` into ``out_dir``.

    :param results: one :func:`run_benchmark` result, or several (one per network, same device):
        the JSON holds ``{'runs': [...]}`` and the Markdown one section per run.
    :param out_dir: folder (created).
    :return: the two paths.
    """
    runs = [results] if isinstance(results, dict) else list(results)
    if not runs:
        raise ValueError('no benchmark results to write')
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = runs[0]['environment']['device_type']
    json_path = out_dir / f'bench_{kind}.json'
    md_path = out_dir / f'bench_{kind}.md'
    json_path.write_text(json.dumps({'runs': runs}, indent=2, default=str) + '\n')
    md_path.write_text('\n'.join(to_markdown(run) for run in runs))
    return json_path, md_path
