import os

import comfy.model_management as mm
import comfy.sd
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter
from devkit.host import import_pack


def test_loader_cache_picks_up_a_retrained_file(loras):
    files = import_pack().comfy_glue.adapter_files
    w = {"lora_unet_blocks_0_mlp_layer1": torch.randn(32, 24)}
    path = loras / "retrained_moe.safetensors"
    library().save(randomized_adapter(w, rank=2, experts=2, seed=1), path)
    first = files.load_cached("retrained_moe.safetensors")
    assert files.load_cached("retrained_moe.safetensors") is first  # cached
    library().save(randomized_adapter(w, rank=3, experts=2, seed=2), path)
    os.utime(path, ns=(first_mtime := os.stat(path).st_mtime_ns, first_mtime + 10**9))
    second = files.load_cached("retrained_moe.safetensors")
    assert second is not first and second.rank == 3 and first.rank == 2
    assert "retrained_moe.safetensors" in files.adapter_choices()
    assert not any(n.endswith(".resume.safetensors") for n in files.adapter_choices())


def test_the_loader_lists_adapters_first_and_plain_loras_after(loras):
    from safetensors.torch import save_file

    files = import_pack().comfy_glue.adapter_files
    w = {"lora_unet_blocks_0_mlp_layer1": torch.randn(32, 24)}
    plain = {"lora_unet_blocks_0_mlp_layer1.lora_up.weight": torch.randn(32, 2),
             "lora_unet_blocks_0_mlp_layer1.lora_down.weight": torch.randn(2, 24)}
    save_file(plain, str(loras / "a_plain.safetensors"))
    library().save(randomized_adapter(w, rank=2, experts=2, seed=1), loras / "z_styles_moe.safetensors")
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    listed = [n for n in files.adapter_choices() if n in {"a_plain.safetensors", "z_styles_moe.safetensors",
                                                           "broken.safetensors"}]
    assert listed == ["z_styles_moe.safetensors", "a_plain.safetensors", "broken.safetensors"]  # still listed


def test_bf16_model_gemms_in_the_activation_dtype_fp32_gates_weights_owned_by_comfy():
    """bf16 weights: ComfyUI computes in its manual-cast dtype (fp32 on this CPU, bf16 on most GPUs); the
    adapter's GEMM operands must match what the Linear actually receives, and gates stay fp32."""
    patcher = import_pack().comfy_glue.patcher
    sd = tiny_dit.mmdit_state_dict(depth=2, seed=0)
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16})
    assert model.model_dtype() == torch.bfloat16
    adapter = randomized_adapter(lora_weights(model, pattern=r"mlp_fc1$"), rank=4, experts=3, seed=0)
    patched, _ = patcher.apply_adapter(model, adapter)
    holders = [m for models in patched.additional_models.values() for m in models]
    assert len(holders) == 1
    params = dict(holders[0].model.named_parameters())
    activation_dtypes = []
    fc1 = model.model.diffusion_model.joint_blocks[0].x_block.mlp.fc1
    handle = fc1.register_forward_hook(lambda m, a, o: activation_dtypes.append(a[0].dtype))
    seen = {}

    def spy(layer, gate, ctx):
        seen["gate"] = gate.dtype

    spied, _ = patcher.apply_adapter(model, adapter)
    patcher.applied_adapters(spied)[-1].state.sinks.append(spy)
    latent = torch.zeros(1, 16, 16, 16)
    out = tiny_dit.sample(spied, latent, tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2),
                          steps=2)
    handle.remove()
    assert torch.isfinite(out).all() and seen["gate"] == torch.float32  # router logits and gate stay fp32
    assert set(activation_dtypes) == {model.model.manual_cast_dtype or torch.bfloat16}
    assert all(p.dtype == activation_dtypes[0] for n, p in params.items() if n.endswith(("down", "ups")))
    assert all(p.dtype == torch.float32 for n, p in params.items() if "router" in n)
    loaded = {id(lm.model.model) for lm in mm.current_loaded_models}  # LoadedModel -> ModelPatcher -> module
    spied_holders = [m.model for models in spied.additional_models.values() for m in models]
    assert len(spied_holders) == 1 and id(spied_holders[0]) in loaded  # ComfyUI's loader owns the adapter tensors
    mm.unload_all_models()


def test_user_typed_file_names_cannot_leave_their_folder():
    files = import_pack().comfy_glue.adapter_files
    assert files.checked_file_name("my style 2.v1", "name") == "my style 2.v1"
    for bad in ("../escape", "sub/dir", ".hidden", "a\\b", ""):
        with pytest.raises(library().OrthoHydraError, match="not a safe file name") as err:
            files.checked_file_name(bad, "output_name")
        assert "key 'output_name'" in str(err.value) and "Fix:" in str(err.value)


def test_save_node_names_do_not_leak_into_its_input(loras):
    """The input is usually the loader's cached adapter: names typed in one Save must not reach other branches."""
    lib, nodes = library(), import_pack().nodes
    adapter = randomized_adapter({"lora_unet_blocks_0_mlp_layer1": torch.randn(32, 24)}, rank=2, experts=3)
    nodes.save_plot.OrthoHydraSave.execute(adapter, "named", "ink, oil, pixel")
    assert adapter.expert_names is None
    assert lib.load(loras / "named.safetensors").expert_names == ("ink", "oil", "pixel")
    nodes.save_plot.OrthoHydraSave.execute(adapter, "unnamed", "")
    assert lib.load(loras / "unnamed.safetensors").expert_names is None
