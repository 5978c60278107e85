"""Orthogonal slots: frozen output bases, the W0 fingerprint, the overlap measure and the exact merge."""

import json
import math

import pytest
import torch

from devkit.randomize import randomize_layer_
from ortho_hydra import Adapter, OrthoHydraError, distill
from ortho_hydra.basis import disjoint_basis
from ortho_hydra.expert_stack import stack_as_experts
from ortho_hydra.slots import (
    base_fingerprint,
    merge_slot_adapters,
    mismatched_layers,
    output_overlap,
    slot_metadata,
)
from ortho_hydra.trainable import OrthoHydraLinear

OUT, IN, RANK, SLOTS = 48, 40, 4, 3
NAMES = ("lora_unet_blocks_0_mlp_layer1", "lora_unet_blocks_1_mlp_layer1")


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(OUT, IN, generator=g) for name in NAMES}


def _slot_layer(weight, slot: int, seed: int, name: str = NAMES[0]) -> OrthoHydraLinear:
    layer = OrthoHydraLinear(weight, RANK, 1, init="ortho_out", slot=slot, slots=SLOTS, seed=seed, name=name)
    g = torch.Generator().manual_seed(100 + seed)
    randomize_layer_(layer, g)
    with torch.no_grad():
        layer.down.add_(0.5 * torch.randn(layer.down.shape, generator=g))  # the down trains freely
    return layer


def _slot_adapter(weights, slot: int, seed: int, fingerprint=None) -> Adapter:
    layers = {name: distill(_slot_layer(w, slot, seed, name)) for name, w in weights.items()}
    meta = slot_metadata(slot, SLOTS, fingerprint or base_fingerprint(weights))
    return Adapter(layers=layers, metadata={"ss_network_spec": "ortho_hydra", **meta})


def test_ortho_out_starts_at_zero_and_writes_only_into_its_slice():
    weight = _weights()[NAMES[0]]
    fresh = OrthoHydraLinear(weight, RANK, 1, init="ortho_out", slot=1, slots=SLOTS, seed=5)
    assert torch.count_nonzero(fresh.delta(torch.randn(2, 3, IN))) == 0
    layer = _slot_layer(weight, slot=1, seed=5)
    slices = disjoint_basis(weight, SLOTS, RANK, seed=0).out_bases  # the basis seed is fixed, not the run's
    torch.testing.assert_close(layer.out_bases[0], slices[1], rtol=0, atol=0)
    delta_w = distill(layer).static_delta_weight(torch.ones(1))
    assert delta_w.norm() > 0.1
    inside = slices[1] @ (slices[1].T @ delta_w)
    torch.testing.assert_close(inside, delta_w, rtol=0, atol=1e-5)  # every column lies in slice 1
    for other in (0, 2):
        assert (slices[other].T @ delta_w).abs().max() < 1e-5


def test_independent_runs_on_different_slots_do_not_overlap_but_plain_loras_do():
    weight = _weights()[NAMES[0]]
    a, b = distill(_slot_layer(weight, 0, seed=1)), distill(_slot_layer(weight, 2, seed=7))
    assert output_overlap(a.ups[0], b.ups[0]) < 1e-6
    assert output_overlap(a.ups[0], a.ups[0]) == pytest.approx(1.0, abs=1e-9)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(OUT, RANK, generator=g), torch.randn(OUT, RANK, generator=g)
    qx, qy = torch.linalg.qr(x.double())[0], torch.linalg.qr(y.double())[0]
    expected = float((qx.T @ qy).norm() / math.sqrt(RANK))  # independent computation of the same quantity
    assert output_overlap(x, y) == pytest.approx(expected, rel=1e-9)
    assert 0.05 < expected < 1.0


