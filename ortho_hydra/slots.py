"""Orthogonal slots (Orthogonal Adaptation, Po et al. 2024, with W0's own singular vectors as the shared basis).

An adapter trained on slot k of ``slots`` writes only into slice k of W0's top ``slots·r`` left singular vectors,
so adapters trained independently, by people who never see each other's data, occupy disjoint output subspaces.
This module stamps what a merge must check (the slot, and a fingerprint of the W0 the basis came from), measures
the output-subspace overlap of any two adapters, and stacks slot adapters into one E-expert adapter exactly:
pinning expert i gives adapter i alone, and a blend with weights w gives the sum of the adapters at strengths w.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch

from .adapter import Adapter
from .errors import OrthoHydraError
from .expert_stack import stack_as_experts
from .runtime import ExpertLayer

SLOT_KEY, SLOTS_KEY, FINGERPRINT_KEY = "oh_slot", "oh_slots", "oh_base_fingerprint"
_PROBES = 3  # seeded projections per layer in the fingerprint
FINGERPRINT_RTOL = 2e-2  # bf16/fp16 copies of one checkpoint agree far better; another fine-tune does not


def base_fingerprint(weights: Mapping[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per layer: ‖W‖_F and ``_PROBES`` entries of W·g for a seeded Gaussian g, normalised by ‖W‖_F.

    Cheap (one mat-vec per layer) and tolerant of the dtype a checkpoint is stored in; two different base models
    differ in it at the first digit.
    """
    out = {}
    for prefix, weight in weights.items():
        w = weight.detach().float().cpu().reshape(weight.shape[0], -1)
        probe = torch.randn(w.shape[1], generator=torch.Generator().manual_seed(1234)) / math.sqrt(w.shape[1])
        norm = float(w.norm())
        projected = (w @ probe)[:_PROBES] / max(norm, 1e-12)
        out[prefix] = [round(norm, 6), *(round(float(v), 6) for v in projected)]
    return out


def slot_metadata(slot: int, slots: int, fingerprint: Mapping[str, list[float]]) -> dict[str, str]:
    return {SLOT_KEY: str(slot), SLOTS_KEY: str(slots), FINGERPRINT_KEY: json.dumps(fingerprint, sort_keys=True)}


def mismatched_layers(a: Mapping[str, list[float]], b: Mapping[str, list[float]],
                      rtol: float = FINGERPRINT_RTOL) -> list[str]:
    """Layers present in both fingerprints whose values disagree beyond ``rtol`` (relative to ‖W‖)."""
    out = []
    for prefix in sorted(set(a) & set(b)):
        x, y = torch.tensor(a[prefix], dtype=torch.float64), torch.tensor(b[prefix], dtype=torch.float64)
        scale = max(abs(x[0].item()), 1e-12)
        if abs(x[0] - y[0]) / scale > rtol or (x[1:] - y[1:]).abs().max() > rtol:
            out.append(prefix)
    return out


def output_overlap(up_a: torch.Tensor, up_b: torch.Tensor) -> float:
    """‖P_aᵀ P_b‖_F / √r for orthonormal bases P of the two column spaces, r the smaller rank: 0 for disjoint
    output subspaces, 1 when one contains the other."""
    bases = []
    for up in (up_a, up_b):
        u, s, _ = torch.linalg.svd(up.detach().double(), full_matrices=False)
        keep = s > s.max() * 1e-9 if s.numel() and s.max() > 0 else torch.zeros_like(s, dtype=torch.bool)
        bases.append(u[:, keep])
    rank = min(b.shape[1] for b in bases)
    if rank == 0:
        return 0.0
    return float((bases[0].T @ bases[1]).norm() / math.sqrt(rank))


def layer_output_basis(layer: ExpertLayer) -> torch.Tensor:
    """The columns every expert of ``layer`` can write into, (out, E·r)."""
    return torch.cat(list(layer.ups.float()), dim=1)


def pairwise_overlap(adapters: Sequence[Adapter]) -> list[list[float]]:
    """The mean over shared layers of :func:`output_overlap`, for every pair of adapters."""
    n = len(adapters)
    table = [[1.0 if i == j else float("nan") for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            shared = sorted(set(adapters[i].layers) & set(adapters[j].layers))
            values = [output_overlap(layer_output_basis(adapters[i].layers[p]),
                                     layer_output_basis(adapters[j].layers[p])) for p in shared]
            table[i][j] = table[j][i] = sum(values) / len(values) if values else float("nan")
    return table


def merge_slot_adapters(adapters: Sequence[Adapter], names: Sequence[str]) -> tuple[Adapter, list[list[float]]]:
    """Check that ``adapters`` are slot-trained on one base with distinct slots, then stack them (see above).

    Returns the merged adapter and the pairwise output-subspace overlap table.
    """
    if len(adapters) < 2:
        raise OrthoHydraError("a merge needs at least two adapters.", key="adapters", fix="add another adapter")
    slots, fingerprints = [], []
    for adapter, name in zip(adapters, names, strict=True):
        meta = adapter.metadata
        if SLOT_KEY not in meta or SLOTS_KEY not in meta or FINGERPRINT_KEY not in meta:
            raise OrthoHydraError(f"'{name}' was not trained on an orthogonal slot (no {SLOT_KEY} stamp).",
                                  path=adapter.path, key=SLOT_KEY,
                                  fix="train it with OrthoHydraTrain's slot and slots inputs, or stack plain "
                                      "LoRAs with the expert-bank node")
        slots.append((int(meta[SLOT_KEY]), int(meta[SLOTS_KEY])))
        fingerprints.append(json.loads(meta[FINGERPRINT_KEY]))
    if len({total for _, total in slots}) > 1:
        counts = ", ".join(f"{n}: {t}" for n, (_, t) in zip(names, slots, strict=True))
        raise OrthoHydraError(f"the adapters were cut into different slot counts ({counts}).", key=SLOTS_KEY,
                              fix="train every adapter with the same slots value")
    seen: dict[int, str] = {}
    for name, (slot, _) in zip(names, slots, strict=True):
        if slot in seen:
            raise OrthoHydraError(f"'{seen[slot]}' and '{name}' both use slot {slot}: their outputs overlap.",
                                  key=SLOT_KEY, fix="retrain one of them on a free slot")
        seen[slot] = name
    for name, adapter, fingerprint in zip(names[1:], adapters[1:], fingerprints[1:], strict=True):
        bad = mismatched_layers(fingerprints[0], fingerprint)
        if bad:
            raise OrthoHydraError(f"'{name}' was trained on another base model than '{names[0]}' "
                                  f"({len(bad)} layers differ, e.g. {bad[0]}).", path=adapter.path,
                                  key=FINGERPRINT_KEY, fix="merge only adapters trained on the same base model")
    merged = stack_as_experts(adapters, names)
    meta = {**merged.metadata, SLOTS_KEY: str(slots[0][1]), FINGERPRINT_KEY: adapters[0].metadata[FINGERPRINT_KEY],
            "oh_merged_slots": json.dumps([slot for slot, _ in slots])}
    return Adapter(layers=merged.layers, metadata=meta, expert_names=merged.expert_names), pairwise_overlap(adapters)
