"""Where an applied adapter's tensors live: whole on the model's load device, whatever ComfyUI's VRAM state.

ComfyUI 0.3.75's ``load_models_gpu`` loads each ModelPatcher, additional models included, with a weight budget:
0.1 byte under ``--novram``; under ``--lowvram`` (and under normal VRAM when the models do not fit) whatever the
free memory leaves, which for a model loaded after the diffusion model can be nothing (``MIN_WEIGHT_MEMORY_RATIO``
is 0 on NVIDIA).  ``ModelPatcher.load`` streams only ComfyUI's own casting ops (``comfy_cast_weights``); any other
module that does not fit the budget is neither loaded nor cast per call: it stays on the offload device.  The
adapter's holders are such plain modules, so they stayed in host memory, and since the core library moves its
operands to ``x``'s device, every hook call copied them host → device again.

The adapter's tensors are small next to the model (``r·(in + E·out)`` per Linear: about 3 % of the weights it
adapts, ~117 MB in bf16 for Cosmos-Predict2 2B with E = 4, r = 16 on all 280 Linears), so
:class:`AdapterWeightsPatcher` always loads them whole onto the load device, and ComfyUI counts them as loaded.
Hooks call :meth:`PlacedModule.ensure_on` before computing: a holder found on another device (a caller that ran the
model without loading its additional models) is moved once, with one warning, never copied per call.

ComfyUI 0.33's dynamic VRAM (``ModelPatcherDynamic``, CUDA) treats a model list as all-dynamic only when every
patcher in it is dynamic (model_management.py:932-935; one legacy patcher makes ``free_memory`` really unload the
other models), and its ``load`` refuses ``full_load`` (model_patcher.py:1862).  It needs no forcing: every
parameter of a module without ComfyUI's casting ops is moved whole and counted (model_patcher.py:1992-2001), and a
partial unload puts all of them back at once (``restore_loaded_backups``).  So the holder's patcher follows the
model's kind (:func:`weights_patcher_class`).
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import torch
from torch import nn

log = logging.getLogger("ortho_hydra")


class AdapterWeightsPatcher(comfy.model_patcher.ModelPatcher):
    """The ModelPatcher of an adapter's holder: loaded whole on ``device_to`` under every VRAM state.

    ``load`` is the one method ComfyUI's loader reaches for weights (``patch_model`` and ``partially_load`` both
    call it), so forcing the full load there covers ``load_models_gpu``'s NO_VRAM / LOW_VRAM / NORMAL_VRAM budgets
    and reloads after a partial unload.  Clones keep the class (``ModelPatcher.clone`` uses ``self.__class__``).
    """

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        # full_load puts every module in the "load completely" list whatever the budget, and counts model_size()
        return super().load(device_to, lowvram_model_memory=lowvram_model_memory,
                            force_patch_weights=force_patch_weights, full_load=True)


ModelPatcherDynamic = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)  # 0.33 has it, 0.3.75 not


if ModelPatcherDynamic is not None:
    class DynamicAdapterWeightsPatcher(ModelPatcherDynamic):
        """The holder's patcher next to a dynamic model: ComfyUI's dynamic loader already loads plain modules whole."""

        def __new__(cls, model=None, load_device=None, offload_device=None, size=0, weight_inplace_update=False):
            # ModelPatcherDynamic hands a CPU load device a stock ModelPatcher; ours keeps the whole load there too
            if load_device is not None and comfy.model_management.is_device_cpu(load_device):
                return AdapterWeightsPatcher(model, load_device, offload_device, size, weight_inplace_update)
            return object.__new__(cls)


def weights_patcher_class(model) -> type[comfy.model_patcher.ModelPatcher]:
    """The class of an adapter holder's patcher next to ``model``: dynamic when ``model`` is (ComfyUI 0.33, CUDA)."""
    dynamic = getattr(model, "is_dynamic", lambda: False)()  # 0.3.x patchers have no is_dynamic
    return DynamicAdapterWeightsPatcher if dynamic and ModelPatcherDynamic is not None else AdapterWeightsPatcher


def weights_patcher(holder: nn.Module, model) -> comfy.model_patcher.ModelPatcher:
    """The patcher of an adapter's holder, on ``model``'s devices, of :func:`weights_patcher_class`."""
    return weights_patcher_class(model)(holder, load_device=model.load_device, offload_device=model.offload_device)


class MoveNotice:
    """Shared by one apply's holders: counts one-time moves and warns on the first."""

    def __init__(self, label: str) -> None:
        self.label, self.moves = label, 0

    def moved(self, module: str, source: torch.device, target: torch.device) -> None:
        self.moves += 1
        if self.moves == 1:
            log.warning("Ortho-Hydra %s: adapter tensors for %s were on %s while the model ran on %s; moved once "
                        "(further holders move silently). The model was run without loading its additional "
                        "models (comfy.model_management.load_models_gpu([model] + "
                        "model.get_nested_additional_models()) does).", self.label, module, source, target)


class PlacedModule(nn.Module):
    """A holder of frozen adapter tensors that a hook can ask to be on the compute device."""

    notice: MoveNotice | None = None
    label: str = "adapter"

    def sources(self) -> list:
        """What this holder's tensors were made from and only reads: copies of the holder share these."""
        return [self.notice]

    def ensure_on(self, device: torch.device) -> None:
        """Make every tensor of this holder live on ``device``: a no-op when ComfyUI loaded it (the normal case), a
        one-time move otherwise, so no hook ever copies host → device per call."""
        for p in self._parameters.values():
            if p.device != device:
                source = p.device
                self.to(device)
                if self.notice is not None:
                    self.notice.moved(self.label, source, device)
                return
