"""The standard LoRA state dict (kohya ``lora_up`` / ``lora_down`` / ``alpha``): its one writer."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def kohya_name(module: str) -> str:
    """``diffusion_model.blocks.0.mlp.layer1`` -> ``lora_unet_blocks_0_mlp_layer1`` (ComfyUI maps it back)."""
    path = module[len("diffusion_model."):] if module.startswith("diffusion_model.") else module
    return "lora_unet_" + path.replace(".", "_")


def lora_state_dict(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """``{name: (up (out, R), down (R, in))}`` -> a LoRA state dict with alpha = R (scale 1), exact."""
    out: dict[str, torch.Tensor] = {}
    for name, (up, down) in factors.items():
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    return out
