"""Which model Linear each adapter layer patches: a pure plan from a host's key map.

The host (ComfyUI's ``model_lora_keys_unet``) maps LoRA names to weight keys, sometimes with an
output slice ``(key, (dim, offset, size))`` for split names that land in a fused weight.  On top of
that we resolve the two fusion mismatches ourselves:

* split file, fused model: ``…_q_proj``/``…_k_proj``/``…_v_proj`` (or ``…_q``/``…_k``/``…_v``)
  land in thirds of ``…_qkv_proj`` (``…_qkv``), and ``…_k_proj``/``…_v_proj`` in halves of ``…_kv_proj``;
* fused file, split model: a ``…_qkv_proj`` / ``…_kv_proj`` layer is chunked along ``out``;
* the reference trainer's runtime names for adaLN legs (``…_adaln_up_<branch>``) map to ComfyUI's
  ``…_adaln_modulation_<branch>_2``.

Where the host knows a fused weight's real row layout (``fused_layouts``: grouped-query attention gives q more
rows than k and v), split q/k/v legs are placed from it, whatever the key map's slice says; every slice is checked
against the weight it lands in, so a wrong map is refused instead of writing outside the weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .layer import AdapterLayer

KeyMapValue = str | tuple
FusedLayout = Mapping[str, tuple[int, int]]  # part ("q", "k", "v") -> (first row, rows)
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


class KeyMapSliceError(ValueError):
    """The host's key map puts a layer's rows outside the weight it names (the map is wrong, not the file)."""


@dataclass
class PatchPlan:
    targets: dict[str, Target]
    matched: list[str]
    unmatched: list[str]
    relocated: list[str] = field(default_factory=list)  # legs placed from the model's layout, not the key map

    def coverage(self) -> str:
        """One compact line, never a line per key."""
        line = f"{len(self.matched)} adapter layers matched onto {len(self.targets)} model Linears"
        if self.unmatched:
            line += f"; {len(self.unmatched)} unmatched: {summarize(self.unmatched)}"
        if self.relocated:
            line += (f"; {len(self.relocated)} q/k/v slices placed from the model's head counts where the host's key "
                     f"map disagrees: {summarize(self.relocated)}")
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
         weight_shapes: Mapping[str, tuple[int, ...]],
         fused_layouts: Mapping[str, FusedLayout] | None = None) -> PatchPlan:
    """Resolve every adapter layer to (module, output slice); ``weight_shapes`` and ``fused_layouts`` keyed by
    weight key.  Raises :class:`KeyMapSliceError` for a key-map slice outside its weight, ``ValueError`` for an
    adapter whose width does not fit."""
    targets: dict[str, Target] = {}
    matched: list[str] = []
    unmatched: list[str] = []
    relocated: list[str] = []

    def add(weight_key: str, layer, offset: int = 0, size: int | None = None) -> None:
        shape = weight_shapes.get(weight_key)
        if shape is None or len(shape) != 2:
            raise KeyError(weight_key)
        rows = int(shape[0])
        if size is not None and (offset < 0 or size <= 0 or offset + size > rows):
            raise KeyMapSliceError(f"{layer.name}: the key map places it at rows {offset}-{offset + size} of "
                                   f"{weight_key}, which has {rows} rows")
        module = _module_of(weight_key)
        target = targets.setdefault(module, Target(module=module, out_features=rows))
        target.legs.append(Leg(layer, offset, size))

    resolver = _Resolver(key_map, weight_shapes, fused_layouts or {}, add, relocated)
    for name, layer in layers.items():
        try:
            if resolver.resolve(name, layer):
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
    return PatchPlan(targets=targets, matched=matched, unmatched=unmatched, relocated=relocated)


@dataclass
class _Resolver:
    key_map: Mapping[str, KeyMapValue]
    weight_shapes: Mapping[str, tuple[int, ...]]
    fused_layouts: Mapping[str, FusedLayout]
    add: Callable
    relocated: list[str]

    def resolve(self, name: str, layer) -> bool:
        """Try the direct name, its aliases, then the two fusion directions; add legs on success."""
        candidates = [name] + [pattern.sub(repl, name) for pattern, repl in _ALIASES if pattern.search(name)]
        for candidate in candidates:
            if candidate in self.key_map:
                key, slice_, transform = _weight_key(self.key_map[candidate])
                if transform is not None:
                    layer = layer.output_mapped(transform)
                if slice_ is None:
                    self.add(key, layer)
                elif slice_[0] == 0:
                    offset, size = slice_[1], slice_[2]
                    placed = self._part_rows(candidate, key)
                    if placed is not None and placed != (offset, size):
                        self.relocated.append(name)
                        offset, size = placed
                    self.add(key, layer, offset, size)
                else:
                    return False
                return True
        split = _SPLIT.match(name)
        if split:
            for group, parts in _GROUPS.items():
                fused_name = f"{split['stem']}{group}{split['tail']}"
                if split["part"] in parts and fused_name in self.key_map:
                    key = _weight_key(self.key_map[fused_name])[0]
                    offset, size = self._part_rows(name, key) or self._equal_part(key, parts, split["part"])
                    self.add(key, layer, offset, size)
                    return True
        fused = _FUSED.match(name)
        if fused:
            parts = _GROUPS[fused["group"]]
            split_names = [f"{fused['stem']}{p}{fused['tail']}" for p in parts]
            if all(n in self.key_map for n in split_names):
                for i, split_name in enumerate(split_names):
                    key = _weight_key(self.key_map[split_name])[0]
                    self.add(key, layer.chunk(i, len(parts), split_name))
                return True
        return False

    def _part_rows(self, name: str, weight_key: str) -> tuple[int, int] | None:
        return layout_rows(name, self.fused_layouts.get(weight_key))

    def _equal_part(self, weight_key: str, parts: tuple[str, ...], part: str) -> tuple[int, int]:
        rows = int(self.weight_shapes[weight_key][0])
        if rows % len(parts):
            raise KeyMapSliceError(f"{weight_key} has {rows} rows, which do not split into {len(parts)} equal "
                                   f"{'/'.join(parts)} parts, and the host gave no layout for it")
        size = rows // len(parts)
        return parts.index(part) * size, size


def layout_rows(name: str, layout: FusedLayout | None) -> tuple[int, int] | None:
    """The (first row, rows) a fused weight's own layout gives the q/k/v part that layer ``name`` ends in."""
    split = _SPLIT.match(name)
    if split is None or layout is None or split["part"] not in layout:
        return None
    offset, size = layout[split["part"]]
    return int(offset), int(size)


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
