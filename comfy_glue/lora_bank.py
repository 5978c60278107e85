"""Any stack of ordinary LoRA files as one expert bank: expert i is LoRA i, exactly.

The files are read by ComfyUI's own loader (``comfy.lora_convert`` and ``comfy.lora.load_lora`` with the model's
key map), so every low-rank format it understands works: kohya ``lora_up``/``lora_down``/``alpha``, diffusers and
PEFT ``lora_A``/``lora_B``, ComfyUI's ``diffusion_model.*`` names, and diffusers' separate q/k/v on a fused qkv.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import comfy.lora
import comfy.lora_convert
import folder_paths
from comfy.weight_adapter.lora import LoRAAdapter

from ortho_hydra import Adapter, OrthoHydraError
from ortho_hydra.expert_stack import LoraPiece, lora_expert, stack_as_experts
from ortho_hydra.safetensors_io import read_safetensors
from ortho_hydra.targets import layout_rows

from .key_space import key_space

_LORA_SUFFIX = re.compile(r"\.(lora_[AB]|lora_down|lora_up|lora\.down|lora\.up)\.weight$|\.alpha$")  # file key -> layer

MAX_LORAS = 8
NONE = "none"
_TEXT_ENCODER = ("lora_te", "text_encoder", "te_", "lora_te1", "lora_te2", "text_encoders.")


def lora_choices() -> list[str]:
    return [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]


def read_lora(name: str) -> dict:
    """The file's tensors; safetensors only (a pickle is never opened)."""
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise OrthoHydraError(f"'{name}' is not in models/loras.", path=name, key="lora",
                              fix="put the file in ComfyUI/models/loras and refresh (press R) the node list")
    if not name.endswith(".safetensors"):
        raise OrthoHydraError(f"'{name}' is not a .safetensors file.", path=path, key="lora",
                              fix="convert it to safetensors; pickled checkpoints are never opened")
    return read_safetensors(path)[0]


def lora_pieces(model, name: str, tensors: dict) -> dict[str, list[LoraPiece]]:
    """``{lora_unet_* prefix: pieces}`` for one LoRA file on this model, or a clear refusal naming the key."""
    space = key_space(model)
    key_map, shapes = space.key_map, space.shapes
    kohya = {target: prefix for prefix, target in key_map.items()
             if prefix.startswith("lora_unet_") and isinstance(target, str)}
    converted = comfy.lora_convert.convert_lora(tensors)
    patches = comfy.lora.load_lora(converted, key_map, log_missing=False)
    used = {k for k in converted if k.endswith((".alpha", ".dora_scale"))}
    pieces: dict[str, list[LoraPiece]] = {}
    for target, patch in patches.items():
        weight_key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        label = weight_key[: -len(".weight")] if weight_key.endswith(".weight") else weight_key
        file_key = min(getattr(patch, "loaded_keys", ()) or [label])  # name the user's own key where we can
        if not isinstance(patch, LoRAAdapter):
            kind = patch[0] if isinstance(patch, tuple) else type(patch).__name__.replace("Adapter", "")
            raise OrthoHydraError(f"'{name}' holds a {kind} patch for {label}, not a low-rank LoRA.", path=name,
                                  key=file_key, fix="only plain LoRA (up/down, A/B) files stack into an expert bank; "
                                                 "LoHa, LoKr, DoRA and full-weight diffs are refused")
        used |= set(patch.loaded_keys)
        up, down, alpha, mid, dora_scale, reshape = patch.weights
        if dora_scale is not None or mid is not None or reshape is not None:
            what = "DoRA" if dora_scale is not None else "a conv (LoCon) middle" if mid is not None else "a reshape"
            raise OrthoHydraError(f"'{name}' uses {what} for {label}.", path=name, key=file_key,
                                  fix="only plain LoRA files stack into an expert bank")
        if weight_key not in kohya or len(shapes.get(weight_key, ())) != 2:
            raise OrthoHydraError(f"'{name}' patches {label}, which is not a Linear this pack can route.",
                                  path=name, key=file_key, fix="use LoRAs for the diffusion model's Linear layers")
        row = 0
        out_features, in_features = shapes[weight_key]
        if offset is not None:
            dim, row, size = offset[:3]
            if dim != 0:
                raise OrthoHydraError(f"'{name}' patches a column slice of {label}.", path=name, key=file_key,
                                      fix="only row slices (fused q/k/v) are supported")
            placed = layout_rows(_LORA_SUFFIX.sub("", file_key), space.fused_layouts.get(weight_key))
            if placed is not None:
                row, size = placed
            elif row + size > out_features:
                raise OrthoHydraError(f"ComfyUI's key map for {type(model.model).__name__} places {file_key} at rows "
                                      f"{row}-{row + size} of {label}, which has {out_features}: the map is wrong "
                                      "here, not the file.", path=name, key=file_key,
                                      fix="update ComfyUI, or use the LoRA with kohya (lora_unet_…) names")
        if (down.shape[1] != in_features or row + up.shape[0] > out_features or up.shape[1] != down.shape[0]
                or (offset is not None and up.shape[0] != size)):
            raise OrthoHydraError(f"'{name}' has {tuple(up.shape)} @ {tuple(down.shape)} for {label}, which is "
                                  f"{out_features}x{in_features} in this model.", path=name, key=file_key,
                                  fix="this LoRA was trained for a different base model; pick a matching one")
        pieces.setdefault(kohya[weight_key], []).append(
            LoraPiece(up.float(), down.float(), None if alpha is None else float(alpha), row))
    foreign = sorted(k for k in converted if k not in used and not k.startswith(_TEXT_ENCODER))
    if foreign:
        raise OrthoHydraError(f"'{name}' has {len(foreign)} keys this model does not have (e.g. {foreign[0]}).",
                              path=name, key=foreign[0],
                              fix="this LoRA was trained for a different base model; pick a matching one")
    if not pieces:
        raise OrthoHydraError(f"'{name}' patches nothing in this model.", path=name, key="lora",
                              fix="pick a LoRA for this base model")
    return pieces


