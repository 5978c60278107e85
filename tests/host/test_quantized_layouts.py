"""Every quantised weight layout the installed ComfyUI knows (``comfy.quant_ops.QUANT_ALGOS``: per-tensor fp8 on
0.3.75; fp8 e4m3 / e5m2, nvfp4, mxfp8, int8 and the 4-bit layouts on 0.33), loaded from a checkpoint the way
ComfyUI's mixed-precision ops load it and run on the CPU inside inference mode.

Router-live hooks must match the dequantised fp64 reference.  A pinned expert is folded into the weight only where
the weight's re-quantisation keeps its effect (per-tensor fp8, predicted); layouts whose rounding the pack does not
model are never folded: those Linears keep a forward hook at the pinned gate, exact, and the summary names the
layout.  Layouts a tiny model cannot hold (block sizes larger than its width) are skipped by name.
"""

import json

import comfy.model_management as mm
import comfy.quant_ops as quant_ops
import comfy.sd
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter

KEY = "joint_blocks.1.x_block.mlp.fc2"  # 512 inputs: wide enough for 256-wide rotation groups
MODULE = f"diffusion_model.{KEY}"
LAYER = "lora_unet_joint_blocks_1_x_block_mlp_fc2"
PATTERN = r"joint_blocks_1_x_block_mlp_fc2$"
FORMATS = list(quant_ops.QUANT_ALGOS)


def _quantised_keys(weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """The checkpoint keys of ``weight`` in ``fmt``, made by the host's own quantiser."""
    layout = quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    qt = quant_ops.QuantizedTensor.from_float(weight, layout)
    if hasattr(qt, "state_dict"):  # comfy-kitchen names its own keys
        keys = {k[len("x."):]: v for k, v in qt.state_dict("x.weight").items()}
    else:  # 0.3.x: per-tensor fp8 only, data and one scale
        keys = {"weight": qt._qdata, "weight_scale": qt._layout_params["scale"].reshape(())}
    conf = json.dumps({"format": fmt}).encode()
    return {**keys, "comfy_quant": torch.tensor(list(conf), dtype=torch.uint8)}


@pytest.fixture(scope="module", params=FORMATS)
def quantised(request):
    fmt = request.param
    state = tiny_dit.mmdit_state_dict(depth=2, seed=0)
    try:
        keys = _quantised_keys(state[f"{KEY}.weight"], fmt)
    except ValueError as exc:  # e.g. asym_w4a8_int8's 16-row groups and 256-wide rotations on a 128-row weight
        pytest.skip(f"{fmt} cannot hold this tiny model's {tuple(state[f'{KEY}.weight'].shape)} weight: {exc}")
    state.pop(f"{KEY}.weight")
    state.update({f"{KEY}.{name}": value for name, value in keys.items()})
    # 0.3.x names quantised layers in the file's metadata; newer hosts read a comfy_quant key per layer
    metadata = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": {KEY: {"format": fmt}}})}
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model_state_dict(state, metadata=metadata)
    module = model.model.get_submodule(MODULE)
    assert hasattr(module.weight, "_qdata"), f"{fmt}: the host did not load a QuantizedTensor"
    return fmt, model


def _run(model, x):
    with torch.inference_mode():
        mm.load_models_gpu([model])
        try:
            module = model.model.get_submodule(MODULE)
            return module(x).double(), len(module._forward_hooks), module.weight._qdata.clone()
        finally:
            mm.unload_all_models()


def _reference(model, x, delta: torch.Tensor | float):
    """The unpatched Linear's output, as the host computes it, plus ``x ΔWᵀ`` in fp64.  Layouts that also quantise
    the activations (int8, w4a4, w4a8) differ from a dequantised-weight matmul by the host's own rounding of x;
    what the adapter adds must be exact on top of whatever the host computes."""
    base, _, _ = _run(model, x)
    return base + F.linear(x.double(), delta) if torch.is_tensor(delta) else base


def test_the_reference_is_the_dequantised_weight_where_the_layout_keeps_activations(quantised):
    fmt, model = quantised
    x = torch.randn(6, 512, generator=torch.Generator().manual_seed(5))
    module = model.model.get_submodule(MODULE)
    exact = F.linear(x.double(), module.weight.dequantize().double(), module.bias.double())
    error = float((_reference(model, x, 0) - exact).norm() / exact.norm())
    if quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"].startswith(("TensorCoreFP8", "TensorCoreNVFP4",
                                                                     "TensorCoreMXFP8")):
        assert error < 1e-5, (fmt, error)  # fp8 / fp4 kernels are off on the CPU: the host dequantises, multiplies
    else:
        assert error < 0.2, (fmt, error)  # activations rounded too, but the same layer


def _tolerance(model) -> float:
    """The host runs a quantised Linear in its compute dtype; fp32 here unless the host chose lower."""
    dtype = model.model.get_submodule(MODULE).weight.dtype
    return 1e-5 if dtype == torch.float32 else 2e-2


def test_router_live_matches_the_dequantised_reference(quantised, patcher):
    fmt, model = quantised
    adapter = randomized_adapter(lora_weights(model, pattern=PATTERN), experts=3, seed=7)
    x = torch.randn(6, 512, generator=torch.Generator().manual_seed(3))
    stored = model.model.get_submodule(MODULE).weight._qdata.clone()
    got, hooks, _ = _run(patcher.apply_adapter(model, adapter, fold=False)[0], x)
    expected = _reference(model, x, 0) + adapter.layers[LAYER].delta(x.double())  # unpatched output + ours
    assert hooks == 1
    tol = _tolerance(model)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol * float(expected.abs().max()))
    assert torch.equal(model.model.get_submodule(MODULE).weight._qdata, stored), fmt  # the stored bits untouched


def test_a_pin_folds_only_where_the_layouts_rounding_keeps_it_and_says_why(quantised, patcher):
    fmt, model = quantised
    override = library().overrides
    adapter = randomized_adapter(lora_weights(model, pattern=PATTERN), experts=3, seed=7)
    pinned = adapter.with_override(override.Override((override.Keyframe(0.0, override.GateRule("pin", 2)),)))
    delta = adapter.layers[LAYER].static_delta_weight(torch.tensor([0.0, 0.0, 1.0])).double()
    x = torch.randn(64, 512, generator=torch.Generator().manual_seed(4))
    stored = model.model.get_submodule(MODULE).weight._qdata.clone()
    patched, _ = patcher.apply_adapter(model, pinned)
    applied = patcher.applied_adapters(patched)[-1]
    got, hooks, _ = _run(patched, x)
    reference, base = _reference(model, x, delta), _reference(model, x, 0)
    layout = quant_ops.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
    if MODULE in applied.kept_live:
        assert hooks == 1 and layout in applied.kept_live[MODULE][1], applied.kept_live
        assert layout in applied.placement()
        tol = _tolerance(model)
        torch.testing.assert_close(got, reference, rtol=tol, atol=tol * float(reference.abs().max()))
    else:  # folded: only per-tensor fp8, and the host's re-quantisation kept the effect within the tolerance
        assert hooks == 0 and "FP8" in layout and "MX" not in layout, layout
        assert float((got - reference).norm() / (reference - base).norm()) <= 0.05
    assert torch.equal(model.model.get_submodule(MODULE).weight._qdata, stored), fmt  # unpatched bit for bit
