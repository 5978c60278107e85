"""Router-live patching on the real ComfyUI host: parity, unpatch, clones, fusion."""

import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter

MAIN_LINEARS = r"(attn_qkv|attn_proj|mlp_fc1|mlp_fc2)$"


@pytest.fixture(scope="module")
def adapter(base):
    return randomized_adapter(lora_weights(base, pattern=MAIN_LINEARS), rank=4, experts=3, seed=0)


def _inputs():
    return torch.zeros(2, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)


def _module(model, path):
    return model.model.get_submodule(path)


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.model.modules())


def test_each_hooked_linear_equals_w0x_plus_strength_delta(base, adapter, patcher):
    patched, plan = patcher.apply_adapter(base, adapter, strength=0.7)
    assert plan.unmatched == [] and len(plan.targets) == len(adapter.layers)
    mm.load_models_gpu([patched])
    try:
        checked = 0
        for name, layer in adapter.layers.items():
            module_path = next(t.module for t in plan.targets.values() if t.legs[0].layer.name == name)
            module = _module(patched, module_path)
            x = 2.0 * torch.randn(4, 12, module.in_features, generator=torch.Generator().manual_seed(checked))
            x[1] *= 3.0  # rows with different statistics route differently
            got = module(x)
            expected = F.linear(x.double(), module.weight.double(), module.bias.double()) \
                + 0.7 * layer.delta(x.double())
            assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5), name
            gates = layer.gate(x)
            assert (gates.max(0).values - gates.min(0).values).max() > 0.01, "rows must route differently"
            checked += 1
        assert checked == len(adapter.layers) == 13
    finally:
        mm.load_models_gpu([base])
    assert _hook_count(base) == 0


def test_unpatch_restores_base_bit_for_bit_fifty_times(base, adapter, patcher):
    latent, pos, neg = _inputs()
    reference = tiny_dit.sample(base, latent, pos, neg, steps=2)
    weights_before = {k: v.clone() for k, v in base.model.state_dict().items()}
    for i in range(50):
        patched, _ = patcher.apply_adapter(base, adapter, strength=1.0)
        out = tiny_dit.sample(patched, latent, pos, neg, steps=2)
        if i == 0:
            assert (out - reference).abs().max() > 1e-3  # the patch really changes the sample
        assert _hook_count(base) > 0
        mm.unload_all_models()  # ComfyUI's own unpatch
        assert _hook_count(base) == 0
    again = tiny_dit.sample(base, latent, pos, neg, steps=2)
    assert torch.equal(again, reference)
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, weights_before[k]), k


def test_other_packs_hooks_are_kept_and_restored(base, adapter, patcher):
    module_path = "diffusion_model.joint_blocks.0.x_block.mlp.fc1"
    seen = []
    handle = _module(base, module_path).register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        patched, _ = patcher.apply_adapter(base, adapter)
        latent, pos, neg = _inputs()
        tiny_dit.sample(patched, latent, pos, neg, steps=1)
        assert seen, "the foreign hook must still fire while patched"
        mm.unload_all_models()
        assert len(_module(base, module_path)._forward_hooks) == 1
    finally:
        handle.remove()


def test_clones_with_different_adapters_do_not_affect_each_other(base, adapter, patcher):
    other = randomized_adapter(lora_weights(base, pattern=MAIN_LINEARS), rank=4, experts=3, seed=7)
    a, _ = patcher.apply_adapter(base, adapter)
    b, _ = patcher.apply_adapter(base.clone(), other)
    latent, pos, neg = _inputs()
    base_out = tiny_dit.sample(base, latent, pos, neg, steps=2)
    a1 = tiny_dit.sample(a, latent, pos, neg, steps=2)
    b1 = tiny_dit.sample(b, latent, pos, neg, steps=2)
    a2 = tiny_dit.sample(a, latent, pos, neg, steps=2)
    assert torch.equal(a1, a2)
    assert (a1 - b1).abs().max() > 1e-3 and (a1 - base_out).abs().max() > 1e-3
    assert torch.equal(tiny_dit.sample(base, latent, pos, neg, steps=2), base_out)


