"""LoRA-X transfer: carry an adapter to another version of its base model, without data.

Per adapted weight, with ``P = Ũ_t Ũ_tᵀ`` and ``Q = Ṽ_t Ṽ_tᵀ`` the projections onto the target weight's top-R left
and right singular subspaces (Farhadzadeh et al., ICLR 2025), each factor is moved on its own side, which keeps an
Ortho-Hydra layer's structure (shared down, E ups, router) and is exact for every product ``up_e · down``:

* ``subspace`` (LoRA-X): ``up_e ← P up_e``, ``down ← down Q``.
* ``subspace+null`` (after ProLoRA): the part of a factor inside the *source's* top-R subspace goes to the
  target's, the part outside it to the target's complement: ``up ← P P_s up + (I − P)(I − P_s) up``, and the
  same on the input side.  Transfer onto the same weights is then the identity for any adapter.
* ``copy``: the factors unchanged (the naive baseline).

A layer is kept only where the source and target subspaces are similar, ``min(‖Ũ_sᵀŨ_t‖²_F, ‖Ṽ_sᵀṼ_t‖²_F) / R
>= τ``; a layer the target lacks is skipped.  Both are reported per layer.  Routers are kept as they are: their
input ``rmspool(down · x)`` moves with the down, and the caller measures the gate drift.

Weights are passed as zero-argument callables and fetched one layer at a time, so peak memory is about one layer
(two weights and their subspaces), whatever the model's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from .adapter import Adapter
from .errors import OrthoHydraError
from .kind import Capability
from .layer import AdapterLayer
from .subspace import Subspace, SubspaceCache, similarity

MODES = ("subspace", "subspace+null", "copy")
WeightSource = Callable[[], torch.Tensor]


@dataclass(frozen=True)
class TransferOptions:
    rank: int = 0  # R; 0: per layer, the smallest R holding ``energy`` of the source weight's ‖W‖²_F
    energy: float = 0.9
    threshold: float = 0.0  # τ in [0, 1]
    mode: str = "subspace"
    seed: int = 0

    def check(self) -> None:
        if self.mode not in MODES:
            raise OrthoHydraError(f"mode '{self.mode}' is not one of {', '.join(MODES)}.", key="mode",
                                  fix="pick subspace (LoRA-X), subspace+null or copy")
        if not 0.0 <= self.threshold <= 1.0:
            raise OrthoHydraError(f"threshold τ = {self.threshold:g} is outside [0, 1]; similarity is a share.",
                                  key="threshold", fix="use a value in [0, 1] (0 keeps every layer)")
        if self.rank < 0:
            raise OrthoHydraError(f"rank {self.rank} is negative.", key="rank",
                                  fix="give R >= 1, or 0 to choose R by energy")
        if self.rank == 0 and not 0.0 < self.energy <= 1.0:
            raise OrthoHydraError(f"energy {self.energy:g} is outside (0, 1].", key="energy",
                                  fix="use a share such as 0.9, or set rank")


@dataclass(frozen=True)
class LayerTransfer:
    """One adapter layer's outcome: ``kept``, ``dropped`` (below τ) or ``skipped`` (not in a model)."""

    name: str
    status: str
    rank: int | None = None
    similarity_out: float | None = None
    similarity_in: float | None = None
    retained: float | None = None  # ‖ΔW after‖_F / ‖ΔW before‖_F at a uniform gate
    reason: str = ""

    @property
    def similarity(self) -> float | None:
        if self.similarity_out is None or self.similarity_in is None:
            return None
        return min(self.similarity_out, self.similarity_in)


@dataclass(frozen=True)
class TransferResult:
    adapter: Adapter
    layers: list[LayerTransfer]

    def counts(self) -> dict[str, int]:
        out = {"kept": 0, "dropped": 0, "skipped": 0}
        for row in self.layers:
            out[row.status] += 1
        return out

    def table(self, gate_drift: Mapping[str, float] | None = None) -> str:
        """A fixed-width per-layer table, then a one-line tally."""
        drift = gate_drift or {}
        lines = [f"{'layer':<48} {'status':<8} {'R':>5} {'sim out':>8} {'sim in':>8} {'|dW| kept':>9} "
                 f"{'gate KL':>8}"]
        for row in self.layers:
            def num(value: float | None, width: int = 8) -> str:
                return f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}}"
            kl = drift.get(row.name)
            lines.append(f"{row.name[:48]:<48} {row.status:<8} {row.rank if row.rank is not None else '-':>5} "
                         f"{num(row.similarity_out)} {num(row.similarity_in)} {num(row.retained, 9)} "
                         f"{f'{kl:>8.4f}' if kl is not None else f'{chr(45):>8}'}"
                         + (f"  {row.reason}" if row.reason else ""))
        c = self.counts()
        lines.append(f"{c['kept']} kept, {c['dropped']} dropped (similarity < τ), {c['skipped']} skipped "
                     f"(not in both models)")
        return "\n".join(lines)


