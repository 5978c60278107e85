"""The plain-torch RMS norm + split-half RoPE (the backward of ComfyUI 0.33's fused kitchen op is built on it),
checked in fp64 against an independent computation: the norm by hand, the rotation as complex multiplication."""

import torch

from ortho_hydra.rms_rope import rms_rope_split_half_reference


def rotations(angles: torch.Tensor) -> torch.Tensor:
    """(..., d/2, 2, 2) rotation matrices, the kitchen's freqs layout."""
    c, s = angles.cos(), angles.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def by_hand(x: torch.Tensor, angles: torch.Tensor, scale: torch.Tensor, eps: float, rot_dim: int) -> torch.Tensor:
    normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale
    width = rot_dim or x.shape[-1]
    half = width // 2
    z = torch.complex(normed[..., :half], normed[..., half:width]) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag, normed[..., width:]], -1)


def test_matches_complex_rotation_of_the_hand_norm():
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 6, 3, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    q_scale, k_scale = (0.5 + torch.rand(8, generator=gen, dtype=torch.float64) for _ in range(2))
    for rot_dim in (0, 4):
        angles = torch.randn(1, 6, 1, (rot_dim or 8) // 2, generator=gen, dtype=torch.float64)
        out_q, out_k = rms_rope_split_half_reference(q, k, rotations(angles), q_scale, k_scale, 1e-6, rot_dim)
        torch.testing.assert_close(out_q, by_hand(q, angles, q_scale, 1e-6, rot_dim), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_k, by_hand(k, angles, k_scale, 1e-6, rot_dim), rtol=1e-12, atol=1e-12)
        shared_q, shared_k = rms_rope_split_half_reference(q, k, rotations(angles), q_scale, None, 1e-6, rot_dim)
        torch.testing.assert_close(shared_k, by_hand(k, angles, q_scale, 1e-6, rot_dim), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(shared_q, out_q, rtol=0, atol=0)


def test_zero_angles_leave_the_norm():
    x = torch.randn(1, 4, 2, 6, dtype=torch.float64)
    out, _ = rms_rope_split_half_reference(x, x, rotations(torch.zeros(1, 4, 1, 3, dtype=torch.float64)),
                                           torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(out, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6), rtol=1e-12, atol=1e-12)
