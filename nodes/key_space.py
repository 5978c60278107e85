"""What a ComfyUI model offers an adapter: its key map, its Linears' shapes and its fused q/k/v row layouts.

One place reads them from the host, so the planner, the expert bank and the transfer see the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import comfy.lora

from ortho_hydra.targets import FusedLayout, PatchPlan, plan

_HEADS = ("n_local_heads", "n_heads", "num_heads", "heads")
_KV_HEADS = ("n_local_kv_heads", "n_kv_heads", "num_kv_heads", "num_key_value_heads")
_FUSED_CHILDREN = ("qkv", "qkv_proj")


@dataclass(frozen=True)
class KeySpace:
    key_map: Mapping
    shapes: Mapping[str, tuple[int, ...]]
    fused_layouts: Mapping[str, FusedLayout]

    def plan(self, layers: Mapping) -> PatchPlan:
        return plan(layers, self.key_map, self.shapes, self.fused_layouts)


def key_space(model) -> KeySpace:
    return KeySpace(comfy.lora.model_lora_keys_unet(model.model, {}), weight_shapes(model), fused_qkv_layouts(model))


def weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Each weight's logical (out, in) shape, read from the live modules where they say it.

    Quantised Linears (city96's GGUF, for one) keep packed storage in ``weight``, so the state dict reports the
    storage's shape; their ``in_features`` / ``out_features`` still give the shape the layer computes with.
    """
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items() if k.endswith(".weight")}
    for name, module in model.model.named_modules():
        out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
        if isinstance(out_f, int) and isinstance(in_f, int) and f"{name}.weight" in shapes:
            shapes[f"{name}.weight"] = (out_f, in_f)
    return shapes


def _first_int(module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def fused_qkv_layouts(model) -> dict[str, FusedLayout]:
    """``{weight key: {"q": (row, rows), "k": …, "v": …}}`` for every fused q/k/v Linear whose attention module
    states its head counts.  Grouped-query attention (Lumina 2: 24 query heads, 8 key/value heads) gives q more
    rows than k and v, which equal thirds or a key map written for equal heads would misplace."""
    layouts = {}
    for name, module in model.model.named_modules():
        heads = _first_int(module, _HEADS)
        if heads is None:
            continue
        kv_heads = _first_int(module, _KV_HEADS) or heads
        for child_name in _FUSED_CHILDREN:
            rows = getattr(getattr(module, child_name, None), "out_features", None)
            if not isinstance(rows, int):
                continue
            head_dim = _first_int(module, ("head_dim",)) or rows // (heads + 2 * kv_heads)
            if (heads + 2 * kv_heads) * head_dim != rows:
                continue  # not a plain q/k/v stack (a fused MLP too, say): no layout claimed
            q, kv = heads * head_dim, kv_heads * head_dim
            layouts[f"{name}.{child_name}.weight"] = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}
    return layouts
