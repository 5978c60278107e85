"""A stack of ordinary LoRA files as an expert bank, against ComfyUI's own LoraLoaderModelOnly on the real host."""

import comfy.lora
import comfy.model_management as mm
import pytest
import torch
from safetensors.torch import save_file

from devkit import tiny_dit
from devkit.adapters import library
from devkit.host import import_pack

POSITIVE = tiny_dit.mmdit_conditioning(seed=11)
NEGATIVE = tiny_dit.mmdit_conditioning(seed=12)
LATENT = torch.zeros(1, 16, 16, 16)


def _linears(base, pattern: str) -> dict[str, tuple[int, int]]:
    sd = base.model.state_dict()
    key_map = comfy.lora.model_lora_keys_unet(base.model, {})
    return {name: tuple(sd[key].shape) for name, key in key_map.items()
            if name.startswith("lora_unet_") and isinstance(key, str) and pattern in name and sd[key].ndim == 2}


def _write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path.name


def kohya_lora(base, folder, name, seed, pattern="x_block_mlp", rank=4, alpha=2.0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, (o, i) in _linears(base, pattern).items():
        out[f"{prefix}.lora_up.weight"] = torch.randn(o, rank, generator=g) * 0.2
        out[f"{prefix}.lora_down.weight"] = torch.randn(rank, i, generator=g) * 0.2
        out[f"{prefix}.alpha"] = torch.tensor(alpha)
    return _write(folder / f"{name}.safetensors", out)


def peft_lora(base, folder, name, seed, pattern="attn_proj", rank=3):
    """ComfyUI / PEFT naming: diffusion_model.<module>.lora_A / lora_B, no alpha (scale 1)."""
    g = torch.Generator().manual_seed(seed)
    sd = base.model.state_dict()
    key_map = comfy.lora.model_lora_keys_unet(base.model, {})
    out = {}
    for prefix in _linears(base, pattern):
        module = key_map[prefix][: -len(".weight")]
        o, i = sd[key_map[prefix]].shape
        out[f"{module}.lora_B.weight"] = torch.randn(o, rank, generator=g) * 0.2
        out[f"{module}.lora_A.weight"] = torch.randn(rank, i, generator=g) * 0.2
    return _write(folder / f"{name}.safetensors", out)


def _sample(model):
    out = tiny_dit.sample(model, LATENT, POSITIVE, NEGATIVE, steps=3)
    mm.unload_all_models()
    return out


def _stock(base, files_and_strengths):
    import nodes as comfy_nodes

    model = base
    for name, strength in files_and_strengths:
        model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]
    return model


def test_pinning_and_blending_the_bank_equal_comfyuis_own_lora_loader(base, loras):
    pack = import_pack()
    ov = library().overrides
    files = [kohya_lora(base, loras, "warm", 1), peft_lora(base, loras, "dots", 2),
             kohya_lora(base, loras, "grain", 3, pattern="context_block_mlp", rank=2, alpha=4.0)]
    bank, summary = pack.nodes.expert_bank.OrthoHydraLoraBank.execute(base, files[0], files[1], "",
                                                                      lora_3=files[2]).args
    assert bank.expert_names == ("warm", "dots", "grain") and bank.num_experts == 3
    assert isinstance(summary, str) and summary
    apply = pack.comfy_glue.patcher.apply_adapter
    for expert, name in enumerate(files):
        pin = bank.with_override(ov.Override((ov.Keyframe(0.0, ov.GateRule("pin", expert)),)))
        got, want = _sample(apply(base, pin)[0]), _sample(_stock(base, [(name, 1.0)]))
        assert (got - want).norm() / want.norm() < 1e-5, name
    weights = (0.7, 1.0, 0.4)
    blend = bank.with_override(ov.Override((ov.Keyframe(0.0, ov.GateRule("blend", weights=weights,
                                                                         renormalize=False)),)))
    got, want = _sample(apply(base, blend)[0]), _sample(_stock(base, list(zip(files, weights, strict=True))))
    assert (got - want).norm() / want.norm() < 1e-5
    assert (want - _sample(base)).norm() / want.norm() > 1e-2  # the LoRAs do change the image
    saved = loras / "bank_moe.safetensors"
    library().save(bank, saved)
    reloaded = library().load(saved)
    assert reloaded.expert_names == bank.expert_names
    for prefix, layer in bank.layers.items():
        torch.testing.assert_close(reloaded.layers[prefix].delta_weight(torch.eye(3)[1]),
                                   layer.delta_weight(torch.eye(3)[1]), rtol=1e-6, atol=1e-6)


