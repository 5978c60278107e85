"""ComfyUI plumbing for the in-graph trainer: inference-mode weights, training hooks, checkpointing, chart events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ortho_hydra.checkpointing import checkpointed, recomputing

from .hooks import SamplingState, install_forward_hook, install_sampling_state

TRAIN_WRAPPER_KEY = "ortho_hydra_train"
EVENT = "ortho_hydra.train"


def _aliasable(tensor: torch.Tensor) -> bool:
    """A plain strided tensor, whose storage a normal tensor can view (not a quantised or other subclass)."""
    return type(tensor) in (torch.Tensor, nn.Parameter) and tensor.layout == torch.strided


def _normal_view(tensor: torch.Tensor) -> torch.Tensor:
    """A normal tensor over ``tensor``'s memory (made outside inference mode)."""
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    return nn.Parameter(view, requires_grad=False) if isinstance(tensor, nn.Parameter) else view


@contextlib.contextmanager
def frozen_tensors_out_of_inference(model: nn.Module) -> Iterator[int]:
    """Every plain inference tensor of ``model`` (a loaded model's weights and buffers) is, while the block runs,
    replaced in its module by a normal tensor over the same memory; yields how many were.

    ComfyUI runs nodes inside ``torch.inference_mode()``, so a model loaded there holds inference tensors, and
    autograd refuses to save those for backward (a frozen Linear's weight is saved to get the gradient of its input).
    A normal view of each one's own storage costs no memory and no per-forward copy.  The original tensor objects
    go back on exit, before ComfyUI moves or unpatches the model (it finds them as it left them).  Call it once the
    model is loaded where it will run: a move replaces the tensors.  (Re-pointing ``.data`` instead would leave
    tensors that claim to be normal but have no version counter.)
    """
    views: dict[int, torch.Tensor] = {}
    swapped = []
    try:
        for module in model.modules():
            for slots in (module._parameters, module._buffers):
                for name, tensor in list(slots.items()):
                    if tensor is None or not tensor.is_inference() or not _aliasable(tensor):
                        continue
                    if id(tensor) not in views:
                        views[id(tensor)] = _normal_view(tensor)
                    swapped.append((slots, name, tensor))
                    slots[name] = views[id(tensor)]
        yield len(views)
    finally:
        for slots, name, tensor in reversed(swapped):
            slots[name] = tensor


def _as_normal_tensor(weight: torch.Tensor) -> torch.Tensor:
    return weight.clone() if weight.is_inference() else weight


def wrap_inference_weights(mp) -> int:
    """The fallback for inference tensors :func:`frozen_tensors_out_of_inference` cannot view (tensor subclasses,
    such as quantised layouts): in this training clone only, a ComfyUI-op weight gets a weight wrapper that hands the
    forward a normal copy, and any other parameter or buffer a normal copy through an object patch; both are reverted
    on unpatch.  Call before the model is loaded (weight wrappers are installed by the load).
    """
    count = 0
    for name, module in mp.model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for attr, tensor in tensors:
            if tensor is None or not tensor.is_inference() or _aliasable(tensor):
                continue
            key = f"{name}.{attr}" if name else attr
            if hasattr(module, "weight_function") and attr in ("weight", "bias"):
                mp.add_weight_wrapper(key, _as_normal_tensor)
            elif isinstance(tensor, torch.nn.Parameter):
                mp.add_object_patch(key, torch.nn.Parameter(tensor.clone(), requires_grad=False))
            else:
                mp.add_object_patch(key, tensor.clone())
            count += 1
    if count:
        mp.force_cast_weights = True
    return count


class TrainingHook:
    """y <- y + Δy from a trainable layer; σ comes from the sampling state, gates go to the step's store.

    While ``router_inputs`` is a dict (the calibration pass), the hook also stores the router's pooled input there;
    while ``router_sink`` is set (label guidance on a detached layer input), it also receives the gate computed on the
    detached input (``OrthoHydraLinear.guidance_gate``), from the same runtime layer as Δy: the factors are built
    once per forward.  While a checkpointed block is re-run for the backward pass
    (:func:`~ortho_hydra.checkpointing.recomputing`), the hook computes exactly what it computed in the forward but
    hands nothing to the stores: the loss and the trace take the forward's gates, and a re-run gate would keep the
    re-run's activations alive through its graph.
    """

    def __init__(self, name: str, layer, state: SamplingState, sink) -> None:
        self.name = name
        self.layer = layer
        self.state = state
        self.sink = sink
        self.router_inputs: dict | None = None
        self.router_sink = None

    def __call__(self, module, args, output):
        rerun = recomputing()
        if self.router_inputs is not None and not rerun:
            self.router_inputs.setdefault(self.name, []).append(self.layer.router_input(args[0]).float().cpu())
        sigma = self.state.sigma if self.layer.router_spec.needs_sigma else None
        runtime = self.layer.as_runtime()
        if self.router_sink is not None:
            gate = runtime.gate(args[0].detach(), sigma)  # computed in a re-run too: the re-run must match
            if not rerun:
                self.router_sink(self.name, gate)
        return output + runtime.delta(args[0], sigma, sink=None if rerun else self.sink).to(output.dtype)


