"""Orthogonal slots on the real host: train two slot adapters, save, load, merge, and sample against closed forms.

The model is loaded, and trained, inside ``torch.inference_mode()``, as ComfyUI's executor runs nodes."""

import comfy.model_management as mm
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import library
from devkit.host import import_pack

LATENTS = torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(3))
POSITIVE = tiny_dit.mmdit_conditioning(seed=4)
NEGATIVE = tiny_dit.mmdit_conditioning(seed=5)


@pytest.fixture(scope="module")
def base():
    with torch.inference_mode():
        return tiny_dit.load_mmdit(depth=2, seed=0)


def _train(pack, base, slot: int, seed: int, name: str):
    T = pack.nodes.train
    config = T.TrainConfig(steps=6, learning_rate=2e-2, batch_size=2, rank=4, experts=1, init="ortho_out",
                           training_dtype="fp32", seed=seed, output_name=name, slot=slot, slots=2)
    with torch.inference_mode():
        T.train(base, LATENTS[2 * slot:2 * slot + 2], POSITIVE, config)
    return pack.nodes.load_apply.OrthoHydraLoader.execute(f"{name}.safetensors", "training").args[0]


def _sample(pack, base, adapter, latent):
    model, _ = pack.nodes.patcher.apply_adapter(base, adapter)
    out = tiny_dit.sample(model, latent, POSITIVE, NEGATIVE, steps=3)
    mm.unload_all_models()
    return out


def test_slot_adapters_merge_exactly_and_write_disjoint_outputs(base, loras):
    pack = import_pack()
    lib = library()
    a, b = _train(pack, base, 0, seed=1, name="slot_a"), _train(pack, base, 1, seed=7, name="slot_b")
    assert a.metadata["oh_slot"] == "0" and b.metadata["oh_slot"] == "1" and b.metadata["oh_slots"] == "2"
    merged, report = pack.nodes.slots.OrthoHydraMergeSlots.execute(a, b, "warm, dots").args
    assert merged.expert_names == ("warm", "dots") and "warm / dots" in report
    for prefix in a.layers:  # independent check of the overlap, from the trained factors
        pa, pb = a.layers[prefix].ups[0].double(), b.layers[prefix].ups[0].double()
        qa, qb = torch.linalg.qr(pa)[0], torch.linalg.qr(pb)[0]
        assert (qa.T @ qb).norm() < 1e-4, prefix
    latent = torch.zeros(1, 16, 16, 16)
    rule = lib.overrides
    for expert, alone in enumerate((a, b)):
        pin = merged.with_override(rule.Override((rule.Keyframe(0.0, rule.GateRule("pin", expert)),)))
        torch.testing.assert_close(_sample(pack, base, pin, latent), _sample(pack, base, alone, latent),
                                   rtol=1e-5, atol=1e-5)
    both = merged.with_override(rule.Override((rule.Keyframe(0.0, rule.GateRule("blend", weights=(1.0, 1.0),
                                                                                 renormalize=False)),)))
    stacked, _ = pack.nodes.patcher.apply_adapter(pack.nodes.patcher.apply_adapter(base, a)[0], b)
    expected = tiny_dit.sample(stacked, latent, POSITIVE, NEGATIVE, steps=3)
    mm.unload_all_models()
    torch.testing.assert_close(_sample(pack, base, both, latent), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, _sample(pack, base, a, latent), atol=1e-4)  # b really adds something


def test_slot_training_refuses_several_experts_and_a_slot_out_of_range(base, loras):
    pack = import_pack()
    T = pack.nodes.train
    for kw, key in (({"experts": 4, "slot": 0}, "slots"), ({"experts": 1, "slot": 2}, "slot")):
        config = T.TrainConfig(steps=1, rank=4, init="ortho_out", training_dtype="fp32", slots=2, **kw)
        with pytest.raises(library().OrthoHydraError) as err, torch.inference_mode():
            T.train(base, LATENTS, POSITIVE, config)
        assert err.value.key == key
