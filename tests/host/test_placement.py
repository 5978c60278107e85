"""Where the adapter's tensors sit under ComfyUI's --lowvram / --novram weight budgets, and that hooks never copy
them host → device per call.

No GPU here: ComfyUI 0.3.75's own loader objects (``LoadedModel.model_load`` → ``ModelPatcher.partially_load`` →
``load``, exactly what ``load_models_gpu`` runs) are driven with the budgets ``load_models_gpu`` hands out, and the
meta device stands in for the GPU.  Meta tensors carry no data, so these tests show placement, memory accounting
and device copies, not numbers; every other host test checks the numbers on the CPU.  What a real GPU adds (CUDA
streams, pinned memory, the free-memory arithmetic) is not exercised.
"""

import logging

import comfy.model_management as mm
import comfy.model_patcher
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from devkit import tiny_dit
from devkit.adapters import chimera_file, lora_weights, randomized_adapter

META = torch.device("meta")
CPU = torch.device("cpu")
NO_VRAM_BUDGET = 0.1  # what load_models_gpu passes under VRAMState.NO_VRAM (and when nothing is left under LOW_VRAM)
PATTERN = r"(x_block_mlp_fc1|context_block_attn_qkv)$"


class DeviceCopies(TorchDispatchMode):
    """Records every tensor copy from one device to another (``aten._to_copy`` / ``copy_``) under it."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            source = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if isinstance(out, torch.Tensor) and source.device != out.device:
                self.copies.append((source.device, out.device, tuple(source.shape)))
        return out


@pytest.fixture(scope="module")
def fresh():
    """A model of its own: these tests move adapter holders to the meta device (their data is gone afterwards)."""
    return tiny_dit.load_mmdit(depth=2, seed=0)


def _applied(patcher, model, seed=5):
    adapter = randomized_adapter(lora_weights(model, pattern=PATTERN), experts=3, seed=seed)
    patched = patcher.apply_adapter(model, adapter)[0]
    (holder_patcher,) = patched.get_additional_models()
    return adapter, patched, holder_patcher


def _adapter_bytes(adapter) -> int:
    """fp32 bytes of every routed layer's tensors, counted from the adapter itself (down, ups, router)."""
    return sum(t.numel() * 4 for layer in adapter.layers.values() for t in layer.tensors().values())


def _devices(module) -> set:
    return {p.device for p in module.parameters()}


@pytest.mark.parametrize("budget", ["novram", "lowvram"])
def test_comfyuis_loader_leaves_a_plain_holder_in_host_memory_under_small_budgets(patcher, fresh, budget):
    """The finding: a holder in a stock ModelPatcher, loaded with the budget load_models_gpu gives under --novram
    (0.1 byte), or under --lowvram with a budget a little short of its size (what is left once the diffusion model
    took its share), is not (or not wholly) moved to the load device.  ComfyUI streams only its casting ops; a plain
    module that does not fit stays on the offload device, and each one is charged an offload buffer on top of its
    size, so even 90 % of the holder's size loads only part of it."""
    adapter, _, ours = _applied(patcher, fresh)
    stock = comfy.model_patcher.ModelPatcher(ours.model, load_device=META, offload_device=CPU)
    size = _adapter_bytes(adapter)
    assert stock.model_size() == size
    mm.LoadedModel(stock).model_load(NO_VRAM_BUDGET if budget == "novram" else 0.9 * size)
    if budget == "novram":
        assert _devices(stock.model) == {CPU} and stock.loaded_size() == 0
    else:
        assert _devices(stock.model) == {CPU, META} and 0 < stock.loaded_size() < 0.9 * size
    left = sum(p.numel() * 4 for p in stock.model.parameters() if p.device == CPU)
    assert left == size - stock.loaded_size()  # what ComfyUI counts as not loaded is exactly what stayed behind


@pytest.mark.parametrize("budget", [NO_VRAM_BUDGET, 0.5, 0], ids=["novram", "lowvram-half", "unlimited"])
def test_our_holder_loads_whole_on_the_load_device_with_its_memory_counted(patcher, fresh, budget):
    adapter, _, ours = _applied(patcher, fresh)
    size = _adapter_bytes(adapter)
    placed = type(ours)(ours.model, load_device=META, offload_device=CPU)
    mm.LoadedModel(placed).model_load(budget * size if budget == 0.5 else budget)
    assert _devices(placed.model) == {META}
    assert placed.loaded_size() == size and placed.model_size() == size  # ComfyUI accounts for all of it
    assert not placed.model.model_lowvram
    assert type(placed.clone()) is type(placed)  # clones keep the forced full load


def test_our_holder_comes_back_whole_after_a_partial_unload(patcher, fresh):
    """free_memory may unload part of a loaded holder for another model; the next load brings all of it back.
    Meta tensors cannot be copied back, so both devices are the CPU here and ComfyUI's own accounting (what it
    counts as loaded) is what is checked; a stock ModelPatcher, for contrast, stays partly unloaded."""
    adapter, _, ours = _applied(patcher, fresh)
    size = _adapter_bytes(adapter)
    for kind, full_again in ((type(ours), True), (comfy.model_patcher.ModelPatcher, False)):
        placed = kind(ours.model, load_device=CPU, offload_device=CPU)
        loaded = mm.LoadedModel(placed)
        loaded.model_load(0)  # loaded whole first (what an unlimited budget gives either kind)
        assert placed.loaded_size() == size
        freed = placed.partially_unload(CPU, memory_to_free=1)
        assert 0 < freed < size and placed.loaded_size() == size - freed and placed.model.model_lowvram
        loaded.model_load(NO_VRAM_BUDGET)
        assert (placed.loaded_size() == size) is full_again, kind
        placed.detach()


