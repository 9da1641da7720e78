"""Tests of the fast inference engine (:mod:`sfdfuse_core.inference`).

The reference is the plain fp32 eager path written out here from the published protocol (CDDFuse
``test_IVF.py``: OpenCV ``COLOR_BGR2YCrCb``, fuse Y, put the chroma back with
``COLOR_YCrCb2BGR``) with the *unfolded* network, as the research code runs it; the engine must
match it (PSNR > 40 dB, in practice within one grey level). Colour conversions in torch are
checked against OpenCV itself.
"""
import copy

import cv2
import numpy as np
import pytest
import torch

from sfdfuse_core.color import bgr_to_ycbcr, ycbcr_to_bgr
from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.fusion import Fuser, FusionInputError
from sfdfuse_core.imageio import is_gray_color
from sfdfuse_core.inference import FusionEngine, ops
from sfdfuse_core.inference import engine as engine_module
from sfdfuse_core.model import build_model
from sfdfuse_core.model.blocks import DEConv

TINY = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1, encoder_convformer_blocks=1,
                     decoder_restormer_blocks=1, decoder_convformer_blocks=1, detail_nodes=1,
                     cga_reduction=4, head_channels=4)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason='needs a CUDA GPU (bf16, torch.compile + CUDA graphs path)')


@pytest.fixture(scope='module')
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


def reference_fuse(model: torch.nn.Module, vi: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """The fp32 eager protocol with OpenCV colour and the unfolded network (uint8 inputs)."""
    ir_gray = ir if ir.ndim == 2 else cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    gray = vi.ndim == 2 or is_gray_color(vi)
    if gray:
        y = vi if vi.ndim == 2 else vi[:, :, 0]
    else:
        ycrcb = cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)
        y = ycrcb[:, :, 0]
    with torch.no_grad():
        fused = model(torch.from_numpy(y / 255.0).float()[None, None],
                      torch.from_numpy(ir_gray / 255.0).float()[None, None])[0, 0].numpy()
    fused = np.clip(np.rint(fused * 255.0), 0, 255).astype(np.uint8)
    if gray:
        return fused
    return cv2.cvtColor(np.dstack((fused, ycrcb[:, :, 1], ycrcb[:, :, 2])), cv2.COLOR_YCrCb2BGR)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float('inf') if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def make_engine(model: torch.nn.Module, **kwargs) -> FusionEngine:
    kwargs.setdefault('device', 'cpu')
    return FusionEngine(model=copy.deepcopy(model), **kwargs)


# ----------------------------------------------------------------------------------------------
# pre- and post-processing in torch
# ----------------------------------------------------------------------------------------------

