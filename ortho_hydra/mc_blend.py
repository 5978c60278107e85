"""Stochastic blends of experts per output element: Orthogonal Monte Carlo Dropout (OMCD) and plain MC dropout.

OMCD (Zhang et al., arXiv 2510.03262): at every forward call, every output element goes to at most one expert,
expert k with probability q_k (Σ q_k ≤ 1), and its contribution is scaled by w_k / q_k:
``Δy = Σ_k (w_k / q_k) m_k ⊙ y_k``.  The masks of two experts never overlap, so their masked contributions are
exactly orthogonal, and the expectation is the direct blend ``Σ_k w_k y_k``.  MC dropout draws each m_k
independently from Bernoulli(q_k) with the same rescale: unbiased too, but the contributions overlap.

Both are stochastic, so they are applied in the hooks and never folded into weights.  Masks come from a generator
seeded by the rule's seed, the layer and the sampler σ of the call, so the same seed and sampler settings give the
same image.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

STOCHASTIC_MODES = ("omcd", "mc_dropout")


def check_blend(mode: str, weights: Sequence[float], keep: Sequence[float]) -> None:
    """Raise ValueError unless ``weights`` and ``keep`` describe a valid stochastic blend."""
    if mode not in STOCHASTIC_MODES:
        raise ValueError(f"unknown stochastic blend {mode!r}; choose one of {', '.join(STOCHASTIC_MODES)}")
    if len(weights) != len(keep):
        raise ValueError(f"{len(weights)} blend weights but {len(keep)} keep probabilities; give one of each per "
                         "expert")
    q = torch.as_tensor(keep, dtype=torch.float64)
    if not bool(torch.isfinite(q).all()) or bool(((q <= 0) | (q > 1)).any()):
        raise ValueError(f"keep probabilities must lie in (0, 1], got {list(keep)}")
    if mode == "omcd" and float(q.sum()) > 1 + 1e-9:
        raise ValueError(f"OMCD keep probabilities must sum to at most 1 (each element goes to one expert at "
                         f"most), got {list(keep)} (sum {float(q.sum()):g})")
    if not bool(torch.isfinite(torch.as_tensor(weights, dtype=torch.float64)).all()):
        raise ValueError(f"blend weights contain NaN/Inf: {list(weights)}")


@dataclass(frozen=True)
class ElementMix:
    """One stochastic blend: per-expert weights w, keep probabilities q, exclusive (OMCD) or independent masks."""

    weights: tuple[float, ...]
    keep: tuple[float, ...]
    exclusive: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_blend("omcd" if self.exclusive else "mc_dropout", self.weights, self.keep)

    def generator(self, layer: str, sampler_sigma: float | None, device: torch.device | str = "cpu"
                  ) -> torch.Generator:
        """Seeded by (seed, layer, σ): reproducible across runs, different across layers and steps."""
        sigma_bits = struct.pack("<d", float(sampler_sigma) if sampler_sigma is not None else -1.0)
        digest = hashlib.sha256(f"{self.seed}|{layer}|".encode() + sigma_bits).digest()
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def masks(self, shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
        """(E, *shape) boolean masks; for OMCD at most one is set per element."""
        q = torch.tensor(self.keep, dtype=torch.float64, device=device)
        if self.exclusive:
            u = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float64)
            edges = torch.cumsum(q, 0)
            lower = torch.cat([edges.new_zeros(1), edges[:-1]])
            view = (-1,) + (1,) * len(shape)
            return (u >= lower.view(view)) & (u < edges.view(view))
        u = torch.rand((len(self.keep), *shape), generator=generator, device=device, dtype=torch.float64)
        return u < q.view((-1,) + (1,) * len(shape))

    def combine(self, per_expert: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``Σ_k (w_k / q_k) m_k ⊙ y_k`` for per-expert outputs (E, ...)."""
        m = self.masks(per_expert.shape[1:], generator, per_expert.device)
        scale = torch.tensor([w / q for w, q in zip(self.weights, self.keep, strict=True)],
                             dtype=per_expert.dtype, device=per_expert.device)
        scale = scale.view((-1,) + (1,) * (per_expert.dim() - 1))
        return (per_expert * m.to(per_expert.dtype) * scale).sum(0)

    def expected_gate(self) -> torch.Tensor:
        """The direct blend this estimates (what recorders see)."""
        return torch.tensor(self.weights, dtype=torch.float32)
