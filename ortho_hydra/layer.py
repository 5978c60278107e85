"""The one interface every adapter layer kind implements, so planning, baking and hooks never branch on type.

A layer writes ``Δy = s · up(g) · down(x ⊙ inv_scale)`` into some Linear's output.  Routed kinds mix E ups with a
per-sample gate ``g``; plain kinds have one ``up`` and ignore the gate.  New kinds (merged LoRA stacks, transferred
adapters) add a class (and a registry entry in ``moe_format``) and nothing else changes; what a kind cannot do it
declares in ``refusals`` (:mod:`.kind`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

import torch

from .kind import Kind
from .routing import GateContext, GateOverride, project_down, rms_pool

# Called with (layer name, routing distribution (B, E), context) each time a routed layer computes its gate.
GateSink = Callable[[str, torch.Tensor, GateContext], None]


class AdapterLayer(Kind):
    """Behaviour shared by all layer kinds; subclasses are dataclasses holding the tensors."""

    name: str
    down: torch.Tensor  # (r, in)
    alpha: float
    inv_scale: torch.Tensor | None
    fp32_tensors: ClassVar[tuple[str, ...]] = ()  # tensors kept in fp32 whatever the compute dtype (router)
    out_tensors: ClassVar[tuple[str, ...]] = ()  # tensors whose second-to-last axis is the output axis

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(getattr(self, self.out_tensors[0]).shape[-2])

    @property
    def num_experts(self) -> int:
        return 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the layer computes with, by field name (what a host moves between devices)."""
        raise NotImplementedError

    def with_tensors(self, **tensors: torch.Tensor) -> AdapterLayer:
        """A copy computing with these tensors (same names as :meth:`tensors`)."""
        return replace(self, **tensors)

    def router_nets(self) -> dict[str, object]:
        """Network-level routers this layer computes with (shared by many layers, so not in :meth:`tensors`), by
        role; each has ``tensors()`` / ``with_tensors()`` so a host can place them once.  None by default."""
        return {}

    def with_router_nets(self, **nets) -> AdapterLayer:
        """A copy computing with these router nets (same roles as :meth:`router_nets`)."""
        if nets:
            raise ValueError(f"{self.name} has no router nets ({', '.join(nets)})")
        return self

    def module_routers(self) -> dict[str, object]:
        """Routers that read another module's output once per model call (not this Linear's input), by role.  Each
        has ``module`` (the path it reads), ``state_key`` (where its gate waits for the layers of the call), ``net``
        and ``with_net(net)`` (its fp32 MLP, placed once), ``gate(output)``, and ``missing_module(architecture,
        path)`` (the error for a model without that module).  None by default."""
        return {}

    def factors(self, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``(up (out, r), down (r, in))`` with scale, the constant gate (E,) and inv_scale folded in."""
        raise NotImplementedError

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``lx = (x ⊙ inv_scale) downᵀ`` (…, r) in x's dtype: what the ups (and a router) read."""
        return project_down(x, self.down, self.inv_scale)

    def folded_down(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The down projection with ``inv_scale`` folded into its columns (what multiplies x), in ``dtype``."""
        down = self.down.to(dtype)
        return down if self.inv_scale is None else down * self.inv_scale.to(dtype=dtype, device=down.device)

    def delta_weight(self, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Exact fp32 ΔW (out, in) for a constant gate (ignored by plain layers)."""
        up, down = self.factors(gate)
        return up @ down

    def delta_weight_norm(self, gate: torch.Tensor | None = None) -> float:
        """‖ΔW‖_F for a constant gate from r x r Gram matrices, without forming the (out, in) ΔW (fp64)."""
        up, down = (t.double() for t in self.factors(gate))
        return float(torch.trace((up.T @ up) @ (down @ down.T)).clamp_min(0.0).sqrt())

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None,
              sink: GateSink | None = None) -> torch.Tensor:
        """Δy with the Linear's output shape, in x's dtype; routing arguments are ignored by plain layers."""
        raise NotImplementedError

    def add_delta(self, output: torch.Tensor, x: torch.Tensor, strength: float = 1.0, **routing) -> torch.Tensor:
        """``output + strength · Δy``; kinds with a fused kernel override this."""
        return output + strength * self.delta(x, **routing).to(output.dtype)

    def chunk(self, index: int, parts: int, name: str) -> AdapterLayer:
        """The ``index``-th of ``parts`` equal output chunks (a fused file on a split model)."""
        size = self.out_features // parts
        rows = slice(index * size, (index + 1) * size)
        return replace(self, name=name, **{n: getattr(self, n)[..., rows, :] for n in self.out_tensors})

    def output_mapped(self, transform) -> AdapterLayer:
        """A copy whose output rows go through ``transform`` (a row map of an (out, ·) tensor, e.g. ComfyUI's
        ``swap_scale_shift``), so ΔW becomes ``transform(ΔW)``."""
        return replace(self, **{n: _map_rows(getattr(self, n), transform) for n in self.out_tensors})

    def transferred(self, down: torch.Tensor, up_map) -> AdapterLayer:
        """A copy computing with ``down`` (r, in), inv_scale already folded in, and every up through ``up_map``
        (an (out, r) -> (out, r) map): the factors of a transfer onto another base model's subspaces."""
        return replace(self, down=down.to(self.down.dtype), inv_scale=None,
                       **{n: _map_rows(getattr(self, n), up_map).to(getattr(self, n).dtype) for n in self.out_tensors})

    def joined(self, other: AdapterLayer) -> AdapterLayer | None:
        """One layer writing self's outputs then other's, when both share their input side; else None."""
        return None


class RoutedLayer(AdapterLayer):
    """What the routed kinds share: E expert ups (E, out, r) mixed by a per-sample gate, an fp32 router."""

    ups: torch.Tensor  # (E, out, r)
    routed: ClassVar[bool] = True
    fp32_tensors: ClassVar[tuple[str, ...]] = ("router_weight", "router_bias")
    out_tensors: ClassVar[tuple[str, ...]] = ("ups",)

    @property
    def num_experts(self) -> int:
        return int(self.ups.shape[0])

    def router_input(self, x: torch.Tensor) -> torch.Tensor:
        """The features (B, r) fp32 this layer's router reads from x, before any σ / FEI columns: the RMS-pooled
        projection, ``inv_scale`` included.  Fitting, calibration and live routing all read it here."""
        return rms_pool(self.project(x))

    def constant_gate(self, gate: torch.Tensor | None) -> torch.Tensor:
        """A constant gate (E,) as fp32 on the ups' device, or an error saying why it cannot be one."""
        if gate is None:
            raise ValueError(f"{self.name}: a routed layer needs a constant gate to become a weight")
        g = gate.to(dtype=torch.float32, device=self.ups.device).reshape(-1)
        if g.numel() != self.num_experts:
            raise ValueError(f"gate has {g.numel()} weights for {self.num_experts} experts")
        return g

    def static_delta_weight(self, gate: torch.Tensor) -> torch.Tensor:
        """Exact ΔW (out, in) in fp32 for a constant gate (E,), e.g. a pinned expert."""
        return self.delta_weight(gate)


def _map_rows(tensor: torch.Tensor, transform) -> torch.Tensor:
    """``transform`` of an (out, ·) tensor, or of each expert's of an (E, out, ·) stack."""
    return transform(tensor) if tensor.ndim == 2 else torch.stack([transform(t) for t in tensor])


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b))
