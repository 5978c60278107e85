"""OMCD and MC-dropout blends: exact orthogonality, unbiasedness at the 1/√n rate, validation, runtime wiring."""

import math

import pytest
import torch

from devkit.randomize import randomize_layer_
from ortho_hydra import distill, mc_blend
from ortho_hydra.mc_blend import ElementMix
from ortho_hydra.overrides import GateRule, Keyframe, Override, OverrideStack
from ortho_hydra.routing import GateContext
from ortho_hydra.trainable import OrthoHydraLinear

W, Q = (0.8, 0.5, 1.2), (0.3, 0.25, 0.35)


def _outputs(seed: int = 0) -> torch.Tensor:
    return torch.randn(3, 2, 5, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_omcd_masks_partition_every_element_so_contributions_are_exactly_orthogonal():
    mix = ElementMix(W, Q, exclusive=True, seed=1)
    y = _outputs()
    m = mix.masks(y.shape[1:], torch.Generator().manual_seed(3))
    assert int(m.sum(0).max()) <= 1  # at most one expert per element
    contrib = y * m.double() * torch.tensor([w / q for w, q in zip(W, Q, strict=True)]).view(-1, 1, 1, 1)
    for j in range(3):
        for k in range(j + 1, 3):
            inner = (contrib[j] * contrib[k]).sum(-1)  # per token
            assert torch.count_nonzero(inner) == 0
    big = mix.masks((200_000,), torch.Generator().manual_seed(4)).double().mean(1)
    torch.testing.assert_close(big, torch.tensor(Q, dtype=torch.float64), atol=4e-3, rtol=0)


def test_mc_dropout_masks_are_independent_bernoullis():
    mix = ElementMix(W, Q, exclusive=False)
    m = mix.masks((200_000,), torch.Generator().manual_seed(5)).double()
    torch.testing.assert_close(m.mean(1), torch.tensor(Q, dtype=torch.float64), atol=4e-3, rtol=0)
    both = (m[0] * m[1]).mean()
    assert both == pytest.approx(Q[0] * Q[1], abs=4e-3)  # overlaps, as independent draws do


@pytest.mark.parametrize("exclusive", [True, False])
def test_the_mean_of_n_draws_converges_to_the_direct_blend_at_one_over_root_n(exclusive):
    mix = ElementMix(W, Q, exclusive=exclusive)
    y = _outputs(1)
    direct = (y * torch.tensor(W, dtype=torch.float64).view(-1, 1, 1, 1)).sum(0)
    gen = torch.Generator().manual_seed(7)
    ns, errors, total, count = (16, 64, 256, 1024), [], torch.zeros_like(direct), 0
    for n in ns:
        while count < n:
            total += mix.combine(y, gen)
            count += 1
        errors.append(float((total / count - direct).pow(2).mean().sqrt()))
    slope = (math.log(errors[-1]) - math.log(errors[0])) / (math.log(ns[-1]) - math.log(ns[0]))
    assert -0.65 < slope < -0.35, (errors, slope)


def test_bad_blends_are_refused():
    with pytest.raises(ValueError, match="sum to at most 1"):
        GateRule("omcd", weights=(1.0, 1.0), keep=(0.6, 0.6))
    GateRule("mc_dropout", weights=(1.0, 1.0), keep=(0.6, 0.6))  # independent masks need no such bound
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        GateRule("omcd", weights=(1.0, 1.0), keep=(0.0, 0.5))
    GateRule("omcd", weights=(0.0, 1.0), keep=(0.0, 0.5))  # an expert of weight 0 may be left out
    with pytest.raises(ValueError, match="one of each"):
        GateRule("omcd", weights=(1.0,), keep=(0.3, 0.3))
    with pytest.raises(ValueError, match="side 'both'"):
        Override((Keyframe(0.0, GateRule("omcd", weights=(1.0, 1.0), keep=(0.5, 0.5))),), side="positive")
    with pytest.raises(ValueError, match="needs 3 weights"):
        GateRule("omcd", weights=(1.0, 1.0), keep=(0.5, 0.5)).check(3)


def _layer():
    layer = OrthoHydraLinear(torch.randn(16, 12, generator=torch.Generator().manual_seed(0)), rank=3,
                             num_experts=3, seed=0)
    randomize_layer_(layer, torch.Generator().manual_seed(1))
    return distill(layer)


def test_the_runtime_applies_the_rule_per_element_reproducibly_and_never_folds_it():
    layer = _layer()
    stack = OverrideStack().then(Override((Keyframe(0.0, GateRule("omcd", weights=W, keep=Q, seed=9)),)))
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2))
    context = GateContext(layer=layer.name, sigma=None, extra={"sampler_sigma": 0.7})
    got = layer.delta(x, override=stack, context=context)
    lx = x @ layer.down.T
    per_expert = torch.einsum("btr,eor->ebto", lx, layer.ups) * layer.scale
    mix = ElementMix(W, Q, seed=9)
    expected = mix.combine(per_expert, mix.generator(layer.name, 0.7))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.delta(x, override=stack, context=context), got, rtol=0, atol=0)
    other_step = GateContext(layer=layer.name, sigma=None, extra={"sampler_sigma": 0.6})
    assert not torch.allclose(layer.delta(x, override=stack, context=other_step), got)
    reseeded = OverrideStack().then(Override((Keyframe(0.0, GateRule("omcd", weights=W, keep=Q, seed=10)),)))
    assert not torch.allclose(layer.delta(x, override=reseeded, context=context), got)
    assert stack.constant_gate(layer.name, 3) is None  # stochastic: stays in the hooks
    recorded = []
    layer.delta(x, override=stack, context=context, sink=lambda name, gate, ctx: recorded.append(gate))
    torch.testing.assert_close(recorded[0], torch.tensor([W, W]))  # recorders see the blend it estimates
    later = stack.then(Override((Keyframe(0.0, GateRule("pin", 1)),)))  # a later override wins: no masks
    assert later.element_mix(context) is None


