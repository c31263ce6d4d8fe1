"""Clip quality metrics in torch: PSNR and SSIM of a clip against a reference clip.

Clips are ``(..., F, C, H, W)`` tensors; the default ``data_range`` of 2.0 fits clips in
``[-1, 1]``. Both metrics return one value per clip (leading dims kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "attention_cost"]


def psnr(clip: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB over each whole clip (``inf`` when identical)."""
    if clip.shape != reference.shape:
        raise ValueError(f"shape mismatch: {tuple(clip.shape)} vs {tuple(reference.shape)}")
    diff = clip.double() - reference.double()
    mse = diff.pow(2).flatten(-4).mean(-1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    clip: torch.Tensor,
    reference: torch.Tensor,
    data_range: float = 2.0,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004: Gaussian 11x11 window, sigma 1.5,
    K1=0.01, K2=0.03, valid windows only), per channel and frame, averaged per clip.

    The window shrinks (keeping it odd) for frames smaller than ``window``.
    """
    if clip.shape != reference.shape:
        raise ValueError(f"shape mismatch: {tuple(clip.shape)} vs {tuple(reference.shape)}")
    lead = clip.shape[:-4]
    height, width = clip.shape[-2:]
    window = min(window, height, width)
    window -= 1 - window % 2
    kernel = _gaussian_window(window, sigma).view(1, 1, window, window)
    x = clip.double().reshape(-1, 1, height, width)
    y = reference.double().reshape(-1, 1, height, width)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    per_map = (num / den).flatten(1).mean(1)  # one value per (clip, frame, channel)
    return per_map.view(*lead, -1).mean(-1).float()


def attention_cost(
    config,  # AsymRnRConfig; untyped here so that metrics import without the backend
    *,
    num_layers: int,
    num_steps: int,
    grid: tuple[int, int, int],
    text_tokens: int = 0,
) -> float:
    """Fraction of the full model's attention FLOPs that ``config`` still spends over one
    generation (see :func:`asymrnr_fx.schedules.ratios.attention_flops_cut`)."""
    import math

    from ..ops import dst_count
    from ..schedules.ratios import attention_flops_cut, per_step_ratios

    cut = attention_flops_cut(
        per_step_ratios(config, num_layers, num_steps), num_video=math.prod(grid),
        num_dst=dst_count(grid, config.stride), text_tokens=text_tokens, symmetric=config.symmetric)
    return 1.0 - cut
