"""Small builders for test adapters (random but seeded, never hard-coded results)."""

from __future__ import annotations

import torch

from devkit.randomize import randomize_layer_
from ortho_hydra import Adapter, OrthoHydraLinear, PlainLoRA, distill


def trained_layer(out: int = 48, inn: int = 40, rank: int = 4, experts: int = 3, seed: int = 0,
                  name: str = "lora_unet_blocks_0_mlp_layer1", **kwargs) -> OrthoHydraLinear:
    """An ortho layer with random Cayley seeds, λ and router, as if trained."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, inn, generator=g)
    layer = OrthoHydraLinear(weight, rank=rank, num_experts=experts, name=name, seed=seed, **kwargs)
    randomize_layer_(layer, g)
    return layer


def adapter(num_layers: int = 2, experts: int = 3, rank: int = 4, with_plain: bool = True,
            names: list[str] | None = None) -> Adapter:
    layers = {}
    for i in range(num_layers):
        name = f"lora_unet_blocks_{i}_mlp_layer1"
        layers[name] = distill(trained_layer(rank=rank, experts=experts, seed=i, name=name))
    plain = {}
    if with_plain:
        g = torch.Generator().manual_seed(99)
        plain["lora_unet_blocks_0_attn_out"] = PlainLoRA("lora_unet_blocks_0_attn_out", torch.randn(2, 40, generator=g),
                                                         torch.randn(40, 2, generator=g), alpha=1.0)
    return Adapter(layers=layers, plain_layers=plain, expert_names=names)
