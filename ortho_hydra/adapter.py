"""An adapter file in memory: routed layers, plain legs and the header metadata."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from .components import summary_lines
from .overrides import Override, OverrideStack, count_blocks
from .reft import ReFTEdit
from .runtime import ExpertLayer, PlainLoRA


@dataclass(frozen=True, eq=False)
class Adapter:
    """Layers are keyed by their kohya-style prefix, e.g. ``lora_unet_blocks_0_mlp_layer1``.

    Frozen: a node's input is often the loader's cached object, so changes always go through
    :func:`dataclasses.replace` (or the helpers below) and never leak into other branches or later runs.
    """

    layers: Mapping[str, ExpertLayer]
    plain_layers: Mapping[str, PlainLoRA] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    expert_names: tuple[str, ...] | None = None
    path: str | None = None
    override: OverrideStack = field(default_factory=OverrideStack)  # router-node overrides, applied with it
    reft: Mapping[str, ReFTEdit] = field(default_factory=dict)  # block-output edits, by reft_unet_blocks_<i>

    def __post_init__(self) -> None:
        if self.expert_names is not None:
            object.__setattr__(self, "expert_names", tuple(self.expert_names))
        if not self.override.num_blocks and self.layers:
            object.__setattr__(self, "override", replace(self.override, num_blocks=count_blocks(list(self.layers))))

    def with_override(self, override: Override) -> Adapter:
        """A copy whose override stack has ``override`` on top (later overrides win where scopes overlap)."""
        return replace(self, override=self.override.then(override))

    def with_expert_names(self, names: Sequence[str] | None) -> Adapter:
        return replace(self, expert_names=None if names is None else tuple(names))

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
        by_kind: dict[type, list] = {}
        for member in (*self.reft.values(), *self.layers.values(), *self.plain_layers.values()):
            by_kind.setdefault(type(member), []).append(member)
        for kind, members in by_kind.items():
            lines += kind.summary_lines(members)
        if provenance:
            lines.append(f"provenance: {provenance}")
        lines += summary_lines(self.metadata)
        return "\n".join(lines)
