"""Losses of the two SFDFuse training phases.

The terms follow the public CDDFuse (Zhao et al., CVPR 2023; ``train.py``, ``utils/loss.py``)
and SFDFuse (``zxp771/SFDFuse``; ``train.py``, ``utils/loss_fft.py``) code, re-implemented in
plain torch:

* :func:`ssim_loss` equals ``kornia.losses.SSIMLoss(11)``: Gaussian window 11, sigma 1.5,
  ``C1 = 0.01**2``, ``C2 = 0.03**2`` (data range 1), reflect padding, and the loss
  ``clamp((1 - SSIM) / 2, 0, 1)`` averaged (note the ``/ 2``: it lies in ``[0, 1]``).
* :func:`spatial_gradient` equals ``kornia.filters.SpatialGradient()``: Sobel kernels divided by
  the sum of their absolute values (8), replicate padding, ``(B, C, 2, H, W)``.
* :func:`sobel_magnitude` equals the references' ``Sobelxy``: ``|Sx * x| + |Sy * x|`` with
  unnormalised Sobel kernels and zero padding.
* :func:`correlation` equals their ``cc``: per sample and channel correlation coefficient over
  the spatial positions, clamped to ``[-1, 1]``, averaged.

Every function takes the device and dtype from its inputs; kernels are built there, so nothing
is tied to a GPU at construction. Weights live in :class:`LossWeights`, never inline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['LossWeights', 'gaussian_window', 'ssim_map', 'ssim_loss', 'spatial_gradient',
           'sobel_magnitude', 'correlation', 'sum_of_correlations', 'joint_histogram',
           'mutual_information', 'evaluator_ssim', 'decomposition_loss',
           'gradient_loss', 'reconstruction_loss', 'fusion_targets', 'fusion_loss',
           'ReconstructionLoss', 'FusionLoss']

_EPS = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class LossWeights:
    """Weights of every loss term (defaults: the published SFDFuse recipe).

    Phase I (reconstruction), for each of V (visible) and I (infrared)::

        recon_X = ssim * SSIMLoss(X, X_hat) + mse * MSE(X, X_hat)
        loss_I = recon_vi * recon_V + recon_ir * recon_I + decomp * L_decomp
                 + gradient * L1(grad V, grad V_hat)

    Phase II (fusion), with ``M = max(Y, I)``::

        loss_II = intensity * L1(M, F)
                  + fusion_gradient * L1(fusion_gradient_gain * max(|gY|, |gI|), |gF|)
                  + fusion_ssim * SSIMLoss(M, F)
                  + fusion_ssim_sources * (SSIMLoss(Y, F) + SSIMLoss(I, F)) / 2
                  + fusion_range * mean(relu(F - 1) + relu(-F))
                  + fusion_scd * (2 - cc(F - I, Y) - cc(F - Y, I))
                  - fusion_mi * (MI(F, I) + MI(F, Y))
                  + fusion_ssim_metric * (2 - SSIM_e(F, I) - SSIM_e(F, Y))
                  + fusion_decomp * L_decomp

    and ``L_decomp = cc(detail_V, detail_I)**2 / (decomp_offset + cc(base_V, base_I))``.
    """

    #: Phase I: weight of the SSIM loss inside each reconstruction term.
    ssim: float = 5.0
    #: Phase I: weight of the MSE inside each reconstruction term.
    mse: float = 1.0
    #: Phase I: weight of the visible reconstruction term (alpha1 in CDDFuse).
    recon_vi: float = 1.0
    #: Phase I: weight of the infrared reconstruction term.
    recon_ir: float = 1.0
    #: Phase I: weight of the decomposition loss (alpha2).
    decomp: float = 2.0
    #: Phase I: weight of the L1 between normalised Sobel gradients of V and its reconstruction.
    gradient: float = 5.0
    #: Offset of the decomposition loss's denominator (keeps it positive as cc_base -> -1).
    decomp_offset: float = 1.01
    #: Phase II: weight of L1(max(Y, I), F).
    intensity: float = 1.0
    #: Phase II: weight of L1(gain * max(|grad Y|, |grad I|), |grad F|).
    fusion_gradient: float = 10.0
    #: Phase II: gain on the gradient target (1 in the published recipe; above 1 asks the fused
    #: image for edges stronger than the stronger source's: more contrast than ``max(Y, I)``).
    fusion_gradient_gain: float = 1.0
    #: Phase II: weight of SSIMLoss(max(Y, I), F).
    fusion_ssim: float = 1.0
    #: Phase II: weight of the mean of SSIMLoss(Y, F) and SSIMLoss(I, F): structure of each
    #: source rather than of their maximum (0 in the published recipe).
    fusion_ssim_sources: float = 0.0
    #: Phase II: weight of the mean distance of F to ``[0, 1]`` (0 in the published recipe).
    #: A network trained unclamped (so that every pixel keeps a gradient) but clamped at
    #: inference can meet a sharpness target with values outside the range that the clamp then
    #: removes; this term makes the training objective the one that inference sees.
    fusion_range: float = 0.0
    #: Phase II: weight of ``2 - SCD``, SCD being the sum of the correlations of differences
    #: ``cc(F - I, Y) + cc(F - Y, I)`` per patch (Aslantas and Bendes' metric, differentiable):
    #: asks that what F adds to each source correlate with the other source, so that both
    #: sources' contrast is kept where ``max(Y, I)`` drops the darker one (0 in the published
    #: recipe).
    fusion_scd: float = 0.0
    #: Phase II: weight of ``-(MI(F, I) + MI(F, Y))``, the mutual information (nats) of F with
    #: each source per patch, from a joint histogram with linear-interpolation binning (so
    #: that it has a gradient), :func:`mutual_information` (0 in the published recipe). The
    #: published MI rewards a fused image that is, pixel by pixel, a function of one source;
    #: every contrast term moves away from that.
    fusion_mi: float = 0.0
    #: Phase II: bins per image of that histogram (the published metric has 256 on whole
    #: images; a 128 x 128 patch fills 64 x 64 joint bins about as densely).
    fusion_mi_bins: int = 64
    #: Phase II: weight of ``2 - (SSIM_e(F, I) + SSIM_e(F, Y))`` with the evaluator's SSIM,
    #: :func:`evaluator_ssim` (7 x 7 uniform window, sample covariance, the published
    #: constants), per patch (0 in the published recipe). The training SSIM above has the
    #: constants of data range 1, so windows whose standard deviation is under about 8 grey
    #: levels all score near 1 there; the published metric's constants are 16 000 times
    #: smaller, so those windows count by their structure alone.
    fusion_ssim_metric: float = 0.0
    #: Phase II: the data range of that SSIM in units of the [0, 1] images (C1 = (0.01 L)^2,
    #: C2 = (0.03 L)^2); the default, 2 / 255, is the published evaluator's data range of 2 on
    #: 0..255 images (scikit-image 0.19 on float images).
    fusion_ssim_metric_range: float = 2.0 / 255.0
    #: Phase II: weight of the decomposition loss.
    fusion_decomp: float = 2.0
    #: Side of the SSIM Gaussian window.
    ssim_window: int = 11
    #: Standard deviation of the SSIM Gaussian window.
    ssim_sigma: float = 1.5

    def __post_init__(self) -> None:
        """Check ranges.

        :raises ValueError: a negative weight, a non-positive offset, or an even window.
        """
        for name in ('ssim', 'mse', 'recon_vi', 'recon_ir', 'decomp', 'gradient', 'intensity',
                     'fusion_gradient', 'fusion_ssim', 'fusion_ssim_sources', 'fusion_range',
                     'fusion_scd', 'fusion_mi', 'fusion_ssim_metric', 'fusion_decomp'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f'loss weight {name} must be a number >= 0, got {value!r}')
        gain = self.fusion_gradient_gain
        if not isinstance(gain, (int, float)) or isinstance(gain, bool) or not gain > 0:
            raise ValueError(f'fusion_gradient_gain must be a number > 0, got {gain!r}')
        bins = self.fusion_mi_bins
        if not isinstance(bins, int) or isinstance(bins, bool) or not 2 <= bins <= 256:
            raise ValueError(f'fusion_mi_bins must be an int in [2, 256], got {bins!r}')
        span = self.fusion_ssim_metric_range
        if not isinstance(span, (int, float)) or isinstance(span, bool) \
                or not 0 < span < float('inf'):
            raise ValueError(f'fusion_ssim_metric_range must be a number > 0, got {span!r}')
        if not self.decomp_offset > 1.0:
            raise ValueError(f'decomp_offset must be > 1 (cc_base can reach -1), '
                             f'got {self.decomp_offset!r}')
        if not isinstance(self.ssim_window, int) or self.ssim_window < 1 \
                or self.ssim_window % 2 == 0:
            raise ValueError(f'ssim_window must be an odd int >= 1, got {self.ssim_window!r}')
        if not self.ssim_sigma > 0:
            raise ValueError(f'ssim_sigma must be > 0, got {self.ssim_sigma!r}')


def _check_images(**tensors: torch.Tensor) -> None:
    shape = None
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
        if not x.is_floating_point():
            raise TypeError(f'{name} must be a floating-point tensor, got {x.dtype}')
        if x.ndim != 4:
            raise ValueError(f'{name}: expected (B, C, H, W), got {tuple(x.shape)}')
        if shape is not None and tuple(x.shape) != shape:
            raise ValueError(f'shapes differ: {list(tensors)} got '
                             f'{[tuple(t.shape) for t in tensors.values()]}')
        shape = tuple(x.shape)


def _gaussian_1d(size: int, sigma: float, device: torch.device | None,
                 dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def gaussian_window(size: int, sigma: float, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Build a normalised 2-D Gaussian window.

    :param size: odd side length.
    :param sigma: standard deviation in pixels.
    :param device: where to build it.
    :param dtype: its dtype.
    :return: ``(size, size)`` tensor summing to 1.
    """
    g = _gaussian_1d(size, sigma, device, torch.float64)
    return torch.outer(g, g).to(dtype)


