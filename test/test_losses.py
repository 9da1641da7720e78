"""Tests of the training losses on hand-made tensors."""
import numpy as np
import pytest
import torch

from sfdfuse_core.metrics import mutual_information as metric_mi
from sfdfuse_core.metrics import scd
from sfdfuse_core.metrics import ssim as metric_ssim
from sfdfuse_core.train.losses import (FusionLoss, LossWeights, ReconstructionLoss, correlation,
                                       decomposition_loss, evaluator_ssim, fusion_loss,
                                       fusion_targets,
                                       gradient_loss, joint_histogram, mutual_information,
                                       sobel_magnitude, spatial_gradient, ssim_loss, ssim_map,
                                       sum_of_correlations)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_ssim_loss_of_identical_images_is_zero():
    x = _rand(2, 1, 32, 32)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = _rand(2, 1, 32, 32, seed=1)
    loss = float(ssim_loss(x, y))
    assert 0.3 < loss <= 1.0  # unrelated noise: SSIM near 0 -> loss near 0.5
    assert loss == pytest.approx(float(ssim_loss(y, x)), abs=1e-6)


def test_ssim_map_matches_scikit_image_inside_the_border():
    """Reference: ``skimage.metrics.structural_similarity`` (scikit-image 0.26) with
    ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1`` -- the
    Gaussian SSIM of Wang et al. 2004 with an 11x11 window (truncate 3.5). The padding differs
    (scipy's 'reflect' repeats the edge pixel, torch's does not), so only pixels at least 5 from
    the border are compared."""
    skimage_metrics = pytest.importorskip('skimage.metrics')
    rng = np.random.default_rng(7)
    a = rng.random((40, 48))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    _, ref = skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        full=True)
    ours = ssim_map(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0]
    np.testing.assert_allclose(ours.numpy()[5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-6)


def test_spatial_gradient_of_a_ramp():
    ramp = torch.arange(16, dtype=torch.float32).repeat(1, 1, 12, 1)  # f(x, y) = x
    grad = spatial_gradient(ramp)
    assert grad.shape == (1, 1, 2, 12, 16)
    assert torch.allclose(grad[0, 0, 0, :, 1:-1], torch.ones(12, 14))  # normalised: slope 1
    assert torch.allclose(grad[0, 0, 1], torch.zeros(12, 16))
    assert torch.allclose(grad[0, 0, 0, :, 0], torch.full((12,), 0.5))  # replicate padding
    assert torch.allclose(sobel_magnitude(ramp)[0, 0, 1:-1, 1:-1], torch.full((10, 14), 8.0))
    # L1 between the ramp's gradients and a flat image's: mean of |gx| over (2, H, W)
    expected = (12 * 14 * 1.0 + 12 * 2 * 0.5) / (2 * 12 * 16)
    assert float(gradient_loss(ramp, torch.zeros_like(ramp))) == pytest.approx(expected)
    assert float(gradient_loss(ramp, ramp + 3.0)) == 0.0


def test_correlation_and_decomposition_loss_values():
    a = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 1, 2, 2)
    b = torch.tensor([1.0, 1.0, -1.0, -1.0]).reshape(1, 1, 2, 2)  # orthogonal to a
    assert float(correlation(a, a)) == pytest.approx(1.0)
    assert float(correlation(a, -a)) == pytest.approx(-1.0)
    assert float(correlation(a, 2 * a + 3)) == pytest.approx(1.0)
    assert float(correlation(a, b)) == pytest.approx(0.0, abs=1e-7)
    # channels averaged: one correlated channel, one anti-correlated -> 0
    two = torch.cat([a, a], dim=1)
    assert float(correlation(two, torch.cat([a, -a], dim=1))) == pytest.approx(0.0, abs=1e-7)
    # cc_D = 1, cc_B = -1: 1 / (1.01 - 1) = 100
    assert float(decomposition_loss(a, a, -a, a)) == pytest.approx(100.0, rel=1e-5)
    # cc_D = 1, cc_B = 1: 1 / 2.01
    assert float(decomposition_loss(a, a, a, a)) == pytest.approx(1 / 2.01, rel=1e-6)
    # uncorrelated details: 0 whatever the bases
    assert float(decomposition_loss(a, a, -a, b)) == pytest.approx(0.0, abs=1e-10)
    assert float(decomposition_loss(a, a, a, a, offset=3.0)) == pytest.approx(0.25)


