"""How much of an adapter's effect survives being folded into a weight that is stored on a coarse grid.

Folding a constant gate writes ``W + ΔW`` back in the weight's storage format.  In fp32 that is exact; in 16-bit
floats the host rounds to nearest, and in fp8 it rounds stochastically onto a grid whose step is 1/8 to 1/16 of each
entry.  A small ΔW can then drown in the rounding.  :func:`fold_error` predicts, before anything is patched,

    ‖Q(W + ΔW) − (W + ΔW)‖_F / ‖ΔW‖_F,

the rounding's size relative to the adapter's own change.  For inputs with uncorrelated, equal-variance features
this is the expected relative error of the layer's output change, ``‖(Q(W+ΔW) − W − ΔW) x‖ / ‖ΔW x‖``.  Round to
nearest is computed exactly; stochastic rounding by its expectation, ``E[e²] = (x − lo)(hi − x)`` per entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FOLD_TOLERANCE = 0.05  # a fold must keep the adapter's effect to within 5 %

_FP8_MANTISSA = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}


@dataclass(frozen=True)
class WeightGrid:
    """How a host stores a patched weight.

    * ``exact``: fp32 (or wider); the fold is exact.
    * ``nearest``: ``dtype`` (fp16 / bf16), rounded to nearest.
    * ``stochastic``: ``dtype`` (fp8 e4m3 / e5m2) times a per-tensor scale, rounded stochastically.  ``scale``
      None: the host re-derives it as the patched weight's amax over the format's largest value (comfy-kitchen's
      layouts); a number: the host keeps that scale (0.3.x's scaled-fp8 ops), so entries beyond it clip.
    * ``unknown``: a layout whose rounding we cannot predict (packed integers, block scales): never folded.
    """

    kind: str
    dtype: torch.dtype | None = None
    label: str = ""
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "nearest", "stochastic", "unknown"):
            raise ValueError(f"unknown weight grid kind {self.kind!r}")
        if self.kind == "stochastic" and self.dtype not in _FP8_MANTISSA:
            raise ValueError(f"stochastic rounding is modelled for fp8 only, not {self.dtype}")


def fp8_grid_bounds(values: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The neighbouring fp8 values ``lo <= v <= hi`` of each value (already divided by the scale), in fp64."""
    info = torch.finfo(dtype)
    mantissa = _FP8_MANTISSA[dtype]
    v = values.double().clamp(-info.max, info.max)
    magnitude = v.abs()
    min_normal_exponent = math.log2(info.smallest_normal)
    exponent = torch.floor(torch.log2(magnitude.clamp_min(info.smallest_normal))).clamp_min(min_normal_exponent)
    step = torch.pow(2.0, exponent - mantissa)
    lo_mag = torch.floor(magnitude / step) * step
    hi_mag = torch.where(lo_mag == magnitude, lo_mag, lo_mag + step)
    lo = torch.where(v < 0, -hi_mag, lo_mag)
    hi = torch.where(v < 0, -lo_mag, hi_mag)
    return lo, hi


def fold_error(weight: torch.Tensor, delta: torch.Tensor, grid: WeightGrid) -> float:
    """Predicted ``‖Q(W + ΔW) − (W + ΔW)‖ / ‖ΔW‖`` for folding ``delta`` into ``weight`` (both dequantised)."""
    if weight.shape != delta.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and delta {tuple(delta.shape)} differ in shape")
    delta_norm = float(delta.double().norm())
    if grid.kind == "exact":
        return 0.0
    if grid.kind == "unknown":
        return math.inf
    if delta_norm == 0.0:
        return 0.0
    target = weight.double() + delta.double()
    if grid.kind == "nearest":
        error_sq = float((target.to(grid.dtype).double() - target).pow(2).sum())
    else:
        largest = torch.finfo(grid.dtype).max
        scale = grid.scale if grid.scale is not None else (float(target.abs().max()) / largest or 1.0)
        scaled = target / scale
        clipped = scaled.clamp(-largest, largest)
        lo, hi = fp8_grid_bounds(clipped, grid.dtype)
        rounding = ((clipped - lo) * (hi - clipped)).clamp_min(0).sum()
        error_sq = float(rounding + (scaled - clipped).pow(2).sum()) * scale**2
    return math.sqrt(error_sq) / delta_norm
