"""Router overrides: pin, blend, bias, temperature or top-k the experts, per scope, over the denoise.

An :class:`OverrideStack` is a :data:`~ortho_hydra.routing.GateOverride`: given a layer's fp32 logits
(B, E) and its :class:`~ortho_hydra.routing.GateContext`, it returns the gate.  Overrides compose in
order, later over earlier: for each layer and row, the last override whose scope and conditioning side
cover it decides the gate.  A layer whose deciding override is constant for the whole run (pin, blend or a
profile, both sides, no schedule) reports a ``constant_gate`` so the host can fold it into the weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .layer_groups import in_group
from .mc_blend import STOCHASTIC_MODES, ElementMix, check_blend
from .routing import GateContext

MODES = ("live", "pin", "blend", "bias", "temperature", "top_k", "profile", *STOCHASTIC_MODES)
CONSTANT_MODES = ("pin", "blend", "profile")
SIDES = ("both", "positive", "negative")
POSITIONS_KEY = "override_positions"  # GateContext.extra: every override's keyframe position in this model call
GROUPS = ("all", "attention", "mlp", "early", "middle", "late")


def _as_weights(values: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    w = torch.as_tensor(values, dtype=torch.float32).reshape(-1)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contain NaN/Inf: {w.tolist()}")
    return w


@dataclass(frozen=True)
class GateRule:
    """One way to turn logits into a gate."""

    mode: str = "live"
    expert: int = 0  # pin
    weights: tuple[float, ...] = ()  # blend weights, or bias offsets
    renormalize: bool = True  # blend
    temperature: float = 1.0
    top_k: int = 1
    profile: Mapping[str, Sequence[float]] | None = field(default=None, hash=False, compare=False)
    keep: tuple[float, ...] = ()  # omcd / mc_dropout: each expert's keep probability q_k
    seed: int = 0  # omcd / mc_dropout: seeds the masks (with the layer and σ)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode in ("blend", "bias"):
            w = _as_weights(self.weights, f"{self.mode} weights")
            if self.mode == "blend" and self.renormalize and not float(w.sum()) > 0:
                raise ValueError(f"blend weights {w.tolist()} sum to {float(w.sum()):g}; renormalising needs a "
                                 "positive sum (or turn renormalize off)")
        if self.mode == "temperature" and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.mode == "top_k" and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.mode == "profile" and not self.profile:
            raise ValueError("profile mode needs a style profile")
        if self.mode in STOCHASTIC_MODES:
            check_blend(self.mode, self.weights, self.keep)

    def check(self, num_experts: int) -> None:
        """Validate against an adapter's E (the rule alone does not know it)."""
        if self.mode == "pin" and not 0 <= self.expert < num_experts:
            raise ValueError(f"expert {self.expert} does not exist: this adapter has {num_experts} "
                             f"(0..{num_experts - 1})")
        if self.mode in ("blend", "bias", *STOCHASTIC_MODES) and len(self.weights) != num_experts:
            raise ValueError(f"{self.mode} needs {num_experts} weights (one per expert), got {len(self.weights)}")
        if self.mode == "top_k" and self.top_k > num_experts:
            raise ValueError(f"top_k {self.top_k} exceeds the {num_experts} experts")
        if self.mode == "profile":
            for layer, w in self.profile.items():
                if len(w) != num_experts:
                    raise ValueError(f"profile layer {layer} has {len(w)} weights for {num_experts} experts")

    def constant(self, layer: str, num_experts: int) -> torch.Tensor | None:
        """The gate (E,) if this rule ignores the input, else None."""
        if self.mode == "pin":
            return torch.nn.functional.one_hot(torch.tensor(self.expert), num_experts).float()
        if self.mode == "blend":
            w = _as_weights(self.weights, "blend weights")
            return w / w.sum() if self.renormalize else w
        if self.mode == "profile":
            w = self.profile.get(layer)
            return None if w is None else _as_weights(w, f"profile weights for {layer}")
        return None

    def element_mix(self) -> ElementMix | None:
        """The per-element stochastic blend of an omcd / mc_dropout rule, else None."""
        if self.mode not in STOCHASTIC_MODES:
            return None
        return ElementMix(tuple(self.weights), tuple(self.keep), exclusive=self.mode == "omcd", seed=self.seed)

    def gate(self, logits: torch.Tensor, layer: str) -> torch.Tensor:
        num_experts = logits.shape[-1]
        mix = self.element_mix()
        if mix is not None:  # what recorders see: the blend the masks estimate
            return mix.expected_gate().to(logits.device).expand(logits.shape[0], -1)
        fixed = self.constant(layer, num_experts)
        if fixed is not None:
            return fixed.to(logits.device).expand(logits.shape[0], -1)
        if self.mode == "bias":
            return torch.softmax(logits + _as_weights(self.weights, "bias").to(logits.device), -1)
        if self.mode == "temperature":
            if self.temperature < 1e-4:  # the T -> 0 limit: argmax
                return torch.nn.functional.one_hot(logits.argmax(-1), num_experts).float()
            return torch.softmax(logits / self.temperature, -1)
        gate = torch.softmax(logits, -1)
        if self.mode == "top_k":
            top = gate.topk(self.top_k, dim=-1)
            kept = torch.zeros_like(gate).scatter(-1, top.indices, top.values)
            return kept / kept.sum(-1, keepdim=True)
        return gate  # live, or a profile without this layer

    def describe(self) -> str:
        if self.mode == "pin":
            return f"pin expert {self.expert}"
        if self.mode == "blend":
            return f"blend {list(self.weights)}{' (renormalised)' if self.renormalize else ''}"
        if self.mode == "bias":
            return f"live + logit bias {list(self.weights)}"
        if self.mode == "temperature":
            return f"live at temperature {self.temperature:g}"
        if self.mode == "top_k":
            return f"live, top-{self.top_k}"
        if self.mode == "profile":
            return f"style profile ({len(self.profile)} layers)"
        if self.mode in STOCHASTIC_MODES:
            return f"{self.mode} weights {list(self.weights)}, keep {list(self.keep)}, seed {self.seed}"
        return "live"


