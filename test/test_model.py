"""Tests of the SFDFuse network (``sfdfuse_core.model``) and its config.

Small crops (32x32, odd 31x45) and batches of 1-2 keep the file fast on a loaded CPU.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from sfdfuse_core.config import SFDFuseConfig
from sfdfuse_core.model import SFDFuse, build_model
from sfdfuse_core.model.blocks import (DEConv, HaarDWT, LayerNorm2d, angular_difference_kernel,
                                       central_difference_kernel, haar_dwt, haar_idwt,
                                       horizontal_difference_kernel, vertical_difference_kernel)

#: Exact parameter count of the default network, derived from the structure of the public
#: ``zxp771/SFDFuse`` ``net.py``: encoder 1,971,788 (patch embed 576, 2 Restormer 89,040,
#: 2 ConvFormer 112,644, Lite Transformer 363,016, 3 INN nodes 1,268,736, high-frequency
#: ConvTranspose 49,216, two interaction blocks 44,520 + 44,040), fusion layers 44,520 + 44,040,
#: decoder 245,671 (CGA 25,267, blocks 201,684, head 18,720). The original additionally counts
#: its frozen Haar filters as parameters (2 x 1,024) and builds an unused ``reduce_channel`` conv
#: (8,192) and ``fusion2`` CGA (25,267): 2,341,526 in all; "about 2.3 million" either way.
EXPECTED_PARAMETERS = 2_306_019


@pytest.fixture(scope='module')
def model() -> SFDFuse:
    """One default network in eval mode, shared by the read-only tests."""
    torch.manual_seed(0)
    return build_model().eval()


def _pair(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, height, width, generator=generator),
            torch.rand(batch, 1, height, width, generator=generator))


# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------

def test_config_round_trip() -> None:
    config = SFDFuseConfig(dim=32, num_heads=4, drop_path=0.0, detail_nodes=2)
    assert SFDFuseConfig.from_dict(config.to_dict()) == config
    assert SFDFuseConfig.from_dict({}) == SFDFuseConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dim = 8  # type: ignore[misc]


def test_config_rejects_unknown_and_invalid() -> None:
    with pytest.raises(ValueError, match='unknown SFDFuseConfig keys.*not_a_field'):
        SFDFuseConfig.from_dict({'dim': 64, 'not_a_field': 1})
    with pytest.raises(ValueError, match='num_heads'):
        SFDFuseConfig(dim=64, num_heads=6)
    with pytest.raises(ValueError, match='drop_path'):
        SFDFuseConfig(drop_path=1.0)
    with pytest.raises(TypeError, match='dim'):
        SFDFuseConfig(dim=64.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        build_model({'dim': 64})  # type: ignore[arg-type]


def test_parameter_count(model: SFDFuse) -> None:
    count = sum(p.numel() for p in model.parameters())
    assert count == EXPECTED_PARAMETERS
    assert 2.2e6 < count < 2.4e6


# ----------------------------------------------------------------------------------------------
# fixed Haar transform
# ----------------------------------------------------------------------------------------------

def test_dwt_is_a_buffer_and_orthonormal_haar(model: SFDFuse) -> None:
    buffers = dict(model.named_buffers())
    assert 'encoder.dwt.filters' in buffers
    assert all('dwt' not in name for name, _ in model.named_parameters())

    filters = HaarDWT().filters
    # orthonormal bank: the four 2x2 filters, flattened, form an orthonormal basis of R^4
    flat = filters.reshape(4, 4)
    torch.testing.assert_close(flat @ flat.T, torch.eye(4))

    # a known 2x2 block [[a, b], [c, d]]
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).reshape(1, 1, 2, 2)
    bands = haar_dwt(x, filters).flatten()
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    expected = torch.tensor([a + b + c + d, a + b - c - d, a - b + c - d, a - b - c + d]) / 2
    torch.testing.assert_close(bands, expected)

    # perfect reconstruction and energy preservation on random data
    x = torch.rand(2, 3, 6, 8, generator=torch.Generator().manual_seed(3))
    bands = haar_dwt(x, filters)
    assert bands.shape == (2, 3, 4, 3, 4)
    torch.testing.assert_close(haar_idwt(bands, filters), x)
    torch.testing.assert_close((bands ** 2).sum(), (x ** 2).sum())
    with pytest.raises(ValueError, match='even'):
        haar_dwt(torch.rand(1, 1, 5, 4), filters)


def test_layer_norm_normalises_channels() -> None:
    """Restormer's WithBias LayerNorm: per pixel, over channels, biased variance, eps 1e-5."""
    x = torch.randn(2, 6, 5, 3, generator=torch.Generator().manual_seed(15)) * 3 + 1
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True, unbiased=False)
    torch.testing.assert_close(LayerNorm2d(6)(x), (x - mean) / torch.sqrt(var + 1e-5))


