"""Install an adapter on a ComfyUI ModelPatcher: forward hooks for routed layers, weight patches
for constant ones.  Everything goes through ModelPatcher so unpatching restores the model bit for bit.

* Hooks and the σ wrapper: :mod:`.hooks`.
* Adapter tensors: leaf modules of frozen parameters in their own ModelPatcher, attached with
  ``set_additional_models`` so ComfyUI's loader moves and accounts for them with the model; always loaded whole on
  the model's load device, under every VRAM state (:mod:`.placement`).
* ComfyUI 0.33's multi-GPU copies get their own holders and state (:mod:`.multigpu`).
* Layers never branch on their kind here: every one implements :class:`ortho_hydra.layer.AdapterLayer`.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass, field

import comfy.lora
import comfy.samplers
import torch
from torch import nn

from ortho_hydra import Adapter, OrthoHydraError
from ortho_hydra.bake import plan_factors, target_lora
from ortho_hydra.fold_error import FOLD_TOLERANCE, fold_error
from ortho_hydra.lora_dict import kohya_name, lora_state_dict
from ortho_hydra.overrides import OverrideStack
from ortho_hydra.reft import ReFTEdit
from ortho_hydra.step_experts import STEPS_KEY, StepSchedule, step_schedule
from ortho_hydra.targets import KeyMapSliceError, PatchPlan, Target, merge_shared_legs, summarize

from .compile_support import require_hook_guards
from .hooks import BoundHook, SamplingState, install_forward_hook, install_sampling_state
from .key_space import key_space
from .multigpu import survive_multigpu
from .placement import MoveNotice, PlacedModule, weights_patcher
from .weight_storage import stored_weight

log = logging.getLogger("ortho_hydra")
ADDITIONAL_MODELS_PREFIX = "ortho_hydra"
_FUSED_KERNEL_HINTS = ("nunchaku", "svdq")  # module classes of packs that replace whole blocks with fused kernels


class RouterNetWeights(PlacedModule):
    """A network-level router MLP shared by many layers (ChimeraHydra's frequency and content routers) as frozen
    fp32 parameters: one leaf module, placed and counted once, whichever layers read it."""

    def __init__(self, net, label: str) -> None:
        super().__init__()
        self.net, self.label = net, label
        for name, tensor in net.tensors().items():
            self.register_parameter(name, nn.Parameter(tensor.float().contiguous(), requires_grad=False))

    def sources(self) -> list:
        return [*super().sources(), self.net]

    def current(self):
        return self.net.with_tensors(**{name: getattr(self, name) for name in self.net.tensors()})


def router_net_holders(holder: nn.ModuleDict, nets, label: str) -> dict[int, RouterNetWeights]:
    """One :class:`RouterNetWeights` per distinct router net (by identity), registered in ``holder``."""
    out = {}
    for net in nets:
        if id(net) not in out:
            index = len(out)
            out[id(net)] = holder[f"net_{label}_{index}"] = RouterNetWeights(net, f"{label} router net {index}")
    return out


class TargetWeights(PlacedModule):
    """One hooked Linear's adapter tensors as frozen parameters (a leaf module ComfyUI can move).  Router nets
    shared with other layers live in their own holders (``nets``, by identity), referenced, not registered here."""

    def __init__(self, legs: list, dtype: torch.dtype, label: str = "adapter",
                 nets: dict[int, RouterNetWeights] | None = None) -> None:
        super().__init__()
        self.label = label
        self.specs = []
        self.nets = {}  # leg index -> {role: RouterNetWeights}; a plain dict, so ComfyUI loads each holder once
        self._built: tuple | None = None  # (the parameters the legs were built from, the legs): see legs()
        for i, leg in enumerate(legs):
            layer = leg.layer
            names = []
            for name, tensor in layer.tensors().items():
                tensor = tensor.float() if name in layer.fp32_tensors else tensor.to(dtype)
                self.register_parameter(f"leg{i}_{name}", nn.Parameter(tensor.contiguous(), requires_grad=False))
                names.append(name)
            roles = layer.router_nets()
            if roles:
                self.nets[i] = {role: nets[id(net)] for role, net in roles.items()}
            self.specs.append((i, layer, leg.offset, leg.size, tuple(names)))
        self._build()

    def sources(self) -> list:
        return [*super().sources(), *(layer for _, layer, *_ in self.specs)]

    def ensure_on(self, device: torch.device) -> None:
        super().ensure_on(device)
        for roles in self.nets.values():
            for net in roles.values():
                net.ensure_on(device)

    def legs(self) -> list[tuple]:
        """(offset, size, layer) with tensors wherever ComfyUI has put this module now.

        Built when the holder is made and after every move through ``nn.Module`` (:meth:`_apply`, so no stale layer
        keeps old storage alive), not per call: the layers hold this module's Parameter objects, which a move keeps
        (it swaps their storage).  Rebuilt here only if a parameter object was replaced.  Building eagerly keeps the
        cache's first fill out of a compiled hook: a fill inside it changed what the next call's guards saw, so every
        new apply cost two compiles instead of one."""
        built = self._built
        sources = self._sources()
        if built is None or len(built[0]) != len(sources) or any(
                a is not b for a, b in zip(built[0], sources, strict=True)):
            built = self._build()
        return built[1]

    def _build(self) -> tuple:
        legs = []
        for i, layer, offset, size, names in self.specs:
            layer = layer.with_tensors(**{n: getattr(self, f"leg{i}_{n}") for n in names})
            if i in self.nets:
                layer = layer.with_router_nets(**{role: net.current() for role, net in self.nets[i].items()})
            legs.append((offset, size, layer))
        self._built = (self._sources(), legs)
        return self._built

    def _sources(self) -> tuple:
        """Every parameter object the built legs compute with: this module's and its router nets'."""
        nets = (p for roles in self.nets.values() for net in roles.values() for p in net._parameters.values())
        return (*self._parameters.values(), *nets)

    def _apply(self, fn, recurse=True):
        self._built = None
        moved = super()._apply(fn, recurse)
        self._build()
        return moved


class RoutedHook(BoundHook):
    """Forward hook: ``y <- y + strength · Δy`` with Δy from the core library, per output slice."""

    def __init__(self, weights: TargetWeights, state: SamplingState, strength: float,
                 override: OverrideStack, out_features: int) -> None:
        self.weights = weights
        self.state = state
        self.strength = strength
        self.override = override
        self.out_features = out_features

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        self.weights.ensure_on(x.device)
        legs = self.weights.legs()
        if len(legs) == 1 and legs[0][1] in (None, self.out_features):
            layer = legs[0][2]  # the common case: one layer on the whole output, fused add where the kind has one
            return layer.add_delta(output, x, self.strength, **self.state.routing(layer.name, x.shape[0],
                                                                                 self.override))
        full = torch.zeros_like(output)
        for offset, size, layer in legs:
            delta = layer.delta(x, **self.state.routing(layer.name, x.shape[0], self.override))
            full[..., offset:offset + (size or self.out_features)] += delta.to(output.dtype)
        return output + self.strength * full


class ReFTWeights(PlacedModule):
    """One ReFT edit's tensors as frozen parameters in the compute dtype (moved by ComfyUI with the model)."""

    def __init__(self, edit: ReFTEdit, dtype: torch.dtype, label: str = "ReFT edit") -> None:
        super().__init__()
        self.edit, self.label = edit, label
        for name, tensor in edit.tensors().items():
            self.register_parameter(name, nn.Parameter(tensor.to(dtype).contiguous(), requires_grad=False))

    def sources(self) -> list:
        return [*super().sources(), self.edit]

    def current(self) -> ReFTEdit:
        return self.edit.with_tensors(**{name: getattr(self, name) for name in self.edit.tensors()})


class ReFTHook(BoundHook):
    """Forward hook on a DiT block: its output ``h`` becomes ``h + strength · s · Rᵀ(W h + b)``."""

    def __init__(self, weights: ReFTWeights, strength: float, module: str) -> None:
        self.weights, self.strength, self.module = weights, strength, module

    def __call__(self, module: nn.Module, args: tuple, output):
        if not isinstance(output, torch.Tensor):
            raise OrthoHydraError(f"{self.module} returns {type(output).__name__}, not the residual-stream tensor a "
                                  "ReFT edit applies to.", key=self.weights.edit.name,
                                  fix="ReFT edits are for the reference trainer's architecture (Anima / Cosmos "
                                      "blocks); turn strict off and load the LoRA part only")
        self.weights.ensure_on(output.device)
        return self.weights.current().edit(output, self.strength)


def reft_module(model, edit: ReFTEdit, adapter: Adapter) -> str:
    """The block an edit applies to, checked against the model (exists, and its Linears take d inputs)."""
    path = f"diffusion_model.blocks.{edit.block}"
    try:
        block = model.model.get_submodule(path)
    except AttributeError:
        raise OrthoHydraError(f"the ReFT edit is for blocks.{edit.block}, which this {model_architecture(model)} "
                              f"model does not have.", path=adapter.path, key=f"{edit.name}.rotate_layer.weight",
                              fix="load the base model this adapter was trained on") from None
    widths = {m.in_features for m in block.modules() if isinstance(getattr(m, "in_features", None), int)}
    if widths and edit.embed_dim not in widths:
        raise OrthoHydraError(f"the ReFT edit is {edit.embed_dim} wide; blocks.{edit.block}'s Linears take "
                              f"{sorted(widths)}.", path=adapter.path, key=f"{edit.name}.rotate_layer.weight",
                              fix="this adapter was trained for a different model size; pick the matching base "
                                  "model")
    return path


class ContentRouterHook(BoundHook):
    """Forward hook on the module a layer's module router reads (e.g. ChimeraHydra's content router on the text
    adapter): one gate per sample for every layer of this call, left in the sampling state."""

    def __init__(self, router, state: SamplingState, net: RouterNetWeights) -> None:
        self.router, self.state, self.net = router, state, net

    def __call__(self, module: nn.Module, args: tuple, output):
        self.route(output if isinstance(output, torch.Tensor) else output[0])

    def route(self, context: torch.Tensor) -> None:
        """The gate from what the module gave (or, where the host ran it before the call, the conditioning)."""
        self.net.ensure_on(context.device)
        router = self.router.with_net(self.net.current())
        self.state.extra[router.state_key] = router.gate(context.detach())


def _install_content_router(model, adapter: Adapter, state: SamplingState, holder: nn.ModuleDict,
                            notice: MoveNotice) -> None:
    """Module routers read another module's output (ChimeraHydra's content router: ``llm_adapter``, which only
    Anima-style models have)."""
    routers = {id(router): router for layer in adapter.layers.values()
               for router in layer.module_routers().values()}
    for router in routers.values():
        try:
            model.model.get_submodule(router.module)
        except AttributeError:
            raise router.missing_module(model_architecture(model), adapter.path) from None
    nets = router_net_holders(holder, [router.net for router in routers.values()], "content")
    for router in routers.values():
        nets[id(router.net)].notice = notice
        install_forward_hook(model, router.module, ContentRouterHook(router, state, nets[id(router.net)]))
    state.text_modules = tuple(dict.fromkeys(router.module for router in routers.values()))


def _check_hookable(model, target: Target, adapter: Adapter) -> None:
    """Refuse a Linear whose forward hooks would never run: a class that overrides ``__call__`` (fused or quantised
    kernels that bypass ``nn.Module``) would make a router-live adapter a silent no-op there."""
    module = model.model.get_submodule(target.module)
    if type(module).__call__ is not nn.Module.__call__:
        raise OrthoHydraError(f"{target.module} is a {type(module).__name__}, which bypasses PyTorch's forward "
                              f"hooks, so this {model_architecture(model)} model cannot run router-live experts "
                              "there.", path=adapter.path, key=target.module,
                              fix="load an unfused, unquantised version of the model, or pin / blend the experts "
                                  "(folded into the weights) and bake them into a plain LoRA")


def model_architecture(model) -> str:
    return type(model.model).__name__


def make_plan(model, adapter: Adapter) -> PatchPlan:
    """Map adapter layers onto this model, or fail naming both sides."""
    space = key_space(model)
    shapes = space.shapes
    layers = {**adapter.layers, **adapter.plain_layers}
    try:
        patch_plan = space.plan(layers)
    except KeyMapSliceError as exc:
        raise OrthoHydraError(f"{exc}: ComfyUI's key map for {model_architecture(model)} is wrong here, not the "
                              "file.", path=adapter.path, key=str(exc).split(":")[0],
                              fix="update ComfyUI, or save the adapter with kohya (lora_unet_…) names, which map "
                                  "onto whole weights") from exc
    except ValueError as exc:
        raise OrthoHydraError(f"{exc}.", path=adapter.path, key=str(exc).split(":")[0],
                              fix="this adapter was trained for a different model size; pick the matching base "
                                  "model") from exc
    if not patch_plan.targets:
        linears = [k for k, shape in shapes.items() if k.startswith("diffusion_model.") and len(shape) == 2]
        model_side = summarize(linears)
        fused = sorted({type(m).__name__ for m in model.model.modules()
                        if any(hint in type(m).__name__.lower() for hint in _FUSED_KERNEL_HINTS)})
        raise OrthoHydraError(
            f"no adapter layer matches this model: adapter targets {summarize(list(layers))}, "
            f"model is {model_architecture(model)} {model_side}"
            + (f"; it runs fused kernels ({', '.join(fused[:3])}) whose Linears cannot be hooked or patched" if fused
               else "") + ".", path=adapter.path, key=next(iter(layers)),
            fix="load an unfused version of the model (not Nunchaku / SVDQuant)" if fused
            else "load the base model this adapter was trained on")
    return patch_plan


def compute_dtype(model) -> torch.dtype:
    """The dtype ComfyUI computes this model's Linears in (its cast dtype), for the adapter's GEMMs."""
    dtype = model.model.manual_cast_dtype or model.model_dtype()
    return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32


def _static_patches(model, patch_plan: PatchPlan, folded: list[tuple[Target, dict]], strength: float) -> int:
    """Targets whose legs are all plain or constant-gated, as ComfyUI's own LoRA weight patches (exact)."""
    if not folded:
        return 0
    gates = {name: gate for _, target_gates in folded for name, gate in target_gates.items()}
    factors = plan_factors(patch_plan, gates, [target for target, _ in folded])
    key_map = {kohya_name(target.module): f"{target.module}.weight" for target, _ in folded}
    patches = comfy.lora.load_lora(lora_state_dict(factors), key_map, log_missing=False)
    model.add_patches(patches, strength)
    return len(patches)


def _bind_override(model, adapter: Adapter) -> OverrideStack:
    """Check the adapter's override against it and express its keyframes in this model's sampler σ."""
    override = adapter.override
    for o in override.overrides:
        for frame in o.keyframes:
            try:
                frame.rule.check(adapter.num_experts)
            except ValueError as exc:
                raise OrthoHydraError(f"router override: {exc}.", path=adapter.path, key="override",
                                      fix="adjust the Ortho-Hydra Expert Mixer node's settings") from exc
    sampling = model.get_model_object("model_sampling")
    return override.bind(lambda p: float(sampling.percent_to_sigma(p)))


def _bind_step_schedule(model, adapter: Adapter) -> StepSchedule | None:
    """Per-step expert heads keyed on the σ of their steps on this model's own sampling, or None."""
    schedule = step_schedule(adapter.layers, adapter.metadata)
    if schedule is None:
        return None
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), schedule.scheduler,
                                             schedule.steps)
    try:
        return schedule.bind(sigmas.tolist())
    except ValueError as exc:
        raise OrthoHydraError(f"{exc}.", path=adapter.path, key=STEPS_KEY,
                              fix="this model's sampling cannot host the step heads; load the base model the "
                                  "student was distilled on") from exc


