"""Tests of the colour conversion (:mod:`sfdfuse_core.color`) and the fusion API.

The reference for colour is OpenCV itself (``cv2.COLOR_BGR2YCrCb`` / ``COLOR_YCrCb2BGR``), the
conversion the CDDFuse/SFDFuse test scripts use (CDDFuse ``test_IVF.py`` and
``utils/img_read_save.py``).
"""
import cv2
import numpy as np
import pytest
import torch

from sfdfuse_core import weights as weights_module
from sfdfuse_core.color import bgr_to_ycbcr, ycbcr_to_bgr
from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.fusion import (METHODS, Fuser, FusionInputError, fuse_images, resolve_device,
                                 split_luma, validate_pair)
from sfdfuse_core.model import build_model
from sfdfuse_core.model.blocks import DEConv
from sfdfuse_core.weights import WeightsNotFoundError

H, W = 24, 32
#: A randomly initialised network small enough for CPU tests.
TINY = SFDFuseConfig(dim=8, num_heads=2, encoder_restormer_blocks=1, encoder_convformer_blocks=1,
                     decoder_restormer_blocks=1, decoder_convformer_blocks=1, detail_nodes=1,
                     cga_reduction=4, head_channels=4)


@pytest.fixture
def color_vi(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture
def gray_ir(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (H, W), dtype=np.uint8)


@pytest.fixture(scope='module')
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


# ----------------------------------------------------------------------------------------------
# colour
# ----------------------------------------------------------------------------------------------

def test_uint8_matches_opencv(color_vi: np.ndarray) -> None:
    y, cb, cr = bgr_to_ycbcr(color_vi)
    ref = cv2.cvtColor(color_vi, cv2.COLOR_BGR2YCrCb)
    assert y.dtype == np.uint8 and y.shape == (H, W)
    np.testing.assert_array_equal(y, ref[:, :, 0])
    np.testing.assert_array_equal(cr, ref[:, :, 1])
    np.testing.assert_array_equal(cb, ref[:, :, 2])
    back = ycbcr_to_bgr(y, cb, cr)
    np.testing.assert_array_equal(back, cv2.cvtColor(ref, cv2.COLOR_YCrCb2BGR))
    assert np.abs(back.astype(int) - color_vi).max() <= 2


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_float_matches_opencv_and_round_trips(color_vi: np.ndarray, dtype: type) -> None:
    img = color_vi.astype(dtype) / 255.0
    y, cb, cr = bgr_to_ycbcr(img)
    assert y.dtype == dtype and cb.dtype == dtype and cr.dtype == dtype
    ref = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_BGR2YCrCb)
    np.testing.assert_allclose(np.dstack((y, cr, cb)), ref, atol=1e-6)
    back = ycbcr_to_bgr(y, cb, cr)
    assert back.dtype == dtype
    np.testing.assert_allclose(back, cv2.cvtColor(ref, cv2.COLOR_YCrCb2BGR), atol=1e-6)
    # OpenCV's coefficients are rounded to 3 decimals: the round trip is exact to ~2e-4.
    np.testing.assert_allclose(back, img, atol=5e-4)


def test_gray_pixels_have_neutral_chroma() -> None:
    img = np.full((2, 3, 3), 0.25)
    y, cb, cr = bgr_to_ycbcr(img)
    np.testing.assert_allclose(y, 0.25)
    np.testing.assert_allclose(cb, 0.5)
    np.testing.assert_allclose(cr, 0.5)


def test_mixed_planes_give_float(color_vi: np.ndarray) -> None:
    y, cb, cr = bgr_to_ycbcr(color_vi)
    back = ycbcr_to_bgr(y.astype(np.float32) / 255.0, cb, cr)
    assert back.dtype == np.float32
    assert np.abs(back * 255.0 - color_vi).max() < 2.0


@pytest.mark.parametrize('img, error', [
    (np.zeros((4, 4), np.uint8), ValueError),
    (np.zeros((4, 4, 4), np.uint8), ValueError),
    (np.zeros((4, 4, 3), np.uint16), TypeError),
    ([[0, 0, 0]], TypeError),
])
def test_color_rejects_bad_input(img: object, error: type) -> None:
    with pytest.raises(error):
        bgr_to_ycbcr(img)


