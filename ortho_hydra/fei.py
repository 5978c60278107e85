"""Frequency-Energy Index: a 2-simplex (low, high) of the noisy latent's spatial energy.

Routers trained with ``ss_router_source=fei`` see it appended to their input.  LP is a separable
Gaussian blur (std = min(H, W) / div, half-width ceil(3·std), reflect padding); the index is
``[Σ LP², Σ (z − LP)²] / total``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(std: float, half_width: int) -> torch.Tensor:
    x = torch.arange(-half_width, half_width + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * std * std))
    return k / k.sum()


def frequency_energy_index(latent: torch.Tensor, sigma_low_div: float = 4.0) -> torch.Tensor:
    """(B, C, H, W) or (B, C, T, H, W) latent -> (B, 2) fp32 [low, high] energy shares."""
    z = latent.float()
    if z.ndim == 5:  # video latents: frames are independent images for the blur
        z = z.movedim(2, 1).reshape(z.shape[0], -1, *z.shape[-2:])
    if z.ndim != 4:
        raise ValueError(f"FEI needs a (B, C, H, W) latent, got shape {tuple(latent.shape)}")
    batch, channels, height, width = z.shape
    std = min(height, width) / sigma_low_div
    half = max(1, math.ceil(3 * std))
    kernel = gaussian_kernel(std, half).to(z.device)
    flat = z.reshape(batch * channels, 1, height, width)
    pad_w, pad_h = min(half, width - 1), min(half, height - 1)  # reflect needs pad < size
    k_w = kernel[half - pad_w: half + pad_w + 1]
    k_h = kernel[half - pad_h: half + pad_h + 1]
    lp = F.conv2d(F.pad(flat, (pad_w, pad_w, 0, 0), mode="reflect"), (k_w / k_w.sum()).view(1, 1, 1, -1))
    lp = F.conv2d(F.pad(lp, (0, 0, pad_h, pad_h), mode="reflect"), (k_h / k_h.sum()).view(1, 1, -1, 1))
    lp = lp.reshape(batch, channels, height, width)
    e_low = lp.square().sum(dim=(1, 2, 3))
    e_high = (z - lp).square().sum(dim=(1, 2, 3))
    total = (e_low + e_high).clamp_min(1e-12)
    return torch.stack([e_low / total, e_high / total], dim=-1)