def test_uint8_colour_ops_are_bit_exact_with_opencv(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    y, cb, cr = ops.bgr_to_ycbcr(torch.from_numpy(img))
    ref = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    np.testing.assert_array_equal(y.numpy(), ref[:, :, 0])
    np.testing.assert_array_equal(cr.numpy(), ref[:, :, 1])
    np.testing.assert_array_equal(cb.numpy(), ref[:, :, 2])
    np.testing.assert_array_equal(ops.bgr_to_gray(torch.from_numpy(img)).numpy(),
                                  cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    planes = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # arbitrary Y, Cr, Cb
    back = ops.ycbcr_to_bgr(*(torch.from_numpy(np.ascontiguousarray(planes[:, :, i]))
                              for i in (0, 2, 1)))
    np.testing.assert_array_equal(back.numpy(), cv2.cvtColor(planes, cv2.COLOR_YCrCb2BGR))


def test_float_colour_ops_match_color_module(rng: np.random.Generator) -> None:
    img = rng.random((9, 14, 3)).astype(np.float32)
    ours = [p.numpy() for p in ops.bgr_to_ycbcr(torch.from_numpy(img))]
    for a, b in zip(ours, bgr_to_ycbcr(img)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    back = ops.ycbcr_to_bgr(*(torch.from_numpy(p) for p in ours)).numpy()
    np.testing.assert_allclose(back, ycbcr_to_bgr(*ours), atol=1e-6)


def test_unit_round_trip_and_rounding() -> None:
    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(ops.unit_to_uint8(ops.to_unit(x)), x)
    # half to even, as np.rint; clipped
    vals = torch.tensor([0.5 / 255, 1.5 / 255, -0.2, 1.3], dtype=torch.float64)
    np.testing.assert_array_equal(ops.unit_to_uint8(vals).numpy(),
                                  np.clip(np.rint(vals.numpy() * 255), 0, 255).astype(np.uint8))


def test_padding_matches_the_model_rule() -> None:
    assert ops.padded_size(7, 11, 2, 4) == (8, 12)
    assert ops.padded_size(1, 2, 2, 4) == (4, 4)
    x = torch.rand(1, 1, 3, 5)
    assert ops.pad_to_multiple(x, 2, 4).shape == (1, 1, 4, 6)
    assert ops.pad_to_multiple(torch.rand(1, 1, 4, 6), 2, 4).shape == (1, 1, 4, 6)
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        ops.bgr_to_ycbcr(torch.zeros(4, 4))


# ----------------------------------------------------------------------------------------------
# the engine against the fp32 eager reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(24, 32), (7, 11), (3, 2)])
@pytest.mark.parametrize('kind', ['gray', 'colour', 'gray_looking', 'colour_ir'])
def test_engine_fp32_matches_eager_reference(tiny_model: torch.nn.Module,
                                             rng: np.random.Generator, size: tuple,
                                             kind: str) -> None:
    h, w = size
    vi = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if kind == 'gray':
        vi = vi[:, :, 1].copy()
    elif kind == 'gray_looking':
        vi = np.repeat(vi[:, :, :1], 3, axis=2)
    elif kind == 'colour_ir':
        ir = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = reference_fuse(tiny_model, vi, ir)  # the unfolded model
    out = make_engine(tiny_model)(vi, ir)
    assert out.shape == ref.shape and out.dtype == np.uint8
    assert psnr(out, ref) > 40.0
    assert np.abs(out.astype(int) - ref).max() <= 1


def test_engine_equals_fuser_and_float_inputs(tiny_model: torch.nn.Module,
                                              rng: np.random.Generator) -> None:
    vi = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    engine = make_engine(tiny_model)
    np.testing.assert_array_equal(engine(vi, ir), Fuser(model=copy.deepcopy(tiny_model),
                                                        device='cpu')(vi, ir))
    # float inputs follow color.py's float path (no 8-bit rounding of Y, chroma and fused Y)
    vi_f, ir_f = vi.astype(np.float32) / 255.0, ir.astype(np.float64) / 255.0
    y, cb, cr = bgr_to_ycbcr(vi_f)
    with torch.no_grad():
        fused = tiny_model(torch.from_numpy(y)[None, None],
                           torch.from_numpy(ir_f).float()[None, None])[0, 0].numpy()
    ref = np.clip(np.rint(ycbcr_to_bgr(fused, cb, cr) * 255.0), 0, 255).astype(np.uint8)
    assert np.abs(engine(vi_f, ir_f).astype(int) - ref).max() <= 1


@pytest.mark.parametrize('kind', ['colour', 'gray', 'gray_looking', 'colour_ir'])
def test_cpu_uint8_host_path_equals_the_torch_ops(tiny_model: torch.nn.Module,
                                                  rng: np.random.Generator, kind: str) -> None:
    """8-bit pairs on the CPU take OpenCV's colour steps; the bytes are those of the torch ops."""
    vi = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)  # odd: padding and crop
    ir = rng.integers(0, 256, (21, 34), dtype=np.uint8)
    if kind == 'gray':
        vi = vi[:, :, 1].copy()
    elif kind == 'gray_looking':
        vi = np.repeat(vi[:, :, :1], 3, axis=2)
    elif kind == 'colour_ir':
        ir = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    engine = make_engine(tiny_model)
    with torch.inference_mode():
        out, _, gray = engine._fuse_device(torch.from_numpy(vi), torch.from_numpy(ir))
    want = out.numpy()
    if gray is not None and bool(gray):
        want = want[:, :, 0]
    got = engine(vi, ir)
    assert got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, engine(np.asfortranarray(vi), ir))  # any memory layout


def test_engine_takes_over_the_model(tiny_model: torch.nn.Module) -> None:
    model = copy.deepcopy(tiny_model).train()
    engine = FusionEngine(model=model, device='cpu')
    assert engine.model is model and not model.training
    assert not any(isinstance(m, DEConv) for m in model.modules()), 'DEConv not folded'
    assert engine.precision == 'fp32' and engine.compile == 'none'


def test_fuse_luma_tensor(tiny_model: torch.nn.Module) -> None:
    engine = make_engine(tiny_model)
    y, ir = torch.rand(2, 1, 9, 13), torch.rand(2, 1, 9, 13)
    with torch.no_grad():
        ref = tiny_model(y, ir)
    out = engine.fuse_luma_tensor(y, ir)
    assert out.shape == (2, 1, 9, 13) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r'\(B, 1, H, W\).*\(9, 13\)'):
        engine.fuse_luma_tensor(torch.rand(9, 13), torch.rand(9, 13))
    with pytest.raises(ValueError, match='same shape'):
        engine.fuse_luma_tensor(y, ir[:, :, :8])
    with pytest.raises(TypeError, match='uint8'):
        engine.fuse_luma_tensor(y.to(torch.uint8), ir)


# ----------------------------------------------------------------------------------------------
# warm-up, cache, options
# ----------------------------------------------------------------------------------------------

def test_warmup_shapes_are_cached(tiny_model: torch.nn.Module) -> None:
    engine = make_engine(tiny_model, warmup_shapes=[(13, 17), (8, 8)], cache_size=2)
    assert engine.cached_shapes == ((1, 14, 18), (1, 8, 8))
    engine(np.zeros((14, 18), np.uint8), np.zeros((14, 18), np.uint8))  # same padded shape
    assert engine.cached_shapes == ((1, 8, 8), (1, 14, 18))
    engine(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8))  # evicts the oldest
    assert engine.cached_shapes == ((1, 14, 18), (1, 6, 6))
    with pytest.raises(ValueError, match='warm-up shapes'):
        engine.warmup([(0, 4)])