def _split_qkv_adapter(base, names_for):
    """Split q/k/v legs (shared down and router, like the reference's saved files) for every fused qkv."""
    lib = library()
    fused = lora_weights(base, pattern=r"attn_qkv$")
    full = randomized_adapter(fused, rank=4, experts=3, seed=3)
    layers = {}
    for prefix, layer in full.layers.items():
        third = layer.out_features // 3
        for i, split_name in enumerate(names_for(prefix)):
            layers[split_name] = lib.runtime.ExpertLayer(
                split_name, layer.down.clone(), layer.ups[:, i * third:(i + 1) * third].clone(),
                layer.router_weight.clone(), layer.router_bias.clone(), layer.alpha, layer.router)
    return full, lib.Adapter(layers=layers, metadata={"ss_network_spec": "hydra"})


@pytest.mark.parametrize("style", ["kohya_split", "diffusers"])
def test_split_qkv_file_on_fused_sd3_model(base, patcher, style):
    def kohya(prefix):
        return [prefix[: -len("qkv")] + p for p in ("q", "k", "v")]

    def diffusers(prefix):
        block = prefix.split("_")[4]
        side = "" if "x_block" in prefix else "add_"
        parts = ("to_q", "to_k", "to_v") if not side else ("add_q_proj", "add_k_proj", "add_v_proj")
        return [f"lora_transformer_transformer_blocks_{block}_attn_{p}" for p in parts]

    import comfy.lora

    key_map = comfy.lora.model_lora_keys_unet(base.model, {})
    full, split = _split_qkv_adapter(base, kohya if style == "kohya_split" else diffusers)
    patched, plan = patcher.apply_adapter(base, split, strength=1.0)
    assert plan.unmatched == [] and len(plan.targets) == len(full.layers)
    mm.load_models_gpu([patched])
    try:
        for prefix, layer in full.layers.items():
            module = _module(patched, key_map[prefix][: -len(".weight")])
            x = torch.randn(3, 10, module.in_features)
            x[0] *= 4
            expected = F.linear(x, module.weight, module.bias) + layer.delta(x)
            assert torch.allclose(module(x), expected, atol=1e-5), prefix
        target = next(iter(plan.targets.values()))
        assert len(target.legs) == 3
        assert len(patcher.merge_shared_legs(target)) == 1  # one down GEMM and one gate for q, k and v
    finally:
        mm.unload_all_models()


def test_fused_file_on_split_model_is_chunked(patcher):
    lib = library()
    layer = randomized_adapter({"w": torch.randn(96, 40)}, rank=4, experts=3, seed=2).layers["w"]
    fused = {"lora_unet_blocks_0_self_attn_qkv_proj": layer}
    key_map = {f"lora_unet_blocks_0_self_attn_{p}_proj": f"diffusion_model.blocks.0.self_attn.{p}_proj.weight"
               for p in "qkv"}
    shapes = {v: (32, 40) for v in key_map.values()}
    plan = lib.targets.plan(fused, key_map, shapes)
    assert plan.matched == list(fused) and len(plan.targets) == 3
    x = torch.randn(2, 5, 40)
    pieces = [plan.targets[f"diffusion_model.blocks.0.self_attn.{p}_proj"].legs[0].layer.delta(x) for p in "qkv"]
    assert torch.allclose(torch.cat(pieces, -1), layer.delta(x), atol=1e-6)


def test_adapter_for_another_architecture_names_both_sides(base, patcher):
    lib = library()
    cosmos_like = randomized_adapter({"lora_unet_blocks_0_mlp_layer1": torch.randn(64, 32)}, rank=2, experts=2)
    with pytest.raises(lib.OrthoHydraError) as err:
        patcher.apply_adapter(base, cosmos_like)
    message = str(err.value)
    assert "adapter targets blocks.N.*" in message and "model is SD3 joint_blocks.N.*" in message
    assert "Fix:" in message


def test_shape_mismatch_with_model_is_a_clear_error(base, patcher):
    lib = library()
    wrong = randomized_adapter({"lora_unet_joint_blocks_0_x_block_mlp_fc1": torch.randn(100, 128)}, rank=2,
                               experts=2)
    with pytest.raises(lib.OrthoHydraError, match=r"adapter writes 100 outputs but .*fc1 Linear has 512"):
        patcher.apply_adapter(base, wrong)
