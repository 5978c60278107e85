"""Fit a routed layer's router from labelled examples: which expert should each input go to?

Used to give an expert bank (many LoRAs as one adapter) a router: given the pooled router inputs of example
latents and the expert each example belongs to, fit a multinomial logistic regression per layer, on standardised
features, and fold the standardisation back into a plain router weight and bias (the file format's router).
Pure torch; the host only collects the features.
"""

from __future__ import annotations

import torch

from .runtime import ExpertLayer


def fit_router(features: torch.Tensor, labels: torch.Tensor, num_experts: int, *, steps: int = 300,
               lr: float = 0.05, weight_decay: float = 1e-3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Router (weight (E, r), bias (E,)) on raw pooled features (N, r) that predicts ``labels`` (N,).

    Standardising first makes the per-sample differences O(1) (DiT features carry a large common mode); the map
    is folded exactly: ``W ((p − μ) / s) + b = (W / s) p + (b − (W / s) μ)``.
    """
    x = features.detach().double()
    mean = x.mean(0)
    std = x.std(0) if x.shape[0] > 1 else torch.ones_like(mean)
    std = torch.maximum(std, 1e-3 * mean.abs().clamp_min(1e-6))
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(num_experts, x.shape[1], generator=gen, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(num_experts, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    target = labels.long().reshape(-1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(z @ weight.T + bias, target) + weight_decay * weight.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scaled = weight / std
        return scaled.float(), (bias - scaled @ mean).float()


def with_router(layer: ExpertLayer, weight: torch.Tensor, bias: torch.Tensor) -> ExpertLayer:
    """The layer with this router on its pooled-input columns (σ / FEI columns, if any, zeroed)."""
    full = torch.zeros_like(layer.router_weight, dtype=torch.float32)
    full[:, :weight.shape[1]] = weight
    return layer.with_tensors(router_weight=full, router_bias=bias.float())
