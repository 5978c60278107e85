"""The inference form of an adapted Linear: plain Hydra (down, E ups, router)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .routing import (
    GateContext,
    GateOverride,
    RouterSpec,
    finish_gate,
    mix_and_project_up,
    project_down,
    rms_pool,
    router_logits,
    static_weight,
)


@dataclass
class ExpertLayer:
    """One routed Linear: ``Δy = s · Σ_e g_e(x, σ) up_e down (x ⊙ inv_scale)``."""

    name: str
    down: torch.Tensor  # (r, in)
    ups: torch.Tensor  # (E, out, r)
    router_weight: torch.Tensor  # (E, r + sigma_dim)
    router_bias: torch.Tensor  # (E,)
    alpha: float
    router: RouterSpec = field(default_factory=RouterSpec)
    inv_scale: torch.Tensor | None = None  # (in,)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.ups.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.ups.shape[1])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def gate_from_projection(self, lx: torch.Tensor, sigma: torch.Tensor | None = None,
                             override: GateOverride | None = None, context: GateContext | None = None,
                             fei: torch.Tensor | None = None) -> torch.Tensor:
        """Gate (B, E) fp32 from an already computed ``lx`` (lets callers share the down GEMM)."""
        logits = router_logits(rms_pool(lx), self.router_weight, self.router_bias, self.router, sigma, fei)
        if context is None:
            context = GateContext(layer=self.name, sigma=sigma)
        return finish_gate(logits, self.router, context, override)

    def gate(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
             context: GateContext | None = None, fei: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample mixing weights (B, E), after any override and centering."""
        return self.gate_from_projection(project_down(x, self.down, self.inv_scale), sigma, override, context, fei)

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None) -> torch.Tensor:
        """Δy with the shape of the wrapped Linear's output, in x's dtype."""
        lx = project_down(x, self.down, self.inv_scale)
        gate = self.gate_from_projection(lx, sigma, override, context, fei)
        return mix_and_project_up(lx, gate, self.ups, self.scale)

    def static_delta_weight(self, gate: torch.Tensor) -> torch.Tensor:
        """Exact ΔW (out, in) in fp32 for a constant gate (E,), e.g. a pinned expert."""
        return static_weight(gate, self.ups, self.down, self.scale, self.inv_scale, self.router.centered)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ExpertLayer:
        """Copy with tensors moved; router tensors keep fp32 so the gate stays fp32."""
        def mv(t: torch.Tensor | None, keep_fp32: bool = False) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=None if keep_fp32 else dtype)
        return ExpertLayer(self.name, mv(self.down), mv(self.ups), mv(self.router_weight, True),
                           mv(self.router_bias, True), self.alpha, self.router, mv(self.inv_scale))


@dataclass
class PlainLoRA:
    """An unrouted leg stored beside the experts: ``Δy = s · up down (x ⊙ inv_scale)``."""

    name: str
    down: torch.Tensor  # (r, in)
    up: torch.Tensor  # (out, r)
    alpha: float
    inv_scale: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        w = self.scale * (self.up.float() @ self.down.float())
        if self.inv_scale is not None:
            w = w * self.inv_scale.float()
        return w

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        lx = project_down(x, self.down, self.inv_scale)
        return (lx @ self.up.to(device=x.device, dtype=x.dtype).T) * self.scale
