"""Give a trainable Ortho-Hydra layer random rotations, λ and router, as if trained (pure torch, no host).

The one recipe tests and dev tools use, so that rows of a batch route differently and closed forms are tested on
non-trivial values, never on the all-zero init.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def randomize_layer_(layer, generator: torch.Generator, *, rotation: float = 0.3, lam_scale: float = 1.0,
                     lam_positive: bool = False, router_scale: float = 1.0, bias_scale: float = 0.5) -> None:
    """In place: Cayley seeds ~ N(0, rotation²), λ ~ N(0, lam_scale²) (or 0.5 + U(0, 1)), router ~ N(0, ·²)."""
    layer.cayley_seeds.copy_(rotation * torch.randn(layer.cayley_seeds.shape, generator=generator))
    if lam_positive:
        layer.lam.copy_(0.5 + torch.rand(layer.lam.shape, generator=generator))
    else:
        layer.lam.copy_(lam_scale * torch.randn(layer.lam.shape, generator=generator))
    layer.router.weight.copy_(router_scale * torch.randn(layer.router.weight.shape, generator=generator))
    if bias_scale:
        layer.router.bias.copy_(bias_scale * torch.randn(layer.router.bias.shape, generator=generator))
