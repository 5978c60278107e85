"""Install an adapter on a ComfyUI ModelPatcher: forward hooks for routed layers, weight patches
for constant ones.  Everything goes through ModelPatcher so unpatching restores the model bit for bit.

* Hooks: ``add_object_patch("<module>._forward_hooks", merged OrderedDict)``; other packs' hooks are
  kept because the dict is built from ``get_model_object``.  ``forward`` is never replaced.
* Adapter tensors: leaf modules of frozen parameters in their own ModelPatcher, attached with
  ``set_additional_models`` so ComfyUI's loader moves and accounts for them with the model.
* σ and cond/uncond rows: an APPLY_MODEL wrapper records them for the hooks (a Linear hook does not
  see ``transformer_options``).
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import comfy.lora
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import torch
from torch import nn

from ..ortho_hydra import Adapter, ExpertLayer, OrthoHydraError
from ..ortho_hydra.bake import kohya_name, target_lora
from ..ortho_hydra.fei import frequency_energy_index
from ..ortho_hydra.overrides import OverrideStack
from ..ortho_hydra.routing import GateContext, GateOverride, add_routed_delta, mix_and_project_up, project_down
from ..ortho_hydra.targets import PatchPlan, Target, merge_shared_legs, plan, summarize

log = logging.getLogger("ortho_hydra")
ADDITIONAL_MODELS_PREFIX = "ortho_hydra"
_hook_ids = itertools.count(start=2**40)  # apart from torch's own small handle ids


@dataclass
class SamplingState:
    """σ (router units, one per row) and the cond/uncond layout of the current model call."""

    sigma: torch.Tensor | None = None
    cond_or_uncond: list[int] | None = None
    fei: torch.Tensor | None = None
    fei_div: float | None = None  # set when some routed layer's router reads the latent's FEI
    extra: dict = field(default_factory=dict)
    recorder: dict | None = None  # layer -> list of (σ, gate rows) while a capture or trace listens

    def record(self, layer: str, gate: torch.Tensor, ctx: GateContext) -> None:
        # plain lists, not tensors: hundreds of small tensors kept alive for a run fragment the heap and slowed
        # large-model sampling by ~12% (bench/trace.py); lists cost nothing measurable
        uncond = ctx.extra.get("uncond_rows")
        self.recorder.setdefault(layer, []).append({
            "sampler_sigma": self.extra.get("sampler_sigma"),
            "gate": gate.detach().float().cpu().tolist(),
            "uncond_rows": None if uncond is None else uncond.cpu().tolist(),
        })

    def context(self, layer: str, batch: int) -> GateContext:
        sigma = self.sigma
        if sigma is not None and sigma.numel() not in (1, batch):
            sigma = sigma.reshape(-1)[:1]  # a hook inside a sub-batch; σ is shared within a call
        extra = dict(self.extra)
        if self.cond_or_uncond:
            per = max(batch // len(self.cond_or_uncond), 1)
            extra["uncond_rows"] = torch.tensor([c == 1 for c in self.cond_or_uncond]).repeat_interleave(per)[:batch]
        return GateContext(layer=layer, sigma=sigma, extra=extra)


def recorded_gates(recorder: dict) -> dict[str, list[dict]]:
    """The recorder's entries with ``gate`` (rows, E) and ``uncond_rows`` (rows,) as tensors."""
    return {layer: [{**e, "gate": torch.tensor(e["gate"]),
                     "uncond_rows": None if e["uncond_rows"] is None else torch.tensor(e["uncond_rows"])}
                    for e in entries] for layer, entries in recorder.items()}


class TargetWeights(nn.Module):
    """One hooked Linear's adapter tensors as frozen parameters (a leaf module ComfyUI can move)."""

    def __init__(self, legs: list, dtype: torch.dtype) -> None:
        super().__init__()
        self.specs = []
        for i, leg in enumerate(legs):
            layer = leg.layer
            tensors = {"down": layer.down.to(dtype)}
            if isinstance(layer, ExpertLayer):
                tensors.update(ups=layer.ups.to(dtype), router_weight=layer.router_weight.float(),
                               router_bias=layer.router_bias.float())
            else:
                tensors["up"] = layer.up.to(dtype)
            if layer.inv_scale is not None:
                tensors["inv_scale"] = layer.inv_scale.to(dtype)
            for name, t in tensors.items():
                self.register_parameter(f"leg{i}_{name}", nn.Parameter(t.contiguous(), requires_grad=False))
            self.specs.append((i, layer, leg.offset, leg.size, tuple(tensors)))

    def legs(self):
        """Yield (offset, size, layer) with tensors wherever ComfyUI has put this module now."""
        for i, layer, offset, size, names in self.specs:
            live = {n: getattr(self, f"leg{i}_{n}") for n in names}
            live.setdefault("inv_scale", None)
            yield offset, size, replace(layer, **live)