def _filter(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Depthwise 2-D correlation with one kernel, padded to keep ``(H, W)``."""
    channels = x.shape[1]
    kh, kw = kernel.shape
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=mode)
    weight = kernel.to(x.dtype).expand(channels, 1, kh, kw)
    return F.conv2d(x, weight, groups=channels)


def _separable_filter(x: torch.Tensor, g: torch.Tensor, mode: str) -> torch.Tensor:
    """Depthwise correlation with the separable kernel ``outer(g, g)``, padded to keep ``(H, W)``.

    The same as :func:`_filter` with ``torch.outer(g, g)`` (reflect padding commutes with the
    two 1-D passes), at ``2k`` instead of ``k**2`` multiply-adds per pixel.
    """
    channels, k = x.shape[1], g.numel()
    x = F.pad(x, (k // 2, k // 2, k // 2, k // 2), mode=mode)
    row = g.to(x.dtype).view(1, 1, 1, k).expand(channels, 1, 1, k)
    col = g.to(x.dtype).view(1, 1, k, 1).expand(channels, 1, k, 1)
    return F.conv2d(F.conv2d(x, row, groups=channels), col, groups=channels)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5,
             data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM of two image batches (kornia's ``metrics.ssim`` with ``padding='same'``).

    The five local statistics are filtered in one separable depthwise pass.

    :param x: ``(B, C, H, W)`` float images.
    :param y: same shape as ``x``.
    :param window: odd side of the Gaussian window.
    :param sigma: its standard deviation.
    :param data_range: value range of the images (1 for ``[0, 1]``).
    :return: ``(B, C, H, W)`` SSIM values.
    """
    _check_images(x=x, y=y)
    if min(x.shape[-2:]) <= window // 2:
        raise ValueError(f'images must be larger than {window // 2} pixels for an SSIM window '
                         f'of {window}, got {tuple(x.shape)}')
    g = _gaussian_1d(window, sigma, x.device, x.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    stats = _separable_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), g, 'reflect')
    mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)  # each (B, C, H, W)
    sigma_x = xx - mu_x ** 2
    sigma_y = yy - mu_y ** 2
    sigma_xy = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (sigma_x + sigma_y + c2)
    return num / (den + 1e-12)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window: int = 11,
              sigma: float = 1.5) -> torch.Tensor:
    """``mean(clamp((1 - SSIM) / 2, 0, 1))``, as ``kornia.losses.SSIMLoss(window)``.

    :param x: ``(B, C, H, W)`` float images in ``[0, 1]``.
    :param y: same shape as ``x``.
    :param window: odd side of the Gaussian window.
    :param sigma: its standard deviation.
    :return: scalar in ``[0, 1]``; 0 for identical images.
    """
    return torch.clamp((1.0 - ssim_map(x, y, window, sigma)) / 2, 0.0, 1.0).mean()


