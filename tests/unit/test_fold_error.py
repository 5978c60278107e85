"""The predicted rounding of a folded ΔW, against the fp8 value tables and closed forms."""

import math

import pytest
import torch

from ortho_hydra.fold_error import FOLD_TOLERANCE, WeightGrid, fold_error, fp8_grid_bounds


def _all_finite(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(256, dtype=torch.uint8).view(dtype).double()
    return torch.unique(values[torch.isfinite(values)])


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_grid_bounds_are_the_neighbouring_representable_values(dtype):
    table = _all_finite(dtype)
    span = float(table.abs().max())
    gen = torch.Generator().manual_seed(0)
    values = torch.cat([(torch.rand(4000, generator=gen, dtype=torch.float64) * 2 - 1) * span,
                        torch.randn(2000, generator=gen, dtype=torch.float64) * 1e-3,  # subnormals
                        table])  # exact grid points: lo == hi == the value
    lo, hi = fp8_grid_bounds(values, dtype)
    index = torch.searchsorted(table, values, right=True) - 1
    expected_lo = table[index.clamp(0, len(table) - 1)]
    expected_hi = torch.where(expected_lo == values, expected_lo, table[(index + 1).clamp(max=len(table) - 1)])
    assert torch.equal(lo, expected_lo) and torch.equal(hi, expected_hi)


def test_stochastic_prediction_is_the_expected_error_of_unbiased_rounding():
    """Monte Carlo over our own stochastic rounding onto the e4m3 value table (up with probability (v-lo)/(hi-lo))."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(24, 32, generator=gen, dtype=torch.float64) * 0.05
    delta = torch.randn(24, 32, generator=gen, dtype=torch.float64) * 0.01
    predicted = fold_error(weight, delta, WeightGrid("stochastic", torch.float8_e4m3fn))
    target = weight + delta
    scale = float(target.abs().max()) / 448.0
    lo, hi = fp8_grid_bounds(target / scale, torch.float8_e4m3fn)
    up = (target / scale - lo) / (hi - lo).clamp_min(1e-300)
    draws = 4000
    error_sq = 0.0
    for _ in range(draws):
        rounded = torch.where(torch.rand(target.shape, generator=gen, dtype=torch.float64) < up, hi, lo) * scale
        error_sq += float((rounded - target).pow(2).sum()) / draws
    assert predicted == pytest.approx(math.sqrt(error_sq) / float(delta.norm()), rel=0.02)
    assert predicted > FOLD_TOLERANCE  # a ΔW a fifth of W's size drowns in fp8's 3 mantissa bits


def test_round_to_nearest_drops_a_delta_below_half_a_step_and_keeps_a_whole_step():
    weight = torch.tensor([[1.0, -1.5], [0.75, 3.0]], dtype=torch.float64)  # all on the bf16 grid
    step = torch.tensor([[2.0**-7, 2.0**-7], [2.0**-8, 2.0**-6]], dtype=torch.float64)  # one bf16 ulp of each
    grid = WeightGrid("nearest", torch.bfloat16)
    assert fold_error(weight, 0.25 * step, grid) == pytest.approx(1.0)  # rounds back to W: the whole effect lost
    assert fold_error(weight, step, grid) == 0.0  # lands on the next grid value exactly
    assert fold_error(weight, torch.zeros_like(weight), grid) == 0.0


def test_exact_and_unknown_grids_and_bad_shapes():
    weight, delta = torch.randn(3, 4), torch.randn(3, 4)
    assert fold_error(weight, delta, WeightGrid("exact", torch.float32)) == 0.0
    assert fold_error(weight, delta, WeightGrid("unknown", None, "TensorCoreNVFP4Layout")) == math.inf
    with pytest.raises(ValueError, match=r"weight \(3, 4\) and delta \(4, 3\)"):
        fold_error(weight, delta.T, WeightGrid("exact"))
    with pytest.raises(ValueError, match="fp8 only"):
        WeightGrid("stochastic", torch.bfloat16)


def test_a_kept_scale_clips_what_grows_past_the_formats_largest_value():
    weight = torch.tensor([[400.0, -8.0]], dtype=torch.float64)  # scale 1: 400 and -8 are e4m3 values
    delta = torch.tensor([[100.0, 0.0]], dtype=torch.float64)  # 500 clips to 448
    kept = fold_error(weight, delta, WeightGrid("stochastic", torch.float8_e4m3fn, scale=1.0))
    assert kept == pytest.approx(52.0 / 100.0)  # 500 - 448, no rounding left at the clip
    rescaled = fold_error(weight, delta, WeightGrid("stochastic", torch.float8_e4m3fn))
    assert rescaled < kept  # a host that re-derives the scale fits 500 (as 448 x 500/448) and -8 rounds