def block_index(layer: str) -> int | None:
    """The first integer in a layer name: the block index in every DiT naming we know."""
    match = re.search(r"(?:^|[_.])(\d+)(?:[_.]|$)", layer)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Scope:
    """Which layers an override touches: a named group, a block range and/or a regex (all must match)."""

    group: str = "all"
    block_start: int | None = None
    block_end: int | None = None  # inclusive
    regex: str = ""

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"unknown group {self.group!r}; choose one of {', '.join(GROUPS)}")
        if self.block_start is not None and self.block_end is not None and self.block_start > self.block_end:
            raise ValueError(f"block_start {self.block_start} is after block_end {self.block_end}: the range is "
                             "empty; block_end is inclusive (-1: to the end)")
        if self.regex:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"invalid layer regex {self.regex!r}: {exc}") from exc

    def matches(self, layer: str, num_blocks: int) -> bool:
        index = block_index(layer)
        if self.group in ("attention", "mlp") and not in_group(layer, self.group):
            return False
        if self.group in ("early", "middle", "late"):
            if index is None or num_blocks < 1:
                return False
            third = min(int(3 * index / num_blocks), 2)
            if ("early", "middle", "late")[third] != self.group:
                return False
        if self.block_start is not None and (index is None or index < self.block_start):
            return False
        if self.block_end is not None and (index is None or index > self.block_end):
            return False
        return not self.regex or re.search(self.regex, layer) is not None

    def describe(self) -> str:
        parts = [] if self.group == "all" else [self.group]
        if self.block_start is not None or self.block_end is not None:
            parts.append(f"blocks {self.block_start if self.block_start is not None else 0}.."
                         f"{self.block_end if self.block_end is not None else 'end'}")
        if self.regex:
            parts.append(f"/{self.regex}/")
        return " ∩ ".join(parts) or "all layers"


@dataclass(frozen=True)
class Keyframe:
    start_percent: float
    rule: GateRule


@dataclass(frozen=True)
class Override:
    """A schedule of rules over the denoise, for one scope and conditioning side."""

    keyframes: tuple[Keyframe, ...]
    scope: Scope = Scope()
    side: str = "both"
    interpolation: str = "step"  # or "linear": blend gates between consecutive keyframes
    sigmas: tuple[float, ...] | None = None  # keyframe starts in sampler σ, bound by the host

    def __post_init__(self) -> None:
        if not self.keyframes:
            raise ValueError("an override needs at least one keyframe")
        starts = [k.start_percent for k in self.keyframes]
        if any(not 0.0 <= s <= 1.0 for s in starts) or starts != sorted(starts):
            raise ValueError(f"keyframe start_percent values must be ascending in [0, 1], got {starts}")
        if self.side not in SIDES:
            raise ValueError(f"unknown side {self.side!r}; choose one of {', '.join(SIDES)}")
        if self.interpolation not in ("step", "linear"):
            raise ValueError(f"interpolation must be 'step' or 'linear', got {self.interpolation!r}")
        if self.side != "both" and any(k.rule.mode in STOCHASTIC_MODES for k in self.keyframes):
            raise ValueError("omcd / mc_dropout masks the whole output of a call; use side 'both'")

    @property
    def scheduled(self) -> bool:
        return len(self.keyframes) > 1 or self.keyframes[0].start_percent > 0

    def bind(self, percent_to_sigma: Callable[[float], float]) -> Override:
        """Convert keyframe percents to sampler σ with the model's own sampling."""
        return Override(self.keyframes, self.scope, self.side, self.interpolation,
                        tuple(float(percent_to_sigma(k.start_percent)) for k in self.keyframes))

    def position(self, sampler_sigma: float | None) -> tuple[int, torch.Tensor] | None:
        """(the keyframe in force at this σ, the linear blend weight toward the next one as a 0-d tensor), or None
        before the first keyframe starts.  Resolved once per model call, outside any compiled graph, so a compiled
        hook branches on the keyframe index (one graph per keyframe) and never specialises on σ itself."""
        frames = self.keyframes
        if sampler_sigma is None or self.sigmas is None:
            return (0, torch.zeros(())) if frames[0].start_percent == 0 else None
        active = [i for i, s in enumerate(self.sigmas) if sampler_sigma <= s + 1e-9 * max(1.0, abs(s))]
        if not active:
            return None
        i = active[-1]
        a = 0.0
        if self.interpolation == "linear" and i + 1 < len(frames):
            hi, lo = self.sigmas[i], self.sigmas[i + 1]
            if hi > lo:
                a = min(max((hi - sampler_sigma) / (hi - lo), 0.0), 1.0)
        return i, torch.tensor(a)

    def gate(self, logits: torch.Tensor, layer: str, position: tuple[int, torch.Tensor] | None
             ) -> torch.Tensor | None:
        """The gate of this override at a :meth:`position`, or None before its first keyframe starts."""
        if position is None:
            return None
        i, a = position
        gate = self.keyframes[i].rule.gate(logits, layer)
        if self.interpolation == "linear" and i + 1 < len(self.keyframes):
            a = a.to(gate)
            gate = (1 - a) * gate + a * self.keyframes[i + 1].rule.gate(logits, layer)
        return gate

    def active_rule(self, position: tuple[int, torch.Tensor] | None) -> GateRule | None:
        """The keyframe rule in force at a :meth:`position` (step interpolation), or None before the first."""
        return None if position is None else self.keyframes[position[0]].rule

    def describe(self) -> str:
        rules = "; ".join(f"{k.start_percent:.0%}: {k.rule.describe()}" for k in self.keyframes) \
            if self.scheduled else self.keyframes[0].rule.describe()
        side = "" if self.side == "both" else f" [{self.side} only]"
        interp = " (linear)" if self.scheduled and self.interpolation == "linear" else ""
        return f"{self.scope.describe()}: {rules}{interp}{side}"


