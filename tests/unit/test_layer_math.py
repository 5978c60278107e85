import math

import pytest
import torch
from reference_math import training_delta64, training_gate64

from devkit.randomize import randomize_layer_
from ortho_hydra import OrthoHydraLinear, distill
from ortho_hydra.routing import rms_pool


def _weight(out=48, inn=40, seed=0):
    return torch.randn(out, inn, generator=torch.Generator().manual_seed(seed))


def _randomize(layer: OrthoHydraLinear, seed: int = 1) -> None:
    randomize_layer_(layer, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("init", ["ortho", "zero"])
def test_delta_is_exactly_zero_at_init(init):
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=3, init=init)
    x = torch.randn(3, 7, 40)
    assert torch.count_nonzero(layer.delta(x)) == 0


def test_centered_gate_delta_is_zero_at_init_with_nonzero_lambda():
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=3, centered_gate=True, centered_lambda_init=0.05)
    assert torch.all(layer.lam != 0)
    assert torch.count_nonzero(layer.delta(torch.randn(2, 5, 40))) == 0


def test_published_jitter_draws_each_up_iid():
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=4, init="jitter", jitter_std=0.1, seed=3)
    ups = layer.ups.detach()
    expected = torch.randn(4, *ups.shape[1:], generator=_generator_after_down(layer, seed=3)) * 0.1
    torch.testing.assert_close(ups, expected, rtol=0, atol=0)
    assert ups.sum(0).abs().max() > 0.05  # not zero-sum: ΔW at the uniform gate is not 0


def _generator_after_down(layer, seed: int) -> torch.Generator:
    gen = torch.Generator().manual_seed(seed)
    torch.empty(layer.down.shape).uniform_(-1, 1, generator=gen)  # the down's draw comes first
    return gen


def test_ortho_init_starts_on_the_disjoint_slices_with_zero_delta_and_trains_the_bases():
    weight = _weight()
    fixed = OrthoHydraLinear(weight, rank=4, num_experts=3, init="ortho", seed=2)
    free = OrthoHydraLinear(weight, rank=4, num_experts=3, init="ortho_init", seed=2)
    torch.testing.assert_close(free.down.detach(), fixed.in_basis, rtol=0, atol=0)
    torch.testing.assert_close(free.ups.detach(), fixed.out_bases, rtol=0, atol=0)
    x = torch.randn(2, 5, 40, dtype=torch.float32)
    assert torch.count_nonzero(free.delta(x)) == 0  # λ = 0
    with torch.no_grad():
        free.lam.copy_(torch.linspace(0.1, 0.4, 4))
        free.down.add_(0.01 * torch.randn_like(free.down))
    down, ups = free.factors()
    torch.testing.assert_close(down, free.down.detach(), rtol=0, atol=0)
    torch.testing.assert_close(ups, free.ups.detach() * free.lam.detach(), rtol=0, atol=0)
    free.delta(x).square().sum().backward()
    assert free.down.grad.abs().max() > 0 and free.ups.grad.abs().max() > 0  # the bases themselves train


def test_zero_sum_jitter_experts_differ_but_sum_to_zero_so_uniform_gate_delta_is_zero():
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=4, init="jitter_zero_sum", jitter_std=0.1)
    ups = layer.ups.detach()
    assert (ups[0] - ups[1]).abs().max() > 0.05  # symmetry is broken
    assert ups.sum(0).abs().max() < 1e-6
    assert ups.std().item() == pytest.approx(0.1, rel=0.05)
    runtime = distill(layer)
    assert runtime.static_delta_weight(torch.full((4,), 0.25)).abs().max() < 1e-7


def test_distilled_runtime_matches_fp64_closed_form():
    layer = OrthoHydraLinear(_weight(), rank=5, num_experts=3, alpha=7.0)
    _randomize(layer)
    runtime = distill(layer)
    x = torch.randn(4, 9, 40)
    expected = training_delta64(layer, x)
    got = runtime.delta(x)
    assert got.dtype == torch.float32
    rel = (got.double() - expected).norm() / expected.norm()
    assert rel < 2e-6, rel
    gates = runtime.gate(x).double()
    assert torch.allclose(gates, training_gate64(layer, x), atol=1e-6)
    assert gates.std(0).max() > 1e-3  # rows route differently, so the test is not vacuous
    assert torch.allclose(layer.delta(x), got, atol=1e-6)


