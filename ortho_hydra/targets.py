"""Which model Linear each adapter layer patches: a pure plan from a host's key map.

The host (ComfyUI's ``model_lora_keys_unet``) maps LoRA names to weight keys, sometimes with an
output slice ``(key, (dim, offset, size))`` for split names that land in a fused weight.  On top of
that we resolve the two fusion mismatches ourselves:

* split file, fused model: ``…_q_proj``/``…_k_proj``/``…_v_proj`` (or ``…_q``/``…_k``/``…_v``)
  land in thirds of ``…_qkv_proj`` (``…_qkv``), and ``…_k_proj``/``…_v_proj`` in halves of ``…_kv_proj``;
* fused file, split model: a ``…_qkv_proj`` / ``…_kv_proj`` layer is chunked along ``out``;
* the reference trainer's runtime names for adaLN legs (``…_adaln_up_<branch>``) map to ComfyUI's
  ``…_adaln_modulation_<branch>_2``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .layer import AdapterLayer

KeyMapValue = str | tuple
_SPLIT = re.compile(r"^(?P<stem>.*[_.])(?P<part>q|k|v)(?P<tail>(?:_proj)?)$")
_FUSED = re.compile(r"^(?P<stem>.*[_.])(?P<group>qkv|kv)(?P<tail>(?:_proj)?)$")
_GROUPS = {"qkv": ("q", "k", "v"), "kv": ("k", "v")}
_ALIASES = ((re.compile(r"_adaln_up_(\w+)$"), r"_adaln_modulation_\1_2"),)


@dataclass
class Leg:
    """One adapter layer writing ``out[offset : offset + size]`` of a model Linear."""

    layer: AdapterLayer
    offset: int = 0
    size: int | None = None  # None: the whole output


@dataclass
class Target:
    module: str  # path relative to the host model, e.g. ``diffusion_model.blocks.0.mlp.layer1``
    out_features: int
    legs: list[Leg] = field(default_factory=list)


@dataclass
class PatchPlan:
    targets: dict[str, Target]
    matched: list[str]
    unmatched: list[str]

    def coverage(self) -> str:
        """One compact line, never a line per key."""
        line = f"{len(self.matched)} adapter layers matched onto {len(self.targets)} model Linears"
        if self.unmatched:
            line += f"; {len(self.unmatched)} unmatched: {summarize(self.unmatched)}"
        return line


def _weight_key(value: KeyMapValue) -> tuple[str, tuple[int, int, int] | None, Callable | None]:
    """(weight key, output slice or None, a map of the output rows or None).

    ComfyUI writes ``(key, None, fn)`` where a diffusers name's output rows are ordered differently from the
    model's (``swap_scale_shift`` on Flux's and SD3's final adaLN): the adapter's rows go through ``fn``.
    """
    if isinstance(value, tuple):
        part = tuple(value[1]) if len(value) > 1 and value[1] is not None else None
        transform = value[2] if len(value) > 2 and callable(value[2]) else None
        return value[0], part, transform
    return value, None, None


def _module_of(weight_key: str) -> str:
    return weight_key[: -len(".weight")] if weight_key.endswith(".weight") else weight_key


def summarize(names: list[str], limit: int = 4) -> str:
    """``lora_unet_blocks_3_mlp_layer1`` -> ``blocks.N.*``: a family per pattern, with counts."""
    families: dict[str, int] = {}
    for name in names:
        short = re.sub(r"^(lora_unet_|model\.diffusion_model\.|diffusion_model\.|transformer\.)", "", name)
        short = re.sub(r"\.(weight|bias)$", "", short)
        match = re.match(r"^(.*?)[_.](\d+)(?:[_.]|$)", short)
        family = f"{match.group(1)}.N.*" if match else (f"{short.split('.')[0]}.*" if "." in short else short)
        families[family] = families.get(family, 0) + 1
    ranked = sorted(families.items(), key=lambda kv: -kv[1])  # stable: ties keep first-seen order
    parts = [f"{fam} ({n})" for fam, n in ranked[:limit]]
    if len(families) > limit:
        parts.append(f"… {len(families) - limit} more")
    return ", ".join(parts)


def plan(layers: Mapping[str, AdapterLayer], key_map: Mapping[str, KeyMapValue],
         weight_shapes: Mapping[str, tuple[int, ...]]) -> PatchPlan:
    """Resolve every adapter layer to (module, output slice); ``weight_shapes`` keyed by weight key."""
    targets: dict[str, Target] = {}
    matched: list[str] = []
    unmatched: list[str] = []

    def add(weight_key: str, layer, offset: int = 0, size: int | None = None) -> None:
        shape = weight_shapes.get(weight_key)
        if shape is None or len(shape) != 2:
            raise KeyError(weight_key)
        module = _module_of(weight_key)
        target = targets.setdefault(module, Target(module=module, out_features=int(shape[0])))
        target.legs.append(Leg(layer, offset, size))

    for name, layer in layers.items():
        try:
            if _resolve(name, layer, key_map, weight_shapes, add):
                matched.append(name)
                continue
        except KeyError:
            pass
        unmatched.append(name)
    for target in targets.values():
        for leg in target.legs:
            size = leg.size if leg.size is not None else target.out_features
            out = leg.layer.out_features
            if out != size:
                raise ValueError(f"{leg.layer.name}: adapter writes {out} outputs but {target.module} "
                                 f"{'slice' if leg.size is not None else 'Linear'} has {size}")
    return PatchPlan(targets=targets, matched=matched, unmatched=unmatched)


def _resolve(name: str, layer, key_map: Mapping[str, KeyMapValue], weight_shapes, add) -> bool:
    """Try the direct name, its aliases, then the two fusion directions; add legs on success."""
    candidates = [name] + [pattern.sub(repl, name) for pattern, repl in _ALIASES if pattern.search(name)]
    for candidate in candidates:
        if candidate in key_map:
            key, slice_, transform = _weight_key(key_map[candidate])
            if transform is not None:
                layer = layer.output_mapped(transform)
            if slice_ is None:
                add(key, layer)
            elif slice_[0] == 0:
                add(key, layer, slice_[1], slice_[2])
            else:
                return False
            return True
    split = _SPLIT.match(name)
    if split:
        for group, parts in _GROUPS.items():
            fused_name = f"{split['stem']}{group}{split['tail']}"
            if split["part"] in parts and fused_name in key_map:
                key = _weight_key(key_map[fused_name])[0]
                size = int(weight_shapes[key][0]) // len(parts)
                add(key, layer, parts.index(split["part"]) * size, size)
                return True
    fused = _FUSED.match(name)
    if fused:
        parts = _GROUPS[fused["group"]]
        split_names = [f"{fused['stem']}{p}{fused['tail']}" for p in parts]
        if all(n in key_map for n in split_names):
            for i, split_name in enumerate(split_names):
                key = _weight_key(key_map[split_name])[0]
                add(key, layer.chunk(i, len(parts), split_name))
            return True
    return False


def merge_shared_legs(target: Target) -> list[Leg]:
    """Fold adjacent legs that share their input side (down, router, alpha, inv_scale) into one layer.

    Split q/k/v legs of one fused Linear then cost one down GEMM, one gate and one up GEMM.
    """
    merged: list[Leg] = []
    for leg in sorted(target.legs, key=lambda lg: lg.offset):
        prev = merged[-1] if merged else None
        joined = None
        if prev is not None and prev.offset + (prev.size or target.out_features) == leg.offset:
            joined = prev.layer.joined(leg.layer)
        if joined is not None:
            merged[-1] = Leg(joined, prev.offset, (prev.size or 0) + (leg.size or leg.layer.out_features))
        else:
            merged.append(leg)
    return merged
