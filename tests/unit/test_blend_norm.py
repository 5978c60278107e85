"""Global-norm control of a blend, against full ΔW matrices in fp64."""

from dataclasses import replace

import pytest
import torch
from factories import adapter as make_adapter

from ortho_hydra.blend_norm import global_norm_factor, scaled_gate


def global_norm(layers, mixing_of) -> float:
    total = 0.0
    for layer in layers:
        up = layer.scale * torch.einsum("e,eor->or", mixing_of(layer).double(), layer.ups.double())
        down = layer.down.double() * (layer.inv_scale.double() if layer.inv_scale is not None else 1.0)
        total += float((up @ down).pow(2).sum())
    return total ** 0.5


@pytest.mark.parametrize("centered", [False, True])
def test_the_scaled_blend_has_the_norm_of_its_strongest_part(centered):
    layers = [replace(layer, router=replace(layer.router, centered=centered))
              for layer in make_adapter(num_layers=3, experts=3, with_plain=False).layers.values()]
    gate = torch.tensor([1.0, 0.7, 1.0])  # a raw sum-like blend, not renormalised
    mixing = (gate.double() - 1 / 3) if centered else gate.double()
    factor = global_norm_factor(layers, gate)
    blended = global_norm(layers, lambda layer: mixing)
    parts = [global_norm(layers, lambda layer, e=e: torch.nn.functional.one_hot(torch.tensor(e), 3) * mixing)
             for e in range(3)]
    assert factor * blended == pytest.approx(max(parts), rel=1e-9)
    new_gate = scaled_gate(gate, factor, centered)
    new_mixing = new_gate - 1 / 3 if centered else new_gate
    torch.testing.assert_close(new_mixing.double(), factor * mixing.double())
    assert global_norm(layers, lambda layer: new_mixing) == pytest.approx(max(parts), rel=1e-6)


def test_a_single_part_is_left_alone():
    layers = list(make_adapter(num_layers=2, experts=3, with_plain=False).layers.values())
    layers = [replace(layer, router=replace(layer.router, centered=False)) for layer in layers]
    assert global_norm_factor(layers, torch.tensor([0.0, 2.0, 0.0])) == pytest.approx(1.0, rel=1e-12)
