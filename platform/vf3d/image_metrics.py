"""Per-image metrics between predicted and true views: PSNR, SSIM and LPIPS.

Shared by train-recon's validation and `vf3d evaluate`, which must score views the same way, so it
sits below both (it imports nothing from vf3d).

Images are [B, C, H, W] in [0, 1] (any leading dims work: [N, V, 3, H, W] gives [N, V]). Every
metric returns one value per image so callers can average per object, per view or overall.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() < 3:
        raise ValueError(f"images must be [..., C, H, W], got {tuple(pred.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, for images in [0, 1] (peak 1).

    Args:
        pred, target: [B, C, H, W] (or [..., C, H, W]).
    Returns:
        [B] (or [...]) float32: 10 · log10(1 / MSE); +inf for identical images.
    """
    _check_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(-3).mean(dim=-1)
    return (10.0 * torch.log10(1.0 / mse)).float()


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [size] (the same truncated kernel scipy's gaussian_filter uses)."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004) for images in [0, 1].

    Gaussian-weighted local statistics (11×11 window, σ = 1.5, population covariances),
    C1 = (0.01)², C2 = (0.03)², averaged over the positions where the window fits inside the image
    and over channels. Matches `skimage.metrics.structural_similarity(..., data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1)`.

    Args:
        pred, target: [B, C, H, W] (or [..., C, H, W]) with H, W ≥ 11.
    Returns:
        [B] (or [...]) float32, 1 for identical images.
    """
    _check_pair(pred, target)
    *lead, channels, height, width = pred.shape
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {height}×{width}")
    # float64: the local variances are differences of nearly equal sums.
    x = pred.reshape(-1, 1, height, width).double()
    y = target.reshape(-1, 1, height, width).double()
    taps = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, x.dtype, x.device)

    def blur(image: torch.Tensor) -> torch.Tensor:  # separable 'valid' Gaussian filter
        image = F.conv2d(image, taps.view(1, 1, -1, 1))
        return F.conv2d(image, taps.view(1, 1, 1, -1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_channel = ssim_map.flatten(1).mean(dim=1)
    return per_channel.view(*lead, channels).mean(dim=-1).float()


class LpipsMetric(nn.Module):
    """LPIPS distance per image pair, from an already built lpips network (see
    `vf3d.models.lpips_network.build_lpips`; evaluation usually uses net="alex", training "vgg").

    The network is frozen and kept in eval mode; images are taken in [0, 1].
    """

    def __init__(self, lpips_module: nn.Module) -> None:
        super().__init__()
        self.lpips = lpips_module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LpipsMetric:
        super().train(mode)
        self.lpips.eval()  # dropout in lpips' heads must stay off
        return self

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: pred, target [B, 3, H, W] (or [..., 3, H, W]) in [0, 1].
        Returns: [B] (or [...]) float32 distances (0 for identical images)."""
        _check_pair(pred, target)
        *lead, channels, height, width = pred.shape
        x = pred.reshape(-1, channels, height, width) * 2 - 1
        y = target.reshape(-1, channels, height, width).to(pred.dtype) * 2 - 1
        return self.lpips(x, y).reshape(lead).float()
