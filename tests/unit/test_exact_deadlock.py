"""The exact cold-start deadlock of HydraLoRA: with a zero router and zero-init ups nothing can break symmetry."""

import pytest
import torch

from ortho_hydra.trainable import OrthoHydraLinear
from ortho_hydra.training import StepGates, optimizer_groups

OUT, IN, RANK, E = 24, 20, 4, 4


def _train(init: str, router_std: float, steps: int = 100):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(OUT, IN, generator=g)
    target = torch.randn(OUT, IN, generator=g) * 0.3  # a ΔW the adapter is asked to learn
    layer = OrthoHydraLinear(weight, RANK, E, init=init, router_std=router_std, seed=1)
    opt = torch.optim.AdamW(optimizer_groups(layer, 1e-2, 10.0), weight_decay=0.0)
    gates = StepGates()
    history = []
    for _ in range(steps):
        x = torch.randn(8, 6, IN, generator=g)
        gates.clear()
        loss = (layer.delta(x, sink=gates) - x @ target.T).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(next(iter(gates.values())).detach().clone())
    return layer, history


def test_zero_init_with_a_zero_router_stays_exactly_uniform_and_symmetric_under_adamw():
    layer, history = _train("zero", router_std=0.0)
    ups = layer.ups.detach()
    assert ups.abs().max() > 1e-3  # the experts did learn (the same thing) ...
    for e in range(1, E):
        assert torch.equal(ups[e], ups[0])  # ... bit for bit
    for gate in history:
        assert torch.equal(gate, torch.full_like(gate, 1.0 / E))  # and the gate never moved, not by one ulp
    assert torch.count_nonzero(layer.router.weight) == 0 and torch.count_nonzero(layer.router.bias) == 0


@pytest.mark.parametrize(("init", "std"), [("zero", 0.01), ("jitter", 0.0), ("jitter_zero_sum", 0.0), ("ortho", 0.0)])
def test_any_asymmetry_breaks_it(init, std):
    # a random router (std 0.01), distinct experts (zero-sum jitter) or disjoint bases (ortho) each let it leave
    _, history = _train(init, router_std=std)
    assert (history[-1] - 1.0 / E).abs().max() > 1e-3