@dataclass(frozen=True)
class OverrideStack:
    """Overrides in the order they were added; the callable the hooks use."""

    overrides: tuple[Override, ...] = ()
    num_blocks: int = 0  # for early/middle/late groups, from the adapter's layer names

    def then(self, override: Override) -> OverrideStack:
        return OverrideStack((*self.overrides, override), self.num_blocks)

    def bind(self, percent_to_sigma: Callable[[float], float]) -> OverrideStack:
        return OverrideStack(tuple(o.bind(percent_to_sigma) for o in self.overrides), self.num_blocks)

    def covering(self, layer: str) -> list[Override]:
        return [o for o in self.overrides if o.scope.matches(layer, self.num_blocks)]

    def positions(self, sampler_sigma: float | None) -> tuple:
        """Every override's :meth:`Override.position` at this σ, for a whole model call (``POSITIONS_KEY``)."""
        return tuple(o.position(sampler_sigma) for o in self.overrides)

    def _covering_at(self, context: GateContext) -> list[tuple[Override, tuple | None]]:
        positions = context.extra.get(POSITIONS_KEY)
        if positions is None or len(positions) != len(self.overrides):
            positions = self.positions(context.extra.get("sampler_sigma"))
        return [(o, p) for o, p in zip(self.overrides, positions, strict=True)
                if o.scope.matches(context.layer, self.num_blocks)]

    def constant_gate(self, layer: str, num_experts: int) -> torch.Tensor | None:
        """(E,) when this layer's gate is fixed for every row and σ (foldable into the weights)."""
        covering = self.covering(layer)
        if not covering:
            return None
        last = covering[-1]
        if last.side != "both" or last.scheduled or last.keyframes[0].rule.mode not in CONSTANT_MODES:
            return None
        return last.keyframes[0].rule.constant(layer, num_experts)

    def element_mix(self, context: GateContext) -> ElementMix | None:
        """The stochastic blend deciding this layer at this σ, if the deciding override has one."""
        deciding = None
        for override, position in self._covering_at(context):
            rule = override.active_rule(position)
            if rule is not None and (override.side == "both" or context.extra.get("uncond_rows") is None):
                deciding = rule
        return None if deciding is None else deciding.element_mix()

    def __call__(self, logits: torch.Tensor, context: GateContext) -> torch.Tensor:
        gate = torch.softmax(logits, -1)
        covering = self._covering_at(context)
        if not covering:
            return gate
        uncond = context.extra.get("uncond_rows")
        for override, position in covering:
            new = override.gate(logits, context.layer, position)
            if new is None:
                continue
            if override.side == "both" or uncond is None:
                if override.side == "negative" and uncond is None:
                    continue  # outside CFG there are no negative rows
                gate = new
            else:
                rows = (uncond if override.side == "negative" else ~uncond).to(gate.device).reshape(-1, 1)
                gate = torch.where(rows, new, gate)
        return gate

    def describe(self) -> str:
        if not self.overrides:
            return "live routing everywhere"
        return "\n".join(f"{i + 1}. {o.describe()}" for i, o in enumerate(self.overrides)) + \
            "\n(later lines win where scopes overlap)"


def count_blocks(layer_names: Sequence[str]) -> int:
    indices = [i for i in (block_index(n) for n in layer_names) if i is not None]
    return max(indices) + 1 if indices else 0
