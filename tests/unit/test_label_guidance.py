"""Label guidance: the gate/label cross-entropy, its gradient in closed form, its schedule and its checks."""

import itertools
import math

import pytest
import torch
from factories import trained_layer

from ortho_hydra.training import StepGates, balance_starts_at, guidance_hold, guidance_weight, label_guidance_loss


def _pooled64(layer, x):
    down, _ = layer.factors()
    lx = x.double() @ down.detach().double().T
    return lx.reshape(lx.shape[0], -1, lx.shape[-1]).square().mean(1).sqrt()


def test_loss_and_router_gradient_match_the_closed_form():
    layer = trained_layer(experts=4, rank=3, seed=5)
    x = torch.randn(6, 7, 40)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    gates = StepGates()
    layer.delta(x, sink=gates)
    loss = label_guidance_loss(gates, labels)
    loss.backward()
    pooled = _pooled64(layer, x)
    logits = pooled @ layer.router.weight.detach().double().T + layer.router.bias.detach().double()
    probs = torch.softmax(logits, -1)
    expected = -probs[torch.arange(6), labels].log().mean()
    assert math.isclose(loss.item(), float(expected), rel_tol=1e-5)
    residual = (probs - torch.nn.functional.one_hot(labels, 4).double()) / 6  # dCE/dlogits, batch-mean
    assert torch.allclose(layer.router.bias.grad.double(), residual.sum(0), atol=1e-6)
    assert torch.allclose(layer.router.weight.grad.double(), residual.T @ pooled, atol=1e-5)


def test_loss_averages_over_layers_and_stays_finite_at_a_hard_zero():
    gates = {"a": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([[0.5, 0.5], [0.25, 0.75]])}
    labels = torch.tensor([0, 1])
    expected = (0.0 + (-math.log(0.5) - math.log(0.75)) / 2) / 2
    assert math.isclose(float(label_guidance_loss(gates, labels)), expected, rel_tol=1e-6)
    assert torch.isfinite(label_guidance_loss({"a": torch.tensor([[0.0, 1.0]])}, torch.tensor([0])))
    assert label_guidance_loss({}, labels) is None


def test_guidance_holds_then_decays_to_zero():
    weights = [guidance_weight(step, 2.0, 10) for step in range(20)]
    assert weights[:10] == [2.0] * 10
    assert weights[10] == pytest.approx(2.0 * (1 - 1 / 5)) and weights[13] == pytest.approx(2.0 * (1 - 4 / 5))
    assert weights[14:] == [0.0] * 6 and all(a >= b for a, b in itertools.pairwise(weights))
    assert guidance_weight(0, 0.0, 10) == 0.0 and guidance_weight(0, 1.0, 0) == 0.0


def test_guidance_steps_left_at_zero_hold_for_most_of_the_run():
    """label_guidance > 0 with label_guidance_steps = 0 (the node's default) used to apply no guidance at all."""
    assert guidance_hold(0, 400) == 240 and guidance_hold(0, 1) == 1 and guidance_hold(50, 400) == 50
    weights = [guidance_weight(step, 1.0, guidance_hold(0, 10)) for step in range(10)]
    assert weights[:6] == [1.0] * 6 and weights[6] == pytest.approx(1 - 1 / 3) and weights[9] == 0.0
    with pytest.raises(ValueError, match="label_guidance_steps"):
        guidance_hold(-1, 10)


def test_balance_start_is_a_step_or_a_fraction():
    assert balance_starts_at(0, 1000) == 0
    assert balance_starts_at(0.4, 1000) == 400
    assert balance_starts_at(250, 1000) == 250
    with pytest.raises(ValueError):
        balance_starts_at(-1, 10)


@pytest.mark.parametrize("init", ["ortho", "ortho_init", "zero", "jitter", "jitter_zero_sum"])
def test_guidance_moves_every_init_toward_its_labels(init):
    """A few steps of guidance alone raise each sample's gate on its label's expert, whatever the init."""
    from ortho_hydra import OrthoHydraLinear

    torch.manual_seed(0)
    layer = OrthoHydraLinear(torch.randn(48, 40), rank=4, num_experts=3, init=init, seed=1)
    styles = torch.randn(3, 40) * 2  # each style shifts the input channels differently
    labels = torch.arange(3).repeat_interleave(4)
    x = torch.randn(12, 6, 40) + styles[labels][:, None, :]
    opt = torch.optim.Adam(layer.router.parameters(), lr=5e-2)
    before = None
    for _ in range(60):
        gates = StepGates()
        layer.delta(x, sink=gates)
        picked = gates[layer.name][torch.arange(12), labels].mean()
        before = picked.item() if before is None else before
        opt.zero_grad()
        label_guidance_loss(gates, labels).backward()
        opt.step()
    gates = StepGates()
    layer.delta(x, sink=gates)
    assert gates[layer.name][torch.arange(12), labels].mean().item() > max(0.8, before + 0.3)


@pytest.mark.parametrize("init", ["ortho", "ortho_init", "zero"])
def test_guidance_gate_is_the_forward_gate_with_the_layer_input_detached(init):
    """Same value as the gate the forward hands its sink; its cross-entropy gradient reaches the router and the
    down projection the router reads through, never the layer input (so never an adapter upstream)."""
    from ortho_hydra import OrthoHydraLinear

    torch.manual_seed(1)
    layer = OrthoHydraLinear(torch.randn(48, 40), rank=4, num_experts=3, init=init, seed=2)
    with torch.no_grad():
        layer.router.weight.normal_(0.0, 0.5)
        layer.router.bias.normal_(0.0, 0.5)
    layer.calibrate_router(torch.rand(16, 4) + 0.5)  # a non-trivial standardisation, folded into both paths
    labels = torch.tensor([0, 1, 2, 1, 0])
    x = torch.randn(5, 6, 40, requires_grad=True)
    gates = StepGates()
    layer.delta(x, sink=gates)
    gate = layer.guidance_gate(x)
    assert torch.allclose(gate, gates[layer.name], atol=1e-6)
    # the closed form on float64, as the first test of this file computes it (standardisation written out)
    pooled = (_pooled64(layer, x.detach()) - layer.router_shift.double()) / layer.router_scale.double()
    logits = pooled @ layer.router.weight.detach().double().T + layer.router.bias.detach().double()
    assert torch.allclose(gate.double(), torch.softmax(logits, -1), atol=1e-6)
    label_guidance_loss({layer.name: gate}, labels).backward()
    assert x.grad is None  # nothing flows into the input
    assert layer.router.weight.grad.abs().sum() > 0 and layer.router.bias.grad.abs().sum() > 0
    down_params = [p for n, p in layer.named_parameters() if n in ("down", "cayley_seeds")]
    assert down_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in down_params)
    # through the forward's own gate the same term does reach the input
    label_guidance_loss({layer.name: gates[layer.name]}, labels).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
