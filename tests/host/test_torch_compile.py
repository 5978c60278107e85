"""Router-live adapters under ComfyUI's TorchCompileModel wiring, in every order, against eager references.

Dynamo's guards, not the backend, decide whether a cached graph is reused (that is where the adapter used to
vanish), so most wiring orders run with the ``eager`` backend: dynamo's tracing and guards without code generation.
One test runs inductor end to end.  Attention is ComfyUI's SDPA path (its GPU default): the CPU default
(sub-quadratic) graph-breaks on a free-memory query and recompiles whenever free RAM changes, which would make
compile counts meaningless.
"""

import comfy.ldm.modules.attention as attention
import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
import comfy.model_management as mm
import pytest
import torch
import torch._dynamo
from comfy_api.torch_helpers import set_torch_compile_wrapper
from torch._dynamo.utils import counters

from devkit import tiny_dit
from devkit.adapters import lora_weights, randomized_adapter

TARGETS = r"x_block_(attn_qkv|mlp_fc1)$"  # few hooks keep tracing short; both GEMM shapes
ROUTER = dict(mode="live", expert=0, weights="", renormalize=True, temperature=1.0, top_k=1, group="all",
              block_start=-1, block_end=-1, layer_regex="", start_percent=0.0, end_percent=1.0, keyframes="",
              interpolation="step", side="both", profile=None)
TOL = 1e-4  # relative to the sample's largest entry (inductor fp32 lands near 1e-6)


@pytest.fixture(scope="module", autouse=True)
def sdpa_attention():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmdit, "optimized_attention", attention.attention_pytorch)
        yield
    mm.unload_all_models()


@pytest.fixture(autouse=True)
def fresh_dynamo(monkeypatch):
    """Each test starts like a fresh process: nothing compiled, torch's default hook-guard setting."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", True)
    yield
    mm.unload_all_models()
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def adapters(base, pack):
    weights = lora_weights(base, pattern=TARGETS)
    first = randomized_adapter(weights, rank=4, experts=3, seed=0)
    route = pack.nodes.router.OrthoHydraRouter.execute
    return {"first": first, "second": randomized_adapter(weights, rank=4, experts=3, seed=5),
            "pinned": route(first, **{**ROUTER, "mode": "pin", "expert": 1}).args[0],
            "scheduled": route(first, **{**ROUTER, "mode": "pin", "expert": 2, "start_percent": 0.5}).args[0]}


def _sample(model):
    latent = torch.zeros(1, 16, 16, 16)
    return tiny_dit.sample(model, latent, tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2),
                           steps=4)


@pytest.fixture(scope="module")
def eager(base, adapters, patcher, sdpa_attention):
    """Reference samples of every wiring, uncompiled."""
    apply = patcher.apply_adapter
    refs = {"base": _sample(base), "first": _sample(apply(base, adapters["first"])[0]),
            "half": _sample(apply(base, adapters["first"], 0.5)[0]),
            "stacked": _sample(apply(apply(base, adapters["first"])[0], adapters["second"])[0]),
            "pinned": _sample(apply(base, adapters["pinned"])[0]),
            "scheduled": _sample(apply(base, adapters["scheduled"])[0])}
    mm.unload_all_models()
    for name, ref in refs.items():  # every wiring really changes the sample, so a stale graph cannot pass
        others = [other for key, other in refs.items() if key != name]
        assert min((ref - other).abs().max() for other in others) > 100 * TOL * ref.abs().max(), name
    return refs


def _compiled(model, backend):
    """ComfyUI's TorchCompileModel node: a clone carrying the compile wrapper."""
    clone = model.clone()
    set_torch_compile_wrapper(clone, backend=backend)
    return clone


def _compiles():
    return counters["frames"]["total"]  # dynamo frame compilations, first traces and recompiles alike


def _run(model, expected, refs, new_compiles: int):
    """Sample ``model``; assert it matches the eager ``expected`` and compiled at most ``new_compiles`` times."""
    before = _compiles()
    out = _sample(model)
    scale = refs[expected].abs().max()
    assert (out - refs[expected]).abs().max() <= TOL * scale, expected
    if expected != "base":  # the adapter's effect is there, at full size
        assert (out - refs["base"]).abs().max() > 100 * TOL * scale
    assert _compiles() - before <= new_compiles, (expected, _compiles() - before)


def test_inductor_base_sampled_first_then_adapter_bypass_and_reenable(base, adapters, patcher, eager):
    compiled = _compiled(base, "inductor")
    _run(compiled, "base", eager, new_compiles=1)
    adapted, _ = patcher.apply_adapter(compiled, adapters["first"])
    # the σ the router reads is specialised on the first step, then made dynamic: one recompile, not one per step
    _run(adapted, "first", eager, new_compiles=2)
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    _run(compiled, "base", eager, new_compiles=1)  # the base graph traced before the apply was dropped, once
    _run(adapted, "first", eager, new_compiles=0)
    _run(compiled, "base", eager, new_compiles=0)


def test_compile_after_apply_then_a_compiled_clone_without_the_adapter(base, adapters, patcher, eager):
    adapted = _compiled(patcher.apply_adapter(base, adapters["first"])[0], "eager")
    _run(adapted, "first", eager, new_compiles=2)
    compiled = _compiled(base, "eager")  # a second compile node: same diffusion model, same dynamo cache
    _run(compiled, "base", eager, new_compiles=1)
    _run(adapted, "first", eager, new_compiles=0)
    _run(compiled, "base", eager, new_compiles=0)


def test_applies_to_a_compiled_base_strength_stacking_overrides_bypass(base, adapters, patcher, eager):
    apply = patcher.apply_adapter
    start = _compiles()
    compiled = _compiled(base, "eager")
    adapted = apply(compiled, adapters["first"])[0]
    _run(adapted, "first", eager, new_compiles=2)
    _run(apply(compiled, adapters["first"], 0.5)[0], "half", eager, new_compiles=1)  # strength change
    _run(apply(adapted, adapters["second"])[0], "stacked", eager, new_compiles=2)  # two applies stacked
    # a pin for every layer folds into weight patches: no hooks, so the plain graph (the bypass reuses it)
    _run(apply(compiled, adapters["pinned"])[0], "pinned", eager, new_compiles=1)
    _run(apply(compiled, adapters["scheduled"])[0], "scheduled", eager, new_compiles=2)  # live, then pinned
    # wirings seen before run from the cache: bypass, re-enable, back to the live router
    for expected, model in (("base", compiled), ("first", adapted), ("base", compiled), ("first", adapted)):
        _run(model, expected, eager, new_compiles=0)
    # within dynamo's recompile limit for the model's forward, so every run above ran compiled code
    assert _compiles() - start <= torch._dynamo.config.recompile_limit


def test_apply_switches_hook_guards_on_and_clears_stale_graphs(base, adapters, patcher, eager):
    compiled = _compiled(base, "eager")
    _run(compiled, "base", eager, new_compiles=1)  # traced with torch's default: no guard on the empty hook dicts
    patcher.apply_adapter(base, adapters["first"])
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    _run(compiled, "base", eager, new_compiles=1)  # retraced, now guarding on hooks
    patcher.apply_adapter(base, adapters["first"])
    _run(compiled, "base", eager, new_compiles=0)  # later applies leave the cache alone
