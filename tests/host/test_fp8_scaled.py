"""A scaled-fp8 checkpoint on the CPU, loaded and run inside inference mode as ComfyUI's executor does: router-live
hooks match the dequantised fp64 reference, and a constant gate is folded into the fp8 weight only where the host's
re-quantisation keeps the adapter's effect (measured here, on whichever host runs the test).

ComfyUI 0.3.x loads such a file with its scaled-fp8 ops (fp8 weight, ``scale_weight`` kept when a patch is written
back, so large changes clip); newer hosts convert it to a ``QuantizedTensor`` whose scale is re-derived on write.
"""

import math

import comfy.model_management as mm
import comfy.sd
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter
from ortho_hydra.fold_error import FOLD_TOLERANCE, fold_error

MODULE = "diffusion_model.joint_blocks.1.x_block.mlp.fc1"
LAYER = "lora_unet_joint_blocks_1_x_block_mlp_fc1"
PATTERN = r"x_block_mlp_fc1$"
FP8 = torch.float8_e4m3fn
PIN = torch.tensor([0.0, 1.0, 0.0])


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


def dequantised(module) -> torch.Tensor:
    """fp64 weight from the stored fp8 bits and the per-tensor scale, whichever way the host keeps them."""
    weight = module.weight
    if hasattr(weight, "_qdata"):  # a QuantizedTensor: 0.3.x keeps its params in a dict, comfy-kitchen in a record
        params = getattr(weight, "_params", None) or weight._layout_params
        scale = params.scale if hasattr(params, "scale") else params["scale"]
        assert weight._qdata.dtype == FP8
        return weight._qdata.double() * scale.double()
    assert weight.dtype == FP8
    return weight.double() * module.scale_weight.double()


@pytest.fixture(scope="module")
def models():
    state = tiny_dit.mmdit_state_dict(depth=2, seed=0)
    with torch.inference_mode():
        fp8 = comfy.sd.load_diffusion_model_state_dict(scaled_fp8({k: v.clone() for k, v in state.items()}))
    return fp8, state


def _pinned(model, lam_scale: float):
    override = library().overrides
    adapter = randomized_adapter(lora_weights(model, pattern=PATTERN), experts=3, seed=4, lam_scale=lam_scale)
    return adapter, adapter.with_override(override.Override((override.Keyframe(0.0, override.GateRule("pin", 1)),)))


def _run(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(module output, the weight as loaded, hooks on the module) inside inference mode, then unloaded."""
    with torch.inference_mode():
        mm.load_models_gpu([model])
        try:
            module = model.model.get_submodule(MODULE)
            return module(x).double(), dequantised(module), len(module._forward_hooks)
        finally:
            mm.unload_all_models()


def _x(width: int, rows: int = 256) -> torch.Tensor:
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(2))


def test_router_live_on_fp8_matches_the_dequantised_reference(models, patcher):
    fp8, state = models
    adapter, _ = _pinned(fp8, 0.5)
    weight = dequantised(fp8.model.get_submodule(MODULE))
    bias = fp8.model.get_submodule(MODULE).bias.double()
    x = torch.randn(2, 5, weight.shape[1], generator=torch.Generator().manual_seed(1))
    got, _, hooks = _run(patcher.apply_adapter(fp8, adapter)[0], x)
    expected = F.linear(x.double(), weight, bias) + adapter.layers[LAYER].delta(x.double())
    assert hooks == 1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # against the fp32 original, the error is the checkpoint's own fp8 rounding, not ours
    exact = F.linear(x.double(), state[MODULE[len("diffusion_model."):] + ".weight"].double(), bias)
    exact = exact + adapter.layers[LAYER].delta(x.double())
    assert (got - exact).norm() / exact.norm() < 0.1
    assert dequantised(fp8.model.get_submodule(MODULE)).equal(weight)  # the fp8 weight itself is untouched


@pytest.mark.parametrize("lam_scale", [0.5, 5.0, 50.0])
def test_a_pin_is_folded_only_where_this_hosts_requantisation_keeps_its_effect(models, patcher, monkeypatch,
                                                                                lam_scale):
    fp8, _ = models
    adapter, pinned = _pinned(fp8, lam_scale)
    module = fp8.model.get_submodule(MODULE)
    weight, bias = dequantised(module), module.bias.double()
    delta_w = adapter.layers[LAYER].static_delta_weight(PIN).double()
    x = _x(weight.shape[1])
    reference, base = F.linear(x.double(), weight + delta_w, bias), F.linear(x.double(), weight, bias)

    # what folding does on this host, measured: the patched fp8 weight's output against the fp64 reference
    monkeypatch.setattr(patcher, "FOLD_TOLERANCE", math.inf)
    folded_out, patched_weight, hooks = _run(patcher.apply_adapter(fp8, pinned)[0], x)
    assert hooks == 0 and not patched_weight.equal(weight)  # forced: ComfyUI re-quantised the patched weight
    measured = float((folded_out - reference).norm() / (reference - base).norm())
    predicted = fold_error(weight, delta_w, patcher.stored_weight(module)[1])
    assert 0.8 < measured / predicted < 1.25, (measured, predicted)  # the prediction is this host's behaviour
    monkeypatch.undo()

    model, _ = patcher.apply_adapter(fp8, pinned)
    applied = patcher.applied_adapters(model)[-1]
    out, _, hooks = _run(model, x)
    if measured <= FOLD_TOLERANCE:
        assert hooks == 0 and MODULE not in applied.kept_live
        assert float((out - reference).norm() / (reference - base).norm()) <= FOLD_TOLERANCE
    else:  # kept as a forward hook at its constant gate: exact, and the summary says why
        error, storage = applied.kept_live[MODULE]
        assert hooks == 1 and error == pytest.approx(predicted) and "float8_e4m3fn" in storage
        assert "constant-gate Linears kept live instead of folded (more than 5% lost)" in applied.placement()
        assert "where a fold would lose" in applied.placement()
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert dequantised(fp8.model.get_submodule(MODULE)).equal(weight)  # unpatched: the fp8 bits are back
