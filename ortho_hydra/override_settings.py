"""The router node's settings as an ``Override``: a mode and its widgets, or keyframe text (one
``'<start_percent> <mode> [args]'`` per line), a scope, and optionally a blend rescaled to keep the delta's norm."""

from __future__ import annotations

from dataclasses import replace

from .adapter import Adapter
from .blend_norm import global_norm_factor, scaled_gate
from .errors import OrthoHydraError
from .kind import Capability
from .mc_blend import STOCHASTIC_MODES
from .overrides import MODES, GateRule, Keyframe, Override, Scope
from .text_lists import parse_list


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    return tuple(parse_list(text, float, key=what, example="1, 0.5, 0, 0"))


def rule_from(mode: str, args: str = "", *, expert: int = 0, weights: str = "", renormalize: bool = True,
              temperature: float = 1.0, top_k: int = 1, profile=None, keep: str = "", seed: int = 0) -> GateRule:
    """A rule from the node's widgets, or from a keyframe line's arguments."""
    args = args.strip()
    if mode in STOCHASTIC_MODES:  # keyframe arguments: "weights ; keep probabilities"
        w, _, q = args.partition(";") if args else (weights, "", keep)
        return GateRule(mode, weights=parse_floats(w, f"{mode} weights"), keep=parse_floats(q or keep, "keep"),
                        seed=seed)
    if mode == "pin":
        return GateRule("pin", expert=int(args) if args else expert)
    if mode in ("blend", "bias"):
        return GateRule(mode, weights=parse_floats(args or weights, f"{mode} weights"), renormalize=renormalize)
    if mode == "temperature":
        return GateRule("temperature", temperature=float(args) if args else temperature)
    if mode == "top_k":
        return GateRule("top_k", top_k=int(args) if args else top_k)
    if mode == "profile":
        if profile is None:
            raise ValueError("mode 'profile' needs a STYLE_PROFILE connected to the profile input")
        return GateRule("profile", profile=profile.layers)
    return GateRule(mode)


def parse_keyframes(text: str, profile=None, renormalize: bool = True, keep: str = "",
                    seed: int = 0) -> tuple[Keyframe, ...]:
    frames = []
    for number, raw in enumerate(text.strip().splitlines(), start=1):
        line = raw.split("#")[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        try:
            start = float(parts[0])
            parts = parts[1:]
        except ValueError:
            start = 0.0 if not frames else None
            if start is None:
                raise ValueError(f"keyframe line {number} ({raw!r}) needs a start percent") from None
        if not parts or parts[0] not in MODES:
            raise ValueError(f"keyframe line {number} ({raw!r}): mode must be one of {', '.join(MODES)}")
        frames.append(Keyframe(start, rule_from(parts[0], parts[1] if len(parts) > 1 else "", profile=profile,
                                                renormalize=renormalize, keep=keep, seed=seed)))
    if not frames:
        raise ValueError("the keyframes text has no keyframe lines")
    return tuple(frames)


def build_override(adapter: Adapter, *, mode: str, expert: int, weights: str, renormalize: bool,
                   temperature: float, top_k: int, group: str, block_start: int, block_end: int, layer_regex: str,
                   start_percent: float, end_percent: float, keyframes: str, interpolation: str, side: str,
                   profile=None, keep: str = "", mc_seed: int = 0) -> Override:
    if keyframes.strip():
        frames = parse_keyframes(keyframes, profile, renormalize, keep, mc_seed)
    else:
        rule = rule_from(mode, expert=expert, weights=weights, renormalize=renormalize, temperature=temperature,
                         top_k=top_k, profile=profile, keep=keep, seed=mc_seed)
        if not 0.0 <= start_percent < end_percent <= 1.0:
            raise ValueError(f"need 0 <= start_percent < end_percent <= 1, got {start_percent} and {end_percent}")
        frames = (Keyframe(start_percent, rule),)
        if end_percent < 1.0:
            frames += (Keyframe(end_percent, GateRule("live")),)
    scope = Scope(group=group, block_start=None if block_start < 0 else block_start,
                  block_end=None if block_end < 0 else block_end, regex=layer_regex.strip())
    override = Override(frames, scope, side, interpolation)
    if adapter.layers and not any(scope.matches(name, adapter.override.num_blocks) for name in adapter.layers):
        raise OrthoHydraError(f"the scope ({scope.describe()}) selects none of the adapter's {len(adapter.layers)} "
                              f"routed layers ({adapter.override.num_blocks} blocks), so this node would do "
                              "nothing.", path=adapter.path, key="block_start" if scope.block_start is not None
                              or scope.block_end is not None else "layer_regex",
                              fix="widen the block range, group or layer_regex")
    for frame in frames:
        frame.rule.check(adapter.num_experts)
    return override


def norm_controlled(adapter: Adapter, override: Override) -> tuple[Override, str]:
    """The blend rescaled by one global factor (``ortho_hydra.blend_norm``) over the layers in its scope."""
    rules = [frame.rule for frame in override.keyframes]
    if len(rules) != 1 or rules[0].mode != "blend":
        raise OrthoHydraError("norm_control applies to one constant blend (mode blend, no keyframes, no window).",
                              path=adapter.path, key="norm_control", fix="turn it off, or use mode blend alone")
    rule = rules[0]
    gate = rule.constant("", adapter.num_experts)
    layers = [layer for name, layer in adapter.layers.items()
              if override.scope.matches(name, adapter.override.num_blocks)]
    for layer in layers:
        layer.require(Capability.NORM_CONTROL, path=adapter.path, key="norm_control")
    centered = {layer.router.centered for layer in layers}
    if len(centered) > 1:
        raise OrthoHydraError("the layers in scope disagree on centered gates.", path=adapter.path,
                              key="norm_control", fix="narrow the scope")
    factor = global_norm_factor(layers, gate)
    scaled = scaled_gate(gate, factor, centered.pop())
    frame = replace(override.keyframes[0], rule=GateRule("blend", weights=tuple(scaled.tolist()), renormalize=False))
    note = f"\nnorm_control: blend scaled by {factor:.3f} over {len(layers)} layers"
    return replace(override, keyframes=(frame,)), note
