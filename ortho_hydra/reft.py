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
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import OrthoHydraError
from .kind import FileKeys, Kind, alpha_or_rank, cpu_tensor, stored_alpha

KEY = re.compile(r"^(?P<name>reft_unet_blocks_(?P<block>\d+))\.(?P<part>rotate_layer\.weight|learned_source\.weight|"
                 r"learned_source\.bias|alpha)$")
PREFIX = re.compile(r"^reft_unet_blocks_\d+\.")
_PARTS = ("rotate_layer.weight", "learned_source.weight", "learned_source.bias")


@dataclass(frozen=True)
class ReFTEdit(Kind):
    name: str  # reft_unet_blocks_<i>
    rotate: torch.Tensor  # R (r, d)
    source_weight: torch.Tensor  # W (r, d)
    source_bias: torch.Tensor  # b (r,)
    alpha: float  # as stored (0 when absent), so a re-save writes it back unchanged

    adapter_field: ClassVar[str] = "reft"

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
        return alpha_or_rank(self.alpha, self.rank) / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"rotate": self.rotate, "source_weight": self.source_weight, "source_bias": self.source_bias}

    def with_tensors(self, **tensors: torch.Tensor) -> ReFTEdit:
        return replace(self, **tensors)

    @classmethod
    def read(cls, file: FileKeys) -> dict[str, ReFTEdit]:
        keys = [k for k in file.remaining() if is_reft_key(k)]
        file.take(keys)
        return parse({k: file.tensors[k] for k in keys}, file.path)

    @classmethod
    def summary_lines(cls, layers: list[ReFTEdit]) -> list[str]:
        return [f"ReFT block edits on {len(layers)} blocks (rank {layers[0].rank}), applied to the block outputs"]

    def file_tensors(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The reference layout, always fp32."""
        return {f"{prefix}.rotate_layer.weight": cpu_tensor(self.rotate, torch.float32),
                f"{prefix}.learned_source.weight": cpu_tensor(self.source_weight, torch.float32),
                f"{prefix}.learned_source.bias": cpu_tensor(self.source_bias, torch.float32),
                f"{prefix}.alpha": torch.tensor(float(self.alpha))}

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
        edits[name] = ReFTEdit(name, rotate, weight, bias, stored_alpha(parts.get("alpha")))
    return edits

