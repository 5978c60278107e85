"""How an applied adapter survives ComfyUI 0.33's multi-GPU split ("MultiGPU CFG Split", comfy/multigpu.py).

The split deep-clones the patched model once per extra GPU (``ModelPatcher.deepclone_multigpu``,
model_patcher.py:506-553): a fresh base model from its loader (``cached_patcher_init``), the patcher's object
patches, wrappers and attachments copied by reference, and every additional model deep-cloned the same way, which
needs a ``cached_patcher_init`` of its own.  Before every sampling run ``match_multigpu_clones`` re-clones the main
patcher onto each device copy (:555-589), copying the main model's hooks again.  Left like that, every copy's hooks
would read the main holder (moved between GPUs by ``ensure_on``) and one :class:`SamplingState` that every device
thread writes.  So:

* the holder's patcher gets a ``cached_patcher_init`` that makes a fresh copy of the holder (:func:`holder_replica`);
* ON_DEEPCLONE_MULTIGPU and ON_MATCH_MULTIGPU_CLONES callbacks give each device copy copies of our hooks that read
  its own holder and a state of its own, and an APPLY_MODEL wrapper and attachment with that state (:func:`rebind`).

ComfyUI 0.3.x has none of these; there nothing is registered.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections import OrderedDict

import comfy.patcher_extension
from torch import nn

from .hooks import BoundHook, install_sampling_state
from .placement import AdapterWeightsPatcher

ON_DEEPCLONE = getattr(comfy.patcher_extension.CallbacksMP, "ON_DEEPCLONE_MULTIGPU", None)
ON_MATCH = getattr(comfy.patcher_extension.CallbacksMP, "ON_MATCH_MULTIGPU_CLONES", None)


def holder_replica(holder: nn.ModuleDict) -> nn.ModuleDict:
    """A new holder with its own copy of every parameter of ``holder``; what the holders only read (adapter
    layers, router nets, ReFT edits, the move notice) is shared, and holders that reference each other (a layer's
    router nets) reference the copies."""
    memo = {id(source): source for module in holder.values() for source in module.sources()}
    return nn.ModuleDict(copy.deepcopy(dict(holder.items()), memo))


def fresh_holder_patcher(holder: nn.ModuleDict, load_device, offload_device,
                         disable_dynamic: bool = False) -> AdapterWeightsPatcher:
    """The ``cached_patcher_init`` factory of a holder's patcher.  ComfyUI keeps only the ``.model`` of what it
    returns (and ``disable_dynamic`` concerns its class, which the clone takes from the original)."""
    return AdapterWeightsPatcher(holder_replica(holder).to(offload_device), load_device, offload_device)


def rebind(source, clone, key: str) -> None:
    """Point ``clone``'s copy of the apply under ``key`` (hooks, σ wrapper, attachment) at ``clone``'s own holder
    and a new state.  Runs as ``callback(source, clone)`` after ComfyUI copied ``source`` onto another device."""
    applied = source.attachments[key]
    (old,), (new,) = source.get_additional_models_with_key(key), clone.get_additional_models_with_key(key)
    state = applied.state.sibling()
    swap = {id(module): new.model[name] for name, module in old.model.items()}
    swap[id(applied.state)] = state
    for path, hooks in list(clone.object_patches.items()):
        if not path.endswith("._forward_hooks"):
            continue
        rebound = OrderedDict((i, h.rebound(swap) if isinstance(h, BoundHook) else h) for i, h in hooks.items())
        if any(rebound[i] is not h for i, h in hooks.items()):
            clone.add_object_patch(path, rebound)  # a new dict: the source's stays as it is
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, key)
    install_sampling_state(clone, key, state)
    clone.set_attachments(key, dataclasses.replace(applied, state=state))


def survive_multigpu(patched, key: str, holder_patcher) -> None:
    """Let ComfyUI split ``patched`` (carrying an apply under ``key``) across GPUs, where the host can."""
    if ON_DEEPCLONE is None:
        return
    holder_patcher.cached_patcher_init = (fresh_holder_patcher, (holder_patcher.model, holder_patcher.load_device,
                                                                 holder_patcher.offload_device))
    callback = functools.partial(rebind, key=key)
    patched.add_callback_with_key(ON_DEEPCLONE, key, callback)
    patched.add_callback_with_key(ON_MATCH, key, callback)
