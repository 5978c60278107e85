"""Soak: 50 patch -> sample -> unpatch cycles with the router overrides changing every cycle."""

import gc
import tracemalloc

import comfy.model_management as mm
import torch

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter


def _rule(ov, cycle: int):
    kinds = [ov.GateRule("live"), ov.GateRule("pin", cycle % 3), ov.GateRule("blend", weights=(1.0, 0.5, 0.2)),
             ov.GateRule("temperature", temperature=0.5), ov.GateRule("omcd", weights=(1.0, 1.0, 1.0),
                                                                      keep=(0.3, 0.3, 0.3), seed=cycle)]
    frames = (ov.Keyframe(0.0, kinds[cycle % len(kinds)]),)
    if cycle % 2:
        frames += (ov.Keyframe(0.5, ov.GateRule("pin", 0)),)  # scheduled: stays in the hooks
    return ov.Override(frames)


def test_fifty_cycles_leave_the_base_identical_and_memory_flat(base, patcher):
    ov = library().overrides
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_(mlp_fc1|attn_qkv)$"), experts=3, seed=8)
    latent = torch.zeros(1, 16, 16, 16)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)
    weights = {k: v.clone() for k, v in base.model.state_dict().items()}
    reference = tiny_dit.sample(base, latent, pos, neg, steps=2)
    loaded_before = len(mm.current_loaded_models)
    tracemalloc.start()
    sizes = {}
    try:
        for cycle in range(50):
            patched, _ = patcher.apply_adapter(base, adapter.with_override(_rule(ov, cycle)))
            tiny_dit.sample(patched, latent, pos, neg, steps=2)
            mm.unload_all_models()
            del patched
            assert sum(len(m._forward_hooks) for m in base.model.modules()) == 0, cycle
            assert not base.object_patches_backup and not base.backup, cycle
            if cycle in (9, 49):
                gc.collect()
                sizes[cycle] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    growth = sizes[49] - sizes[9]
    print(f"traced Python memory after cycle 10: {sizes[9]} bytes, after cycle 50: {sizes[49]} ({growth:+d})")
    assert growth < 200_000, f"Python memory grew {growth} bytes over 40 cycles"
    assert len(mm.current_loaded_models) <= loaded_before
    assert not base.additional_models  # the adapters' tensors rode on the clones, never on the base
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert torch.equal(tiny_dit.sample(base, latent, pos, neg, steps=2), reference)