# ----------------------------------------------------------------------------------------------
# DEConv
# ----------------------------------------------------------------------------------------------

def test_deconv_kernels_are_difference_operators() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(2, 3, 3, 3, generator=generator)
    image = torch.randn(1, 3, 8, 8, generator=generator)
    # central difference: sum_i w_i * (x_i - x_centre)
    out = F.conv2d(image, central_difference_kernel(weight))
    patches = F.unfold(image, 3)  # (1, 3*9, N)
    centred = (patches.reshape(1, 3, 9, -1) - patches.reshape(1, 3, 9, -1)[:, :, 4:5])
    expected = torch.einsum('oik,bikn->bon', weight.flatten(2), centred).reshape(out.shape)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # the difference kernels sum to zero (no response to a constant image)
    column = torch.randn(2, 3, 3, generator=generator)
    for kernel in (central_difference_kernel(weight), angular_difference_kernel(weight),
                   horizontal_difference_kernel(column), vertical_difference_kernel(column)):
        torch.testing.assert_close(kernel.sum(dim=(2, 3)), torch.zeros(2, 3),
                                   rtol=0, atol=1e-5)
    assert torch.all(angular_difference_kernel(weight)[:, :, 1, 1] == 0)
    assert torch.all(horizontal_difference_kernel(column)[:, :, :, 1] == 0)
    assert torch.all(vertical_difference_kernel(column)[:, :, 1, :] == 0)


def test_deconv_folds_to_one_conv() -> None:
    torch.manual_seed(2)
    deconv = DEConv(8)
    conv = deconv.to_conv()
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), deconv(x), rtol=1e-5, atol=1e-5)


def test_model_fold_deconv_keeps_output() -> None:
    torch.manual_seed(4)
    model = build_model().eval()
    vi, ir = _pair(1, 32, 32, seed=5)
    with torch.no_grad():
        before = model(vi, ir)
        model.fold_deconv()
        after = model(vi, ir)
    assert not any(isinstance(m, DEConv) for m in model.modules())
    assert (after - before).abs().max().item() < 1e-5
    assert model.fold_deconv() is model  # idempotent


# ----------------------------------------------------------------------------------------------
# forward, encode, fuse_features, decode
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size', [(32, 32), (31, 45), (1, 1), (3, 2)])
def test_forward_any_size(model: SFDFuse, size: tuple[int, int]) -> None:
    vi, ir = _pair(1, *size)
    with torch.no_grad():
        out = model(vi, ir)
    assert out.shape == vi.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() > 0 and out.max() < 1


def test_forward_batch_and_determinism(model: SFDFuse) -> None:
    vi, ir = _pair(2, 17, 20, seed=7)
    with torch.no_grad():
        first = model(vi, ir)
        second = model(vi, ir)
        single = model(vi[1:], ir[1:])
    assert first.shape == (2, 1, 17, 20)
    assert torch.equal(first, second)
    torch.testing.assert_close(first[1:], single, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first[0], first[1])  # the output depends on the input


