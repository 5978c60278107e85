"""The training hook under label guidance: one runtime layer per forward serves both the guidance gate and Δy, with
the values and gradients of the two separate calls it replaces."""

import torch

from devkit.host import import_pack
from devkit.randomize import randomize_layer_
from ortho_hydra import OrthoHydraLinear


def test_guidance_gate_and_delta_share_one_runtime_layer_per_forward():
    pack = import_pack()
    g = torch.Generator().manual_seed(0)
    layer = OrthoHydraLinear(torch.randn(24, 16, generator=g), rank=4, num_experts=3, init="ortho", seed=0)
    with torch.no_grad():
        randomize_layer_(layer, g)
    built = []
    as_runtime = layer.as_runtime
    layer.as_runtime = lambda: built.append(1) or as_runtime()
    hook = pack.nodes.train_support.TrainingHook("l", layer, pack.nodes.hooks.SamplingState(), sink=None)
    gates = []
    hook.router_sink = lambda name, gate: gates.append(gate)
    x, base, weight = (torch.randn(shape, generator=g) for shape in ((2, 5, 16), (2, 5, 24), (2, 3)))
    out = hook(None, (x,), base)
    assert len(built) == 1
    (out.square().sum() + (gates[0] * weight).sum()).backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    reference_gate = layer.guidance_gate(x)
    reference_out = base + layer.delta(x)
    torch.testing.assert_close(gates[0], reference_gate, rtol=0, atol=0)
    torch.testing.assert_close(out, reference_out, rtol=0, atol=0)
    (reference_out.square().sum() + (reference_gate * weight).sum()).backward()
    for name, param in layer.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, msg=name)  # fp32 defaults: summed in another order
    assert any(grads[n].abs().max() > 0 for n in ("router.weight", "cayley_seeds"))
