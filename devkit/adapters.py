"""Adapters for the tiny test models, built with the core library from the model's own weights."""

from __future__ import annotations

import torch

from .host import import_pack
from .randomize import randomize_layer_


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
    for _, layer in net.items():
        randomize_layer_(layer, g, lam_scale=lam_scale, router_scale=router_scale, bias_scale=0.1)
    return net.to_adapter(provenance={"kind": "randomized test adapter", "seed": seed})
