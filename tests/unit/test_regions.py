"""Regional experts: masks onto token grids, and the per-token blend against a gate-per-token closed form (fp64)."""

import itertools

import pytest
import torch
from factories import trained_layer

from ortho_hydra import OrthoHydraError, distill
from ortho_hydra.regions import (
    TokenGrid,
    blend_regions,
    feather,
    mask_on_grid,
    regional_delta,
    token_coverage,
)
from ortho_hydra.routing import rms_pool, router_logits


def pin(expert: int):
    def override(logits, context):
        return torch.nn.functional.one_hot(torch.tensor(expert), logits.shape[-1]).expand_as(logits).float()
    return override


def test_a_token_is_covered_by_the_mean_of_the_mask_over_its_pixels():
    g = torch.Generator().manual_seed(0)
    grid = TokenGrid(frames=1, height=4, width=6)
    half = torch.zeros(8, 12)
    half[:, :6] = 1
    expected = torch.zeros(1, 4, 6)
    expected[..., :3] = 1
    assert torch.equal(mask_on_grid(half, grid), expected)
    soft = torch.rand(8, 12, generator=g, dtype=torch.float64)
    by_blocks = soft.reshape(4, 2, 6, 2).mean(dim=(1, 3))  # each token spans 2 x 2 pixels
    torch.testing.assert_close(mask_on_grid(soft, grid)[0].double(), by_blocks, rtol=1e-6, atol=1e-7)
    for value in (0.0, 1.0):
        assert torch.equal(mask_on_grid(torch.full((13, 17), value), grid), torch.full((1, 4, 6), value))


def test_video_masks_are_one_for_all_frames_or_one_per_frame():
    grid = TokenGrid(frames=3, height=2, width=2)
    one = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(mask_on_grid(one, grid), one.expand(3, 2, 2))
    per_frame = torch.stack([one * f / 2 for f in range(3)])
    assert torch.equal(mask_on_grid(per_frame, grid), per_frame)
    with pytest.raises(OrthoHydraError, match="2 frames") as err:
        mask_on_grid(per_frame[:2], grid)
    assert err.value.key == "mask"


def test_text_rows_of_a_joint_sequence_keep_the_outside_gate():
    grid = TokenGrid(frames=1, height=2, width=3, text_before=4, text_after=1)
    coverage = token_coverage(torch.ones(4, 6), grid, (2, 11, 64))
    assert coverage.shape == (grid.length, 1) == (11, 1)
    assert coverage[:4].sum() == 0 and coverage[-1].sum() == 0 and torch.equal(coverage[4:10], torch.ones(6, 1))
    assert token_coverage(torch.ones(4, 6), grid, (2, 6, 64)) is None  # not this grid's rows: text or per sample
    assert token_coverage(torch.ones(4, 6), grid, (2, 64)) is None
    video = TokenGrid(frames=2, height=2, width=3)
    mask = torch.rand(2, 4, 6, generator=torch.Generator().manual_seed(0))
    as_axes = token_coverage(mask, video, (1, 2, 2, 3, 64))  # Cosmos keeps (B, T, H, W, D) in its MLPs
    as_rows = token_coverage(mask, video, (1, 12, 64))  # and flattens (t h w) for attention
    assert as_axes.shape == (2, 2, 3, 1) and torch.equal(as_axes.reshape(-1, 1), as_rows)


def test_feathering_keeps_complementary_masks_complementary():
    mask = torch.zeros(16, 16, dtype=torch.float64)
    mask[:, :7] = 1
    soft = feather(mask, radius=4)
    assert torch.equal(feather(mask, 0), mask)
    torch.testing.assert_close(soft + feather(1 - mask, radius=4), torch.ones_like(mask))  # a linear filter of 1
    assert 0 <= soft.min() and soft.max() <= 1 and 0 < soft[0, 7] < 1 and soft[0, 0] == pytest.approx(1)
    row = soft[5]
    assert all(a >= b for a, b in itertools.pairwise(row.tolist()))  # still falls from left to right


@pytest.mark.parametrize("centered", [False, True])
def test_regional_delta_is_a_gate_per_token(centered):
    """Δy_l = s · Σ_e g_l,e up_e down x_l with g_l = m_l · (pinned gate) + (1 − m_l) · (live gate), in fp64."""
    layer = distill(trained_layer(experts=3, seed=4, centered_gate=centered))
    g = torch.Generator().manual_seed(1)
    grid = TokenGrid(frames=1, height=3, width=4, text_before=2)
    x = torch.randn(2, grid.length, layer.down.shape[1], generator=g)
    mask = torch.rand(6, 8, generator=g)
    coverage = token_coverage(mask, grid, x.shape)
    got = regional_delta(layer, x, coverage, {"override": pin(2)}, {})

    x64 = x.double()
    lx = x64 @ layer.down.double().T
    live = torch.softmax(router_logits(rms_pool(lx), layer.router_weight.double(), layer.router_bias.double(),
                                       layer.router, None, None), -1)  # (B, E), per sample
    pinned = torch.zeros_like(live)
    pinned[:, 2] = 1
    m = coverage.double().reshape(1, -1, 1)
    per_token = m * pinned[:, None, :] + (1 - m) * live[:, None, :]  # (B, L, E)
    if centered:
        per_token = per_token - 1 / 3
    expected = layer.scale * torch.einsum("ble,eor,blr->blo", per_token, layer.ups.double(), lx)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
    assert float((expected[:, 2:] - expected[:, 2:].mean(1, keepdim=True)).abs().max()) > 1e-3  # tokens differ


def test_a_full_mask_is_the_inside_rule_and_an_empty_one_the_outside_rule():
    layer = distill(trained_layer(experts=3, seed=2))
    x = torch.randn(1, 12, layer.down.shape[1], generator=torch.Generator().manual_seed(3))
    grid = TokenGrid(frames=1, height=3, width=4)
    inside, outside = layer.delta(x, override=pin(1)), layer.delta(x)
    full, empty = (token_coverage(torch.full((3, 4), v), grid, x.shape) for v in (1.0, 0.0))
    assert torch.equal(regional_delta(layer, x, full, {"override": pin(1)}, {}), inside)
    assert torch.equal(regional_delta(layer, x, empty, {"override": pin(1)}, {}), outside)
    assert torch.equal(blend_regions(inside, outside, torch.full((12, 1), 0.5)), (inside + outside) * 0.5)