def test_forward_depends_on_both_inputs(model: SFDFuse) -> None:
    vi, ir = _pair(1, 16, 16, seed=8)
    with torch.no_grad():
        out = model(vi, ir)
        assert not torch.allclose(out, model(vi, torch.zeros_like(ir)))
        assert not torch.allclose(out, model(torch.zeros_like(vi), ir))


def test_pieces_match_forward(model: SFDFuse) -> None:
    vi, ir = _pair(1, 16, 24, seed=9)
    assert model.size_multiple == 2
    with torch.no_grad():
        base_v, detail_v = model.encode(vi)
        base_i, detail_i = model.encode(ir)
        assert base_v.shape == detail_v.shape == (1, model.config.dim, 16, 24)
        base_f, detail_f = model.fuse_features(base_v, detail_v, base_i, detail_i)
        out = model.decode(vi, base_f, detail_f)
        torch.testing.assert_close(out, model(vi, ir), rtol=1e-4, atol=1e-5)


def test_dtype_follows_the_model() -> None:
    """Buffers (the Haar filters) follow ``.to()``: a float64 model runs on float64 inputs."""
    torch.manual_seed(13)
    model = build_model(SFDFuseConfig(dim=16, num_heads=2)).eval().double()
    vi, ir = _pair(1, 9, 6, seed=14)
    with torch.no_grad():
        out = model(vi.double(), ir.double())
    assert out.dtype == torch.float64 and out.shape == (1, 1, 9, 6)


def test_gradients_reach_every_parameter() -> None:
    """Phase II (forward) uses every parameter; phase I (reconstruction) all but the fusion."""
    torch.manual_seed(6)
    model = build_model(SFDFuseConfig(drop_path=0.0)).train()
    vi, ir = _pair(2, 32, 32, seed=10)
    model(vi, ir).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name

    model.zero_grad(set_to_none=True)
    reconstruction = model.decode(vi, *model.encode(vi))
    F.mse_loss(reconstruction, vi).backward()
    for name, parameter in model.named_parameters():
        used = not name.startswith(('base_fusion.', 'detail_fusion.'))
        assert (parameter.grad is not None) == used, name


def test_drop_path_is_training_only() -> None:
    torch.manual_seed(11)
    model = build_model(SFDFuseConfig(drop_path=0.5)).eval()
    vi, ir = _pair(1, 8, 8, seed=12)
    with torch.no_grad():
        assert torch.equal(model(vi, ir), model(vi, ir))


@pytest.mark.parametrize('vi, ir, match', [
    (torch.rand(1, 16, 16), torch.rand(1, 16, 16), r'\(B, 1, H, W\), got \(1, 16, 16\)'),
    (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), r'got \(1, 3, 16, 16\)'),
    (torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 18), 'same shape'),
    (torch.rand(1, 1, 0, 16), torch.rand(1, 1, 0, 16), 'empty'),
    (torch.rand(0, 1, 16, 16), torch.rand(0, 1, 16, 16), 'empty'),
])
def test_forward_rejects_bad_inputs(model: SFDFuse, vi: torch.Tensor, ir: torch.Tensor,
                                    match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model(vi, ir)


def test_pieces_reject_bad_inputs(model: SFDFuse) -> None:
    with pytest.raises(ValueError, match='multiples of 2'):
        model.encode(torch.rand(1, 1, 15, 16))
    with pytest.raises(ValueError, match='at least 4'):
        model.encode(torch.rand(1, 1, 2, 2))
    with pytest.raises(TypeError, match='floating-point'):
        model(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 1, 8, 8))
    features = torch.rand(1, model.config.dim, 8, 8)
    with pytest.raises(ValueError, match='detail'):
        model.decode(torch.rand(1, 1, 8, 8), features, features[:, :, :4])
    with pytest.raises(ValueError, match='base_i'):
        model.fuse_features(features, features, features[:, :, :4], features)
