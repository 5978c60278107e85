"""A set of trainable layers keyed by kohya-style prefix, and its distillation to an Adapter."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from .adapter import Adapter
from .basis import BasisCache
from .distill import distill
from .trainable import OrthoHydraLinear


def module_key(prefix: str) -> str:
    """nn.ModuleDict keys may not contain dots."""
    return prefix.replace(".", "_")


class OrthoHydraNetwork(nn.Module):
    """One OrthoHydraLinear per adapted weight; ``replicated`` lists layers that hit the basis fallback.

    Layers are built one weight at a time, each on its weight's device: with the model's own weights passed in
    (any dtype), setup holds one weight's fp32 copy at a time, never a copy of them all.  ``basis_cache`` keeps the
    SVD bases for the next run on the same weights.
    """

    def __init__(self, weights: Mapping[str, torch.Tensor], rank: int, num_experts: int, *,
                 alpha: float | None = None, init: str = "ortho", seed: int = 0,
                 basis_cache: BasisCache | None = None, **layer_kwargs) -> None:
        super().__init__()
        self.prefixes: dict[str, str] = {}
        layers = nn.ModuleDict()
        self.replicated: list[str] = []
        for i, (prefix, weight) in enumerate(weights.items()):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                layer = OrthoHydraLinear(weight, rank, num_experts, alpha=alpha, init=init, seed=seed + i,
                                         name=prefix, basis_cache=basis_cache, **layer_kwargs)
            if layer.basis_replicated:
                self.replicated.append(prefix)
            elif caught:
                for w in caught:
                    warnings.warn(w.message, w.category, stacklevel=2)
            layers[module_key(prefix)] = layer
            self.prefixes[module_key(prefix)] = prefix
        if self.replicated:
            warnings.warn(f"Ortho-Hydra: {len(self.replicated)} of {len(weights)} layers cannot hold {num_experts} "
                          f"disjoint rank-{rank} slices and replicate the top slice (deadlock case): "
                          f"{', '.join(self.replicated[:3])}{' …' if len(self.replicated) > 3 else ''}. "
                          f"Use experts x rank <= min(in, out).", stacklevel=2)
        self.layers = layers
        self.config = {"rank": rank, "num_experts": num_experts, "alpha": alpha or rank, "init": init,
                       "seed": seed, **{k: v for k, v in layer_kwargs.items() if isinstance(v, int | float | str)}}

    def items(self):
        for key, layer in self.layers.items():
            yield self.prefixes[key], layer

    def to_adapter(self, expert_names: list[str] | None = None, provenance: dict | None = None,
                   extra_metadata: Mapping[str, str] | None = None) -> Adapter:
        spec = "ortho_hydra" if self.config["init"] in ("ortho", "ortho_out") else "hydra"
        metadata = {"ss_network_spec": spec}
        if provenance:
            metadata["oh_provenance"] = json.dumps(provenance, sort_keys=True)
        metadata.update(extra_metadata or {})
        return Adapter(layers={p: distill(layer) for p, layer in self.items()}, metadata=metadata,
                       expert_names=expert_names)