def text_encoder_keys(tensors: dict) -> list[str]:
    """The file's text-encoder keys: a model-only bank leaves them out (as LoraLoaderModelOnly does)."""
    return sorted(k for k in tensors if k.startswith(_TEXT_ENCODER))


def build_bank(model, files: list[str], names: list[str], strengths: list[float] | None = None) -> Adapter:
    """Expert i = LoRA i at ``strengths[i]`` (default 1): pinning it equals LoraLoaderModelOnly at that strength."""
    space = key_space(model)
    strengths = strengths or [1.0] * len(files)
    experts, skipped = [], {}
    for name, strength in zip(files, strengths, strict=True):
        tensors = read_lora(name)
        if text_keys := text_encoder_keys(tensors):
            skipped[name] = len(text_keys)
        layers = {}
        for prefix, pieces in lora_pieces(model, name, tensors).items():
            out_features, in_features = space.shapes[space.key_map[prefix]]
            scaled = [replace(p, up=p.up * strength) for p in pieces]
            layers[prefix] = lora_expert(prefix, scaled, out_features, in_features)
        experts.append(Adapter(layers=layers, path=name))
    bank = stack_as_experts(experts, names)
    return Adapter(layers=bank.layers, expert_names=bank.expert_names,
                   metadata={**bank.metadata, "oh_bank_sources": json.dumps(files),
                             "oh_bank_strengths": json.dumps(strengths),
                             "oh_bank_skipped_text_encoder_keys": json.dumps(skipped)})


def bank_report(bank: Adapter) -> str:
    """The bank's summary, its strengths, and which files' text-encoder keys were left out."""
    files = json.loads(bank.metadata.get("oh_bank_sources", "[]"))
    strengths = json.loads(bank.metadata.get("oh_bank_strengths", "[]"))
    skipped = json.loads(bank.metadata.get("oh_bank_skipped_text_encoder_keys", "{}"))
    lines = [bank.summary()]
    if strengths and any(s != 1.0 for s in strengths):
        lines.append("strengths: " + ", ".join(f"{n} {s:g}" for n, s in zip(bank.expert_names, strengths,
                                                                                 strict=False)))
    lines += [f"skipped {count} text-encoder keys of {name} (the bank patches the diffusion model only; load the "
              "LoRA's CLIP part with a CLIP LoRA loader)" for name, count in skipped.items()]
    if not skipped:
        lines.append(f"no text-encoder keys in the {len(files)} files")
    return "\n".join(lines)


def stack_entries(stack) -> list[tuple[str, float]]:
    """(file, model strength) from a ``LORA_STACK``: the ``[(name, model_strength, clip_strength)]`` list other
    packs' stackers output; entries named "None" are empty slots, clip strengths do not apply here."""
    entries = []
    for i, item in enumerate(stack or []):
        if not isinstance(item, (list, tuple)) or len(item) < 2:
            raise OrthoHydraError(f"LORA_STACK entry {i} is {item!r}, not (name, model_strength, clip_strength).",
                                  key="lora_stack", fix="connect a LoRA stacker's LORA_STACK output")
        name, strength = item[0], item[1]
        if name in (None, "None", NONE, ""):
            continue
        entries.append((str(name), float(strength)))
    return entries


