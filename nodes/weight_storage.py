"""How a ComfyUI Linear stores its weight: the dequantised values and the grid a patched weight is written back on.

ComfyUI stores weights as plain tensors (fp32 / fp16 / bf16), as fp8 with a per-tensor ``scale_weight`` (0.3.x's
scaled-fp8 ops), or as a ``QuantizedTensor`` with a named layout (mixed-precision ops; comfy-kitchen's on newer
hosts).  A patched fp8 weight is re-quantised with stochastic rounding; other quantised layouts (block-scaled fp8,
nvfp4, int8, int4) round in ways this pack does not model, so a constant gate is never folded into them.
"""

from __future__ import annotations

import torch

from ortho_hydra.fold_error import WeightGrid

_PER_TENSOR_FP8_LAYOUTS = ("TensorCoreFP8Layout", "TensorCoreFP8E4M3Layout", "TensorCoreFP8E5M2Layout")
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_quantized_tensor(tensor) -> bool:
    """ComfyUI's ``QuantizedTensor`` (its own class on 0.3.x, comfy-kitchen's later), by duck type: both hold the
    packed data in ``_qdata``; a plain tensor's ``dequantize`` is a no-op, so that method alone says nothing."""
    return hasattr(tensor, "_qdata") and callable(getattr(tensor, "dequantize", None))


def layout_name(module) -> str:
    """The module's quantisation layout (``TensorCoreFP8E4M3Layout``, ``TensorCoreNVFP4Layout`` …) or ``""``."""
    layout = getattr(module, "layout_type", None) or getattr(module.weight, "layout_type", None)
    return layout if isinstance(layout, str) else getattr(layout, "__name__", str(layout or ""))


def stored_weight(module) -> tuple[torch.Tensor, WeightGrid]:
    """(the weight's values in fp32 as the Linear computes with them, the grid a folded patch is written on)."""
    weight = module.weight
    data = weight if is_quantized_tensor(weight) else getattr(weight, "data", weight)
    if is_quantized_tensor(data):
        layout = layout_name(module)
        storage = data._qdata.dtype
        values = data.dequantize().float()
        if layout in _PER_TENSOR_FP8_LAYOUTS and storage in FP8:
            return values, WeightGrid("stochastic", storage, f"{layout} ({storage})")
        return values, WeightGrid("unknown", None, f"{layout or type(data).__name__} ({storage})")
    if data.dtype in FP8:
        scale = getattr(module, "scale_weight", None)
        scale = float(scale) if scale is not None else 1.0
        values = data.float() * scale
        return values, WeightGrid("stochastic", data.dtype, f"scaled {data.dtype}", scale=scale)  # the scale is kept
    if data.dtype in (torch.float16, torch.bfloat16):
        return data.float(), WeightGrid("nearest", data.dtype, str(data.dtype))
    if data.dtype in (torch.float32, torch.float64) and data.ndim == 2:
        return data.float(), WeightGrid("exact", data.dtype, str(data.dtype))
    return data.float(), WeightGrid("unknown", None, f"{type(module).__name__} storing {data.dtype}")