def _sobel_kernels(device: torch.device, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                      device=device, dtype=dtype)
    return kx, kx.t()


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """Normalised Sobel gradients (``kornia.filters.SpatialGradient()``).

    :param x: ``(B, C, H, W)`` float.
    :return: ``(B, C, 2, H, W)``: d/dx then d/dy, kernels divided by 8, replicate padding.
    """
    _check_images(x=x)
    kx, ky = _sobel_kernels(x.device, x.dtype)
    gx = _filter(x, kx / 8.0, 'replicate')
    gy = _filter(x, ky / 8.0, 'replicate')
    return torch.stack([gx, gy], dim=2)  # (B, C, 2, H, W)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``|Sx * x| + |Sy * x|`` with unnormalised Sobel kernels and zero padding (``Sobelxy``).

    :param x: ``(B, C, H, W)`` float.
    :return: ``(B, C, H, W)`` non-negative.
    """
    _check_images(x=x)
    kx, ky = _sobel_kernels(x.device, x.dtype)
    return _filter(x, kx, 'constant').abs() + _filter(x, ky, 'constant').abs()


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean correlation coefficient of two feature maps (CDDFuse's ``cc``).

    For every sample and channel, the Pearson correlation over the ``H * W`` positions (with
    ``eps`` in the denominator), clamped to ``[-1, 1]``; then the mean over samples and channels.

    :param a: ``(B, C, H, W)`` float.
    :param b: same shape as ``a``.
    :return: scalar in ``[-1, 1]``.
    """
    _check_images(a=a, b=b)
    a = a.flatten(2)  # (B, C, H*W)
    b = b.flatten(2)
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    num = (a * b).sum(dim=-1)
    den = _EPS + a.pow(2).sum(dim=-1).sqrt() * b.pow(2).sum(dim=-1).sqrt()
    return torch.clamp(num / den, -1.0, 1.0).mean()


