"""Independent fp64 re-derivations of the method, written from the spec, for tests only.

Nothing here calls the library: each quantity is rebuilt from raw parameters so a
bug in the library cannot cancel itself out.
"""

from __future__ import annotations

import torch


def cayley64(seed: torch.Tensor) -> torch.Tensor:
    s = seed.double()
    k = s - s.T
    eye = torch.eye(s.shape[0], dtype=torch.float64)
    return torch.linalg.inv(eye + k) @ (eye - k)


def training_factors64(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q_eff (r, in), P_eff (E, out, r)) from an ortho OrthoHydraLinear's raw parameters."""
    seeds = layer.cayley_seeds.detach()
    q_eff = cayley64(seeds[0]) @ layer.in_basis.double()
    p_eff = torch.stack([layer.out_bases[e].double() @ cayley64(seeds[1 + e]) for e in range(layer.num_experts)])
    return q_eff, p_eff


def training_gate64(layer, x: torch.Tensor) -> torch.Tensor:
    q_eff, _ = training_factors64(layer)
    lx = x.double() @ q_eff.T
    pooled = lx.pow(2).mean(dim=1).sqrt()
    logits = pooled @ layer.router.weight.detach().double().T + layer.router.bias.detach().double()
    return torch.softmax(logits, dim=-1)


def training_delta64(layer, x: torch.Tensor) -> torch.Tensor:
    """Δy = s · Σ_e g_e P_eff_e diag(λ) Q_eff x, per sample, in fp64."""
    q_eff, p_eff = training_factors64(layer)
    gate = training_gate64(layer, x)
    lam = layer.lam.detach().double()
    scale = layer.alpha / layer.rank
    out = []
    for b in range(x.shape[0]):
        w = sum(gate[b, e] * p_eff[e] @ torch.diag(lam) @ q_eff for e in range(layer.num_experts))
        out.append(scale * x[b].double() @ w.T)
    return torch.stack(out)
