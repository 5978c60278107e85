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
"""

from __future__ import annotations

import logging

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
