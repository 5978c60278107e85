"""A scaled-fp8 checkpoint (ComfyUI's scaled_fp8 ops, on the CPU): router-live hooks and folded pins."""

import comfy.model_management as mm
import comfy.sd
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter

MODULE = "diffusion_model.joint_blocks.1.x_block.mlp.fc1"
PATTERN = r"x_block_mlp_fc1$"
FP8 = torch.float8_e4m3fn


def scaled_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 2-D weight stored as fp8 e4m3 with a per-tensor ``scale_weight``, plus the ``scaled_fp8`` marker."""
    out = {"scaled_fp8": torch.zeros(2).to(FP8)}  # two elements: scaled fp8 without fp8 matmuls
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / 448.0
            out[key] = (value / scale).to(FP8)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def models():
    state = tiny_dit.mmdit_state_dict(depth=2, seed=0)
    fp8 = comfy.sd.load_diffusion_model_state_dict(scaled_fp8({k: v.clone() for k, v in state.items()}))
    return fp8, state


def _dequantised(model) -> tuple[torch.Tensor, torch.Tensor]:
    module = model.model.get_submodule(MODULE)
    assert module.weight.dtype == FP8  # the checkpoint really is fp8 in memory
    return (module.weight.detach().float() * module.scale_weight.detach().float(),
            module.bias.detach().float())


def _run_module(model, x: torch.Tensor) -> torch.Tensor:
    mm.load_models_gpu([model])
    try:
        return model.model.get_submodule(MODULE)(x).float()
    finally:
        mm.unload_all_models()


def test_router_live_on_fp8_matches_the_dequantised_reference(models, patcher):
    fp8, state = models
    adapter = randomized_adapter(lora_weights(fp8, pattern=PATTERN), experts=3, seed=4)
    weight, bias = _dequantised(fp8)
    x = torch.randn(2, 5, weight.shape[1], generator=torch.Generator().manual_seed(1))
    layer = adapter.layers["lora_unet_joint_blocks_1_x_block_mlp_fc1"]
    got = _run_module(patcher.apply_adapter(fp8, adapter)[0], x)
    expected = F.linear(x.double(), weight.double(), bias.double()) + layer.delta(x.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    # against the fp32 original, the error is the checkpoint's own fp8 rounding, not ours
    exact = F.linear(x.double(), state[MODULE[len("diffusion_model."):] + ".weight"].double(), bias.double())
    exact = exact + layer.delta(x.double())
    assert (got.double() - exact).norm() / exact.norm() < 0.1
    assert _dequantised(fp8)[0].equal(weight)  # the fp8 weight itself is untouched


def test_a_folded_pin_goes_through_comfyuis_fp8_patch_path(models, patcher):
    fp8, _ = models
    override = library().overrides
    adapter = randomized_adapter(lora_weights(fp8, pattern=PATTERN), experts=3, seed=4)
    pinned = adapter.with_override(override.Override((override.Keyframe(0.0, override.GateRule("pin", 1)),)))
    weight, bias = _dequantised(fp8)
    layer = adapter.layers["lora_unet_joint_blocks_1_x_block_mlp_fc1"]
    delta_w = layer.static_delta_weight(torch.tensor([0.0, 1.0, 0.0])).double()
    model, _ = patcher.apply_adapter(fp8, pinned)
    assert not model.model.get_submodule(MODULE)._forward_hooks and model.patches  # folded: a weight patch
    with torch.inference_mode():  # as ComfyUI runs every node; fp8 re-quantisation refuses autograd tensors
        mm.load_models_gpu([model])
    try:
        module = model.model.get_submodule(MODULE)
        assert module.weight.dtype == FP8  # ComfyUI re-quantised the patched weight (its set_weight path)
        patched = module.weight.detach().double() * module.scale_weight.detach().double()
        x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            got = module(x).detach().double()
    finally:
        mm.unload_all_models()
    target = weight.double() + delta_w
    # fp8 e4m3 keeps 3 mantissa bits: every patched entry is within one rounding step of W + ΔW
    step = module.scale_weight.double() * 2.0 ** (torch.floor(torch.log2(target.abs() / module.scale_weight.double()
                                                                          + 1e-30)) - 3)
    assert ((patched - target).abs() <= step + 1e-12).float().mean() > 0.999
    torch.testing.assert_close(got, F.linear(x.double(), patched, bias.double()), rtol=1e-5, atol=1e-5)
    # ΔW's entries are smaller than one fp8 step of W's, so each patched entry is W + ΔW stochastically rounded:
    # unbiased, so the change ComfyUI stored projects onto ΔW with coefficient ~1, and is nearer W + ΔW than W is
    change = patched - weight.double()
    assert 0.9 < float((change * delta_w).sum() / delta_w.pow(2).sum()) < 1.1
    assert (patched - target).norm() < delta_w.norm()
    assert _dequantised(fp8)[0].equal(weight)  # unpatched: the stored fp8 weight is back bit for bit
