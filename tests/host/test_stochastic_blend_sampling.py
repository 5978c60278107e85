"""OMCD through the router node on the real host: reproducible per seed, different across seeds, never folded."""

import comfy.model_management as mm
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter

POSITIVE, NEGATIVE = tiny_dit.mmdit_conditioning(seed=21), tiny_dit.mmdit_conditioning(seed=22)


def _routed(pack, adapter, mode, seed, weights="0.5, 1.0, 0.8, 0.2", keep="0.25, 0.25, 0.25, 0.25"):
    node = pack.nodes.router.OrthoHydraRouter
    return node.execute(adapter, mode=mode, expert=0, weights=weights, renormalize=False, temperature=1.0, top_k=1,
                        group="all", block_start=-1, block_end=-1, layer_regex="", start_percent=0.0,
                        end_percent=1.0, keyframes="", interpolation="step", side="both", keep=keep,
                        mc_seed=seed).args[0]


def _sample(pack, base, adapter, stochastic=True):
    model, _ = pack.comfy_glue.patcher.apply_adapter(base, adapter)
    assert not model.patches or not stochastic  # stochastic rules stay in the hooks: nothing folded
    out = tiny_dit.sample(model, torch.zeros(1, 16, 16, 16), POSITIVE, NEGATIVE, steps=3)
    mm.unload_all_models()
    return out


@pytest.mark.parametrize("mode", ["omcd", "mc_dropout"])
def test_the_same_seed_gives_the_same_image_and_another_seed_another(pack, base, mode):
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_(mlp_fc1|attn_qkv)$"), experts=4, seed=3)
    first = _sample(pack, base, _routed(pack, adapter, mode, seed=1))
    assert torch.equal(first, _sample(pack, base, _routed(pack, adapter, mode, seed=1)))
    assert not torch.allclose(first, _sample(pack, base, _routed(pack, adapter, mode, seed=2)), atol=1e-5)
    direct = _sample(pack, base, _routed(pack, adapter, "blend", seed=0), stochastic=False)
    assert not torch.equal(first, direct)  # masks really apply


def test_an_impossible_keep_vector_is_a_clear_error(pack, base):
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=4)
    with pytest.raises(library().OrthoHydraError, match="sum to at most 1"):
        _routed(pack, adapter, "omcd", seed=0, keep="0.5, 0.5, 0.5, 0.5")
