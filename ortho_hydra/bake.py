"""Constant gates as ordinary LoRA: the exact weight change for folding and for export.

For a Linear whose legs all have constant gates, ΔW = Σ_legs s · (Σ_e g_e up_e) down (⊙ inv_scale), placed in
each leg's output slice.  Stacking the legs gives one LoRA of rank Σ r_leg with ``up`` (out, R) zero outside each
slice and ``down`` (R, in): exact, no SVD, loadable by any LoRA runtime with alpha = R (scale 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import OrthoHydraError
from .runtime import ExpertLayer, PlainLoRA
from .targets import PatchPlan, Target


def leg_factors(layer: ExpertLayer | PlainLoRA, gate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, r) with scale and gate folded in, down (r, in) with inv_scale folded in), fp32."""
    if isinstance(layer, ExpertLayer):
        g = gate.float().reshape(-1)
        if layer.router.centered:
            g = g - 1.0 / layer.num_experts
        up = layer.scale * torch.einsum("e,eor->or", g, layer.ups.float())
    else:
        up = layer.scale * layer.up.float()
    down = layer.down.float()
    if layer.inv_scale is not None:
        down = down * layer.inv_scale.float()
    return up, down


def target_lora(target: Target, gates: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, R), down (R, in)) whose product is the target's exact ΔW for the given per-layer gates."""
    ups, downs = [], []
    for leg in target.legs:
        up, down = leg_factors(leg.layer, gates.get(leg.layer.name))
        size = leg.size if leg.size is not None else target.out_features
        full = torch.zeros(target.out_features, up.shape[1])
        full[leg.offset:leg.offset + size] = up
        ups.append(full)
        downs.append(down)
    return torch.cat(ups, dim=1), torch.cat(downs, dim=0)


def kohya_name(module: str) -> str:
    """``diffusion_model.blocks.0.mlp.layer1`` -> ``lora_unet_blocks_0_mlp_layer1`` (ComfyUI maps it back)."""
    path = module[len("diffusion_model."):] if module.startswith("diffusion_model.") else module
    return "lora_unet_" + path.replace(".", "_")


def baked_lora(plan: PatchPlan, gates: Mapping[str, torch.Tensor | None],
               dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A standard LoRA state dict (``lora_up`` / ``lora_down`` / ``alpha``) for fully constant gates."""
    live = [leg.layer.name for target in plan.targets.values() for leg in target.legs
            if isinstance(leg.layer, ExpertLayer) and gates.get(leg.layer.name) is None]
    if live:
        raise OrthoHydraError(f"{len(live)} routed layers have no constant gate (e.g. {live[0]}); only pinned, "
                              "blended or profile gates without a schedule can be baked into a plain LoRA.",
                              key=live[0], fix="pin, blend or apply a style profile to every layer, with no "
                                               "schedule and both conditioning sides, then bake")
    out: dict[str, torch.Tensor] = {}
    for target in plan.targets.values():
        up, down = target_lora(target, gates)
        name = kohya_name(target.module)
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return out