def test_stacked_experts_reproduce_each_adapter_and_their_weighted_sum_exactly():
    weights = _weights()
    adapters = [_slot_adapter(weights, slot, seed=10 + slot) for slot in range(SLOTS)]
    merged = stack_as_experts(adapters, ["a", "b", "c"])
    assert merged.expert_names == ("a", "b", "c") and merged.num_experts == SLOTS
    for name in NAMES:
        alone = [a.layers[name].static_delta_weight(torch.ones(1)).double() for a in adapters]
        for e in range(SLOTS):
            pinned = merged.layers[name].static_delta_weight(torch.eye(SLOTS)[e]).double()
            torch.testing.assert_close(pinned, alone[e], rtol=1e-6, atol=1e-6)
        w = torch.tensor([0.7, 1.0, 0.4])
        blended = merged.layers[name].static_delta_weight(w).double()
        torch.testing.assert_close(blended, sum(wi * d for wi, d in zip(w.double(), alone, strict=True)),
                                   rtol=1e-6, atol=1e-6)  # no renormalisation of the weights
    # a gate computed by the merged router starts uniform: every expert equally
    gate = merged.layers[NAMES[0]].gate_from_projection(torch.randn(5, merged.layers[NAMES[0]].down.shape[0]))
    torch.testing.assert_close(gate, torch.full_like(gate, 1 / SLOTS))


def test_a_layer_missing_from_one_adapter_contributes_zeros():
    weights = _weights()
    full = _slot_adapter(weights, 0, seed=1)
    partial = _slot_adapter({NAMES[0]: weights[NAMES[0]]}, 1, seed=2, fingerprint=base_fingerprint(weights))
    merged = stack_as_experts([full, partial], ["full", "partial"])
    assert torch.count_nonzero(merged.layers[NAMES[1]].static_delta_weight(torch.tensor([0.0, 1.0]))) == 0
    torch.testing.assert_close(merged.layers[NAMES[1]].static_delta_weight(torch.tensor([1.0, 0.0])),
                               full.layers[NAMES[1]].static_delta_weight(torch.ones(1)), rtol=1e-6, atol=1e-6)


def test_fingerprint_accepts_another_dtype_of_the_same_base_and_rejects_a_fine_tune():
    weights = _weights()
    reference = base_fingerprint(weights)
    assert mismatched_layers(reference, base_fingerprint({k: v.to(torch.bfloat16) for k, v in weights.items()})) == []
    g = torch.Generator().manual_seed(9)
    tuned = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in weights.items()}
    assert mismatched_layers(reference, base_fingerprint(tuned)) == list(NAMES)


def test_merge_checks_slots_and_base_and_reports_the_overlap():
    weights = _weights()
    a, b = _slot_adapter(weights, 0, seed=1), _slot_adapter(weights, 2, seed=2)
    merged, overlap = merge_slot_adapters([a, b], ["warm", "dots"])
    assert merged.expert_names == ("warm", "dots") and json.loads(merged.metadata["oh_merged_slots"]) == [0, 2]
    assert overlap[0][1] < 1e-6 and overlap[1][0] == overlap[0][1]
    with pytest.raises(OrthoHydraError, match="both use slot 0"):
        merge_slot_adapters([a, _slot_adapter(weights, 0, seed=3)], ["warm", "again"])
    other_base = _slot_adapter(weights, 1, seed=4, fingerprint=base_fingerprint(_weights(seed=42)))
    with pytest.raises(OrthoHydraError, match="another base model"):
        merge_slot_adapters([a, other_base], ["warm", "foreign"])
    unstamped = Adapter(layers=a.layers, metadata={"ss_network_spec": "hydra"})
    with pytest.raises(OrthoHydraError, match="not trained on an orthogonal slot"):
        merge_slot_adapters([a, unstamped], ["warm", "plain"])
    recut = Adapter(layers=b.layers, metadata={**b.metadata, "oh_slots": "4"})
    with pytest.raises(OrthoHydraError, match="different slot counts"):
        merge_slot_adapters([a, recut], ["warm", "recut"])
    with pytest.raises(OrthoHydraError, match="at least two"):
        merge_slot_adapters([a], ["warm"])


def test_slot_options_are_validated():
    weight = _weights()[NAMES[0]]
    for kwargs in ({"init": "ortho_init"}, {"init": "zero"}, {"slot": 3}):
        options = {"init": "ortho_out", "slot": 0, **kwargs}
        with pytest.raises(ValueError, match="slot training"):
            OrthoHydraLinear(weight, RANK, 1, slots=SLOTS, **options)
    with pytest.raises(ValueError, match="slot training"):
        OrthoHydraLinear(weight, RANK, 2, init="ortho_out", slot=0, slots=SLOTS)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no disjoint slots fit"):
        OrthoHydraLinear(weight, 16, 1, init="ortho_out", slot=0, slots=3)  # 48 > min(48, 40)
