"""Constant gates as ordinary LoRA: the exact weight change for folding and for export.

For a Linear whose legs all have constant gates, ΔW = Σ_legs s · (Σ_e g_e up_e) down (⊙ inv_scale), placed in
each leg's output slice.  Stacking the legs gives one LoRA of rank Σ r_leg with ``up`` (out, R) zero outside each
slice and ``down`` (R, in): exact, no SVD, loadable by any LoRA runtime with alpha = R (scale 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import OrthoHydraError
from .lora_dict import kohya_name, lora_state_dict
from .targets import PatchPlan, Target


def target_lora(target: Target, gates: Mapping[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, R), down (R, in)) whose product is the target's exact ΔW for the given per-layer gates."""
    ups, downs = [], []
    for leg in target.legs:
        up, down = leg.layer.factors(gates.get(leg.layer.name))
        size = leg.size if leg.size is not None else target.out_features
        full = torch.zeros(target.out_features, up.shape[1])
        full[leg.offset:leg.offset + size] = up
        ups.append(full)
        downs.append(down)
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def plan_factors(plan: PatchPlan, gates: Mapping[str, torch.Tensor | None],
                 targets: list[Target] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{kohya name: (up, down)}`` for ``targets`` (default: all), every routed leg at its constant gate."""
    chosen = list(plan.targets.values()) if targets is None else targets
    live = [leg.layer.name for target in chosen for leg in target.legs
            if leg.layer.routed and gates.get(leg.layer.name) is None]
    if live:
        raise OrthoHydraError(f"{len(live)} routed layers have no constant gate (e.g. {live[0]}); only pinned, "
                              "blended or profile gates without a schedule can be baked into a plain LoRA.",
                              key=live[0], fix="pin, blend or apply a style profile to every layer, with no "
                                               "schedule and both conditioning sides, then bake")
    return {kohya_name(target.module): target_lora(target, gates) for target in chosen}


def baked_lora(plan: PatchPlan, gates: Mapping[str, torch.Tensor | None],
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A standard LoRA state dict (``lora_up`` / ``lora_down`` / ``alpha``) for fully constant gates."""
    return lora_state_dict(plan_factors(plan, gates), dtype)
