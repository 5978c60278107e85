"""An applied adapter under ComfyUI 0.33's multi-GPU deep clones and CFG split, on the CPU.

The "MultiGPU CFG Split" node (comfy_extras/nodes_multigpu.py) clones the model only for extra *GPU* devices, and
``get_all_torch_devices`` lists just the CPU here, so on the CPU the node returns the model unsplit.  These tests call
what it calls (comfy.multigpu.create_multigpu_deepclones: ``deepclone_multigpu`` per extra device, then
``match_multigpu_clones``) by hand, with ``cpu:0`` as the second device: ComfyUI keys device copies and worker threads
by ``torch.device`` and ``cpu:0 != cpu``, so the sampler really splits the conds over two model copies in two
threads.  What real GPUs add (CUDA streams, copies between devices) is not exercised.
"""

import threading

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import chimera_file, library, lora_weights, randomized_adapter

if not hasattr(comfy.model_patcher.ModelPatcher, "deepclone_multigpu"):
    pytest.skip("this ComfyUI has no multi-GPU split (added after 0.3.75)", allow_module_level=True)

CPU, SECOND = torch.device("cpu"), torch.device("cpu", 0)
ROUTER = dict(mode="live", expert=0, weights="", renormalize=True, temperature=1.0, top_k=1, group="all",
              block_start=-1, block_end=-1, layer_regex="", start_percent=0.0, end_percent=1.0, keyframes="",
              interpolation="step", side="both", profile=None)
KINDS = ["live", "scheduled", "stacked", "pinned"]


@pytest.fixture(scope="module")
def model():
    """The tiny MMDiT with a reload factory, as ComfyUI's file loaders give theirs (sd.py:2361): deep clones of the
    diffusion model start from a fresh load."""
    m = tiny_dit.load_mmdit(depth=2, seed=0)
    m.cached_patcher_init = (tiny_dit.load_mmdit, (2, 0))
    return m


@pytest.fixture(scope="module")
def wirings(model, pack):
    weights = lora_weights(model, pattern=r"(attn_qkv|mlp_fc1)$")
    live = randomized_adapter(weights, rank=4, experts=3, seed=0)
    route = pack.nodes.router.OrthoHydraRouter.execute
    # live for the first half of the schedule, pinned to expert 2 after: hooks that read the keyframe index
    scheduled = route(randomized_adapter(weights, rank=4, experts=3, seed=5),
                      **{**ROUTER, "mode": "pin", "expert": 2, "start_percent": 0.5}).args[0]
    pinned = route(live, **{**ROUTER, "mode": "pin", "expert": 1}).args[0]  # folded: weight patches, no hooks
    apply = pack.nodes.patcher.apply_adapter
    return {"live": lambda: apply(model, live)[0], "scheduled": lambda: apply(model, scheduled)[0],
            "stacked": lambda: apply(apply(model, live)[0], scheduled)[0], "pinned": lambda: apply(model, pinned)[0]}


@pytest.fixture(scope="module")
def pristine(model):
    """The base weights as loaded, and the unpatched sample, to check unpatching against."""
    return {k: v.clone() for k, v in model.model.state_dict().items()}, _sample(model)


def _sample(model):
    return tiny_dit.sample(model, torch.zeros(1, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1),
                           tiny_dit.mmdit_conditioning(seed=2), steps=3)


def _unload_all():
    for device in (CPU, SECOND):  # unload_all_models visits only get_all_torch_devices(): the CPU
        mm.free_memory(1e30, device)


def _our_hooks(pack, patcher):
    bound = pack.nodes.hooks.BoundHook
    return [h for path, hooks in patcher.object_patches.items() if path.endswith("._forward_hooks")
            for h in hooks.values() if isinstance(h, bound)]


def _assert_bound_to_its_own(pack, patcher, other):
    """Every hook of ours on ``patcher`` reads a holder among ``patcher``'s additional models and a state among its
    attachments, none of them ``other``'s, and no holder parameter shares memory with ``other``'s."""

    def holders(p):
        return {id(m): m for a in p.get_additional_models() if isinstance(a.model, torch.nn.ModuleDict)
                for m in a.model.values()}

    def states(p):
        return {id(a.state) for a in pack.nodes.patcher.applied_adapters(p)}

    own, theirs = holders(patcher), holders(other)
    hooks = _our_hooks(pack, patcher)
    assert hooks and own and not own.keys() & theirs.keys()
    assert states(patcher) and not states(patcher) & states(other)
    for hook in hooks:
        assert id(hook.weights) in own and id(hook.state) in states(patcher)
    ptrs = {p.data_ptr() for m in theirs.values() for p in m.parameters()}
    assert not any(p.data_ptr() in ptrs for m in own.values() for p in m.parameters())