def _both_sides(x: torch.Tensor, source: torch.Tensor | None, target: torch.Tensor, mode: str) -> torch.Tensor:
    """Move the columns of ``x`` (n, r) from the source basis (n, R) to the target basis, in fp32."""
    x = x.float()
    onto_target = lambda y: target @ (target.T @ y)  # noqa: E731
    if mode == "subspace":
        return onto_target(x)
    inside = source @ (source.T @ x)
    outside = x - inside
    return onto_target(inside) + outside - onto_target(outside)


def _moved_factors(layer: AdapterLayer, src: Subspace | None, tgt: Subspace, mode: str) -> AdapterLayer:
    layer.require(Capability.TRANSFER, key=layer.name)
    src_u, src_v = (src.u, src.v) if src is not None else (None, None)
    new_down = _both_sides(layer.folded_down().T, src_v, tgt.v, mode).T.contiguous()
    return layer.transferred(new_down, lambda up: _both_sides(up, src_u, tgt.u, mode))


def _uniform_delta_norm(layer: AdapterLayer) -> float:
    gate = torch.full((layer.num_experts,), 1.0 / layer.num_experts) if layer.routed else None
    return layer.delta_weight_norm(gate)


def transfer_layer(layer: AdapterLayer, source: torch.Tensor, target: torch.Tensor, options: TransferOptions,
                   cache: SubspaceCache) -> tuple[AdapterLayer | None, LayerTransfer]:
    """One layer onto the target weight, or None when its subspaces are too dissimilar (see the module doc)."""
    name = layer.name
    if tuple(source.shape) != tuple(target.shape):
        raise OrthoHydraError(f"{name}: the source weight is {tuple(source.shape)} and the target's "
                              f"{tuple(target.shape)}.", key=name,
                              fix="transfer between versions of one architecture (same layer shapes)")
    if tuple(source.shape) != (layer.out_features, layer.in_features):
        raise OrthoHydraError(f"{name}: the adapter writes {layer.out_features}x{layer.in_features} but the model "
                              f"weight is {tuple(source.shape)}.", key=name,
                              fix="pick the base model this adapter was trained on as the source")
    smallest = min(source.shape)
    if options.rank > smallest:
        raise OrthoHydraError(f"rank {options.rank} is larger than {name}'s {source.shape[0]}x{source.shape[1]} "
                              f"weight allows ({smallest}).", key="rank",
                              fix=f"use rank <= {smallest}, or rank 0 to choose R by energy")
    if options.rank:
        src = cache.get(source, options.rank, seed=options.seed)
    else:
        src = cache.for_energy(source, options.energy, seed=options.seed)
    rank = src.rank
    tgt = cache.get(target, rank, seed=options.seed)
    sim_out, sim_in = similarity(src.u, tgt.u), similarity(src.v, tgt.v)
    row = LayerTransfer(name, "kept", rank, sim_out, sim_in)
    if min(sim_out, sim_in) < options.threshold:
        return None, replace(row, status="dropped", retained=0.0, reason=f"similarity < τ = {options.threshold:g}")
    moved = layer if options.mode == "copy" else _moved_factors(layer, src, tgt, options.mode)
    before, after = _uniform_delta_norm(layer), _uniform_delta_norm(moved)
    return moved, replace(row, retained=after / before if before > 0 else 1.0)


def transfer(adapter: Adapter, source_weights: Mapping[str, WeightSource], target_weights: Mapping[str, WeightSource],
             options: TransferOptions | None = None, *, cache: SubspaceCache | None = None,
             progress: Callable[[int, int], None] | None = None) -> TransferResult:
    """The adapter moved onto the target base model, with a row per layer (see the module doc).

    ``source_weights`` / ``target_weights`` map each adapter layer's name to a callable returning the weight that
    layer adds to (for a slice of a fused weight, that slice).  ``progress(done, total)`` is called per layer and
    may raise to stop the transfer (an interrupt).
    """
    options = options if options is not None else TransferOptions()
    options.check()
    cache = cache if cache is not None else SubspaceCache()
    everything = {**adapter.layers, **adapter.plain_layers}
    routed, plain, rows = {}, {}, []
    for done, (name, layer) in enumerate(everything.items()):
        if name not in source_weights or name not in target_weights:
            missing = "source" if name not in source_weights else "target"
            rows.append(LayerTransfer(name, "skipped", reason=f"not in the {missing} model"))
        else:
            moved, row = transfer_layer(layer, source_weights[name](), target_weights[name](), options, cache)
            rows.append(row)
            if moved is not None:
                (routed if moved.routed else plain)[name] = moved
        if progress is not None:
            progress(done + 1, len(everything))
    if not any(row.status != "skipped" for row in rows):
        raise OrthoHydraError(f"none of the adapter's {len(everything)} layers is in both models.",
                              path=adapter.path, key=next(iter(everything), "layers"),
                              fix="pick the base model the adapter was trained on as the source, and a version of "
                                  "the same architecture as the target")
    stamp = {"mode": options.mode, "rank": options.rank, "energy": options.energy, "threshold": options.threshold,
             "seed": options.seed, **TransferResult(adapter, rows).counts()}
    metadata = {**adapter.metadata, "oh_transfer": json.dumps(stamp)}
    result = replace(adapter, layers=routed, plain_layers=plain, metadata=metadata)
    return TransferResult(result, rows)
