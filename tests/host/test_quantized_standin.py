"""A Linear that stores packed weights, as city96's GGUF Linear does: planned from its logical shape, hooked."""

import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.adapters import lora_weights, randomized_adapter

MODULE = "joint_blocks.0.x_block.mlp.fc1"


class PackedLinear(torch.nn.Module):
    """Weights quantised to int8 with one scale per row, stored flat: the state dict reports (out*in,) int8."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        scale = w.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
        self.weight = torch.nn.Parameter(torch.round(w / scale).to(torch.int8).flatten(), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float().view(self.out_features, self.in_features) * self.scale

    def forward(self, x):
        return F.linear(x, self.dequantized().to(x.dtype), self.bias.to(x.dtype))


def test_packed_linear_is_planned_from_its_logical_shape_and_routes_exactly(patcher):
    model = tiny_dit.load_mmdit(depth=2, seed=0)
    adapter = randomized_adapter(lora_weights(model, pattern=r"x_block_mlp_fc1$"), experts=3, seed=5)
    diffusion = model.model.diffusion_model
    parent, leaf = MODULE.rsplit(".", 1)
    packed = PackedLinear(diffusion.get_submodule(MODULE))
    setattr(diffusion.get_submodule(parent), leaf, packed)
    assert model.model.state_dict()[f"diffusion_model.{MODULE}.weight"].shape == (packed.out_features *
                                                                                  packed.in_features,)
    patched, plan = patcher.apply_adapter(model, adapter, fold=False)
    assert plan.unmatched == [] and f"diffusion_model.{MODULE}" in {t.module for t in plan.targets.values()}
    mm.load_models_gpu([patched])
    try:
        x = torch.randn(2, 6, packed.in_features, generator=torch.Generator().manual_seed(1))
        got = patched.model.diffusion_model.get_submodule(MODULE)(x)
        layer = adapter.layers["lora_unet_joint_blocks_0_x_block_mlp_fc1"]
        expected = F.linear(x.double(), packed.dequantized().double(), packed.bias.double()) + layer.delta(x.double())
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    finally:
        mm.unload_all_models()


class _BypassLinear(torch.nn.Linear):
    """Stands in for a fused / quantised kernel module that is called without nn.Module's hook machinery."""

    def __call__(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias)


def test_linears_that_bypass_hooks_are_refused_for_router_live_and_fine_when_folded(patcher):
    from devkit.adapters import library
    from ortho_hydra.overrides import GateRule, Keyframe, Override

    model = tiny_dit.load_mmdit(depth=2, seed=0)
    module = model.model.get_submodule("diffusion_model.joint_blocks.0.x_block.mlp.fc1")
    module.__class__ = _BypassLinear
    adapter = randomized_adapter(lora_weights(model, pattern=r"joint_blocks_0_x_block_mlp_fc1$"), experts=2, seed=1)
    with pytest.raises(library().OrthoHydraError, match="_BypassLinear, which bypasses PyTorch's forward hooks") as err:
        patcher.apply_adapter(model, adapter)
    assert "SD3" in str(err.value) and "bake" in err.value.fix
    pinned = adapter.with_override(Override((Keyframe(0.0, GateRule("pin", 0)),)))
    folded, _ = patcher.apply_adapter(model, pinned)  # a weight patch needs no hook: allowed
    assert folded.patches


def test_a_model_of_fused_kernel_blocks_is_named_in_the_refusal(patcher):
    from devkit.adapters import library

    model = tiny_dit.load_mmdit(depth=2, seed=0)
    for block in model.model.diffusion_model.joint_blocks:  # as a Nunchaku model: blocks of fused kernels
        block.__class__ = type("NunchakuJointBlock", (type(block),), {})
    cosmos_names = {"lora_unet_blocks_0_mlp_layer1": torch.randn(64, 32)}
    adapter = randomized_adapter(cosmos_names, rank=2, experts=2)
    with pytest.raises(library().OrthoHydraError, match="fused kernels \\(NunchakuJointBlock\\)") as err:
        patcher.apply_adapter(model, adapter)
    assert "Nunchaku" in err.value.fix