def install_training_hooks(mp, network, modules: dict[str, str], sink) -> list[TrainingHook]:
    """One hook per trainable layer (``modules``: layer name -> module path) plus the σ wrapper."""
    state = SamplingState()
    hooks = []
    for prefix, layer in network.items():
        hooks.append(TrainingHook(prefix, layer, state, sink))
        install_forward_hook(mp, modules[prefix], hooks[-1])
    install_sampling_state(mp, TRAIN_WRAPPER_KEY, state)
    return hooks


@contextlib.contextmanager
def observing_router_inputs(hooks: list[TrainingHook]):
    """Collect every layer's pooled router input while the block runs: ``{layer: [(B, r), ...]}``."""
    store: dict[str, list] = {}
    for hook in hooks:
        hook.router_inputs = store
    try:
        yield store
    finally:
        for hook in hooks:
            hook.router_inputs = None


def checkpoint_targets(module: nn.Module, prefix: str) -> list[str]:
    """Paths of ``module``'s highest descendants that have a forward of their own (containers are looked through):
    the DiT's blocks, embedders and final layer, the granularity ComfyUI's own trainer checkpoints at."""
    paths = []
    for name, child in module.named_children():
        path = f"{prefix}.{name}"
        if isinstance(child, nn.ModuleList | nn.Sequential | nn.ModuleDict):
            paths += checkpoint_targets(child, path)
        else:
            paths.append(path)
    return paths


def replaying(state: SamplingState):
    """At a checkpointed block's forward: a factory of the context its re-run enters, with that model call's σ, row
    layout, FEI and extras back in ``state`` (the re-run comes after the call has returned and cleared them)."""
    saved = (state.sigma, state.cond_or_uncond, state.fei, dict(state.extra))

    @contextlib.contextmanager
    def restored() -> Iterator[None]:
        now = (state.sigma, state.cond_or_uncond, state.fei, state.extra)
        state.sigma, state.cond_or_uncond, state.fei, state.extra = (*saved[:3], dict(saved[3]))
        try:
            yield
        finally:
            state.sigma, state.cond_or_uncond, state.fei, state.extra = now

    return restored


def install_gradient_checkpointing(mp, state: SamplingState) -> list[str]:
    """Checkpoint each of the DiT's highest children (:func:`checkpoint_targets`) through an object patch on its
    ``forward``; re-runs replay ``state`` and are flagged, so training hooks skip their stores.  Returns the paths."""
    paths = checkpoint_targets(mp.model.diffusion_model, "diffusion_model")
    for path in paths:
        forward = mp.get_model_object(f"{path}.forward")
        mp.add_object_patch(f"{path}.forward", checkpointed(forward, replay=lambda: replaying(state)))
    return paths


def drop_restored_forwards(model: nn.Module, paths: list[str]) -> None:
    """ComfyUI undoes an object patch by setting the saved value back, which leaves the class's own bound ``forward``
    as an instance attribute; remove exactly that, so the module is as it was before training."""
    for path in paths:
        module = model.get_submodule(path)
        bound = module.__dict__.get("forward")
        if getattr(bound, "__self__", None) is module and getattr(bound, "__func__", None) is type(module).forward:
            del module.forward


# Keys under which an entry is more than plain per-image conditioning; such entries are never merged.
_UNMERGEABLE = ("area", "mask", "control", "gligen", "hooks", "strength")


def per_image_conditioning(conds: list, idx: list[int]) -> list[dict] | None:
    """Conditioning entries for a training batch of images ``idx``, one batch row per image.

    ComfyUI's sampler applies every entry of a conditioning list to the whole batch and averages the results,
    so handing it the B per-image entries of a batch of B runs B² rows and trains each image against the mean
    of the batch's conditionings.  Entries that differ only in their tensors are merged into one entry whose
    tensors are stacked in batch order (ComfyUI's own ``concat``, as it batches conds itself); the result is
    one call.  Returns None when they cannot be merged (areas, masks, hooks, batched tensors): the caller then
    runs one call per image.
    """
    picked = [conds[i] for i in idx]
    head = picked[0]
    if _mergeable(head, picked[1:]):
        merged = dict(head)
        merged["model_conds"] = {key: value._copy_with(value.concat([e["model_conds"][key] for e in picked[1:]]))
                                 for key, value in head["model_conds"].items()}
        return [merged]
    return None


def _batch_of(entry: dict) -> int | None:
    sizes = {value.cond.shape[0] for value in entry.get("model_conds", {}).values()
             if isinstance(getattr(value, "cond", None), torch.Tensor)}
    return sizes.pop() if len(sizes) == 1 else None


def _mergeable(head: dict, rest: list[dict]) -> bool:
    if any(key in entry for entry in (head, *rest) for key in _UNMERGEABLE):
        return False
    if any(_batch_of(entry) != 1 for entry in (head, *rest)):
        return False
    keys = set(head["model_conds"])
    return all(set(entry["model_conds"]) == keys
               and all(head["model_conds"][k].can_concat(entry["model_conds"][k]) for k in keys)
               for entry in rest)


def notify(payload: dict) -> None:
    """Feed the node's live chart; a no-op without a server (tests, scripts)."""
    with contextlib.suppress(Exception):
        from server import PromptServer

        if PromptServer.instance is not None:
            PromptServer.instance.send_sync(EVENT, payload)