def sum_of_correlations(fused: torch.Tensor, vi: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``cc(F - I, Y) + cc(F - Y, I)`` (the SCD fusion metric).

    Each correlation is taken over one sample's pixels, as :func:`correlation` does, so it is
    :func:`sfdfuse_core.metrics.scd` of each sample: 2 for ``F = Y + I``; on 101 training
    patches (128 x 128) 1.25 for ``max(Y, I)`` and 1.18 for the mean (whole held-out images
    score higher: 1.55 and 1.24).

    :param fused: ``(B, 1, H, W)`` float.
    :param vi: visible luma, same shape.
    :param ir: infrared, same shape.
    :return: scalar in ``[-2, 2]``.
    """
    _check_images(fused=fused, vi=vi, ir=ir)
    return correlation(fused - ir, vi) + correlation(fused - vi, ir)


def decomposition_loss(base_v: torch.Tensor, detail_v: torch.Tensor, base_i: torch.Tensor,
                       detail_i: torch.Tensor, offset: float = 1.01) -> torch.Tensor:
    """Compute the correlation-driven decomposition loss ``cc_D**2 / (offset + cc_B)``.

    As CDDFuse defines it.

    Small when the detail features of the two modalities are uncorrelated and their base
    features correlated.

    :param base_v: visible base features ``(B, C, H, W)``.
    :param detail_v: visible detail features.
    :param base_i: infrared base features.
    :param detail_i: infrared detail features.
    :param offset: keeps the denominator positive (> 1).
    :return: scalar >= 0.
    """
    return correlation(detail_v, detail_i) ** 2 / (offset + correlation(base_v, base_i))


def joint_histogram(x: torch.Tensor, y: torch.Tensor, bins: int) -> torch.Tensor:
    """Joint histogram of two images per sample, with linear-interpolation binning.

    Each value ``v`` in ``[0, 1]`` (clamped there) sits at ``v * (bins - 1)`` on the bin axis
    and is shared between the two nearest bins in proportion to its distance to each, so the
    histogram is a piecewise-linear, differentiable function of the values (a triangular
    Parzen window one bin wide).

    :param x: ``(B, 1, H, W)`` float, values in ``[0, 1]``.
    :param y: same shape.
    :param bins: bins per image, >= 2.
    :return: ``(B, bins, bins)`` probabilities (each sample sums to 1), rows indexed by ``x``.
    """
    _check_images(x=x, y=y)
    if not isinstance(bins, int) or bins < 2:
        raise ValueError(f'bins must be an int >= 2, got {bins!r}')
    batch = x.shape[0]

    def split(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = v.reshape(batch, -1).clamp(0.0, 1.0) * (bins - 1)
        low = pos.detach().floor().clamp(max=bins - 2)
        upper = pos - low  # weight of bin low + 1; its gradient is the one of the value
        return low.long(), 1.0 - upper, upper

    xl, x0, x1 = split(x.float())
    yl, y0, y1 = split(y.float())
    hist = x.new_zeros((batch, bins * bins), dtype=torch.float32)
    for dx, wx in ((0, x0), (1, x1)):
        for dy, wy in ((0, y0), (1, y1)):
            hist = hist.scatter_add(1, (xl + dx) * bins + yl + dy, wx * wy)
    return (hist / float(x[0].numel())).reshape(batch, bins, bins)


def mutual_information(x: torch.Tensor, y: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Mutual information (nats) of two images from :func:`joint_histogram`, per sample.

    :param x: ``(B, 1, H, W)`` float, values in ``[0, 1]``.
    :param y: same shape.
    :param bins: bins per image.
    :return: ``(B,)`` values >= 0 (up to rounding), differentiable in both images.
    """
    pxy = joint_histogram(x, y, bins)
    px = pxy.sum(dim=2, keepdim=True)
    py = pxy.sum(dim=1, keepdim=True)
    ratio = pxy / (px * py).clamp_min(_EPS)
    return (pxy * torch.log(ratio.clamp_min(_EPS))).sum(dim=(1, 2))


def evaluator_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0 / 255.0,
                   window: int = 7) -> torch.Tensor:
    """Mean SSIM per sample as the published evaluator computes it, differentiable.

    scikit-image's ``structural_similarity`` defaults: a ``window x window`` uniform window,
    sample covariance (``n / (n - 1)``), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, and the mean
    over the pixels whose window lies inside the image (``sfdfuse_core.metrics``'s SSIM, one
    pair).

    :param x: ``(B, 1, H, W)`` float.
    :param y: same shape.
    :param data_range: ``L``, in the units of the images (2 / 255 for [0, 1] images is the
        published evaluator's 2 on 0..255 images).
    :param window: odd side of the uniform window.
    :return: ``(B,)`` values in ``[-1, 1]``.
    """
    _check_images(x=x, y=y)
    if min(x.shape[-2:]) < window:
        raise ValueError(f'images must be at least {window} pixels on a side for an SSIM '
                         f'window of {window}, got {tuple(x.shape)}')
    # float64: with the published constants (C2 near 6e-8 for [0, 1] images) float32's
    # rounding of E[x^2] - E[x]^2 (about 1e-7 at values near 1) would swamp flat windows
    x, y = x.double(), y.double()
    n_px = window * window
    cov_norm = n_px / (n_px - 1.0)

    def mean(v: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(v, window, stride=1)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2.0 * ux * uy + c1) * (2.0 * vxy + c2)
         / ((ux * ux + uy * uy + c1) * (vx + vy + c2)))
    return s.mean(dim=(1, 2, 3)).to(torch.float32)