def _routed_hooks(pack, patched):
    hooks = [h for k, d in patched.object_patches.items() if k.endswith("._forward_hooks") for h in d.values()
             if isinstance(h, pack.nodes.patcher.RoutedHook)]
    assert hooks
    return hooks


def test_hooks_copy_nothing_per_call_once_comfyui_placed_the_holder(pack, patcher, fresh):
    _, patched, ours = _applied(patcher, fresh)
    placed = type(ours)(ours.model, load_device=META, offload_device=CPU)  # LoadedModel keeps only a weakref
    mm.LoadedModel(placed).model_load(NO_VRAM_BUDGET)
    assert _devices(placed.model) == {META}
    for hook in _routed_hooks(pack, patched):
        first = next(iter(hook.weights.legs()))[2]
        x = torch.empty(2, 7, first.in_features, device=META)
        out = torch.empty(2, 7, hook.out_features, device=META)
        for _ in range(3):
            with DeviceCopies() as seen:
                y = hook(None, (x,), out)
            assert seen.copies == [] and y.device == META and y.shape == out.shape


def test_a_hook_that_finds_its_tensors_elsewhere_moves_them_once_and_warns(pack, patcher, fresh, caplog):
    """A caller that runs the model without loading its additional models: the core library alone would copy the
    adapter's tensors to x's device on every call; the hook moves its holder once, then copies nothing."""
    _, patched, _ = _applied(patcher, fresh, seed=7)
    hooks = _routed_hooks(pack, patched)
    layer = next(iter(hooks[0].weights.legs()))[2]
    x = torch.empty(2, 7, layer.in_features, device=META)
    with DeviceCopies() as seen:
        layer.delta(x)
        layer.delta(x)
    assert len(seen.copies) >= 2 and {(s, d) for s, d, _ in seen.copies} == {(CPU, META)}  # the core: per call
    caplog.set_level(logging.WARNING, logger="ortho_hydra")
    for hook in hooks:
        x = torch.empty(2, 7, next(iter(hook.weights.legs()))[2].in_features, device=META)
        out = torch.empty(2, 7, hook.out_features, device=META)
        with DeviceCopies() as seen:
            hook(None, (x,), out)
        assert len(seen.copies) == len(list(hook.weights.parameters()))  # each tensor moved once
        with DeviceCopies() as seen:
            hook(None, (x,), out)
            hook(None, (x,), out)
        assert seen.copies == []
        assert _devices(hook.weights) == {META}
    warnings = [r for r in caplog.records if "moved once" in r.getMessage()]
    assert len(warnings) == 1 and "load_models_gpu" in warnings[0].getMessage()


@pytest.mark.parametrize("content_router", [False, True], ids=["per-linear-content", "cross-attention-content"])
def test_chimera_router_nets_are_placed_once_and_never_copied_per_call(pack, tmp_path, content_router):
    """ChimeraHydra's network-level routers (the frequency MLP every layer reads, the content MLP on the text
    adapter) are not per-Linear tensors; they get one holder each in the same ModelPatcher, counted once, placed
    with the rest, and the hooks read them from there."""
    from devkit.adapters import library

    model = tiny_dit.load_cosmos(num_blocks=2, seed=5)
    if content_router:
        model.model.diffusion_model.llm_adapter = torch.nn.Linear(1024, 1024)
    t, path = chimera_file(tmp_path, model, content_router)
    adapter = library().load(path)
    patched = pack.nodes.patcher.apply_adapter(model, adapter)[0]
    (ours,) = patched.get_additional_models()
    nets = {k for k in ours.model if k.startswith("net_")}
    assert nets == ({"net_layer_0", "net_content_0"} if content_router else {"net_layer_0"})
    assert ours.model_size() == sum(v.numel() * 4 for k, v in t.items() if not k.endswith(".alpha"))  # each once
    placed = type(ours)(ours.model, load_device=META, offload_device=CPU)
    mm.LoadedModel(placed).model_load(NO_VRAM_BUDGET)
    assert _devices(placed.model) == {META}
    hooks = _routed_hooks(pack, patched)
    state = hooks[0].state
    state.sigma, state.fei = torch.full((2,), 0.5, device=META), torch.empty(2, 2, device=META)
    if content_router:
        (content_hook,) = [h for h in patched.object_patches["diffusion_model.llm_adapter._forward_hooks"].values()
                           if isinstance(h, pack.nodes.patcher.ContentRouterHook)]
    for _ in range(2):
        with DeviceCopies() as seen:
            if content_router:
                content_hook(None, (), torch.empty(2, 5, 1024, device=META))
                assert state.extra[pack.ortho_hydra.chimera.CONTENT_GATE_KEY].device == META
            for hook in hooks:
                first = next(iter(hook.weights.legs()))[2]
                assert first.freq.net.w0.device == META  # the layer computes with the placed frequency MLP
                hook(None, (torch.empty(2, 7, first.in_features, device=META),),
                     torch.empty(2, 7, hook.out_features, device=META))
        assert seen.copies == []
    state.sigma = state.fei = None
