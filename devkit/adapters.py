"""Adapters for the tiny test models, built with the core library from the model's own weights."""

from __future__ import annotations

import torch

from .host import import_pack


def library():
    """The core library as the pack sees it (its classes are the ones the nodes check against)."""
    return import_pack().ortho_hydra


def lora_weights(model, prefixes: list[str] | None = None, pattern: str | None = None) -> dict[str, torch.Tensor]:
    """``{lora_unet_* prefix: W0}`` for the model's Linears, through the pack's one Linear selection."""
    linears = import_pack().nodes.model_linears.adaptable_linears
    chosen = linears(model, "regex" if pattern else "all_linear", pattern or "", names=prefixes)
    return {name: weight.detach().float().clone() for name, (_, weight) in chosen.items()}


def randomized_adapter(weights: dict[str, torch.Tensor], rank: int = 4, experts: int = 3, seed: int = 0,
                       lam_scale: float = 0.5, router_scale: float = 0.3, **kwargs):
    """An Ortho-Hydra adapter with random rotations, λ and routers, so rows route differently."""
    net = library().network.OrthoHydraNetwork(weights, rank, experts, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for _, layer in net.items():
            layer.cayley_seeds.copy_(0.3 * torch.randn(layer.cayley_seeds.shape, generator=g))
            layer.lam.copy_(lam_scale * torch.randn(layer.lam.shape, generator=g))
            layer.router.weight.copy_(router_scale * torch.randn(layer.router.weight.shape, generator=g))
            layer.router.bias.copy_(0.1 * torch.randn(layer.router.bias.shape, generator=g))
    return net.to_adapter(provenance={"kind": "randomized test adapter", "seed": seed})