def test_static_delta_weight_equals_closed_form_and_live_delta_for_constant_gate():
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=3)
    _randomize(layer, seed=5)
    runtime = distill(layer)
    gate = torch.tensor([0.2, 0.5, 0.3])
    w = runtime.static_delta_weight(gate).double()
    closed = runtime.scale * sum(gate[e].double() * runtime.ups[e].double() for e in range(3)) @ runtime.down.double()
    assert torch.allclose(w, closed, atol=1e-6)
    x = torch.randn(2, 6, 40)
    live = runtime.delta(x, override=lambda logits, ctx: gate.expand(logits.shape[0], -1))
    assert torch.allclose(live.double(), x.double() @ w.T, atol=1e-5)


def test_rms_pool_definition():
    lx = torch.randn(2, 11, 3)
    assert torch.allclose(rms_pool(lx), torch.sqrt((lx**2).mean(1)))
    assert torch.allclose(rms_pool(lx[:, 0]), lx[:, 0].abs())  # (B, r) input: one token


def test_router_gradient_is_exactly_zero_at_step_zero_for_hydra_zero_and_ortho():
    for init in ("zero", "ortho"):
        layer = OrthoHydraLinear(_weight(), rank=4, num_experts=3, init=init)
        x = torch.randn(3, 6, 40)
        loss = (layer.delta(x) - torch.randn(3, 6, 48)).pow(2).mean()
        loss.backward()
        assert torch.count_nonzero(layer.router.weight.grad) == 0, init
        assert torch.count_nonzero(layer.router.bias.grad) == 0, init


def test_ortho_lambda_gradient_differs_per_expert_direction_at_step_zero():
    # The mechanism behind the escape: with disjoint slices each expert's output is distinct
    # once λ moves, so router gradients become expert-specific after one step.
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=3)
    x = torch.randn(3, 6, 40)
    loss = (layer.delta(x) - torch.randn(3, 6, 48)).pow(2).mean()
    loss.backward()
    assert layer.lam.grad.abs().max() > 0
    with torch.no_grad():
        layer.lam -= 0.5 * layer.lam.grad / layer.lam.grad.norm()
    layer.zero_grad()
    loss = (layer.delta(x) - torch.randn(3, 6, 48)).pow(2).mean()
    loss.backward()
    grad = layer.router.weight.grad
    assert grad.abs().max() > 0
    assert not torch.allclose(grad[0], grad[1])


def test_gates_are_fp32_for_low_precision_activations():
    layer = distill(OrthoHydraLinear(_weight(), rank=4, num_experts=3))
    x = torch.randn(2, 5, 40, dtype=torch.bfloat16)
    assert layer.gate(x).dtype == torch.float32
    assert layer.delta(x).dtype == torch.bfloat16
    assert math.isclose(float(layer.gate(x).sum(-1)[0]), 1.0, rel_tol=1e-6)


def test_router_calibration_standardises_the_input_and_folds_exactly_into_the_saved_router():
    layer = OrthoHydraLinear(_weight(), rank=4, num_experts=3, seed=2)
    _randomize(layer, seed=3)
    x = torch.randn(16, 6, 40) + 3.0  # a large common mode, as DiT activations have
    pooled = layer.router_input(x)
    layer.calibrate_router(pooled)
    standardised = (pooled.double() - pooled.double().mean(0)) / pooled.double().std(0)
    assert torch.allclose(standardised.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    expected = torch.softmax(standardised @ layer.router.weight.detach().double().T
                             + layer.router.bias.detach().double(), -1)
    runtime = distill(layer)  # what a saved file holds: a plain Hydra router on the raw pooled input
    assert torch.allclose(runtime.gate(x).double(), expected, atol=1e-5)
    assert torch.allclose(layer.delta(x), runtime.delta(x), atol=1e-5)
    flat = OrthoHydraLinear(_weight(), rank=4, num_experts=3, seed=2)
    flat.calibrate_router(torch.ones(5, 4))  # no spread across samples: those features become 0, never NaN
    assert torch.isfinite(flat.router_parameters()[0]).all()