def gradient_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L1 between the normalised Sobel gradients of two images (phase I).

    :param x: ``(B, C, H, W)`` float.
    :param y: same shape as ``x``.
    :return: scalar >= 0.
    """
    return F.l1_loss(spatial_gradient(x), spatial_gradient(y))


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor,
                        weights: LossWeights = LossWeights()) -> torch.Tensor:
    """``ssim * SSIMLoss(x, x_hat) + mse * MSE(x, x_hat)``.

    :param x: ``(B, 1, H, W)`` in ``[0, 1]``.
    :param x_hat: its reconstruction, same shape.
    :param weights: the loss weights.
    :return: scalar >= 0.
    """
    return (weights.ssim * ssim_loss(x, x_hat, weights.ssim_window, weights.ssim_sigma)
            + weights.mse * F.mse_loss(x_hat, x))


def fusion_targets(vi: torch.Tensor, ir: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Build the targets of the phase-II loss: ``max(Y, I)`` and ``max(|grad Y|, |grad I|)``.

    :param vi: visible luma ``(B, 1, H, W)`` in ``[0, 1]`` (only its first channel is used).
    :param ir: infrared ``(B, 1, H, W)`` in ``[0, 1]``.
    :return: ``(intensity_target, gradient_target)``, each ``(B, 1, H, W)``.
    """
    _check_images(ir=ir)
    y = vi[:, :1]
    _check_images(vi=y, ir=ir)
    return torch.maximum(y, ir), torch.maximum(sobel_magnitude(y), sobel_magnitude(ir))


