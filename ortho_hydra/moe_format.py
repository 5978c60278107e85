"""The ``*_moe.safetensors`` layout shared with the reference trainer and other Hydra runtimes.

A file holds layers of several kinds; each kind reads and writes its own keys (:mod:`.kind`), and this module loops
over the registry :data:`KINDS` in order: ReFT block edits, ChimeraHydra pools (their own routers and layouts),
routed Hydra layers, plain LoRA legs (the last two: :mod:`.runtime`, which documents the per-prefix keys).
"""

from __future__ import annotations

import json
import os

import torch

from . import components
from .adapter import Adapter
from .chimera import ChimeraLayer
from .errors import OrthoHydraError
from .kind import Capability, FileKeys, Kind, stamped_expert_names
from .reft import ReFTEdit
from .runtime import ExpertLayer, PlainLoRA, unread_keys
from .safetensors_io import check_finite, read_header, read_safetensors, write_safetensors

FORMAT_VERSION = "1"
ROUTER_CORRECTIONS = ("training", "none")
# Read in this order: a kind sees only the keys the kinds before it left (Chimera's single-A ups look routed).
KINDS: tuple[type[Kind], ...] = (ReFTEdit, ChimeraLayer, ExpertLayer, PlainLoRA)


def load(path: str | os.PathLike, *, router_correction: str = "training") -> Adapter:
    """Read a Hydra / Ortho-Hydra ``_moe`` file (or a ChimeraHydra one).

    ``router_correction="training"`` restores the gates the router was trained with on
    reference-trainer ``ortho_hydra`` files; ``"none"`` keeps the router as stored (the
    reference ComfyUI node's behaviour).  Our own files need no correction.
    """
    if router_correction not in ROUTER_CORRECTIONS:
        raise ValueError(f"router_correction must be one of {ROUTER_CORRECTIONS}, got {router_correction!r}")
    path = os.fspath(path)
    tensors, metadata = read_safetensors(path)
    check_finite(tensors, path, "the adapter diverged or was damaged; use an earlier checkpoint")
    file = FileKeys(tensors, metadata, path, router_correction)
    fields: dict[str, dict] = {"layers": {}, "plain_layers": {}, "reft": {}}
    for kind in KINDS:
        found = kind.read(file)
        fields[kind.adapter_field].update(found)
        file.routed_read |= bool(found) and kind.routed
    ignored = unread_keys(file)
    layers = fields["layers"]
    if not layers:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        kind = "a plain LoRA" if fields["plain_layers"] else "not a LoRA adapter"
        raise OrthoHydraError(f"no routed layers (no '<prefix>.lora_ups.<e>.weight' keys); this is {kind} "
                              f"(first keys: {sample}).", path=path, key="lora_ups",
                              fix="load plain LoRAs with ComfyUI's LoraLoaderModelOnly; pick a Hydra/Ortho-Hydra "
                                  "*_moe.safetensors here")
    counts = {layer.num_experts for layer in layers.values()}
    if len(counts) > 1:
        by_count = {c: next(p for p, lyr in layers.items() if lyr.num_experts == c) for c in sorted(counts)}
        detail = ", ".join(f"{p} has {c}" for c, p in by_count.items())
        raise OrthoHydraError(f"layers disagree on the number of experts ({detail}).", path=path,
                              key=f"{next(iter(by_count.values()))}.lora_ups",
                              fix="every routed layer must have the same E; re-export the adapter")
    names = stamped_expert_names(metadata)
    if names is None:
        names = next(iter(layers.values())).default_expert_names()
    metadata = dict(metadata)
    if ignored:  # never silently: the summary names each component, strict loading refuses them
        metadata["oh_ignored_keys"] = str(len(ignored))
        metadata[components.UNAPPLIED_KEY] = components.stamp(components.classify(ignored))
    return Adapter(metadata=metadata, expert_names=names, path=path, **fields)


def describe(path: str | os.PathLike) -> dict:
    """What a UI needs before loading: expert count, names and rank, from the header alone."""
    path = os.fspath(path)
    entries, metadata = read_header(path)
    for kind in KINDS:
        info = kind.describe_header(entries, metadata, path)
        if info is not None:
            return info
    raise OrthoHydraError("no routed layers (no '<prefix>.lora_ups.<e>.weight' keys); not a Hydra / Ortho-Hydra "
                          "adapter.", path=path, key="lora_ups",
                          fix="load plain LoRAs with ComfyUI's LoraLoaderModelOnly; pick a *_moe.safetensors here")


def adapter_tensors(adapter: Adapter, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the ``_moe`` layout, each layer writing its own keys; routers and alphas stay fp32."""
    for prefix, layer in adapter.layers.items():
        layer.require(Capability.SAVE, path=adapter.path, key=prefix)
    tensors: dict[str, torch.Tensor] = {}
    for members in (adapter.layers, adapter.plain_layers, adapter.reft):
        for prefix, member in members.items():
            tensors.update(member.file_tensors(prefix, dtype))
    return tensors


_PER_FILE_STAMPS = ("oh_ignored", "oh_content_sha256", components.UNAPPLIED_KEY)


def adapter_metadata(adapter: Adapter, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Header strings: the reference's ``ss_*`` keys plus ours (``oh_*``)."""
    first = next(iter(adapter.layers.values()))
    spec = first.router
    # stamps that describe one particular file's content are never carried to another file
    meta = {k: v for k, v in adapter.metadata.items() if not k.startswith(_PER_FILE_STAMPS)}
    meta.update({
        "ss_network_spec": adapter.metadata.get("ss_network_spec", "ortho_hydra"),
        "ss_use_moe_style": "shared_A",
        "ss_route_per_layer": "true",
        "ss_router_source": spec.source,
        "ss_ortho_centered_gate": "true" if spec.centered else "false",
        "ss_network_dim": str(adapter.rank),
        "ss_network_alpha": str(first.alpha),
        "oh_format_version": FORMAT_VERSION,
        "oh_num_experts": str(adapter.num_experts),
        "oh_lambda_placement": "up",
    })
    if spec.fei_dim:
        meta.update({"ss_fei_feature_dim": str(spec.fei_dim), "ss_fei_sigma_low_div": str(spec.fei_sigma_low_div)})
    if spec.sigma_bands:
        meta.update({
            "ss_specialize_experts_by_sigma_buckets": "true",
            "ss_num_sigma_buckets": str(len(spec.sigma_bands) - 1),
            "ss_sigma_bucket_boundaries": json.dumps(list(spec.sigma_bands)),
        })
    if adapter.expert_names:
        meta["oh_expert_names"] = json.dumps(list(adapter.expert_names))
    meta.update(extra or {})
    return meta


def save(adapter: Adapter, path: str | os.PathLike, metadata: dict[str, str] | None = None,
         *, dtype: torch.dtype | None = None) -> None:
    """Write ``adapter`` atomically; nothing is written if any tensor is NaN/Inf or names are off."""
    path = os.fspath(path)
    if not adapter.layers:
        raise OrthoHydraError("adapter has no routed layers to save.", path=path, key="layers",
                              fix="train or load an adapter first")
    if adapter.expert_names is not None and len(adapter.expert_names) != adapter.num_experts:
        raise OrthoHydraError(f"{len(adapter.expert_names)} expert names for {adapter.num_experts} experts.",
                              path=path, key="oh_expert_names", fix=f"give exactly {adapter.num_experts} names")
    tensors = adapter_tensors(adapter, dtype)
    check_finite(tensors, path, "the adapter diverged; lower the learning rate or resume from an earlier checkpoint")
    write_safetensors(path, tensors, adapter_metadata(adapter, metadata))