def test_ycbcr_to_bgr_rejects_mismatched_planes() -> None:
    with pytest.raises(ValueError, match='same shape'):
        ycbcr_to_bgr(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)))


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('vi, ir, match', [
    ([[1]], np.zeros((4, 4), np.uint8), 'numpy array'),
    (np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4), np.uint8), r'\(H, W\) or \(H, W, 3\)'),
    (np.zeros((4,), np.uint8), np.zeros((4, 4), np.uint8), r'\(H, W\) or \(H, W, 3\)'),
    (np.zeros((0, 4), np.uint8), np.zeros((0, 4), np.uint8), 'empty'),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint16), 'uint16'),
    (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.uint8), 'int32'),
    (np.zeros((4, 4), np.float16), np.zeros((4, 4), np.uint8), 'float16'),
    (np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), np.uint8), 'non-finite'),
    (np.zeros((4, 4), np.uint8), np.full((4, 4), np.inf), 'non-finite'),
    (np.full((4, 4), 2.0), np.zeros((4, 4), np.uint8), r'\[0, 1\]'),
    (np.full((4, 4), -0.1, np.float32), np.zeros((4, 4), np.uint8), r'\[0, 1\]'),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), 'differ in size'),
])
def test_validate_pair_rejects(vi: object, ir: object, match: str) -> None:
    with pytest.raises(FusionInputError, match=match):
        validate_pair(vi, ir)
    with pytest.raises(FusionInputError):
        fuse_images(vi, ir, method='mean')


def test_validate_pair_accepts_mixed_dtypes() -> None:
    validate_pair(np.zeros((3, 5, 3), np.uint8), np.ones((3, 5), np.float64))
    validate_pair(np.zeros((1, 1), np.float32), np.zeros((1, 1, 3), np.uint8))


def test_fusion_input_error_is_value_error() -> None:
    assert issubclass(FusionInputError, ValueError)


# ----------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------

def test_max_gray_is_elementwise_max(rng: np.random.Generator, gray_ir: np.ndarray) -> None:
    vi = rng.integers(0, 256, (H, W), dtype=np.uint8)
    out = fuse_images(vi, gray_ir, method='max')
    assert out.dtype == np.uint8 and out.shape == (H, W)
    np.testing.assert_array_equal(out, np.maximum(vi, gray_ir))