def fusion_loss(vi: torch.Tensor, ir: torch.Tensor, fused: torch.Tensor,
                weights: LossWeights = LossWeights()) -> Dict[str, torch.Tensor]:
    """Compute the image part of the phase-II loss (the references' ``Fusionloss``).

    :param vi: visible luma ``(B, 1, H, W)`` in ``[0, 1]``.
    :param ir: infrared ``(B, 1, H, W)`` in ``[0, 1]``.
    :param fused: the fused image ``(B, 1, H, W)``.
    :param weights: the loss weights.
    :return: ``{'intensity', 'gradient', 'ssim', 'ssim_sources', 'range', 'scd', 'mi',
        'ssim_metric', 'fusion'}`` scalars; ``'fusion'`` is the weighted sum
        (``'ssim_sources'``, ``'range'``, ``'scd'``, ``'mi'`` and ``'ssim_metric'`` are only
        computed when their weight is not 0, else they are 0; ``'mi'`` is
        ``MI(F, I) + MI(F, Y)``, subtracted; ``'ssim_metric'`` is
        ``SSIM_e(F, I) + SSIM_e(F, Y)``, entering as ``2 - ssim_metric``).
    """
    _check_images(ir=ir, fused=fused)
    target, target_grad = fusion_targets(vi, ir)
    window, sigma = weights.ssim_window, weights.ssim_sigma
    terms = {
        'intensity': F.l1_loss(fused, target),
        'gradient': F.l1_loss(sobel_magnitude(fused), weights.fusion_gradient_gain * target_grad),
    }
    # a term whose weight is 0 is reported as 0 and not computed (SSIM is the costly one)
    terms['ssim'] = (ssim_loss(target, fused, window, sigma) if weights.fusion_ssim
                     else fused.new_zeros(()))
    if weights.fusion_ssim_sources:
        terms['ssim_sources'] = (ssim_loss(vi[:, :1], fused, window, sigma)
                                 + ssim_loss(ir, fused, window, sigma)) / 2
    else:
        terms['ssim_sources'] = fused.new_zeros(())
    terms['range'] = ((F.relu(fused - 1.0) + F.relu(-fused)).mean() if weights.fusion_range
                      else fused.new_zeros(()))
    terms['scd'] = (2.0 - sum_of_correlations(fused, vi[:, :1], ir) if weights.fusion_scd
                    else fused.new_zeros(()))
    if weights.fusion_mi:
        bins = weights.fusion_mi_bins
        terms['mi'] = (mutual_information(fused, ir, bins)
                       + mutual_information(fused, vi[:, :1], bins)).mean()
    else:
        terms['mi'] = fused.new_zeros(())
    if weights.fusion_ssim_metric:
        span = weights.fusion_ssim_metric_range
        terms['ssim_metric'] = (evaluator_ssim(fused, ir, span)
                                + evaluator_ssim(fused, vi[:, :1], span)).mean()
    else:
        terms['ssim_metric'] = fused.new_zeros(())
    terms['fusion'] = (weights.intensity * terms['intensity']
                       + weights.fusion_gradient * terms['gradient']
                       + weights.fusion_ssim * terms['ssim']
                       + weights.fusion_ssim_sources * terms['ssim_sources']
                       + weights.fusion_range * terms['range']
                       + weights.fusion_scd * terms['scd']
                       - weights.fusion_mi * terms['mi']
                       + weights.fusion_ssim_metric * (2.0 - terms['ssim_metric']))
    return terms