@pytest.mark.parametrize(("exclusive", "keep"), [(True, Q), (True, (0.5, 0.25, 0.25)), (False, Q),
                                                  (True, (0.0, 0.6, 0.4))])
def test_every_16_bit_draw_counted_once_the_blend_is_exactly_unbiased(exclusive, keep):
    """Over all 65536 equally likely draws, E[(w_k / q_k) m_k] is w_k exactly: the rescale divides by the keep
    probability the grid realises, not the one asked for."""
    weights = (0.0, *W[1:]) if keep[0] == 0.0 else W
    mix = ElementMix(weights, keep, exclusive=exclusive)
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    bits = every if exclusive else every.expand(3, -1)
    masks = mix.masks_from_bits(bits).double()
    if exclusive:
        assert int(masks.sum(0).max()) <= 1
    expectation = masks.mean(1) * torch.tensor(mix.scales(), dtype=torch.float64)
    assert expectation.tolist() == pytest.approx(list(weights), rel=1e-15, abs=0)
    assert all(abs(a - b) <= 1 / (1 << 16) + 1e-12 for a, b in zip(mix.realised_keep(), keep, strict=True))


@pytest.mark.parametrize(("exclusive", "keep"), [(True, Q), (True, (0.5, 0.25, 0.25)), (False, Q)])
def test_the_blocked_projection_equals_the_reference_form_over_many_blocks(exclusive, keep, monkeypatch):
    """project_up works on blocks of rows and gathers one expert per element; it must equal combine() on the
    precomputed per-expert outputs with the same draws, plus the output it is added to."""
    monkeypatch.setattr(mc_blend, "_BLOCK_ELEMENTS", 7 * 96 * 4)  # 7 rows a block: 300 blocks, the last one short
    g = torch.Generator().manual_seed(11)
    lx = torch.randn(3, 700, 4, generator=g, dtype=torch.float64)
    ups = torch.randn(3, 96, 4, generator=g, dtype=torch.float64)
    output = torch.randn(3, 700, 96, generator=g, dtype=torch.float64)
    mix = ElementMix(W, keep, exclusive=exclusive, seed=3)
    per_expert = torch.einsum("btr,eor->ebto", lx, ups) * 0.7
    expected = output + 0.5 * mix.combine(per_expert, torch.Generator().manual_seed(5))
    got = mix.project_up(lx, ups, 0.7 * 0.5, torch.Generator().manual_seed(5), add_to=output)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    alone = mix.project_up(lx, ups, 0.7, torch.Generator().manual_seed(5))
    torch.testing.assert_close(alone, mix.combine(per_expert, torch.Generator().manual_seed(5)), rtol=1e-12,
                               atol=1e-12)


def test_a_keep_probability_below_the_draw_grid_is_refused():
    with pytest.raises(ValueError, match="below 1/65536"):
        GateRule("omcd", weights=(1.0, 1.0), keep=(0.5, 1e-6))
    GateRule("omcd", weights=(1.0, 0.0), keep=(0.5, 1e-6))  # harmless at weight 0