def apply_adapter(model, adapter: Adapter, strength: float = 1.0, fold: bool = True, strength_reft: float = 1.0):
    """Return a patched clone of ``model`` routing every adapted Linear through its experts.

    The adapter's override stack changes the gates; layers whose gate it fixes for the whole run are folded into
    the weights when ``fold`` is true, so they cost nothing at sampling time.
    """
    patch_plan = make_plan(model, adapter)
    patched = model.clone()
    if strength == 0 and (strength_reft == 0 or not adapter.reft):
        return patched, patch_plan
    override = _bind_override(patched, adapter)
    schedule = _bind_step_schedule(patched, adapter)
    state = SamplingState(override=override, step_schedule=schedule)
    fei_divs = {layer.router.fei_sigma_low_div for layer in adapter.layers.values() if layer.router.fei_dim}
    if len(fei_divs) > 1:
        raise OrthoHydraError(f"layers disagree on the FEI blur divisor ({sorted(fei_divs)}).", path=adapter.path,
                              key="ss_fei_sigma_low_div", fix="re-export the adapter")
    state.fei_div = next(iter(fei_divs), None)
    key = f"{ADDITIONAL_MODELS_PREFIX}_{uuid.uuid4().hex[:12]}"
    holder = nn.ModuleDict()
    notice = MoveNotice(adapter.path or "adapter")
    folded: list[tuple[Target, dict]] = []
    nets = router_net_holders(holder, [net for layer in adapter.layers.values()
                                       for net in layer.router_nets().values()], "layer")
    kept_live: dict[str, tuple[float, str]] = {}
    for index, target in enumerate(patch_plan.targets.values()):
        gates = _constant_gates(target, override) if fold else None
        if gates is not None:
            refusal = fold_refusal(patched, target, gates, strength)
            if refusal is None:
                folded.append((target, gates))
                continue
            kept_live[target.module] = refusal
        _check_hookable(patched, target, adapter)
        weights = TargetWeights(merge_shared_legs(target), compute_dtype(patched), label=target.module, nets=nets)
        weights.notice = notice
        holder[str(index)] = weights
        install_forward_hook(patched, target.module,
                             RoutedHook(weights, state, strength, override, target.out_features))
    routed_hooks = sum(isinstance(m, TargetWeights) for m in holder.values())
    for name in [name for name in holder if name.startswith("net_")]:
        if routed_hooks:
            holder[name].notice = notice
        else:  # every layer reading it was folded
            del holder[name]
    if routed_hooks:
        _install_content_router(patched, adapter, state, holder, notice)
    for edit in adapter.reft.values():
        module = reft_module(patched, edit, adapter)
        weights = ReFTWeights(edit, compute_dtype(patched), label=module)
        weights.notice = notice
        holder[f"reft_{edit.block}"] = weights
        install_forward_hook(patched, module, ReFTHook(weights, strength_reft, module))
    _static_patches(patched, patch_plan, folded, strength)
    if len(holder):
        holder_patcher = weights_patcher(holder, patched)
        patched.set_additional_models(key, [holder_patcher])
        install_sampling_state(patched, key, state)
        survive_multigpu(patched, key, holder_patcher)
        require_hook_guards()  # else torch.compile may reuse a graph traced without these hooks
    # attachments are shared by reference with later clones (model_options would be deep-copied)
    applied = AppliedAdapter(adapter=adapter, state=state, folded=len(folded), hooked=routed_hooks,
                             kept_live=kept_live)
    if schedule is not None:
        log.info("Ortho-Hydra %s: %s", adapter.path or "adapter", schedule.describe())
    patched.set_attachments(key, applied)
    log.info("Ortho-Hydra %s: %s; %s, %d ReFT block edits", adapter.path or "adapter", patch_plan.coverage(),
             applied.placement(), len(adapter.reft))
    return patched, patch_plan