def test_fusion_targets_are_elementwise_maxima():
    vi = torch.tensor([[0.1, 0.9], [0.5, 0.2]]).reshape(1, 1, 2, 2)
    ir = torch.tensor([[0.4, 0.3], [0.5, 0.8]]).reshape(1, 1, 2, 2)
    target, grad = fusion_targets(vi, ir)
    assert torch.equal(target, torch.tensor([[0.4, 0.9], [0.5, 0.8]]).reshape(1, 1, 2, 2))
    assert torch.equal(grad, torch.maximum(sobel_magnitude(vi), sobel_magnitude(ir)))
    big_vi, big_ir = _rand(2, 1, 16, 16), _rand(2, 1, 16, 16, seed=3)
    max_img = torch.maximum(big_vi, big_ir)
    terms = fusion_loss(big_vi, big_ir, max_img)
    assert float(terms['intensity']) == 0.0 and float(terms['ssim']) == pytest.approx(0, abs=1e-6)
    w = LossWeights()
    assert float(terms['fusion']) == pytest.approx(w.fusion_gradient * float(terms['gradient']))
    # intensity by hand: fused 0 everywhere -> mean of max(vi, ir)
    zero = torch.zeros_like(big_vi)
    assert float(fusion_loss(big_vi, big_ir, zero)['intensity']) == pytest.approx(
        float(max_img.mean()))


def test_phase_losses_combine_terms_with_named_weights():
    vi, ir = _rand(2, 1, 16, 16), _rand(2, 1, 16, 16, seed=1)
    feats = [_rand(2, 4, 16, 16, seed=s) for s in range(4)]
    rec = ReconstructionLoss(LossWeights())(vi, ir, vi, ir, *feats)  # perfect reconstruction
    assert float(rec['recon_vi']) == pytest.approx(0, abs=1e-6)
    assert float(rec['gradient']) == 0.0
    expected = 2.0 * float(rec['cc_detail']) ** 2 / (1.01 + float(rec['cc_base']))
    assert float(rec['loss']) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    heavy = ReconstructionLoss(LossWeights(ssim=0.0, mse=2.0, decomp=0.0))
    noisy = (vi + 0.1).clamp(0, 1)
    out = heavy(vi, ir, noisy, ir, *feats)
    mse = float(((noisy - vi) ** 2).mean())
    grad = float(gradient_loss(vi, noisy))
    assert float(out['loss']) == pytest.approx(2.0 * mse + 5.0 * grad, rel=1e-5)
    fused = FusionLoss(LossWeights(fusion_decomp=0.0))(vi, ir, vi, *feats)
    assert float(fused['loss']) == pytest.approx(float(fused['fusion']))