class ReconstructionLoss(nn.Module):
    """Phase-I loss (reconstruction of both modalities + decomposition + visible gradients)."""

    def __init__(self, weights: LossWeights = LossWeights()) -> None:
        """Hold the weights.

        :param weights: the loss weights.
        """
        super().__init__()
        self.weights = weights

    def forward(self, vi: torch.Tensor, ir: torch.Tensor, vi_hat: torch.Tensor,
                ir_hat: torch.Tensor, base_v: torch.Tensor, detail_v: torch.Tensor,
                base_i: torch.Tensor, detail_i: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Compute the phase-I loss and its terms.

        :param vi: visible ``(B, 1, H, W)`` in ``[0, 1]``.
        :param ir: infrared, same shape.
        :param vi_hat: reconstruction of ``vi``.
        :param ir_hat: reconstruction of ``ir``.
        :param base_v: visible base features ``(B, C, H, W)``.
        :param detail_v: visible detail features.
        :param base_i: infrared base features.
        :param detail_i: infrared detail features.
        :return: ``{'loss', 'recon_vi', 'recon_ir', 'decomp', 'gradient', 'cc_base',
            'cc_detail'}``.
        """
        w = self.weights
        _check_images(vi=vi, ir=ir, vi_hat=vi_hat, ir_hat=ir_hat)
        terms = {
            'recon_vi': reconstruction_loss(vi, vi_hat, w),
            'recon_ir': reconstruction_loss(ir, ir_hat, w),
            'cc_base': correlation(base_v, base_i),
            'cc_detail': correlation(detail_v, detail_i),
            'gradient': gradient_loss(vi, vi_hat),
        }
        terms['decomp'] = terms['cc_detail'] ** 2 / (w.decomp_offset + terms['cc_base'])
        terms['loss'] = (w.recon_vi * terms['recon_vi'] + w.recon_ir * terms['recon_ir']
                         + w.decomp * terms['decomp'] + w.gradient * terms['gradient'])
        return terms


class FusionLoss(nn.Module):
    """Phase-II loss (max-intensity, max-gradient and SSIM targets + decomposition)."""

    def __init__(self, weights: LossWeights = LossWeights()) -> None:
        """Hold the weights.

        :param weights: the loss weights.
        """
        super().__init__()
        self.weights = weights

    def forward(self, vi: torch.Tensor, ir: torch.Tensor, fused: torch.Tensor,
                base_v: torch.Tensor, detail_v: torch.Tensor, base_i: torch.Tensor,
                detail_i: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Compute the phase-II loss and its terms.

        :param vi: visible luma ``(B, 1, H, W)`` in ``[0, 1]``.
        :param ir: infrared, same shape.
        :param fused: the fused image.
        :param base_v: visible base features ``(B, C, H, W)`` (before fusion).
        :param detail_v: visible detail features.
        :param base_i: infrared base features.
        :param detail_i: infrared detail features.
        :return: ``{'loss', 'fusion', 'intensity', 'gradient', 'ssim', 'decomp', 'cc_base',
            'cc_detail'}``.
        """
        w = self.weights
        terms = fusion_loss(vi, ir, fused, w)
        terms['cc_base'] = correlation(base_v, base_i)
        terms['cc_detail'] = correlation(detail_v, detail_i)
        terms['decomp'] = terms['cc_detail'] ** 2 / (w.decomp_offset + terms['cc_base'])
        terms['loss'] = terms['fusion'] + w.fusion_decomp * terms['decomp']
        return terms