@dataclass
class AppliedAdapter:
    """What an apply left on the patched model, for nodes that inspect it later (capture, trace)."""

    adapter: Adapter
    state: SamplingState
    folded: int
    hooked: int
    kept_live: dict[str, tuple[float, str]] = field(default_factory=dict)  # constant gates not folded: module ->
    # (predicted share of the effect a fold would lose, the weight storage), see :func:`fold_refusal`

    def placement(self) -> str:
        """One line: how many Linears were folded and how many run as hooks, and why constant ones were not folded."""
        line = f"{self.folded} folded into weights, {self.hooked} router-live"
        if self.state.step_schedule is not None:
            line += f"; {self.state.step_schedule.describe()}"
        if not self.kept_live:
            return line
        by_storage: dict[str, list[float]] = {}
        for error, storage in self.kept_live.values():
            by_storage.setdefault(storage, []).append(error)
        reasons = []
        for storage, errors in sorted(by_storage.items()):
            if math.isinf(max(errors)):
                reasons.append(f"{len(errors)} on {storage} weights, whose re-quantisation this pack cannot predict")
            else:
                span = f"{min(errors):.0%}" if min(errors) == max(errors) else f"{min(errors):.0%}-{max(errors):.0%}"
                reasons.append(f"{len(errors)} on {storage} weights, where a fold would lose {span} of the effect")
        return (f"{line}; {len(self.kept_live)} constant-gate Linears kept live instead of folded "
                f"(more than {FOLD_TOLERANCE:.0%} lost): " + "; ".join(reasons))


