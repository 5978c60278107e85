"""The adapter's holder patcher under ComfyUI 0.33's dynamic VRAM, as far as the CPU can run it.

Dynamic VRAM needs comfy-aimdo initialised before ``comfy.model_management`` is imported, so the checks run in a
process of their own (this file, run as a script) and report what they measured; the tests assert on it.  On the
CPU, ComfyUI builds no ModelPatcherDynamic by itself (``__new__`` reroutes a CPU load device) and its loader has no
vbar, so the holder patcher is built as :func:`devkit.dynamic_vram.dynamic_on_cpu` describes and the diffusion model
stays a legacy patcher.  What runs is ComfyUI's dynamic ``partially_load`` / ``load`` on our holder (the code path for
modules without casting ops is the one CUDA takes too) and a sample through it; what only a GPU shows (streamed
weights, weight patches applied at cast time, memory freeing between dynamic models) is
scripts/gpu_checks/dynamic_vram.py's.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARK = "DYNAMIC_VRAM_PROBE "
PATTERN = r"(attn_qkv|mlp_fc1)$"


def probe() -> dict:
    """Measure, in a fresh process, what the tests below check."""
    from devkit.dynamic_vram import boot_dynamic, dynamic_on_cpu

    boot_dynamic(cpu=True)
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    from devkit import tiny_dit
    from devkit.adapters import lora_weights, randomized_adapter
    from devkit.host import import_pack

    pack = import_pack()
    placement, patcher = pack.nodes.placement, pack.nodes.patcher

    def sample(model):
        return tiny_dit.sample(model, torch.zeros(1, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1),
                               tiny_dit.mmdit_conditioning(seed=2), steps=2)

    base = tiny_dit.load_mmdit(depth=2, seed=0)
    dynamic_base = dynamic_on_cpu(comfy.model_patcher.ModelPatcherDynamic, base.model)
    adapter = randomized_adapter(lora_weights(base, pattern=PATTERN), rank=4, experts=3, seed=0)
    adapter_bytes = sum(t.numel() * 4 for layer in adapter.layers.values() for t in layer.tensors().values())
    on_dynamic = patcher.apply_adapter(dynamic_base, adapter)[0]
    patched = patcher.apply_adapter(base, adapter)[0]
    (key,) = [k for k in patched.additional_models if k.startswith(patcher.ADDITIONAL_MODELS_PREFIX)]
    (legacy,) = patched.get_additional_models_with_key(key)
    reference, base_sample = sample(patched), sample(base)
    mm.unload_all_models()
    ours = dynamic_on_cpu(placement.weights_patcher_class(dynamic_base), legacy.model)
    patched.set_additional_models(key, [ours])
    mm.load_models_gpu([patched, *patched.get_nested_additional_models()])  # what prepare_sampling loads
    loaded = {"loaded_size": ours.loaded_size(), "model_size": ours.model_size(), "backup": sorted(ours.backup),
              "params": sorted(name for name, _ in ours.model.named_parameters()),
              "on_load_device": all(p.device == ours.load_device for p in ours.model.parameters())}
    dynamic_sample = sample(patched)  # left loaded: a dynamic unpatch asserts a non-CPU device (:2039)
    return {
        "class_for_dynamic": placement.weights_patcher_class(dynamic_base).__name__,
        "class_for_legacy": placement.weights_patcher_class(base).__name__,
        "applied_on_dynamic": [type(p).__name__ for p in on_dynamic.get_additional_models()],
        "is_dynamic": ours.is_dynamic(), "adapter_bytes": adapter_bytes, **loaded,
        "sample_equal": torch.equal(dynamic_sample, reference),
        "adapter_effect": float((reference - base_sample).abs().max()),
        "cpu_clone": type(ours.clone()).__name__,
    }


@pytest.fixture(scope="module")
def measured():
    import comfy.model_patcher

    if not hasattr(comfy.model_patcher, "ModelPatcherDynamic") or importlib.util.find_spec("comfy_aimdo") is None:
        pytest.skip("this ComfyUI has no dynamic VRAM (ModelPatcherDynamic and comfy-aimdo came after 0.3.75)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in run.stdout.splitlines() if line.startswith(MARK)]
    assert run.returncode == 0 and lines, run.stderr[-4000:]
    return json.loads(lines[-1][len(MARK):])


def test_the_holder_patcher_follows_the_models_kind(measured):
    assert measured["class_for_dynamic"] == "DynamicAdapterWeightsPatcher"
    assert measured["class_for_legacy"] == "AdapterWeightsPatcher"
    # on the CPU, ComfyUI's clone of a dynamic patcher is a legacy one (ModelPatcherDynamic.__new__), and the holder's
    # patcher follows the clone it is attached to
    assert measured["applied_on_dynamic"] == ["AdapterWeightsPatcher"]
    # a CPU clone of ours falls back to our whole-loading class, not to a stock ModelPatcher
    assert measured["cpu_clone"] == "AdapterWeightsPatcher"


def test_comfyuis_dynamic_loader_loads_the_holder_whole_and_counts_it(measured):
    """Its ``load`` ran (a forced full load would have tripped its ``assert not full_load``), moved every parameter
    through the branch for modules without casting ops, and counts all of it as loaded."""
    assert measured["is_dynamic"]
    assert measured["backup"] == measured["params"] and measured["on_load_device"]
    assert measured["loaded_size"] == measured["model_size"] == measured["adapter_bytes"]


def test_sampling_through_the_dynamic_holder_equals_the_legacy_one(measured):
    assert measured["sample_equal"] and measured["adapter_effect"] > 1e-2


def test_folded_patches_keep_their_weights_shape_so_the_dynamic_loader_streams_them(pack, base):
    """ModelPatcherDynamic force-loads a module whose patches would change its weight's shape (0.33's
    ``comfy.lora.calculate_shape``, model_patcher.py:1928) instead of patching it at cast time; a pinned adapter's
    folded patches never do, and their keys are the model's own weight names, as on 0.3.75 (no new key forms)."""
    import comfy.lora

    if not hasattr(comfy.lora, "calculate_shape"):
        pytest.skip("this ComfyUI has no calculate_shape (added with dynamic VRAM)")
    from devkit.adapters import lora_weights, randomized_adapter

    adapter = randomized_adapter(lora_weights(base, pattern=PATTERN), rank=4, experts=3, seed=0)
    router = pack.nodes.router.OrthoHydraRouter.execute
    pinned = router(adapter, mode="pin", expert=1, weights="", renormalize=True, temperature=1.0, top_k=1,
                    group="all", block_start=-1, block_end=-1, layer_regex="", start_percent=0.0, end_percent=1.0,
                    keyframes="", interpolation="step", side="both", profile=None).args[0]
    patched = pack.nodes.patcher.apply_adapter(base, pinned)[0]
    weights = patched.model.state_dict()
    assert len(patched.patches) == len(adapter.layers)
    for key, patches in patched.patches.items():
        assert isinstance(key, str) and key in weights
        assert comfy.lora.calculate_shape(patches, weights[key], key) == weights[key].shape


if __name__ == "__main__":
    print(MARK + json.dumps(probe()), flush=True)
