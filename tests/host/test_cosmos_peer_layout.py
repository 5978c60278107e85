"""A reference-trainer file (Cosmos prefixes, split q/k/v, √|λ| split, uncorrected router) on ComfyUI's own
Cosmos-Predict2 MiniTrainDIT."""

import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from devkit import tiny_dit
from devkit.adapters import library
from devkit.randomize import randomize_layer_


@pytest.fixture(scope="module")
def cosmos():
    return tiny_dit.load_cosmos(num_blocks=2)


def _trained(lib, weight, name, seed, sigma_dim=0):
    layer = lib.OrthoHydraLinear(weight, rank=4, num_experts=4, name=name, seed=seed, sigma_feature_dim=sigma_dim)
    g = torch.Generator().manual_seed(seed)
    randomize_layer_(layer, g, lam_positive=True, router_scale=0.5, bias_scale=0.0)
    return layer


def _reference_tensors(layer, names, chunks):
    """The reference's save: down = √|λ| Q_eff, up_e = P_eff_e sign(λ)√|λ|, router untouched, split along out."""
    down, ups = layer.factors()  # ups already carry λ
    root = layer.lam.detach().abs().sqrt()
    down_file = (root[:, None] * down).detach()
    ups_file = (ups / root).detach()  # P_eff diag(λ) / √|λ| = P_eff diag(sign λ √|λ|)
    out = {}
    size = ups.shape[1] // chunks
    for i, name in enumerate(names):
        out[f"{name}.lora_down.weight"] = down_file.clone()
        out[f"{name}.router.weight"] = layer.router.weight.detach().clone()
        out[f"{name}.router.bias"] = layer.router.bias.detach().clone()
        out[f"{name}.alpha"] = torch.tensor(float(layer.alpha), dtype=torch.bfloat16)
        for e in range(layer.num_experts):
            out[f"{name}.lora_ups.{e}.weight"] = ups_file[e, i * size:(i + 1) * size].clone()
    return out


def test_reference_file_applies_to_minitraindit_with_training_gates(cosmos, tmp_path):
    lib = library()
    patcher = __import__("comfyui_ortho_hydra.comfy_glue.patcher", fromlist=["x"])
    sd = cosmos.model.diffusion_model.state_dict()
    attn = sd["blocks.0.self_attn.q_proj.weight"], sd["blocks.0.self_attn.k_proj.weight"], sd[
        "blocks.0.self_attn.v_proj.weight"]
    qkv = _trained(lib, torch.cat(attn), "qkv", seed=1)  # the trainer's fused runtime module
    mlp = _trained(lib, sd["blocks.1.mlp.layer1.weight"], "mlp", seed=2)
    tensors = {}
    tensors.update(_reference_tensors(qkv, [f"lora_unet_blocks_0_self_attn_{p}_proj" for p in "qkv"], 3))
    tensors.update(_reference_tensors(mlp, ["lora_unet_blocks_1_mlp_layer1"], 1))
    g = torch.Generator().manual_seed(5)
    adaln_out = sd["blocks.0.adaln_modulation_mlp.2.weight"].shape
    tensors["lora_unet_blocks_0_adaln_up_mlp.lora_down.weight"] = torch.randn(2, adaln_out[1], generator=g)
    tensors["lora_unet_blocks_0_adaln_up_mlp.lora_up.weight"] = torch.randn(adaln_out[0], 2, generator=g) * 0.01
    path = tmp_path / "anima_style_moe.safetensors"
    save_file({k: v.to(torch.bfloat16) if k.endswith("alpha") else v for k, v in tensors.items()}, str(path),
              metadata={"ss_network_spec": "ortho_hydra", "ss_use_moe_style": "shared_A", "ss_route_per_layer": "true",
                        "ss_router_source": "input"})
    adapter = lib.load(path)
    patched, plan = patcher.apply_adapter(cosmos, adapter, strength=1.0)
    assert plan.unmatched == [] and len(plan.matched) == 5  # q, k, v, layer1 and the adaLN leg
    mm.load_models_gpu([patched])
    try:
        x = torch.randn(3, 20, 256)
        x[2] *= 5
        with torch.no_grad():
            train_delta = qkv.delta(x)
            train_gate = lib.distill(qkv).gate(x)
        for i, p in enumerate("qkv"):
            module = patched.model.diffusion_model.blocks[0].self_attn.get_submodule(f"{p}_proj")
            expected = F.linear(x, module.weight) + train_delta[..., 256 * i:256 * (i + 1)]
            assert torch.allclose(module(x), expected, atol=1e-4), p
        assert torch.allclose(adapter.layers["lora_unet_blocks_0_self_attn_q_proj"].gate(x), train_gate, atol=1e-5)
        assert (train_gate.max(0).values - train_gate.min(0).values).max() > 0.01
        raw = lib.load(path, router_correction="none").layers["lora_unet_blocks_0_self_attn_q_proj"]
        assert (raw.gate(x) - train_gate).abs().max() > 1e-3  # the peer node's uncorrected gates differ
        adaln = patched.model.diffusion_model.blocks[0].adaln_modulation_mlp[2]
        assert len(adaln._forward_hooks) == 0 and "diffusion_model.blocks.0.adaln_modulation_mlp.2.weight" in \
            patched.patches  # plain legs are ordinary ComfyUI weight patches
    finally:
        mm.unload_all_models()


def test_sigma_router_sees_flow_time_during_real_sampling(cosmos):
    lib = library()
    patcher = __import__("comfyui_ortho_hydra.comfy_glue.patcher", fromlist=["x"])
    import comfy.samplers

    sd = cosmos.model.diffusion_model.state_dict()
    net = lib.network.OrthoHydraNetwork({"lora_unet_blocks_0_mlp_layer1": sd["blocks.0.mlp.layer1.weight"]}, 4, 4,
                                        sigma_feature_dim=4)
    adapter = net.to_adapter()
    patched, _ = patcher.apply_adapter(cosmos, adapter)
    latent = torch.zeros(1, 16, 1, 8, 8)
    recording = __import__("comfyui_ortho_hydra.comfy_glue.gate_recording", fromlist=["x"]).recording
    with recording(patched) as gates:
        tiny_dit.sample(patched, latent, tiny_dit.cosmos_conditioning(seed=1), tiny_dit.cosmos_conditioning(seed=2),
                        steps=3)
    mm.unload_all_models()
    seen = [entry["sigma"] for entry in gates.records()["lora_unet_blocks_0_mlp_layer1"]]
    sampling = patched.get_model_object("model_sampling")
    schedule = comfy.samplers.calculate_sigmas(sampling, "simple", 3)[:-1]
    flow = schedule / (schedule + 1)
    got = torch.stack([s.reshape(-1)[0] for s in seen])
    assert len(seen) == 3 and torch.allclose(got, flow.float(), atol=1e-6), (got, flow)
    assert float(schedule[0]) > 50  # raw Cosmos σ starts near 80: the router must not see it unconverted
