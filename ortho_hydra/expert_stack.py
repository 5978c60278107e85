"""Many single-expert adapters as one expert bank, exactly: expert i is adapter i.

Per layer the shared down is the adapters' downs stacked (rank Σ r_i) and expert i's up holds adapter i's up in its
own columns, zeros elsewhere, so a one-hot gate reproduces adapter i at strength 1 and a gate of weights w (not
renormalised) reproduces the sum of the adapters at strengths w.  Used for orthogonal-slot merges
(:mod:`.slots`) and for banks of ordinary LoRA files (:func:`lora_expert`), whatever their format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .adapter import Adapter
from .errors import OrthoHydraError
from .routing import RouterSpec
from .runtime import ExpertLayer

MAX_BANK_RANK = 1024  # Σ r_i per layer: the shared down's rank, and the router's input width


@dataclass(frozen=True)
class LoraPiece:
    """One low-rank patch of a weight, as a LoRA file stores it: ΔW[rows] = (alpha / r) · up @ down.

    ``row_offset`` places a patch of a fused weight's slice (diffusers' separate q, k, v into one qkv).
    """

    up: torch.Tensor  # (rows, r)
    down: torch.Tensor  # (r, in)
    alpha: float | None = None  # None: alpha = r (scale 1), as ComfyUI reads it
    row_offset: int = 0

    @property
    def scale(self) -> float:
        rank = self.down.shape[0]
        return (self.alpha if self.alpha is not None else rank) / rank


def lora_expert(prefix: str, pieces: Sequence[LoraPiece], out_features: int, in_features: int) -> ExpertLayer:
    """One expert holding every piece a LoRA has for this weight; its scale is folded into the up."""
    total = sum(p.down.shape[0] for p in pieces)
    down = torch.zeros(total, in_features)
    up = torch.zeros(1, out_features, total)
    start = 0
    for piece in pieces:
        rank, rows = piece.down.shape[0], piece.up.shape[0]
        down[start:start + rank] = piece.down.float()
        up[0, piece.row_offset:piece.row_offset + rows, start:start + rank] = piece.up.float() * piece.scale
        start += rank
    return ExpertLayer(name=prefix, down=down, ups=up, router_weight=torch.zeros(1, total),
                       router_bias=torch.zeros(1), alpha=float(total), router=RouterSpec(source="input"))


def stack_as_experts(adapters: Sequence[Adapter], names: Sequence[str]) -> Adapter:
    """One adapter whose expert i is adapter i (each a single expert), exactly, with a uniform router.

    Per layer the shared down is the adapters' downs stacked (rank Σ r_i); expert i's up holds adapter i's up,
    scaled by its alpha / r_i, in adapter i's columns and zeros elsewhere; an adapter without the layer contributes
    zeros.  The merged scale is 1 (alpha = Σ r_i), so a one-hot gate reproduces adapter i at strength 1.
    """
    for adapter, name in zip(adapters, names, strict=True):
        if adapter.plain_layers or any(layer.num_experts != 1 for layer in adapter.layers.values()):
            raise OrthoHydraError(f"'{name}' is not a one-expert adapter; only those stack one per expert.",
                                  path=adapter.path, key="experts", fix="train each adapter with experts = 1")
        if any(layer.inv_scale is not None for layer in adapter.layers.values()):
            raise OrthoHydraError(f"'{name}' rescales its inputs (inv_scale), which a shared down cannot hold.",
                                  path=adapter.path, key="inv_scale", fix="merge adapters without input scaling")
    prefixes = sorted({p for adapter in adapters for p in adapter.layers})
    usual_rank = [next(iter(a.layers.values())).down.shape[0] for a in adapters]  # a missing layer's zeros
    layers = {}
    for prefix in prefixes:
        present = [a.layers.get(prefix) for a in adapters]
        first = next(layer for layer in present if layer is not None)
        in_features, out_features = first.down.shape[1], first.out_features
        ranks = [layer.down.shape[0] if layer is not None else usual_rank[e] for e, layer in enumerate(present)]
        total = sum(ranks)
        if total > MAX_BANK_RANK:
            raise OrthoHydraError(f"{prefix}: the adapters' ranks sum to {total} here, over {MAX_BANK_RANK}.",
                                  key=prefix, fix="stack fewer or lower-rank adapters")
        down = torch.zeros(total, in_features)
        ups = torch.zeros(len(adapters), out_features, total)
        start = 0
        for e, (layer, rank) in enumerate(zip(present, ranks, strict=True)):
            if layer is not None:
                if layer.down.shape[1] != in_features or layer.out_features != out_features:
                    raise OrthoHydraError(f"{prefix}: '{names[e]}' is {layer.out_features}x{layer.down.shape[1]}, "
                                          f"the others {out_features}x{in_features}.", path=adapters[e].path,
                                          key=prefix, fix="merge adapters trained on the same base model")
                down[start:start + rank] = layer.down.float()
                ups[e, :, start:start + rank] = layer.ups[0].float() * (layer.alpha / rank)
            start += rank
        layers[prefix] = ExpertLayer(name=prefix, down=down, ups=ups,
                                     router_weight=torch.zeros(len(adapters), total),
                                     router_bias=torch.zeros(len(adapters)), alpha=float(total),
                                     router=RouterSpec(source="input"))
    return Adapter(layers=layers, metadata={"ss_network_spec": "hydra", "oh_merged_from": json.dumps(list(names))},
                   expert_names=tuple(names))