def fold_refusal(model, target: Target, gates: dict, strength: float) -> tuple[float, str] | None:
    """(the share of the adapter's effect a fold would lose, the weight storage) where that is more than
    :data:`FOLD_TOLERANCE`, else None: fold.

    The patched weight is written back on the weight's own grid (fp8, bf16 …), so the prediction is made on that grid
    (one layer's fp32 copy at a time)."""
    values, grid = stored_weight(model.model.get_submodule(target.module))
    if grid.kind == "exact":
        return None
    if grid.kind == "unknown":
        return math.inf, grid.label
    up, down = target_lora(target, gates)
    error = fold_error(values, strength * (up.double() @ down.double()), grid)
    return None if error <= FOLD_TOLERANCE else (error, grid.label)


def applied_adapters(model) -> list[AppliedAdapter]:
    return [v for k, v in model.attachments.items() if k.startswith(ADDITIONAL_MODELS_PREFIX)]


def _constant_gates(target: Target, override: OverrideStack) -> dict | None:
    """Per-leg constant gates when every routed leg's gate is fixed by the override, else None (needs a hook)."""
    gates = {}
    for leg in target.legs:
        layer = leg.layer
        if not layer.routed:
            continue
        gate = override.constant_gate(layer.name, layer.num_experts)
        if gate is None:
            return None
        gates[layer.name] = gate
    return gates