def test_losses_follow_input_dtype_and_validate():
    x = _rand(1, 1, 16, 16).double()
    assert ssim_loss(x, x).dtype == torch.float64
    assert sobel_magnitude(x).dtype == torch.float64
    with pytest.raises(ValueError, match=r'expected \(B, C, H, W\), got \(16, 16\)'):
        ssim_loss(x[0, 0], x[0, 0])
    with pytest.raises(ValueError, match='shapes differ'):
        correlation(x, x[:, :, :8])
    with pytest.raises(ValueError, match='larger than 5 pixels'):
        ssim_loss(x[:, :, :4, :4], x[:, :, :4, :4])
    with pytest.raises(ValueError, match='decomp_offset'):
        LossWeights(decomp_offset=1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_losses_run_on_the_input_device():
    x = _rand(1, 1, 16, 16).cuda()
    assert ssim_loss(x, x).device.type == 'cuda'
    assert fusion_loss(x, x, x)['fusion'].device.type == 'cuda'


def test_ssim_map_equals_the_two_dimensional_window_at_the_borders_too():
    """The separable filtering is the 11x11 Gaussian window, reflect borders included."""
    import torch.nn.functional as F

    from sfdfuse_core.train.losses import gaussian_window

    x, y = _rand(2, 1, 20, 24), _rand(2, 1, 20, 24, seed=1)
    kernel = gaussian_window(11, 1.5)[None, None]  # (1, 1, 11, 11)

    def local_mean(t):
        return F.conv2d(F.pad(t, (5, 5, 5, 5), mode='reflect'), kernel)

    mx, my = local_mean(x), local_mean(y)
    vx, vy = local_mean(x * x) - mx ** 2, local_mean(y * y) - my ** 2
    cxy = local_mean(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    expected = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert torch.allclose(ssim_map(x, y), expected, atol=1e-5)


def test_source_ssim_term_and_zero_weight_terms():
    """fusion_ssim_sources weighs the mean SSIM loss against Y and I; a 0-weight term is 0."""
    vi, ir, fused = _rand(2, 1, 16, 16), _rand(2, 1, 16, 16, seed=1), _rand(2, 1, 16, 16, seed=2)
    terms = fusion_loss(vi, ir, fused, LossWeights(fusion_ssim=0.0, fusion_ssim_sources=3.0))
    sources = (float(ssim_loss(vi, fused)) + float(ssim_loss(ir, fused))) / 2
    assert float(terms['ssim_sources']) == pytest.approx(sources, rel=1e-5)
    assert float(terms['ssim']) == 0.0
    expected = (float(terms['intensity']) + 10.0 * float(terms['gradient']) + 3.0 * sources)
    assert float(terms['fusion']) == pytest.approx(expected, rel=1e-5)
    published = fusion_loss(vi, ir, fused, LossWeights())
    assert float(published['ssim_sources']) == 0.0 and float(published['ssim']) > 0


def test_gradient_gain_scales_the_gradient_target():
    """fusion_gradient_gain multiplies max(|grad Y|, |grad I|): with a flat infrared image, 1.5 Y
    has exactly the target's edges at gain 1.5 and not at gain 1; a gain <= 0 is refused."""
    vi, ir = _rand(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)
    sharper = 1.5 * vi                                      # Sobel is linear: 1.5x the edges
    plain = fusion_loss(vi, ir, sharper, LossWeights())
    gained = fusion_loss(vi, ir, sharper, LossWeights(fusion_gradient_gain=1.5))
    assert float(gained['gradient']) == pytest.approx(0.0, abs=1e-6)
    assert float(plain['gradient']) == pytest.approx(
        0.5 * float(sobel_magnitude(vi).mean()), rel=1e-5)
    assert float(gained['intensity']) == float(plain['intensity'])   # only the gradient term
    with pytest.raises(ValueError, match='fusion_gradient_gain'):
        LossWeights(fusion_gradient_gain=0.0)


def test_range_term_is_the_distance_to_the_unit_interval():
    """fusion_range weighs mean(relu(F - 1) + relu(-F)): 0 inside [0, 1], the overshoot outside."""
    vi, ir = _rand(1, 1, 8, 8), _rand(1, 1, 8, 8, seed=1)
    inside = fusion_loss(vi, ir, vi, LossWeights(fusion_range=7.0))
    assert float(inside['range']) == 0.0
    fused = torch.full((1, 1, 8, 8), 0.5)
    fused[..., :2, :] = 1.25                                # a quarter of the pixels, 0.25 above
    fused[..., -2:, :] = -0.5                               # a quarter, 0.5 below
    terms = fusion_loss(vi, ir, fused, LossWeights(fusion_range=7.0))
    assert float(terms['range']) == pytest.approx(0.25 * 0.25 + 0.25 * 0.5)
    off = fusion_loss(vi, ir, fused, LossWeights())
    assert float(off['range']) == 0.0
    assert float(terms['fusion']) == pytest.approx(float(off['fusion']) + 7.0 * 0.1875, rel=1e-5)


def test_scd_term_is_two_minus_the_sum_of_correlations_of_differences():
    """fusion_scd weighs 2 - cc(F - I, Y) - cc(F - Y, I): 0 for F = Y + I, the metric's value."""
    vi, ir = _rand(2, 1, 16, 16), _rand(2, 1, 16, 16, seed=1)
    assert float(sum_of_correlations(vi + ir, vi, ir)) == pytest.approx(2.0, abs=1e-5)
    # the evaluator's SCD (sfdfuse_core.metrics, on 0..255 values) per sample, then the mean
    fused = torch.maximum(vi, ir)
    expected = np.mean([scd(*(255.0 * x[b, 0].double().numpy() for x in (fused, ir, vi)))
                        for b in range(2)])
    assert float(sum_of_correlations(fused, vi, ir)) == pytest.approx(expected, abs=1e-4)
    terms = fusion_loss(vi, ir, fused, LossWeights(fusion_scd=3.0))
    assert float(terms['scd']) == pytest.approx(2.0 - expected, abs=1e-4)
    off = fusion_loss(vi, ir, fused, LossWeights())
    assert float(off['scd']) == 0.0
    assert float(terms['fusion']) == pytest.approx(
        float(off['fusion']) + 3.0 * (2.0 - expected), rel=1e-4)
    with pytest.raises(ValueError, match='fusion_scd'):
        LossWeights(fusion_scd=-1.0)


def test_mutual_information_equals_the_metric_on_8_bit_values_with_256_bins():
    """On values k / 255 the 256-bin histogram puts each pixel in its own bin, so the loss's MI
    is the evaluator's; the sum of MI(F, I) + MI(F, Y) is what fusion_mi weighs."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 1, 24, 24)).astype(np.float64)
    b = np.clip(a + rng.integers(-20, 21, a.shape), 0, 255)     # dependent on a
    f = np.maximum(a, b)
    ta, tb, tf = (torch.from_numpy(x / 255.0).float() for x in (a, b, f))
    for i in range(2):
        expected = metric_mi(f[i, 0], a[i, 0], b[i, 0])      # MI(F, A) + MI(F, B)
        pair = mutual_information(tf[i:i + 1], ta[i:i + 1], 256) \
            + mutual_information(tf[i:i + 1], tb[i:i + 1], 256)
        assert float(pair[0]) == pytest.approx(expected, rel=1e-4)
    terms = fusion_loss(tb, ta, tf, LossWeights(fusion_mi=2.0, fusion_mi_bins=256))
    both = (mutual_information(tf, ta, 256) + mutual_information(tf, tb, 256)).mean()
    assert float(terms['mi']) == pytest.approx(float(both), rel=1e-5)
    off = fusion_loss(tb, ta, tf, LossWeights())
    assert float(off['mi']) == 0.0
    assert float(terms['fusion']) == pytest.approx(float(off['fusion']) - 2.0 * float(both),
                                                   rel=1e-4, abs=1e-5)


def test_joint_histogram_shares_a_value_between_its_two_nearest_bins():
    """A value 0.25 of the way from bin 1 to bin 2 puts 3/4 of its mass in bin 1 and 1/4 in
    bin 2; values are clamped to [0, 1]; the gradient reaches the values."""
    bins = 5                                                  # bin k sits at k / 4
    x = torch.tensor([[[[0.25 + 0.25 / 4, 0.0, 1.0, 1.5]]]], requires_grad=True)
    y = torch.tensor([[[[0.0, 0.0, 1.0, -0.2]]]])
    full = joint_histogram(x, y, bins)[0]
    hist = full.detach()
    assert float(hist.sum()) == pytest.approx(1.0)
    assert float(hist[1, 0]) == pytest.approx(0.75 / 4)
    assert float(hist[2, 0]) == pytest.approx(0.25 / 4)
    assert float(hist[0, 0]) == pytest.approx(1 / 4)
    assert float(hist[4, 4]) == pytest.approx(1 / 4)
    assert float(hist[4, 0]) == pytest.approx(1 / 4)          # 1.5 -> 1, -0.2 -> 0
    full[2, 0].backward()
    assert float(x.grad[0, 0, 0, 0]) == pytest.approx((bins - 1) / 4)


def test_mutual_information_rewards_a_copy_and_its_weight_is_checked():
    """MI(X, X) is the entropy of X and exceeds MI(X, noise); the fusion_mi term's gradient
    moves F towards higher MI; bins outside [2, 256] are refused."""
    x = _rand(1, 1, 32, 32)
    noise = _rand(1, 1, 32, 32, seed=5)
    copy, unrelated = (float(mutual_information(x, other, 16)[0]) for other in (x, noise))
    assert copy > 1.5 > unrelated
    fused = (0.5 * x + 0.5 * noise).requires_grad_(True)
    mi = mutual_information(fused, x, 16).sum()
    mi.backward()
    stepped = fused.detach() + 0.05 * fused.grad / fused.grad.abs().max()
    assert float(mutual_information(stepped, x, 16)[0]) > float(mi.detach())
    for bad in (1, 257, 64.0, True):
        with pytest.raises(ValueError, match='fusion_mi_bins'):
            LossWeights(fusion_mi_bins=bad)
    with pytest.raises(ValueError, match='fusion_mi'):
        LossWeights(fusion_mi=-0.5)


def test_evaluator_ssim_equals_the_published_metric_and_is_its_loss_term():
    """evaluator_ssim at data range 2 / 255 on [0, 1] images is the evaluator's SSIM at its
    published data range 2 on the same images in 0..255, flat windows included (where the
    training SSIM's constants would score near 1 whatever F does); fusion_ssim_metric weighs
    2 - SSIM_e(F, I) - SSIM_e(F, Y)."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (2, 1, 20, 23)).astype(np.float64)
    a[:, :, :8, :9] = 40.0                                       # a flat corner
    b = np.clip(a + rng.normal(0.0, 15.0, a.shape), 0, 255).round()
    f = np.clip((a + b) / 2 + rng.normal(0.0, 2.0, a.shape), 0, 255)
    ta, tb, tf = (torch.from_numpy(x / 255.0).float() for x in (a, b, f))
    both = evaluator_ssim(tf, ta) + evaluator_ssim(tf, tb)
    for i in range(2):
        assert float(both[i]) == pytest.approx(metric_ssim(f[i, 0], a[i, 0], b[i, 0]), abs=1e-5)
    assert evaluator_ssim(ta, ta).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    # a larger data range (larger constants) forgives the flat corner's noise more
    assert float(evaluator_ssim(tf, ta, 50 / 255).mean()) > float(evaluator_ssim(tf, ta).mean())
    terms = fusion_loss(tb, ta, tf, LossWeights(fusion_ssim_metric=1.5))
    assert float(terms['ssim_metric']) == pytest.approx(float(both.mean()), rel=1e-5)
    off = fusion_loss(tb, ta, tf, LossWeights())
    assert float(off['ssim_metric']) == 0.0
    assert float(terms['fusion']) == pytest.approx(
        float(off['fusion']) + 1.5 * (2.0 - float(both.mean())), rel=1e-4)


def test_evaluator_ssim_gradient_raises_it_and_bad_settings_are_refused():
    """A step along the gradient raises the SSIM of a blend with a source; images smaller than
    the window, a negative weight and a non-positive data range are refused."""
    x = _rand(1, 1, 24, 24)
    fused = (0.5 * x + 0.5 * _rand(1, 1, 24, 24, seed=9)).requires_grad_(True)
    value = evaluator_ssim(fused, x).sum()
    value.backward()
    assert fused.grad is not None and fused.grad.dtype == torch.float32
    stepped = fused.detach() + 0.02 * fused.grad / fused.grad.abs().max()
    assert float(evaluator_ssim(stepped, x)[0]) > float(value.detach())
    with pytest.raises(ValueError, match='at least 7'):
        evaluator_ssim(_rand(1, 1, 6, 30), _rand(1, 1, 6, 30))
    with pytest.raises(ValueError, match='fusion_ssim_metric'):
        LossWeights(fusion_ssim_metric=-1.0)
    for bad in (0.0, -1.0, float('inf'), True):
        with pytest.raises(ValueError, match='fusion_ssim_metric_range'):
            LossWeights(fusion_ssim_metric_range=bad)