def test_mean_gray(rng: np.random.Generator, gray_ir: np.ndarray) -> None:
    vi = rng.integers(0, 256, (H, W), dtype=np.uint8)
    out = fuse_images(vi, gray_ir, method='mean').astype(int)
    total = vi.astype(int) + gray_ir
    assert np.abs(out - total / 2).max() <= 0.5
    even = total % 2 == 0
    np.testing.assert_array_equal(out[even], total[even] // 2)


@pytest.mark.parametrize('method', ['mean', 'max'])
def test_color_keeps_visible_chroma(color_vi: np.ndarray, gray_ir: np.ndarray,
                                    method: str) -> None:
    """The protocol: fuse OpenCV's Y, put the visible Cr/Cb back, YCrCb2BGR."""
    out = fuse_images(color_vi, gray_ir, method=method)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    ycrcb = cv2.cvtColor(color_vi, cv2.COLOR_BGR2YCrCb)
    y = ycrcb[:, :, 0]
    if method == 'max':
        fused = np.maximum(y, gray_ir)
    else:
        # round((Y + I) / 2), half to even: the published baseline row's definition
        fused = np.round((y.astype(np.float64) + gray_ir) / 2).astype(np.uint8)
    expected = cv2.cvtColor(np.dstack((fused, ycrcb[:, :, 1], ycrcb[:, :, 2])),
                            cv2.COLOR_YCrCb2BGR)
    np.testing.assert_array_equal(out, expected)


def test_gray_looking_visible_gives_gray(rng: np.random.Generator, gray_ir: np.ndarray) -> None:
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    out = fuse_images(np.dstack((gray, gray, gray)), gray_ir, method='max')
    assert out.shape == (H, W)
    np.testing.assert_array_equal(out, np.maximum(gray, gray_ir))
    y, chroma = split_luma(np.dstack((gray, gray, gray)))
    assert chroma is None
    np.testing.assert_array_equal(y, gray)


def test_color_infrared_is_converted_to_gray(color_vi: np.ndarray,
                                             rng: np.random.Generator) -> None:
    ir3 = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    ir_gray = cv2.cvtColor(ir3, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(fuse_images(color_vi, ir3, method='max'),
                                  fuse_images(color_vi, ir_gray, method='max'))


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_float_inputs_agree_with_uint8(color_vi: np.ndarray, gray_ir: np.ndarray,
                                       dtype: type) -> None:
    ref = fuse_images(color_vi, gray_ir, method='max')
    out = fuse_images(color_vi.astype(dtype) / 255, gray_ir.astype(dtype) / 255, method='max')
    assert out.dtype == np.uint8 and out.shape == ref.shape
    assert np.abs(out.astype(int) - ref).max() <= 2
    gray = fuse_images(color_vi[:, :, 0].astype(dtype) / 255, gray_ir, method='max')
    np.testing.assert_array_equal(gray, np.maximum(color_vi[:, :, 0], gray_ir))


def test_no_min_max_stretch(rng: np.random.Generator) -> None:
    vi = rng.integers(0, 20, (H, W), dtype=np.uint8)
    ir = rng.integers(0, 20, (H, W), dtype=np.uint8)
    assert fuse_images(vi, ir, method='mean').max() < 20


def test_fuse_luma_returns_float(gray_ir: np.ndarray) -> None:
    fuser = Fuser(method='max', device='cpu')
    out = fuser.fuse_luma(np.zeros((H, W), np.float32), gray_ir)
    assert out.dtype == np.float32 and out.shape == (H, W)
    np.testing.assert_allclose(out, gray_ir / 255.0, atol=1e-7)
    with pytest.raises(FusionInputError, match=r'\(H, W\) plane'):
        fuser.fuse_luma(np.zeros((H, W, 3), np.float32), np.zeros((H, W, 3), np.float32))


def test_unknown_method_raises() -> None:
    with pytest.raises(ValueError, match='unknown fusion method'):
        fuse_images(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), method='median')
    with pytest.raises(ValueError, match='unknown fusion method'):
        Fuser(method='median')
    assert METHODS == ('sfdfuse', 'mean', 'max')


# ----------------------------------------------------------------------------------------------
# devices
# ----------------------------------------------------------------------------------------------

def test_resolve_device() -> None:
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device(torch.device('cpu')) == torch.device('cpu')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    with pytest.raises(ValueError, match='unknown device'):
        resolve_device('gpu0')
    with pytest.raises(ValueError, match='unsupported device'):
        resolve_device('meta')
    with pytest.raises(TypeError):
        resolve_device(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match='CUDA is not available'):
        resolve_device('cuda')
    with pytest.raises(ValueError, match='CUDA is not available'):
        Fuser(method='mean', device='cuda')


# ----------------------------------------------------------------------------------------------
# the network
# ----------------------------------------------------------------------------------------------

def test_sfdfuse_matches_the_model(tiny_model: torch.nn.Module, color_vi: np.ndarray,
                                   gray_ir: np.ndarray) -> None:
    y = cv2.cvtColor(color_vi, cv2.COLOR_BGR2YCrCb)[:, :, 0]
    with torch.inference_mode():
        ref = tiny_model(torch.from_numpy(y / 255.0).float()[None, None],
                         torch.from_numpy(gray_ir / 255.0).float()[None, None])[0, 0].numpy()
    fuser = Fuser(model=tiny_model, device='cpu')
    assert fuser.model is tiny_model and not tiny_model.training
    assert not any(isinstance(m, DEConv) for m in tiny_model.modules()), 'DEConv not folded'
    luma = fuser.fuse_luma(y, gray_ir)
    np.testing.assert_allclose(luma, ref, atol=1e-5)
    out = fuser(color_vi, gray_ir)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    ycrcb = cv2.cvtColor(color_vi, cv2.COLOR_BGR2YCrCb)
    fused_y = np.clip(np.rint(luma * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, cv2.cvtColor(
        np.dstack((fused_y, ycrcb[:, :, 1], ycrcb[:, :, 2])), cv2.COLOR_YCrCb2BGR))
    # a second Fuser around the same (already folded) model gives the same result
    gray = fuse_images(y, gray_ir, model=tiny_model)
    np.testing.assert_array_equal(gray, fused_y)


def test_sfdfuse_odd_size(tiny_model: torch.nn.Module, rng: np.random.Generator) -> None:
    vi = rng.integers(0, 256, (7, 11), dtype=np.uint8)
    out = Fuser(model=tiny_model, device='cpu')(vi, rng.random((7, 11)))
    assert out.shape == (7, 11) and out.dtype == np.uint8


def test_sfdfuse_weights_file(tmp_path, tiny_model: torch.nn.Module,
                              gray_ir: np.ndarray) -> None:
    torch.manual_seed(1)
    model = build_model(TINY)
    path = weights_module.save_weights(model, tmp_path / 'tiny.safetensors', TINY)
    vi = np.full((H, W), 100, np.uint8)
    a = Fuser(weights=path, device='cpu')(vi, gray_ir)
    b = Fuser(model=model, device='cpu')(vi, gray_ir)
    np.testing.assert_array_equal(a, b)


def test_missing_default_weights_says_what_to_do(tmp_path, monkeypatch) -> None:
    missing = tmp_path / 'weights' / 'sfdfuse_ivf.safetensors'
    monkeypatch.setattr(weights_module, 'default_weights_path', lambda device=None: missing)
    with pytest.raises(WeightsNotFoundError) as info:
        Fuser(device='cpu')
    message = str(info.value)
    assert str(missing) in message and '--weights' in message and 'mean' in message
    with pytest.raises(WeightsNotFoundError, match='not found'):
        fuse_images(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), device='cpu')
    # the baselines need no weights
    fuse_images(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), method='mean')


def test_weights_and_model_together_raise(tiny_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match='either weights or model'):
        Fuser(weights='x.safetensors', model=tiny_model, device='cpu')
    with pytest.raises(TypeError, match='nn.Module'):
        Fuser(model=object(), device='cpu')
