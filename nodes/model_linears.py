"""Which of a ComfyUI model's Linears can be adapted, named as LoRA files name them: the one selection."""

from __future__ import annotations

import re

import comfy.lora
import torch

from ortho_hydra import OrthoHydraError
from ortho_hydra.layer_groups import GROUPS, in_group

from .key_space import weight_shapes
from .weight_storage import FP8, is_quantized_tensor, stored_weight

TARGETS = (*GROUPS, "all_linear", "regex")
_MODULATION = re.compile(r"adaln|modulation", re.IGNORECASE)  # conditioning pathways, never adapted


def _logical_weight(model, key: str, stored: torch.Tensor) -> torch.Tensor:
    """The weight as the Linear computes with it: quantised storage (fp8 with a scale, packed QuantizedTensor
    layouts whose state dict holds packed bytes) is dequantised, one Linear at a time; plain weights are returned
    as stored, uncopied."""
    module = model.model.get_submodule(key[: -len(".weight")])
    weight = getattr(module, "weight", stored)
    if is_quantized_tensor(weight) or is_quantized_tensor(getattr(weight, "data", None)) or stored.dtype in FP8:
        return stored_weight(module)[0]
    return stored


def adaptable_linears(model, targets: str = "all_linear", regex: str = "",
                      names: list[str] | None = None) -> dict[str, tuple[str, torch.Tensor]]:
    """``{lora_unet_* prefix: (module path, W0)}`` through ComfyUI's own key map (any DiT it supports)."""
    if targets not in TARGETS:
        raise OrthoHydraError(f"unknown targets {targets!r}.", key="targets", fix=f"pick one of {', '.join(TARGETS)}")
    try:
        pattern = re.compile(regex) if targets == "regex" else None
    except re.error as exc:
        raise OrthoHydraError(f"invalid target regex {regex!r}: {exc}.", key="target_regex",
                              fix="write a Python regex matched against lora_unet_* layer names") from exc
    sd = model.model.state_dict()
    shapes = weight_shapes(model)
    out = {}
    for name, key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
        if not name.startswith("lora_unet_") or not isinstance(key, str) or key not in sd or len(shapes[key]) != 2:
            continue
        if names is not None and name not in names:
            continue
        short = name[len("lora_unet_"):]
        if _MODULATION.search(short):
            continue
        if targets in GROUPS and not in_group(short, targets):
            continue
        if pattern is not None and not pattern.search(short):
            continue
        out[name] = (key[: -len(".weight")], _logical_weight(model, key, sd[key]))
    if not out:
        raise OrthoHydraError(f"no Linear layer of this model matches the targets ({targets} {regex!r}).",
                              key="targets", fix=f"pick one of {', '.join(TARGETS)}, or a regex that matches")
    return out
