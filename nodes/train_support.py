"""ComfyUI plumbing for the in-graph trainer: inference-mode weights, training hooks, live chart events."""

from __future__ import annotations

import contextlib

import torch
from comfy_extras import nodes_train

from .hooks import SamplingState, install_forward_hook, install_sampling_state

TRAIN_WRAPPER_KEY = "ortho_hydra_train"
EVENT = "ortho_hydra.train"


def _as_normal_tensor(weight: torch.Tensor) -> torch.Tensor:
    return weight.clone() if weight.is_inference() else weight


def wrap_inference_weights(mp) -> int:
    """Tensors loaded while ComfyUI executed in inference mode cannot be saved for backward.

    In this training clone only, ComfyUI-op weights get a weight wrapper that hands the forward a normal copy,
    and any other parameter or buffer (norm scales, rope tables) a normal copy through an object patch; both
    are reverted on unpatch.
    """
    count = 0
    for name, module in mp.model.named_modules():
        tensors = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for attr, tensor in tensors:
            if tensor is None or not tensor.is_inference():
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
    once per forward.
    """

    def __init__(self, name: str, layer, state: SamplingState, sink) -> None:
        self.name = name
        self.layer = layer
        self.state = state
        self.sink = sink
        self.router_inputs: dict | None = None
        self.router_sink = None

    def __call__(self, module, args, output):
        if self.router_inputs is not None:
            self.router_inputs.setdefault(self.name, []).append(self.layer.router_input(args[0]).float().cpu())
        sigma = self.state.sigma if self.layer.router_spec.needs_sigma else None
        runtime = self.layer.as_runtime()
        if self.router_sink is not None:
            self.router_sink(self.name, runtime.gate(args[0].detach(), sigma))
        return output + runtime.delta(args[0], sigma, sink=self.sink).to(output.dtype)


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


@contextlib.contextmanager
def gradient_checkpointing(mp, enabled: bool):
    """ComfyUI's own checkpointing of the DiT's highest children, undone on exit."""
    patched = list(nodes_train.find_all_highest_child_module_with_forward(mp.model.diffusion_model)) \
        if enabled else []
    for module in patched:
        nodes_train.patch(module)
    try:
        yield
    finally:
        for module in patched:
            nodes_train.unpatch(module)


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


