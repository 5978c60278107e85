"""RMS norm followed by split-half rotary embedding: the math of ComfyUI 0.33's fused
``comfy_kitchen::rms_rope_split_half`` op, written out in plain torch so autograd can differentiate it (the host's
op has no backward; ``comfy_glue.kitchen_autograd`` registers one built on this)."""

from __future__ import annotations

import torch


def _rotate_split_half(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Split-half RoPE: pair i is (x[i], x[i + d/2]); ``freqs`` (..., d/2, 2, 2) holds each pair's 2 x 2 rotation
    (rows = outputs), broadcast over the leading axes."""
    half = x.shape[-1] // 2
    pair = torch.stack([x[..., :half], x[..., half:]], -1).to(freqs.dtype)  # (..., d/2, 2)
    out = (freqs * pair.unsqueeze(-2)).sum(-1)  # (..., d/2, 2): each output row · the pair
    return torch.cat([out[..., 0], out[..., 1]], -1).to(x.dtype)


def rms_rope_split_half_reference(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor, q_scale: torch.Tensor,
                                  k_scale: torch.Tensor | None = None, epsilon: float = 1e-6,
                                  rot_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMS norm with a learned scale, then split-half RoPE on the first ``rot_dim`` features (0 = all):
    what the kitchen op computes, written out so autograd can differentiate it."""

    def one(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        normed = torch.nn.functional.rms_norm(x, (x.shape[-1],), weight=scale, eps=epsilon)
        width = rot_dim or x.shape[-1]
        rotated = _rotate_split_half(normed[..., :width], freqs)
        return rotated if width == x.shape[-1] else torch.cat([rotated, normed[..., width:]], -1)

    return one(q, q_scale), one(k, q_scale if k_scale is None else k_scale)