def test_bad_stacks_are_refused_naming_the_file_and_key(base, loras, tmp_path):
    pack = import_pack()
    node = pack.nodes.expert_bank.OrthoHydraLoraBank
    err_type = library().OrthoHydraError
    good = kohya_lora(base, loras, "good", 1)
    prefix = next(iter(_linears(base, "x_block_mlp")))
    o, i = _linears(base, "x_block_mlp")[prefix]
    loha = _write(loras / "loha.safetensors", {f"{prefix}.hada_w1_a": torch.randn(o, 2), f"{prefix}.hada_w1_b":
                                               torch.randn(2, i), f"{prefix}.hada_w2_a": torch.randn(o, 2),
                                               f"{prefix}.hada_w2_b": torch.randn(2, i)})
    dora = _write(loras / "dora.safetensors", {f"{prefix}.lora_up.weight": torch.randn(o, 2),
                                               f"{prefix}.lora_down.weight": torch.randn(2, i),
                                               f"{prefix}.dora_scale": torch.ones(o, 1)})
    foreign = _write(loras / "foreign.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight":
                                                     torch.randn(8, 2), "lora_unet_double_blocks_0_img_attn_qkv"
                                                     ".lora_down.weight": torch.randn(2, 8)})
    wide = _write(loras / "wide.safetensors", {f"{prefix}.lora_up.weight": torch.randn(o, 2),
                                               f"{prefix}.lora_down.weight": torch.randn(2, i + 8)})
    cases = [(loha, "hada", "not a low-rank LoRA"), (dora, prefix, "DoRA"), (foreign, "double_blocks", "does not have"),
             (wide, prefix, "different base model")]
    for name, key_part, message in cases:
        with pytest.raises(err_type, match=message) as err:
            node.execute(base, good, name, "")
        assert name in str(err.value) and key_part in (err.value.key or ""), (name, err.value.key)
    with pytest.raises(err_type, match="picked twice"):
        node.execute(base, good, good, "")
    other = kohya_lora(base, loras, "other", 5)
    with pytest.raises(err_type, match="duplicate names"):
        node.execute(base, good, other, "a, a")
    big = kohya_lora(base, loras, "big", 6, rank=600)
    with pytest.raises(err_type, match="over 1024"):
        node.execute(base, big, kohya_lora(base, loras, "big2", 7, rank=600), "")


def test_strengths_and_a_lora_stack_make_experts_at_their_model_strength(base, loras):
    """Picked LoRAs at typed strengths, then a LORA_STACK's entries at their model strengths: each pinned expert
    equals ComfyUI's LoraLoaderModelOnly at that strength; empty stack slots are skipped."""
    pack = import_pack()
    ov = library().overrides
    warm, dots, grain = (kohya_lora(base, loras, "warm", 1), peft_lora(base, loras, "dots", 2),
                         kohya_lora(base, loras, "grain", 3, pattern="context_block_mlp", rank=2, alpha=4.0))
    stack = [(grain, 0.6, 1.0), ("None", 1.0, 1.0)]
    bank, report = pack.nodes.expert_bank.OrthoHydraLoraBank.execute(base, warm, dots, "", strengths="0.5,1.5",
                                                                     lora_stack=stack).args
    assert bank.expert_names == ("warm", "dots", "grain")
    assert "strengths: warm 0.5, dots 1.5, grain 0.6" in report
    apply = pack.comfy_glue.patcher.apply_adapter
    for expert, (name, strength) in enumerate([(warm, 0.5), (dots, 1.5), (grain, 0.6)]):
        pin = bank.with_override(ov.Override((ov.Keyframe(0.0, ov.GateRule("pin", expert)),)))
        got, want = _sample(apply(base, pin)[0]), _sample(_stock(base, [(name, strength)]))
        assert (got - want).norm() / want.norm() < 1e-5, name
    err_type = library().OrthoHydraError
    with pytest.raises(err_type, match="2 strengths for 3 picked"):
        pack.nodes.expert_bank.OrthoHydraLoraBank.execute(base, warm, dots, "", strengths="1,1", lora_3=grain)
    with pytest.raises(err_type, match="LORA_STACK entry 0"):
        pack.nodes.expert_bank.OrthoHydraLoraBank.execute(base, warm, dots, "", lora_stack=["warm"])
    with pytest.raises(err_type, match="1 LoRAs picked"):
        pack.nodes.expert_bank.OrthoHydraLoraBank.execute(base, warm, "none", "")


def test_text_encoder_keys_are_left_out_and_reported(base, loras):
    pack = import_pack()
    tensors = {}
    g = torch.Generator().manual_seed(5)
    for prefix, (o, i) in _linears(base, "x_block_mlp").items():
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(o, 2, generator=g)
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(2, i, generator=g)
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.randn(8, 2, generator=g)
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.randn(2, 8, generator=g)
    with_te = _write(loras / "with_te.safetensors", tensors)
    plain = kohya_lora(base, loras, "plain", 6)
    bank, report = pack.nodes.expert_bank.OrthoHydraLoraBank.execute(base, with_te, plain, "").args
    assert "skipped 2 text-encoder keys of with_te.safetensors" in report
    assert "plain.safetensors" not in report.split("skipped")[-1]
    assert bank.num_experts == 2
