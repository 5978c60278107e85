"""The inference forms of an adapted Linear: routed (plain Hydra: down, E ups, router) and plain LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from .layer import AdapterLayer, GateSink, same_tensor
from .routing import (
    GateContext,
    GateOverride,
    RouterSpec,
    add_routed_delta,
    finish_gate,
    mix_and_project_up,
    project_down,
    rms_pool,
    router_logits,
)


@dataclass
class ExpertLayer(AdapterLayer):
    """One routed Linear: ``Δy = s · Σ_e w_e(x, σ) up_e down (x ⊙ inv_scale)``, w the gate's mixing weights."""

    name: str
    down: torch.Tensor  # (r, in)
    ups: torch.Tensor  # (E, out, r)
    router_weight: torch.Tensor  # (E, r + sigma_dim + fei_dim)
    router_bias: torch.Tensor  # (E,)
    alpha: float
    router: RouterSpec = field(default_factory=RouterSpec)
    inv_scale: torch.Tensor | None = None  # (in,)

    routed: ClassVar[bool] = True
    fp32_tensors: ClassVar[tuple[str, ...]] = ("router_weight", "router_bias")

    @property
    def num_experts(self) -> int:
        return int(self.ups.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.ups.shape[1])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"down": self.down, "ups": self.ups, "router_weight": self.router_weight,
               "router_bias": self.router_bias}
        if self.inv_scale is not None:
            out["inv_scale"] = self.inv_scale
        return out

    def gate_from_projection(self, lx: torch.Tensor, sigma: torch.Tensor | None = None,
                             override: GateOverride | None = None, context: GateContext | None = None,
                             fei: torch.Tensor | None = None, sink: GateSink | None = None) -> torch.Tensor:
        """Routing distribution (B, E) fp32 from an already computed ``lx`` (callers share the down GEMM)."""
        logits = router_logits(rms_pool(lx), self.router_weight, self.router_bias, self.router, sigma, fei)
        if context is None:
            context = GateContext(layer=self.name, sigma=sigma)
        gate = finish_gate(logits, context, override)
        if sink is not None:
            sink(self.name, gate, context)
        return gate

    def gate(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
             context: GateContext | None = None, fei: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample routing distribution (B, E) after any override (before a centered gate's −1/E)."""
        return self.gate_from_projection(project_down(x, self.down, self.inv_scale), sigma, override, context, fei)

    def _project_and_mix(self, x: torch.Tensor, routing: dict) -> tuple[torch.Tensor, torch.Tensor]:
        lx = project_down(x, self.down, self.inv_scale)
        return lx, self.router.mixing_weights(self.gate_from_projection(lx, **routing))

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None,
              sink: GateSink | None = None) -> torch.Tensor:
        routing = {"sigma": sigma, "override": override, "context": context, "fei": fei, "sink": sink}
        stochastic = self._stochastic_delta(x, routing)
        if stochastic is not None:
            return stochastic
        lx, weights = self._project_and_mix(x, routing)
        return mix_and_project_up(lx, weights, self.ups, self.scale)

    def add_delta(self, output: torch.Tensor, x: torch.Tensor, strength: float = 1.0, **routing) -> torch.Tensor:
        stochastic = self._stochastic_delta(x, routing, strength, output)
        if stochastic is not None:
            return stochastic
        lx, weights = self._project_and_mix(x, routing)  # fused: no separate Δy tensor on the hot path
        return add_routed_delta(output, lx, weights, self.ups, self.scale * strength)

    def _stochastic_delta(self, x: torch.Tensor, routing: dict, strength: float = 1.0,
                          add_to: torch.Tensor | None = None) -> torch.Tensor | None:
        """Δy (``add_to + strength · Δy`` when given) under an omcd / mc_dropout override, else None."""
        finder = getattr(routing.get("override"), "element_mix", None)
        if finder is None:
            return None
        context = routing.get("context") or GateContext(layer=self.name, sigma=routing.get("sigma"))
        mix = finder(context)
        if mix is None:
            return None
        if self.router.centered:  # estimate the same direct blend a blend rule gives: Σ (w_k − 1/E) y_k
            centered = self.router.mixing_weights(torch.tensor(mix.weights, dtype=torch.float64))
            mix = replace(mix, weights=tuple(centered.tolist()))
        lx = project_down(x, self.down, self.inv_scale)
        self.gate_from_projection(lx, **{**routing, "context": context})  # recorders see the blend it estimates
        generator = mix.generator(self.name, context.extra.get("sampler_sigma"), lx.device)
        return mix.project_up(lx, self.ups.to(device=lx.device, dtype=lx.dtype), self.scale * strength, generator,
                              add_to=add_to)

    def factors(self, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if gate is None:
            raise ValueError(f"{self.name}: a routed layer needs a constant gate to become a weight")
        g = gate.to(dtype=torch.float32, device=self.ups.device).reshape(-1)
        if g.numel() != self.num_experts:
            raise ValueError(f"gate has {g.numel()} weights for {self.num_experts} experts")
        up = self.scale * torch.einsum("e,eor->or", self.router.mixing_weights(g), self.ups.float())
        return up, self.folded_down()

    def static_delta_weight(self, gate: torch.Tensor) -> torch.Tensor:
        """Exact ΔW (out, in) in fp32 for a constant gate (E,), e.g. a pinned expert."""
        return self.delta_weight(gate)

    def output_mapped(self, transform) -> ExpertLayer:
        return replace(self, ups=torch.stack([transform(up) for up in self.ups]))

    def chunk(self, index: int, parts: int, name: str) -> ExpertLayer:
        size = self.out_features // parts
        return replace(self, name=name, ups=self.ups[:, index * size:(index + 1) * size])

    def joined(self, other: AdapterLayer) -> ExpertLayer | None:
        if not (isinstance(other, ExpertLayer) and self.alpha == other.alpha and self.router == other.router
                and same_tensor(self.down, other.down) and same_tensor(self.router_weight, other.router_weight)
                and same_tensor(self.router_bias, other.router_bias)
                and same_tensor(self.inv_scale, other.inv_scale)):
            return None
        return replace(self, name=f"{self.name}+{other.name}", ups=torch.cat([self.ups, other.ups], dim=1))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ExpertLayer:
        """Copy with tensors moved; router tensors keep fp32 so the gate stays fp32."""
        return self.with_tensors(**{n: t.to(device=device, dtype=None if n in self.fp32_tensors else dtype)
                                    for n, t in self.tensors().items()})


@dataclass
class PlainLoRA(AdapterLayer):
    """An unrouted leg stored beside the experts: ``Δy = s · up down (x ⊙ inv_scale)``."""

    name: str
    down: torch.Tensor  # (r, in)
    up: torch.Tensor  # (out, r)
    alpha: float
    inv_scale: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"down": self.down, "up": self.up}
        if self.inv_scale is not None:
            out["inv_scale"] = self.inv_scale
        return out

    def factors(self, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale * self.up.float(), self.folded_down()

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None,
              sink: GateSink | None = None) -> torch.Tensor:
        lx = project_down(x, self.down, self.inv_scale)
        return (lx @ self.up.to(device=x.device, dtype=x.dtype).T) * self.scale

    def output_mapped(self, transform) -> PlainLoRA:
        return replace(self, up=transform(self.up))

    def chunk(self, index: int, parts: int, name: str) -> PlainLoRA:
        size = self.out_features // parts
        return replace(self, name=name, up=self.up[index * size:(index + 1) * size])
