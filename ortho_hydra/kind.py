"""What every layer kind declares so that nothing outside it branches on its type.

A kind (routed Hydra layer, plain LoRA leg, ChimeraHydra layer, ReFT edit) reads its own keys from a file
(:meth:`Kind.read`, taking them from a :class:`FileKeys`), writes them (:meth:`Kind.file_tensors`), says where an
``Adapter`` keeps it (``adapter_field``) and what it cannot do (``refusals``: callers ask :meth:`Kind.require` and
the kind words the error).  ``moe_format`` loops over a registry of kinds; new kinds add a class and an entry.
The helpers at the end are the header conventions every kind shares.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .errors import OrthoHydraError


class Capability(enum.Enum):
    """Things a caller may do with an adapter that some kinds cannot support."""

    SAVE = "save"  # be written to a ``_moe`` file
    ROUTER_FIT = "router_fit"  # have its router fitted from labelled examples
    NORM_CONTROL = "norm_control"  # have a blend rescaled by one global factor
    TRANSFER = "transfer"  # have its factors moved onto another base model's subspaces


@dataclass(frozen=True)
class Refusal:
    """Why a kind cannot do something, and what to do instead; ``{name}`` in the problem is the layer's name."""

    problem: str
    fix: str


@dataclass
class FileKeys:
    """One file being read: its tensors and header, the keys kinds have taken so far, and the reading options."""

    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str]
    path: str | None
    router_correction: str = "training"
    taken: set[str] = field(default_factory=set)
    routed_read: bool = False  # a routed kind already read layers from this file

    def remaining(self) -> dict[str, torch.Tensor]:
        """The tensors no kind has taken yet."""
        return {k: v for k, v in self.tensors.items() if k not in self.taken}

    def take(self, keys: Iterable[str]) -> None:
        self.taken.update(keys)


class Kind:
    """The format side of a layer kind; subclasses are dataclasses holding the tensors."""

    name: str
    adapter_field: ClassVar[str] = "layers"  # the Adapter mapping that holds layers of this kind
    routed: ClassVar[bool] = False  # True when the delta depends on a per-sample gate
    refusals: ClassVar[Mapping[Capability, Refusal]] = {}

    @classmethod
    def read(cls, file: FileKeys) -> dict[str, Kind]:
        """Every layer of this kind in ``file`` by its key prefix, taking the keys it reads; an error naming the
        key when they are malformed."""
        return {}

    @classmethod
    def describe_header(cls, entries: Mapping[str, dict], metadata: Mapping[str, str],
                        path: str) -> dict | None:
        """What a UI needs before loading (see ``moe_format.describe``) from the header alone, when the file is
        one of this kind's; else None."""
        return None

    @classmethod
    def summary_lines(cls, layers: list) -> list[str]:
        """Lines for an adapter summary about these layers (all of this kind)."""
        return []

    def file_tensors(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """This layer's keys under ``prefix`` and its tensors as a file stores them (on the CPU, contiguous)."""
        raise NotImplementedError

    def default_expert_names(self) -> list[str] | None:
        """Expert names for a file that stamps none; None: the generic ``expert <e>``."""
        return None

    def supports(self, capability: Capability) -> bool:
        return capability not in self.refusals

    def require(self, capability: Capability, *, path: str | None = None, key: str | None = None) -> None:
        """Raise the kind's own error when it cannot do ``capability``."""
        refusal = self.refusals.get(capability)
        if refusal is not None:
            raise OrthoHydraError(refusal.problem.format(name=self.name), path=path, key=key, fix=refusal.fix)


def cpu_tensor(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor as a file stores it: detached, on the CPU, contiguous, in ``dtype`` (default: its own)."""
    return tensor.detach().to("cpu", dtype=dtype or tensor.dtype).contiguous()


def truthy(value: object) -> bool:
    """A header flag: "1", "true" or "yes" in any case."""
    return str(value).strip().lower() in ("1", "true", "yes")


def stored_alpha(alpha: torch.Tensor | None) -> float:
    """The ``alpha`` tensor's value; 0.0 when the file has none."""
    return float(alpha.float().reshape(-1)[0]) if alpha is not None and alpha.numel() else 0.0


def alpha_or_rank(alpha: float, rank: int) -> float:
    """The trainers' convention: an alpha of 0 (or none) means alpha = rank, i.e. scale 1."""
    return alpha if alpha else float(rank)


def stamped_expert_names(metadata: Mapping[str, str]) -> list[str] | None:
    """The optional ``oh_expert_names`` JSON list; a malformed stamp is ignored, not fatal."""
    try:
        names = json.loads(metadata.get("oh_expert_names") or "null")
    except json.JSONDecodeError:
        return None
    return [str(n) for n in names] if isinstance(names, list) else None