class RoutedHook:
    """Forward hook: ``y <- y + strength · Δy`` with Δy from the core library, per output slice."""

    def __init__(self, weights: TargetWeights, state: SamplingState, strength: float,
                 override: GateOverride | None, out_features: int) -> None:
        self.weights = weights
        self.state = state
        self.strength = strength
        self.override = override
        self.out_features = out_features

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        legs = list(self.weights.legs())
        if len(legs) == 1 and legs[0][1] in (None, self.out_features) and isinstance(legs[0][2], ExpertLayer):
            layer = legs[0][2]  # the common case: one routed layer on the whole output, fused add
            lx, gate = self._gate(layer, x)
            return add_routed_delta(output, lx, gate, layer.ups, layer.scale * self.strength)
        full = torch.zeros_like(output)
        for offset, size, layer in legs:
            if isinstance(layer, ExpertLayer):
                lx, gate = self._gate(layer, x)
                delta = mix_and_project_up(lx, gate, layer.ups, layer.scale)
            else:
                delta = layer.delta(x)
            full[..., offset:offset + (size or self.out_features)] += delta.to(output.dtype)
        return output + self.strength * full

    def _gate(self, layer: ExpertLayer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.state.context(layer.name, x.shape[0])
        lx = project_down(x, layer.down, layer.inv_scale)
        gate = layer.gate_from_projection(lx, ctx.sigma, self.override, ctx, self.state.fei)
        if self.state.recorder is not None:
            self.state.record(layer.name, gate, ctx)
        return lx, gate


def router_sigma_fn(model_sampling) -> callable:
    """Map the sampler's σ to the flow time in [0, 1] that routers are trained on.

    Flow (CONST) models sample σ = t directly; Cosmos' rectified flow samples σ with t = σ / (σ + 1);
    discrete ε/v models use their timestep / 1000.
    """
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return lambda sigma: sigma.float()
    if isinstance(model_sampling, comfy.model_sampling.COSMOS_RFLOW):
        return lambda sigma: sigma.float() / (sigma.float() + 1.0)
    return lambda sigma: (model_sampling.timestep(sigma).float() / 1000.0).clamp(0, 1)


def apply_model_wrapper(state: SamplingState, to_router_sigma):
    def wrapper(executor, x, t, *args, **kwargs):
        transformer_options = args[3] if len(args) > 3 else kwargs.get("transformer_options", {})
        state.sigma = to_router_sigma(t)
        state.extra["sampler_sigma"] = float(t.reshape(-1)[0])  # schedules are keyed on the sampler's σ
        state.cond_or_uncond = list(transformer_options.get("cond_or_uncond") or []) or None
        if state.fei_div is not None:  # scale-invariant, so the raw sampler latent is as good as the model input
            state.fei = frequency_energy_index(x, state.fei_div)
        try:
            return executor(x, t, *args, **kwargs)
        finally:
            state.sigma, state.cond_or_uncond, state.fei = None, None, None
            state.extra.pop("sampler_sigma", None)

    return wrapper


def model_architecture(model) -> str:
    return type(model.model).__name__


def make_plan(model, adapter: Adapter) -> PatchPlan:
    """Map adapter layers onto this model, or fail naming both sides."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items() if k.endswith(".weight")}
    layers = {**adapter.layers, **adapter.plain_layers}
    try:
        patch_plan = plan(layers, key_map, shapes)
    except ValueError as exc:
        raise OrthoHydraError(f"{exc}.", path=adapter.path, key=str(exc).split(":")[0],
                              fix="this adapter was trained for a different model size; pick the matching base "
                                  "model") from exc
    if not patch_plan.targets:
        linears = [k for k, shape in shapes.items() if k.startswith("diffusion_model.") and len(shape) == 2]
        model_side = summarize(linears)
        raise OrthoHydraError(
            f"no adapter layer matches this model: adapter targets {summarize(list(layers))}, "
            f"model is {model_architecture(model)} {model_side}.", path=adapter.path, key=next(iter(layers)),
            fix="load the base model this adapter was trained on")
    return patch_plan


def _compute_dtype(model) -> torch.dtype:
    dtype = model.model.manual_cast_dtype or model.model_dtype()
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


def _static_patches(model, folded: list[tuple[Target, dict]], strength: float) -> int:
    """Targets whose legs are all plain or constant-gated, as ComfyUI's own LoRA weight patches (exact)."""
    if not folded:
        return 0
    key_map, sd = {}, {}
    for target, gates in folded:
        up, down = target_lora(target, gates)
        name = kohya_name(target.module)
        key_map[name] = f"{target.module}.weight"
        sd[f"{name}.lora_up.weight"] = up
        sd[f"{name}.lora_down.weight"] = down
        sd[f"{name}.alpha"] = torch.tensor(float(down.shape[0]))
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    model.add_patches(patches, strength)
    return len(patches)


def _bind_override(model, adapter: Adapter, override):
    """Check an override against the adapter and express its keyframes in this model's sampler σ."""
    if override is None or not isinstance(override, OverrideStack):
        return override
    for o in override.overrides:
        for frame in o.keyframes:
            try:
                frame.rule.check(adapter.num_experts)
            except ValueError as exc:
                raise OrthoHydraError(f"router override: {exc}.", path=adapter.path, key="override",
                                      fix="adjust the Ortho-Hydra Router node's settings") from exc
    sampling = model.get_model_object("model_sampling")
    return override.bind(lambda p: float(sampling.percent_to_sigma(p)))


def apply_adapter(model, adapter: Adapter, strength: float = 1.0, override: GateOverride | None = None,
                  fold: bool = True):
    """Return a patched clone of ``model`` routing every adapted Linear through its experts.

    ``override`` (default: the adapter's own) changes the gates; layers whose gate it fixes for the whole
    run are folded into the weights when ``fold`` is true, so they cost nothing at sampling time.
    """
    patch_plan = make_plan(model, adapter)
    patched = model.clone()
    if strength == 0:
        return patched, patch_plan
    override = _bind_override(patched, adapter, override if override is not None else adapter.override)
    state = SamplingState()
    fei_divs = {layer.router.fei_sigma_low_div for layer in adapter.layers.values() if layer.router.fei_dim}
    if len(fei_divs) > 1:
        raise OrthoHydraError(f"layers disagree on the FEI blur divisor ({sorted(fei_divs)}).", path=adapter.path,
                              key="ss_fei_sigma_low_div", fix="re-export the adapter")
    state.fei_div = next(iter(fei_divs), None)
    key = f"{ADDITIONAL_MODELS_PREFIX}_{uuid.uuid4().hex[:12]}"
    holder = nn.ModuleDict()
    folded: list[tuple[Target, dict]] = []
    for index, target in enumerate(patch_plan.targets.values()):
        gates = _constant_gates(target, override) if fold else None
        if gates is not None:
            folded.append((target, gates))
            continue
        weights = TargetWeights(merge_shared_legs(target), _compute_dtype(patched))
        holder[str(index)] = weights
        _install_hook(patched, target, RoutedHook(weights, state, strength, override, target.out_features))
    _static_patches(patched, folded, strength)
    if len(holder):
        weights_patcher = comfy.model_patcher.ModelPatcher(holder, load_device=patched.load_device,
                                                           offload_device=patched.offload_device)
        patched.set_additional_models(key, [weights_patcher])
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, key,
                                     apply_model_wrapper(state, router_sigma_fn(patched.get_model_object(
                                         "model_sampling"))))
    # attachments are shared by reference with later clones (model_options would be deep-copied)
    patched.set_attachments(key, AppliedAdapter(adapter=adapter, state=state, folded=len(folded),
                                                hooked=len(holder)))
    log.info("Ortho-Hydra %s: %s; %d folded into weights, %d router-live", adapter.path or "adapter",
             patch_plan.coverage(), len(folded), len(holder))
    return patched, patch_plan


@dataclass
class AppliedAdapter:
    """What an apply left on the patched model, for nodes that inspect it later (capture, trace)."""

    adapter: Adapter
    state: SamplingState
    folded: int
    hooked: int


def applied_adapters(model) -> list[AppliedAdapter]:
    return [v for k, v in model.attachments.items() if k.startswith(ADDITIONAL_MODELS_PREFIX)]


def _constant_gates(target: Target, override) -> dict | None:
    """Per-leg constant gates when every leg is plain or fixed by the override, else None (needs a hook)."""
    gates = {}
    for leg in target.legs:
        layer = leg.layer
        if not isinstance(layer, ExpertLayer):
            continue
        gate = override.constant_gate(layer.name, layer.num_experts) if isinstance(override, OverrideStack) else None
        if gate is None:
            return None
        gates[layer.name] = gate
    return gates


def _install_hook(model, target: Target, hook: RoutedHook) -> None:
    name = f"{target.module}._forward_hooks"
    hooks = OrderedDict(model.get_model_object(name))
    hooks[next(_hook_ids)] = hook
    model.add_object_patch(name, hooks)
