"""An adapter file in memory: routed layers, plain legs and the header metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .runtime import ExpertLayer, PlainLoRA


@dataclass
class Adapter:
    """Layers are keyed by their kohya-style prefix, e.g. ``lora_unet_blocks_0_mlp_layer1``."""

    layers: dict[str, ExpertLayer]
    plain_layers: dict[str, PlainLoRA] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    expert_names: list[str] | None = None
    path: str | None = None
    override: object | None = None  # an OverrideStack from the router node, applied when the adapter is applied

    @property
    def num_experts(self) -> int:
        """E, shared by every routed layer (the loader refuses files that disagree)."""
        return next(iter(self.layers.values())).num_experts if self.layers else 0

    @property
    def rank(self) -> int:
        """The routed rank; the largest one if layers were trained at different ranks."""
        return max((layer.rank for layer in self.layers.values()), default=0)

    @property
    def spec(self) -> str:
        return self.metadata.get("ss_network_spec", "hydra")

    def display_expert_names(self) -> list[str]:
        if self.expert_names and len(self.expert_names) == self.num_experts:
            return list(self.expert_names)
        return [f"expert {e}" for e in range(self.num_experts)]

    def summary(self) -> str:
        """A short human summary for the UI."""
        first = next(iter(self.layers.values()), None)
        source = first.router.source if first else "-"
        extras = []
        if first is not None and first.router.sigma_dim:
            extras.append(f"σ features {first.router.sigma_dim}")
        if first is not None and first.router.sigma_bands:
            extras.append(f"{len(first.router.sigma_bands) - 1} σ bands")
        if first is not None and first.router.centered:
            extras.append("centered gate")
        provenance = self.metadata.get("oh_provenance")
        if provenance:
            try:
                prov = json.loads(provenance)
                provenance = ", ".join(f"{k}={v}" for k, v in prov.items())
            except json.JSONDecodeError:
                pass
        lines = [
            f"{self.spec}: {self.num_experts} experts, rank {self.rank}, router source {source}"
            + (f" ({', '.join(extras)})" if extras else ""),
            f"{len(self.layers)} routed layers, {len(self.plain_layers)} plain LoRA legs",
            "experts: " + ", ".join(self.display_expert_names()),
        ]
        if provenance:
            lines.append(f"provenance: {provenance}")
        return "\n".join(lines)
