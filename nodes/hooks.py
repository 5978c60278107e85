"""The one place forward hooks and the APPLY_MODEL wrapper are installed on a ModelPatcher.

* Hooks are object patches on ``<module>._forward_hooks``, a new OrderedDict built from ``get_model_object`` so
  other packs' hooks are kept; unpatching restores the original dict.  ``forward`` is never replaced.
* A Linear hook does not see ``transformer_options``, so an APPLY_MODEL wrapper copies σ and the cond/uncond row
  layout of the current model call into a :class:`SamplingState` the hooks read.
* A copy of the model on another device (ComfyUI 0.33's multi-GPU split) gets copies of the hooks reading its own
  holders and state (:meth:`BoundHook.rebound`), and the wrapper writes the state of the model copy it runs.
"""

from __future__ import annotations

import copy
import itertools
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import comfy.model_sampling
import comfy.patcher_extension
import torch

from ortho_hydra.chimera import CONTENT_GATE_KEY
from ortho_hydra.fei import frequency_energy_index
from ortho_hydra.overrides import POSITIONS_KEY, OverrideStack
from ortho_hydra.routing import GateContext

# Apart from torch's own small handle ids, and unique across every install of this pack (apply and train).
_hook_ids = itertools.count(start=2**40)


def install_forward_hook(model, module_path: str, hook: Callable) -> int:
    """Add ``hook`` to ``module_path``'s forward hooks as a revertible object patch; returns its id."""
    name = f"{module_path}._forward_hooks"
    hooks = OrderedDict(model.get_model_object(name))
    hook_id = next(_hook_ids)
    hooks[hook_id] = hook
    model.add_object_patch(name, hooks)
    return hook_id


class BoundHook:
    """A forward hook bound to one apply's objects: the holders of its tensors and the :class:`SamplingState`."""

    def rebound(self, swap: Mapping[int, object]) -> BoundHook:
        """This hook reading ``swap[id(x)]`` wherever it reads ``x``: a copy when anything is swapped, else itself."""
        swapped = {name: swap[id(value)] for name, value in vars(self).items() if id(value) in swap}
        if not swapped:
            return self
        hook = copy.copy(self)
        vars(hook).update(swapped)
        return hook


@dataclass
class SamplingState:
    """σ (router units, one per row) and the cond/uncond layout of the current model call."""

    sigma: torch.Tensor | None = None
    cond_or_uncond: list[int] | None = None
    fei: torch.Tensor | None = None
    fei_div: float | None = None  # set when some routed layer's router reads the latent's FEI
    override: OverrideStack | None = None  # its keyframe positions are resolved once per model call
    extra: dict = field(default_factory=dict)
    sinks: list[Callable] = field(default_factory=list)  # gate listeners (recordings) while one is open

    def sibling(self) -> SamplingState:
        """The state of another copy of the same patched model: the same override, FEI divisor and gate listeners
        (a recording hears every copy), its own per-call values."""
        return SamplingState(override=self.override, fei_div=self.fei_div, sinks=self.sinks)

    def sink(self, layer: str, gate: torch.Tensor, context: GateContext) -> None:
        for listener in self.sinks:
            listener(layer, gate, context)

    def routing(self, layer: str, batch: int, override) -> dict:
        """Keyword arguments for a layer's ``delta`` in the current model call."""
        context = self.context(layer, batch)
        return {"sigma": context.sigma, "override": override, "context": context, "fei": self.fei,
                "sink": self.sink if self.sinks else None}

    def sigma_for(self, batch: int) -> torch.Tensor | None:
        sigma = self.sigma
        if sigma is not None and sigma.numel() not in (1, batch):
            sigma = sigma.reshape(-1)[:1]  # a hook inside a sub-batch; σ is shared within a call
        return sigma

    def context(self, layer: str, batch: int) -> GateContext:
        extra = dict(self.extra)
        if self.cond_or_uncond:
            per = max(batch // len(self.cond_or_uncond), 1)
            extra["uncond_rows"] = torch.tensor([c == 1 for c in self.cond_or_uncond]).repeat_interleave(per)[:batch]
        return GateContext(layer=layer, sigma=self.sigma_for(batch), extra=extra)


def router_sigma_fn(model_sampling) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map the sampler's σ to the flow time in [0, 1] that routers are trained on.

    Flow (CONST) models sample σ = t directly; Cosmos' rectified flow samples σ with t = σ / (σ + 1);
    discrete ε/v models use their timestep / 1000.
    """
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return lambda sigma: sigma.float()
    if isinstance(model_sampling, comfy.model_sampling.COSMOS_RFLOW):
        return lambda sigma: sigma.float() / (sigma.float() + 1.0)
    return lambda sigma: (model_sampling.timestep(sigma).float() / 1000.0).clamp(0, 1)


def running_state(executor, key: str, default: SamplingState) -> SamplingState:
    """The state of the model copy this call runs on.  ComfyUI 0.33's multi-GPU split runs every device's copy through
    the main model's wrappers (samplers.py ``_handle_batch``), so the wrapper finds the copy's state in the
    attachment its patcher carries under ``key``; ``default`` outside sampling (no current patcher)."""
    patcher = getattr(executor.class_obj, "current_patcher", None)
    attachment = getattr(patcher, "attachments", {}).get(key)
    return getattr(attachment, "state", default)


def _apply_model_wrapper(key: str, default: SamplingState, to_router_sigma):
    def wrapper(executor, x, t, *args, **kwargs):
        state = running_state(executor, key, default)
        transformer_options = args[3] if len(args) > 3 else kwargs.get("transformer_options", {})
        state.sigma = to_router_sigma(t)
        state.extra["sampler_sigma"] = float(t.reshape(-1)[0])  # schedules are keyed on the sampler's σ
        if state.override is not None:  # here, outside a compiled model: hooks see keyframe indices, not σ
            state.extra[POSITIONS_KEY] = state.override.positions(state.extra["sampler_sigma"])
        state.cond_or_uncond = list(transformer_options.get("cond_or_uncond") or []) or None
        if state.fei_div is not None:  # scale-invariant, so the raw sampler latent is as good as the model input
            state.fei = frequency_energy_index(x, state.fei_div)
        try:
            return executor(x, t, *args, **kwargs)
        finally:
            state.sigma, state.cond_or_uncond, state.fei = None, None, None
            state.extra.pop("sampler_sigma", None)
            state.extra.pop(POSITIONS_KEY, None)
            state.extra.pop(CONTENT_GATE_KEY, None)  # a Chimera content gate belongs to one model call

    return wrapper


def install_sampling_state(model, key: str, state: SamplingState) -> None:
    """Keep ``state`` current for every model call of ``model`` (an APPLY_MODEL wrapper under ``key``; a model
    copy whose patcher carries another state under ``key`` gets that one)."""
    to_router_sigma = router_sigma_fn(model.get_model_object("model_sampling"))
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, key,
                               _apply_model_wrapper(key, state, to_router_sigma))