def _assert_unpatched(model, weights):
    assert not any(m._forward_hooks for m in model.model.modules())
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize("kind", KINDS)
def test_a_deep_clone_and_its_original_sample_like_the_original_alone(pack, model, wirings, pristine, kind):
    weights, base_sample = pristine
    patched = wirings[kind]()
    reference = _sample(patched)  # the eager, single-device reference
    assert (reference - base_sample).abs().max() > 1e-2  # the adapter really changes the sample
    clone = patched.deepclone_multigpu(new_load_device=CPU)
    assert clone.model is not patched.model
    if kind != "pinned":
        _assert_bound_to_its_own(pack, clone, patched)
        _assert_bound_to_its_own(pack, patched, clone)
    for _ in range(2):  # interleaved: each load re-applies its own object patches on its own model
        assert torch.equal(_sample(clone), reference)
        assert torch.equal(_sample(patched), reference)
    _unload_all()
    _assert_unpatched(model, weights)
    _assert_unpatched(clone, tiny_dit.load_mmdit(2, 0).model.state_dict())
    assert torch.equal(_sample(model), base_sample)


@pytest.mark.parametrize("kind", ["live", "scheduled", "stacked"])
def test_the_cfg_split_over_two_devices_matches_the_single_device_sample(pack, model, wirings, pristine, kind):
    """What "MultiGPU CFG Split" sets up, then sampled: cond and uncond run at once on two model copies in two
    worker threads, each copy's hooks reading its own holder and state, through the main model's σ wrapper."""
    weights, base_sample = pristine
    patched = wirings[kind]()
    reference = _sample(patched)
    split = patched.clone()
    copy = split.deepclone_multigpu(new_load_device=SECOND)
    copy.is_multigpu_base_clone = True
    split.set_additional_models("multigpu", [copy])
    split.match_multigpu_clones()
    calls = []

    def record(executor, *args, **kwargs):
        calls.append((executor.class_obj, threading.current_thread().name))
        return executor(*args, **kwargs)

    split.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "test_multigpu", record)
    for _ in range(2):  # the second run re-matches: fresh device copies of the main patcher
        calls.clear()
        out = _sample(split)
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5 * reference.abs().max().item())
        (device_copy,) = split.get_additional_models_with_key("multigpu")
        assert device_copy.model is copy.model and device_copy.load_device == SECOND
        assert {m for m, _ in calls} == {split.model, copy.model}  # both copies ran...
        assert len({t for _, t in calls}) == 2  # ...each in its own worker thread
        _assert_bound_to_its_own(pack, device_copy, split)
    assert (reference - base_sample).abs().max() > 1e3 * 1e-5 * reference.abs().max()
    _unload_all()
    _assert_unpatched(model, weights)
    _assert_unpatched(copy, tiny_dit.load_mmdit(2, 0).model.state_dict())


def test_a_chimera_deep_clone_reads_its_own_router_nets_and_samples_like_the_original(pack, tmp_path):
    """ChimeraHydra layers read a frequency-router MLP held once for all of them: in the copy each layer's holder
    must reference the copy's router-net holder, while the adapter layers themselves are shared, not duplicated."""
    model = tiny_dit.load_cosmos(num_blocks=2, seed=5)
    model.cached_patcher_init = (tiny_dit.load_cosmos, (2, 5))
    patched = pack.nodes.patcher.apply_adapter(model, library().load(chimera_file(tmp_path, model, False)[1]))[0]
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    latent, pos, neg = torch.zeros(1, 16, 1, 16, 16), tiny_dit.cosmos_conditioning(seed=1), \
        tiny_dit.cosmos_conditioning(seed=2)
    reference = tiny_dit.sample(patched, latent, pos, neg, steps=2)
    clone = patched.deepclone_multigpu(new_load_device=CPU)
    _assert_bound_to_its_own(pack, clone, patched)
    (original,), (copied,) = ([a.model for a in p.get_additional_models()] for p in (patched, clone))
    nets = [net for hook in _our_hooks(pack, clone) for roles in hook.weights.nets.values() for net in roles.values()]
    assert nets and all(any(net is m for m in copied.values()) for net in nets)
    layers = [(a[1], b[1]) for m, n in zip(copied.values(), original.values(), strict=True)
              for a, b in zip(getattr(m, "specs", ()), getattr(n, "specs", ()), strict=True)]
    assert layers and all(a is b for a, b in layers)  # the same layer objects, not copies
    assert torch.equal(tiny_dit.sample(clone, latent, pos, neg, steps=2), reference)
    assert torch.equal(tiny_dit.sample(patched, latent, pos, neg, steps=2), reference)
    _unload_all()
    _assert_unpatched(model, weights)
