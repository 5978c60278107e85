"""The Hydra kinds of the ``_moe`` layout: a routed layer (plain Hydra / Ortho-Hydra: down, E ups, router) and a
plain LoRA leg; their inference math, and the keys each reads and writes.

Per routed prefix: ``lora_down.weight`` (r, in), ``lora_ups.<e>.weight`` (out, r), ``router.weight``
(E, r + σ width + FEI width), ``router.bias`` (E,), optional ``alpha`` and ``inv_scale`` (in,).  Prefixes with
``lora_up.weight`` instead are plain LoRA legs.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from . import components
from .errors import OrthoHydraError
from .kind import FileKeys, alpha_or_rank, cpu_tensor, stamped_expert_names, stored_alpha, truthy
from .layer import AdapterLayer, GateSink, RoutedLayer, same_tensor
from .routing import (
    ROUTER_SOURCES,
    GateContext,
    GateOverride,
    RouterSpec,
    add_routed_delta,
    finish_gate,
    mix_and_project_up,
    rms_pool,
    router_logits,
)

_SUFFIX = re.compile(r"^(?P<prefix>.+?)\.(?P<suffix>lora_down\.weight|lora_up\.weight|lora_ups\.(?P<e>\d+)\.weight"
                     r"|router\.weight|router\.bias|alpha|inv_scale)$")


@dataclass
class ExpertLayer(RoutedLayer):
    """One routed Linear: ``Δy = s · Σ_e w_e(x, σ) up_e down (x ⊙ inv_scale)``, w the gate's mixing weights."""

    name: str
    down: torch.Tensor  # (r, in)
    ups: torch.Tensor  # (E, out, r)
    router_weight: torch.Tensor  # (E, r + sigma_dim + fei_dim)
    router_bias: torch.Tensor  # (E,)
    alpha: float
    router: RouterSpec = field(default_factory=RouterSpec)
    inv_scale: torch.Tensor | None = None  # (in,)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"down": self.down, "ups": self.ups, "router_weight": self.router_weight,
               "router_bias": self.router_bias}
        if self.inv_scale is not None:
            out["inv_scale"] = self.inv_scale
        return out

    @classmethod
    def read(cls, file: FileKeys) -> dict[str, ExpertLayer]:
        """Every prefix with ``lora_ups.<e>.weight`` keys (router corrected as ``file.router_correction`` asks)."""
        if not file.routed_read and _routes_per_network(file.tensors, file.metadata):
            raise OrthoHydraError("this adapter routes through one network-level GlobalRouter (FeRA / stacked "
                                  "experts), which this pack does not apply.", path=file.path, key="global_router",
                                  fix=f"load it with the reference node's FeRA loader ({components.REFERENCE_NODE})")
        groups, _ = layout_groups(file.remaining())
        fei_dim = _fei_width(file.metadata)
        layers = {}
        for prefix, group in sorted(groups.items()):
            if any(k.startswith("lora_ups.") for k in group):
                layers[prefix] = _routed_layer(prefix, group, file.path, file.metadata, fei_dim)
                file.take(f"{prefix}.{suffix}" for suffix in group)
        is_reference_split = (file.metadata.get("ss_network_spec") == "ortho_hydra"
                              and file.metadata.get("oh_lambda_placement") != "up")
        if is_reference_split and file.router_correction == "training":
            for layer in layers.values():
                _correct_router(layer)
        return layers

    @classmethod
    def describe_header(cls, entries: Mapping[str, dict], metadata: Mapping[str, str], path: str) -> dict | None:
        experts, ranks = heads_in_header(entries)
        if not experts:
            return None
        counts = set(experts.values())
        num_experts = max(counts)
        names = stamped_expert_names(metadata)
        if not names or len(names) != num_experts:
            names = [f"expert {e}" for e in range(num_experts)]
        return {"num_experts": num_experts, "expert_names": names, "rank": max(ranks, default=0),
                "routed_layers": len(experts), "spec": metadata.get("ss_network_spec", "hydra"),
                "router_source": metadata.get("ss_router_source", "input"), "consistent": len(counts) == 1}

    def file_tensors(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Routers and alpha stay fp32 whatever ``dtype``."""
        out = {f"{prefix}.lora_down.weight": cpu_tensor(self.down, dtype)}
        for e in range(self.num_experts):
            out[f"{prefix}.lora_ups.{e}.weight"] = cpu_tensor(self.ups[e], dtype)
        out[f"{prefix}.router.weight"] = cpu_tensor(self.router_weight, torch.float32)
        out[f"{prefix}.router.bias"] = cpu_tensor(self.router_bias, torch.float32)
        out[f"{prefix}.alpha"] = torch.tensor(float(self.alpha))
        if self.inv_scale is not None:
            out[f"{prefix}.inv_scale"] = cpu_tensor(self.inv_scale, dtype)
        return out

    def gate_from_projection(self, lx: torch.Tensor, sigma: torch.Tensor | None = None,
                             override: GateOverride | None = None, context: GateContext | None = None,
                             fei: torch.Tensor | None = None, sink: GateSink | None = None) -> torch.Tensor:
        """Routing distribution (B, E) fp32 from an already computed ``lx = self.project(x)`` (callers share the
        down GEMM); its pooling is :meth:`router_input`'s."""
        logits = router_logits(rms_pool(lx), self.router_weight, self.router_bias, self.router, sigma, fei)
        if context is None:
            context = GateContext(layer=self.name, sigma=sigma)
        gate = finish_gate(logits, context, override)
        if sink is not None:
            sink(self.name, gate, context)
        return gate

    def gate(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
             context: GateContext | None = None, fei: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample routing distribution (B, E) after any override (before a centered gate's −1/E)."""
        return self.gate_from_projection(self.project(x), sigma, override, context, fei)

    def _project_and_mix(self, x: torch.Tensor, routing: dict) -> tuple[torch.Tensor, torch.Tensor]:
        lx = self.project(x)
        return lx, self.router.mixing_weights(self.gate_from_projection(lx, **routing))

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None,
              sink: GateSink | None = None) -> torch.Tensor:
        routing = {"sigma": sigma, "override": override, "context": context, "fei": fei, "sink": sink}
        stochastic = self._stochastic_delta(x, routing)
        if stochastic is not None:
            return stochastic
        lx, weights = self._project_and_mix(x, routing)
        return mix_and_project_up(lx, weights, self.ups, self.scale)

    def add_delta(self, output: torch.Tensor, x: torch.Tensor, strength: float = 1.0, **routing) -> torch.Tensor:
        stochastic = self._stochastic_delta(x, routing, strength, output)
        if stochastic is not None:
            return stochastic
        lx, weights = self._project_and_mix(x, routing)  # fused: no separate Δy tensor on the hot path
        return add_routed_delta(output, lx, weights, self.ups, self.scale * strength)

    def _stochastic_delta(self, x: torch.Tensor, routing: dict, strength: float = 1.0,
                          add_to: torch.Tensor | None = None) -> torch.Tensor | None:
        """Δy (``add_to + strength · Δy`` when given) under an omcd / mc_dropout override, else None."""
        finder = getattr(routing.get("override"), "element_mix", None)
        if finder is None:
            return None
        context = routing.get("context") or GateContext(layer=self.name, sigma=routing.get("sigma"))
        mix = finder(context)
        if mix is None:
            return None
        if self.router.centered:  # estimate the same direct blend a blend rule gives: Σ (w_k − 1/E) y_k
            centered = self.router.mixing_weights(torch.tensor(mix.weights, dtype=torch.float64))
            mix = replace(mix, weights=tuple(centered.tolist()))
        lx = self.project(x)
        self.gate_from_projection(lx, **{**routing, "context": context})  # recorders see the blend it estimates
        generator = mix.generator(self.name, context.extra.get("sampler_sigma"), lx.device)
        return mix.project_up(lx, self.ups.to(device=lx.device, dtype=lx.dtype), self.scale * strength, generator,
                              add_to=add_to)

    def factors(self, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.constant_gate(gate)
        up = self.scale * torch.einsum("e,eor->or", self.router.mixing_weights(g), self.ups.float())
        return up, self.folded_down()

    def joined(self, other: AdapterLayer) -> ExpertLayer | None:
        if not (isinstance(other, ExpertLayer) and self.alpha == other.alpha and self.router == other.router
                and same_tensor(self.down, other.down) and same_tensor(self.router_weight, other.router_weight)
                and same_tensor(self.router_bias, other.router_bias)
                and same_tensor(self.inv_scale, other.inv_scale)):
            return None
        return replace(self, name=f"{self.name}+{other.name}", ups=torch.cat([self.ups, other.ups], dim=1))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ExpertLayer:
        """Copy with tensors moved; router tensors keep fp32 so the gate stays fp32."""
        return self.with_tensors(**{n: t.to(device=device, dtype=None if n in self.fp32_tensors else dtype)
                                    for n, t in self.tensors().items()})


def heads_in_header(entries: Mapping[str, dict]) -> tuple[dict[str, int], set[int]]:
    """From a file's header alone: the up-head count per layer prefix (``lora_ups.<e>``) and the ranks of the
    ``lora_down`` weights."""
    heads: dict[str, int] = {}
    ranks: set[int] = set()
    for key, entry in entries.items():
        match = None if components.is_other_component(key) else _SUFFIX.match(key)
        if match is None:
            continue
        if match["e"] is not None:
            heads[match["prefix"]] = max(heads.get(match["prefix"], 0), int(match["e"]) + 1)
        elif match["suffix"] == "lora_down.weight" and isinstance(entry, dict):
            ranks.add(int(entry["shape"][0]))
    return heads, ranks


@dataclass
class PlainLoRA(AdapterLayer):
    """An unrouted leg stored beside the experts: ``Δy = s · up down (x ⊙ inv_scale)``."""

    name: str
    down: torch.Tensor  # (r, in)
    up: torch.Tensor  # (out, r)
    alpha: float
    inv_scale: torch.Tensor | None = None

    adapter_field: ClassVar[str] = "plain_layers"
    out_tensors: ClassVar[tuple[str, ...]] = ("up",)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"down": self.down, "up": self.up}
        if self.inv_scale is not None:
            out["inv_scale"] = self.inv_scale
        return out

    @classmethod
    def read(cls, file: FileKeys) -> dict[str, PlainLoRA]:
        """Every prefix with ``lora_up.weight`` and ``lora_down.weight`` keys."""
        legs = {}
        for prefix, group in sorted(layout_groups(file.remaining())[0].items()):
            if "lora_up.weight" not in group or "lora_down.weight" not in group:
                continue
            down, up = group["lora_down.weight"], group["lora_up.weight"]
            if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                raise _shape_error(file.path, f"{prefix}.lora_up.weight",
                                   f"up {tuple(up.shape)} does not fit down {tuple(down.shape)}")
            inv = group.get("inv_scale")
            legs[prefix] = cls(prefix, down.float(), up.float(), alpha_or_rank(stored_alpha(group.get("alpha")),
                                                                                down.shape[0]),
                               None if inv is None else inv.reshape(-1).float())
            file.take(f"{prefix}.{suffix}" for suffix in group)
        return legs

    def file_tensors(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.lora_down.weight": cpu_tensor(self.down, dtype),
               f"{prefix}.lora_up.weight": cpu_tensor(self.up, dtype),
               f"{prefix}.alpha": torch.tensor(float(self.alpha))}
        if self.inv_scale is not None:
            out[f"{prefix}.inv_scale"] = cpu_tensor(self.inv_scale, dtype)
        return out

    def factors(self, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale * self.up.float(), self.folded_down()

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None,
              sink: GateSink | None = None) -> torch.Tensor:
        return (self.project(x) @ self.up.to(device=x.device, dtype=x.dtype).T) * self.scale


# --- reading the layout ------------------------------------------------------------------------------------------


def layout_groups(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """``({prefix: {suffix: tensor}}, keys outside the layout)``; other components' keys are never grouped."""
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    outside = []
    for key, tensor in tensors.items():
        match = None if components.is_other_component(key) else _SUFFIX.match(key)
        if match is None:
            outside.append(key)
            continue
        groups[match["prefix"]][match["suffix"]] = tensor
    return groups, outside


def unread_keys(file: FileKeys) -> list[str]:
    """The keys no kind read and the layout does not hold, after refusing a prefix that is a layer missing its ups
    (a layout prefix with neither down nor router, e.g. a lone ``alpha``, is dropped)."""
    groups, outside = layout_groups(file.remaining())
    for prefix, group in sorted(groups.items()):
        if any(k.startswith("router.") for k in group) or "lora_down.weight" in group:
            missing = "lora_ups.<e>.weight" if "router.weight" in group else "lora_up.weight or lora_ups.<e>.weight"
            raise OrthoHydraError(f"layer has {sorted(group)} but no {missing}.", path=file.path,
                                  key=f"{prefix}.{missing}", fix="the file is incomplete; re-export it")
    return outside


def _routes_per_network(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    return (any(k.startswith("global_router.") for k in tensors) or metadata.get("ss_route_per_layer") == "false"
            or metadata.get("ss_network_spec") == "stacked_experts_global_fei")


def _router_spec(metadata: Mapping[str, str], path: str, sigma_dim: int, fei_dim: int,
                 num_experts: int) -> RouterSpec:
    source = metadata.get("ss_router_source", "input") or "input"
    if source not in ROUTER_SOURCES:
        global_hint = " (a network-level GlobalRouter, not per-layer routers)" if source == "crossattn_emb" else ""
        raise OrthoHydraError(f"router source {source!r}{global_hint} is not supported (supported: "
                              f"{', '.join(ROUTER_SOURCES)}).", path=path, key="ss_router_source",
                              fix="use a file trained with per-layer routers on input, sigma or fei features")
    bands: tuple[float, ...] = ()
    if truthy(metadata.get("ss_specialize_experts_by_sigma_buckets")):
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
                          centered=truthy(metadata.get("ss_ortho_centered_gate")), sigma_bands=bands)
    except ValueError as exc:
        raise OrthoHydraError(str(exc) + ".", path=path, key="router.weight",
                              fix="check that the router width is r + an even σ-feature width + the FEI width") from exc


def _fei_width(metadata: Mapping[str, str]) -> int:
    if metadata.get("ss_router_source") == "fei" or truthy(metadata.get("ss_use_fei_router")):
        return int(metadata.get("ss_fei_feature_dim", "2") or 2)
    return 0


def _shape_error(path: str | None, key: str, problem: str) -> OrthoHydraError:
    return OrthoHydraError(problem, path=path, key=key,
                           fix="the file is inconsistent (mixed from two adapters or damaged); re-export it")


def _routed_layer(prefix: str, group: dict[str, torch.Tensor], path: str | None, metadata: Mapping[str, str],
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
        alpha=alpha_or_rank(stored_alpha(group.get("alpha")), rank),
        router=spec,
        inv_scale=None if inv_scale is None else inv_scale.reshape(-1).float(),
    )


def _correct_router(layer: ExpertLayer) -> None:
    """Undo the reference's √|λ| split on the router: divide its first r columns by √|λ|.

    Rows of Q_eff are orthonormal, so √|λ| is the row norm of ``down · diag(inv_scale)``.
    """
    root_lambda = layer.folded_down().double().norm(dim=1)
    safe = torch.where(root_lambda > 0, root_lambda, torch.ones_like(root_lambda))
    weight = layer.router_weight.double()
    weight[:, : layer.rank] /= safe
    layer.router_weight = weight.float()
