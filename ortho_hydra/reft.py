"""LoReFT block edits as the reference trainer stores them: a low-rank edit of a DiT block's output.

``h ← h + s · Rᵀ (W h + b)`` on the block's output ``h`` (the residual stream, last dimension d), where ``R``
(``rotate_layer.weight``, (r, d)) spans the edited subspace, ``W`` / ``b`` (``learned_source``) give the edit inside
it, and ``s = alpha / r`` (alpha 0 or absent: 1).  This is Wu et al.'s LoReFT ``h + Rᵀ(W'h + b − Rh)`` with
``W = W' − R``, the parametrisation the reference trainer saves.  Keys: ``reft_unet_blocks_<i>.{rotate_layer.weight,
learned_source.weight, learned_source.bias, alpha}``; the edit applies to the output of ``blocks.<i>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .errors import OrthoHydraError

KEY = re.compile(r"^(?P<name>reft_unet_blocks_(?P<block>\d+))\.(?P<part>rotate_layer\.weight|learned_source\.weight|"
                 r"learned_source\.bias|alpha)$")
PREFIX = re.compile(r"^reft_unet_blocks_\d+\.")
_PARTS = ("rotate_layer.weight", "learned_source.weight", "learned_source.bias")


@dataclass(frozen=True)
class ReFTEdit:
    name: str  # reft_unet_blocks_<i>
    rotate: torch.Tensor  # R (r, d)
    source_weight: torch.Tensor  # W (r, d)
    source_bias: torch.Tensor  # b (r,)
    alpha: float

    @property
    def block(self) -> int:
        return int(self.name.rsplit("_", 1)[1])

    @property
    def rank(self) -> int:
        return int(self.rotate.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.rotate.shape[1])

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha else self.rank) / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"rotate": self.rotate, "source_weight": self.source_weight, "source_bias": self.source_bias}

    def with_tensors(self, **tensors: torch.Tensor) -> ReFTEdit:
        return replace(self, **tensors)

    def edit(self, h: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``h + strength · s · Rᵀ(W h + b)`` over the last dimension, in h's dtype."""
        inner = F.linear(h, self.source_weight.to(h), self.source_bias.to(h))
        return h + F.linear(inner, self.rotate.to(h).T) * (self.scale * strength)


def is_reft_key(key: str) -> bool:
    return PREFIX.match(key) is not None


def parse(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike | None = None) -> dict[str, ReFTEdit]:
    """``{reft_unet_blocks_<i>: edit}`` from a file's ``reft_unet_blocks_*`` tensors, or an error naming the key."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = KEY.match(key)
        if match is None:
            raise OrthoHydraError("not a ReFT key this pack knows (rotate_layer.weight, learned_source.weight / "
                                  ".bias, alpha).", path=path, key=key, fix="re-export the file with the reference "
                                                                            "trainer, or remove the key")
        groups.setdefault(match["name"], {})[match["part"]] = tensor
    edits = {}
    for name, parts in sorted(groups.items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1])):
        missing = [p for p in _PARTS if p not in parts]
        if missing:
            raise OrthoHydraError(f"the ReFT edit has no {missing[0]}.", path=path, key=f"{name}.{missing[0]}",
                                  fix="the file is incomplete; re-export it")
        rotate, weight, bias = (parts[p].float() for p in _PARTS)
        if rotate.ndim != 2 or weight.shape != rotate.shape or bias.shape != (rotate.shape[0],):
            raise OrthoHydraError(f"rotate_layer {tuple(rotate.shape)}, learned_source {tuple(weight.shape)} and bias "
                                  f"{tuple(bias.shape)} do not fit one (r, d) edit.", path=path,
                                  key=f"{name}.learned_source.weight", fix="the file is damaged; re-export it")
        alpha = parts.get("alpha")
        edits[name] = ReFTEdit(name, rotate, weight, bias, float(alpha.float().reshape(-1)[0]) if alpha is not None
                               and alpha.numel() else 0.0)
    return edits


def state_dict(edits: Mapping[str, ReFTEdit]) -> dict[str, torch.Tensor]:
    """The reference layout, for saving."""
    out = {}
    for name, e in edits.items():
        out[f"{name}.rotate_layer.weight"] = e.rotate.detach().cpu().contiguous()
        out[f"{name}.learned_source.weight"] = e.source_weight.detach().cpu().contiguous()
        out[f"{name}.learned_source.bias"] = e.source_bias.detach().cpu().contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(e.alpha))
    return out
