"""Cayley map: skew-symmetric seeds to exactly orthogonal rotations."""

from __future__ import annotations

import torch


def cayley(seeds: torch.Tensor) -> torch.Tensor:
    """Map seeds ``S`` of shape (..., r, r) to ``R = (I + K)^-1 (I - K)``, ``K = S - S^T``.

    One batched fp32 solve serves the whole stack ``[S_q, S_p[0..E-1]]``.  ``I + K``
    is always invertible because a real skew matrix has purely imaginary eigenvalues.
    """
    s = seeds.float()
    k = s - s.transpose(-1, -2)
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device).expand_as(k)
    return torch.linalg.solve(eye + k, eye - k)
