"""The ``*_moe.safetensors`` layout shared with the reference trainer and other Hydra runtimes.

Per routed prefix: ``lora_down.weight`` (r, in), ``lora_ups.<e>.weight`` (out, r),
``router.weight`` (E, r + σ width + FEI width), ``router.bias`` (E,), optional ``alpha`` and
``inv_scale`` (in,).  Prefixes with ``lora_up.weight`` instead are plain LoRA legs.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import defaultdict

import torch

from . import chimera, components, reft
from .adapter import Adapter
from .errors import OrthoHydraError
from .routing import ROUTER_SOURCES, RouterSpec
from .runtime import ExpertLayer, PlainLoRA
from .safetensors_io import check_finite, read_header, read_safetensors, write_safetensors

FORMAT_VERSION = "1"
ROUTER_CORRECTIONS = ("training", "none")

_SUFFIX = re.compile(r"^(?P<prefix>.+?)\.(?P<suffix>lora_down\.weight|lora_up\.weight|lora_ups\.(?P<e>\d+)\.weight"
                     r"|router\.weight|router\.bias|alpha|inv_scale)$")


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _group(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    ignored = []
    for key, tensor in tensors.items():
        match = None if components.is_other_component(key) else _SUFFIX.match(key)
        if match is None:
            ignored.append(key)
            continue
        groups[match["prefix"]][match["suffix"]] = tensor
    return groups, ignored


def _router_spec(metadata: dict[str, str], path: str, sigma_dim: int, fei_dim: int,
                 num_experts: int) -> RouterSpec:
    source = metadata.get("ss_router_source", "input") or "input"
    if source not in ROUTER_SOURCES:
        global_hint = " (a network-level GlobalRouter, not per-layer routers)" if source == "crossattn_emb" else ""
        raise OrthoHydraError(f"router source {source!r}{global_hint} is not supported (supported: "
                              f"{', '.join(ROUTER_SOURCES)}).", path=path, key="ss_router_source",
                              fix="use a file trained with per-layer routers on input, sigma or fei features")
    bands: tuple[float, ...] = ()
    if _truthy(metadata.get("ss_specialize_experts_by_sigma_buckets")):
        raw = metadata.get("ss_sigma_bucket_boundaries")
        count_raw = metadata.get("ss_num_sigma_buckets")
        try:
            if raw:
                bands = tuple(float(v) for v in json.loads(raw))
            else:
                count = int(count_raw or 3)
                bands = tuple(i / count for i in range(count + 1))
        except (ValueError, TypeError) as exc:
            raise OrthoHydraError(f"σ band edges {raw!r} are not a JSON list of numbers.", path=path,
                                  key="ss_sigma_bucket_boundaries", fix="re-save the file from its trainer") from exc
        if len(bands) < 3 or any(hi <= lo for lo, hi in itertools.pairwise(bands)):
            raise OrthoHydraError(f"σ band edges {list(bands)} must be at least 3 ascending values (2+ bands).",
                                  path=path, key="ss_sigma_bucket_boundaries", fix="re-save the file from its trainer")
        if count_raw is not None and int(count_raw) != len(bands) - 1:
            raise OrthoHydraError(f"{count_raw} σ bands stamped but {len(bands)} edges given.", path=path,
                                  key="ss_num_sigma_buckets", fix="re-save the file from its trainer")
        if num_experts % (len(bands) - 1):
            raise OrthoHydraError(f"{num_experts} experts cannot split evenly into {len(bands) - 1} σ bands.",
                                  path=path, key="ss_num_sigma_buckets", fix="re-save the file from its trainer")
    try:
        return RouterSpec(source=source, sigma_dim=sigma_dim, fei_dim=fei_dim,
                          fei_sigma_low_div=float(metadata.get("ss_fei_sigma_low_div", "4.0") or 4.0),
                          centered=_truthy(metadata.get("ss_ortho_centered_gate")), sigma_bands=bands)
    except ValueError as exc:
        raise OrthoHydraError(str(exc) + ".", path=path, key="router.weight",
                              fix="check that the router width is r + an even σ-feature width + the FEI width") from exc


def _fei_width(metadata: dict[str, str]) -> int:
    if metadata.get("ss_router_source") == "fei" or _truthy(metadata.get("ss_use_fei_router")):
        return int(metadata.get("ss_fei_feature_dim", "2") or 2)
    return 0


def _shape_error(path: str, key: str, problem: str) -> OrthoHydraError:
    return OrthoHydraError(problem, path=path, key=key,
                           fix="the file is inconsistent (mixed from two adapters or damaged); re-export it")


def _alpha(group: dict[str, torch.Tensor], rank: int) -> float:
    alpha = group.get("alpha")
    value = float(alpha.float().reshape(-1)[0]) if alpha is not None and alpha.numel() else 0.0
    return value if value != 0.0 else float(rank)


def _routed_layer(prefix: str, group: dict[str, torch.Tensor], path: str, metadata: dict[str, str],
                  fei_dim: int) -> ExpertLayer:
    ups_keys = sorted((k for k in group if k.startswith("lora_ups.")), key=lambda k: int(k.split(".")[1]))
    indices = [int(k.split(".")[1]) for k in ups_keys]
    if indices != list(range(len(indices))):
        raise _shape_error(path, f"{prefix}.lora_ups.*", f"expert indices {indices} are not 0..E-1")
    for needed in ("lora_down.weight", "router.weight", "router.bias"):
        if needed not in group:
            raise OrthoHydraError(f"routed layer has {len(ups_keys)} expert ups but no {needed}.", path=path,
                                  key=f"{prefix}.{needed}",
                                  fix="the file is incomplete; re-export it with its router and shared down")
    down = group["lora_down.weight"]
    if down.ndim != 2:
        raise _shape_error(path, f"{prefix}.lora_down.weight", f"expected (r, in), got {tuple(down.shape)}")
    rank, in_features = down.shape
    ups = [group[k] for k in ups_keys]
    out_features = ups[0].shape[0]
    for key, up in zip(ups_keys, ups, strict=True):
        if up.shape != (out_features, rank):
            raise _shape_error(path, f"{prefix}.{key}",
                               f"expected ({out_features}, {rank}) to match lora_down (r={rank}) and expert 0, "
                               f"got {tuple(up.shape)}")
    num_experts = len(ups)
    router_w, router_b = group["router.weight"], group["router.bias"]
    if router_w.ndim != 2 or router_w.shape[0] != num_experts or router_w.shape[1] < rank:
        raise _shape_error(path, f"{prefix}.router.weight",
                           f"expected ({num_experts}, >= {rank}) for {num_experts} experts at rank {rank}, "
                           f"got {tuple(router_w.shape)}")
    if router_b.shape != (num_experts,):
        raise _shape_error(path, f"{prefix}.router.bias", f"expected ({num_experts},), got {tuple(router_b.shape)}")
    inv_scale = group.get("inv_scale")
    if inv_scale is not None and inv_scale.reshape(-1).shape != (in_features,):
        raise _shape_error(path, f"{prefix}.inv_scale", f"expected ({in_features},), got {tuple(inv_scale.shape)}")
    sigma_dim = router_w.shape[1] - rank - fei_dim
    if sigma_dim < 0:
        raise _shape_error(path, f"{prefix}.router.weight",
                           f"width {router_w.shape[1]} is less than rank {rank} + FEI width {fei_dim}")
    spec = _router_spec(metadata, path, sigma_dim, fei_dim, num_experts)
    return ExpertLayer(
        name=prefix,
        down=down.float(),
        ups=torch.stack(ups).float(),
        router_weight=router_w.float().clone(),
        router_bias=router_b.float().clone(),
        alpha=_alpha(group, rank),
        router=spec,
        inv_scale=None if inv_scale is None else inv_scale.reshape(-1).float(),
    )


def _expert_names(metadata: dict[str, str]) -> list[str] | None:
    """The optional ``oh_expert_names`` JSON list; a malformed stamp is ignored, not fatal."""
    try:
        names = json.loads(metadata.get("oh_expert_names") or "null")
    except json.JSONDecodeError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def _correct_router(layer: ExpertLayer) -> None:
    """Undo the reference's √|λ| split on the router: divide its first r columns by √|λ|.

    Rows of Q_eff are orthonormal, so √|λ| is the row norm of ``down · diag(inv_scale)``.
    """
    down = layer.down if layer.inv_scale is None else layer.down * layer.inv_scale
    root_lambda = down.double().norm(dim=1)
    safe = torch.where(root_lambda > 0, root_lambda, torch.ones_like(root_lambda))
    weight = layer.router_weight.double()
    weight[:, : layer.rank] /= safe
    layer.router_weight = weight.float()


def load(path: str | os.PathLike, *, router_correction: str = "training") -> Adapter:
    """Read a Hydra / Ortho-Hydra ``_moe`` file.

    ``router_correction="training"`` restores the gates the router was trained with on
    reference-trainer ``ortho_hydra`` files; ``"none"`` keeps the router as stored (the
    reference ComfyUI node's behaviour).  Our own files need no correction.
    """
    if router_correction not in ROUTER_CORRECTIONS:
        raise ValueError(f"router_correction must be one of {ROUTER_CORRECTIONS}, got {router_correction!r}")
    path = os.fspath(path)
    tensors, metadata = read_safetensors(path)
    check_finite(tensors, path, "the adapter diverged or was damaged; use an earlier checkpoint")
    reft_edits = reft.parse({k: v for k, v in tensors.items() if reft.is_reft_key(k)}, path)
    layers: dict = {}
    if chimera.is_chimera(tensors, metadata):  # its own routers and layouts; plain legs go on below
        layers, consumed = chimera.parse(tensors, metadata, path)
        tensors = {k: v for k, v in tensors.items() if k not in consumed}
    elif (any(k.startswith("global_router.") for k in tensors) or metadata.get("ss_route_per_layer") == "false"
          or metadata.get("ss_network_spec") == "stacked_experts_global_fei"):
        raise OrthoHydraError("this adapter routes through one network-level GlobalRouter (FeRA / stacked experts), "
                              "which this pack does not apply.", path=path, key="global_router",
                              fix=f"load it with the reference node's FeRA loader ({components.REFERENCE_NODE})")
    groups, ignored = _group({k: v for k, v in tensors.items() if not reft.is_reft_key(k)})
    fei_dim = _fei_width(metadata)
    plain: dict[str, PlainLoRA] = {}
    for prefix, group in sorted(groups.items()):
        if any(k.startswith("lora_ups.") for k in group):
            layers[prefix] = _routed_layer(prefix, group, path, metadata, fei_dim)
        elif "lora_up.weight" in group and "lora_down.weight" in group:
            down, up = group["lora_down.weight"], group["lora_up.weight"]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise _shape_error(path, f"{prefix}.lora_up.weight",
                                   f"up {tuple(up.shape)} does not fit down {tuple(down.shape)}")
            inv = group.get("inv_scale")
            plain[prefix] = PlainLoRA(prefix, down.float(), up.float(), _alpha(group, down.shape[0]),
                                      None if inv is None else inv.reshape(-1).float())
        elif any(k.startswith("router.") for k in group) or "lora_down.weight" in group:
            missing = "lora_ups.<e>.weight" if "router.weight" in group else "lora_up.weight or lora_ups.<e>.weight"
            raise OrthoHydraError(f"layer has {sorted(group)} but no {missing}.", path=path,
                                  key=f"{prefix}.{missing}", fix="the file is incomplete; re-export it")
    if not layers:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        kind = "a plain LoRA" if plain else "not a LoRA adapter"
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
    is_reference_split = (metadata.get("ss_network_spec") == "ortho_hydra"
                          and metadata.get("oh_lambda_placement") != "up")
    if is_reference_split and router_correction == "training":
        for layer in layers.values():
            if isinstance(layer, ExpertLayer):
                _correct_router(layer)
    names = _expert_names(metadata)
    pools = chimera.chimera_layers(layers)
    if pools and names is None:
        names = chimera.expert_names(pools[0].num_content, pools[0].num_freq)
    metadata = dict(metadata)
    if ignored:  # never silently: the summary names each component, strict loading refuses them
        metadata["oh_ignored_keys"] = str(len(ignored))
        metadata[components.UNAPPLIED_KEY] = components.stamp(components.classify(ignored))
    return Adapter(layers=layers, plain_layers=plain, metadata=metadata, expert_names=names, path=path,
                   reft=reft_edits)


def describe(path: str | os.PathLike) -> dict:
    """What a UI needs before loading: expert count, names and rank, from the header alone."""
    path = os.fspath(path)
    entries, metadata = read_header(path)
    if chimera.is_chimera(entries, metadata):
        return _describe_chimera(path, entries, metadata)
    experts: dict[str, int] = {}
    ranks: set[int] = set()
    for key, entry in entries.items():
        match = None if components.is_other_component(key) else _SUFFIX.match(key)
        if match is None:
            continue
        if match["e"] is not None:
            experts[match["prefix"]] = max(experts.get(match["prefix"], 0), int(match["e"]) + 1)
        elif match["suffix"] == "lora_down.weight" and isinstance(entry, dict):
            ranks.add(int(entry["shape"][0]))
    if not experts:
        raise OrthoHydraError("no routed layers (no '<prefix>.lora_ups.<e>.weight' keys); not a Hydra / Ortho-Hydra "
                              "adapter.", path=path, key="lora_ups",
                              fix="load plain LoRAs with ComfyUI's LoraLoaderModelOnly; pick a *_moe.safetensors here")
    counts = set(experts.values())
    num_experts = max(counts)
    names = _expert_names(metadata)
    if not names or len(names) != num_experts:
        names = [f"expert {e}" for e in range(num_experts)]
    return {"num_experts": num_experts, "expert_names": names, "rank": max(ranks, default=0),
            "routed_layers": len(experts), "spec": metadata.get("ss_network_spec", "hydra"),
            "router_source": metadata.get("ss_router_source", "input"), "consistent": len(counts) == 1}


def _describe_chimera(path: str, entries: dict, metadata: dict[str, str]) -> dict:
    try:
        k_c, k_f = int(metadata["ss_num_experts_content"]), int(metadata["ss_num_experts_freq"])
    except (KeyError, ValueError):
        raise OrthoHydraError("ChimeraHydra file without integer ss_num_experts_content / ss_num_experts_freq.",
                              path=path, key="ss_num_experts_content",
                              fix="re-export it with the reference trainer") from None
    downs = [e for k, e in entries.items() if k.endswith((".lora_down.weight", ".lora_down_c.weight"))
             and isinstance(e, dict)]
    names = _expert_names(metadata)
    return {"num_experts": k_c + k_f,
            "expert_names": names if names and len(names) == k_c + k_f else chimera.expert_names(k_c, k_f),
            "rank": max((int(e["shape"][0]) for e in downs), default=0),
            "routed_layers": sum(1 for k in entries if k.endswith((".lora_down_c.weight", ".lora_ups.0.weight"))),
            "spec": metadata.get("ss_network_spec", "chimera_hydra"), "router_source": "chimera",
            "consistent": True}


def adapter_tensors(adapter: Adapter, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the ``_moe`` layout; routers and alphas stay fp32."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", dtype=dtype or t.dtype).contiguous()

    if chimera.chimera_layers(adapter.layers):
        raise OrthoHydraError("writing ChimeraHydra layers is not supported; keep the file they were loaded from.",
                              path=adapter.path, key=next(iter(adapter.layers)),
                              fix="pin or blend the experts and bake them into a plain LoRA to get a new file")
    tensors: dict[str, torch.Tensor] = {}
    for prefix, layer in adapter.layers.items():
        tensors[f"{prefix}.lora_down.weight"] = cast(layer.down)
        for e in range(layer.num_experts):
            tensors[f"{prefix}.lora_ups.{e}.weight"] = cast(layer.ups[e])
        tensors[f"{prefix}.router.weight"] = layer.router_weight.detach().float().cpu().contiguous()
        tensors[f"{prefix}.router.bias"] = layer.router_bias.detach().float().cpu().contiguous()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(layer.alpha))
        if layer.inv_scale is not None:
            tensors[f"{prefix}.inv_scale"] = cast(layer.inv_scale)
    for prefix, leg in adapter.plain_layers.items():
        tensors[f"{prefix}.lora_down.weight"] = cast(leg.down)
        tensors[f"{prefix}.lora_up.weight"] = cast(leg.up)
        tensors[f"{prefix}.alpha"] = torch.tensor(float(leg.alpha))
        if leg.inv_scale is not None:
            tensors[f"{prefix}.inv_scale"] = cast(leg.inv_scale)
    tensors.update({k: v.float() for k, v in reft.state_dict(adapter.reft).items()})
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