@pytest.mark.parametrize('vi, ir', [
    ('not an array', np.zeros((4, 4), np.uint8)),
    (np.zeros((4, 4), np.uint16), np.zeros((4, 4), np.uint8)),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)),
    (np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.uint8)),
    (np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), np.uint8)),
    (np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8)),
])
def test_input_errors_are_the_fusers(tiny_model: torch.nn.Module, vi: object,
                                     ir: object) -> None:
    with pytest.raises(FusionInputError) as from_fuser:
        Fuser(method='mean', device='cpu')(vi, ir)
    with pytest.raises(FusionInputError) as from_engine:
        make_engine(tiny_model)(vi, ir)
    assert str(from_engine.value) == str(from_fuser.value)


def test_options_are_checked(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        make_engine(tiny_model, precision='fp8')
    with pytest.raises(ValueError, match="unknown compile 'fast'"):
        make_engine(tiny_model, compile='fast')
    with pytest.raises(ValueError, match='needs a CUDA device'):
        make_engine(tiny_model, compile='cudagraphs')
    with pytest.raises(ValueError, match='either weights or model'):
        FusionEngine(weights='x.safetensors', model=tiny_model, device='cpu')
    with pytest.raises(TypeError, match='nn.Module'):
        FusionEngine(model=object(), device='cpu')
    with pytest.raises(ValueError, match='runs fp32'):
        make_engine(tiny_model, backend='onnxruntime', precision='bf16')


def test_auto_falls_back_to_cpu_without_cuda(tiny_model: torch.nn.Module,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    engine = make_engine(tiny_model, device='auto')
    assert engine.device.type == 'cpu'
    assert (engine.precision, engine.compile, engine.backend) == ('fp32', 'none', 'onnxruntime')
    assert engine.threads == engine_module.available_cores()
    assert torch.get_num_threads() == engine.threads
    out = engine(np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8))
    assert out.shape == (6, 6)


def test_failed_compile_falls_back_with_a_warning(tiny_model: torch.nn.Module,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(*args, **kwargs):
        raise RuntimeError('no compiler here')

    monkeypatch.setattr(torch, 'compile', broken_compile)
    engine = make_engine(tiny_model, compile='inductor')
    with pytest.warns(RuntimeWarning, match="compile='inductor' failed.*falling back to 'none'"):
        out = engine(np.zeros((6, 6), np.uint8), np.zeros((6, 6), np.uint8))
    assert engine.compile == 'none' and out.shape == (6, 6)


def test_weights_file(tmp_path, tiny_model: torch.nn.Module, rng: np.random.Generator) -> None:
    from sfdfuse_core.weights import save_weights

    path = save_weights(copy.deepcopy(tiny_model), tmp_path / 'tiny.safetensors', TINY)
    vi = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    ir = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    np.testing.assert_array_equal(FusionEngine(weights=path, device='cpu')(vi, ir),
                                  make_engine(tiny_model)(vi, ir))


def test_onnxruntime_backend(tiny_model: torch.nn.Module, rng: np.random.Generator) -> None:
    vi = rng.integers(0, 256, (15, 21, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (15, 21), dtype=np.uint8)
    engine = make_engine(tiny_model, backend='onnxruntime', channels_last=False)
    out = engine(vi, ir)
    assert np.abs(out.astype(int) - reference_fuse(tiny_model, vi, ir)).max() <= 1


# ----------------------------------------------------------------------------------------------
# GPU (skipped on CPU-only machines)
# ----------------------------------------------------------------------------------------------

@CUDA
@pytest.mark.parametrize('compile_mode', ['none', 'cudagraphs', 'auto'])
def test_cuda_bf16_is_close_to_fp32(tiny_model: torch.nn.Module, rng: np.random.Generator,
                                    compile_mode: str) -> None:
    vi = rng.integers(0, 256, (60, 83, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (60, 83), dtype=np.uint8)
    ref = reference_fuse(tiny_model, vi, ir)
    engine = make_engine(tiny_model, device='cuda', precision='bf16', compile=compile_mode,
                         warmup_shapes=[(60, 83)])
    assert engine.cached_shapes == ((1, 60, 84),)
    for _ in range(2):  # the second call replays the cached graph
        out = engine(vi, ir)
        assert out.shape == ref.shape and psnr(out, ref) > 40.0
    y = torch.rand(1, 1, 60, 83, device='cuda')
    held = engine.fuse_luma_tensor(y, y)
    again = engine.fuse_luma_tensor(torch.rand_like(y), y)
    assert not torch.equal(held, again), 'output must not alias the static graph buffer'


@CUDA
def test_cuda_fp32_matches_reference(tiny_model: torch.nn.Module,
                                     rng: np.random.Generator) -> None:
    vi = rng.integers(0, 256, (31, 40), dtype=np.uint8)
    ir = rng.integers(0, 256, (31, 40), dtype=np.uint8)
    out = make_engine(tiny_model, device='cuda', precision='fp32', compile='none')(vi, ir)
    assert np.abs(out.astype(int) - reference_fuse(tiny_model, vi, ir)).max() <= 1
