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
from collections.abc import Iterator, Sequence
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
    w = torch.as_tensor(weights, dtype=torch.float64)
    if not bool(torch.isfinite(q).all()) or bool(((q < 0) | (q > 1) | ((q == 0) & (w != 0))).any()):
        raise ValueError(f"keep probabilities must lie in (0, 1] (0 only for an expert of weight 0), got "
                         f"{list(keep)}")
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

    def _each_mask(self, shape: Sequence[int], generator: torch.Generator, device) -> Iterator[torch.Tensor]:
        """Expert k's boolean mask, k = 0..E-1, in one fixed draw order (so every consumer sees the same masks).

        OMCD: one uniform u per element, expert k owns [Σ_{j<k} q_j, Σ_{j<=k} q_j).  MC dropout: one uniform per
        element and expert.
        """
        u = torch.rand(tuple(shape), generator=generator, device=device) if self.exclusive else None
        low = 0.0
        for q in self.keep:
            if self.exclusive:
                yield (u >= low) & (u < low + q)
                low += q
            else:
                yield torch.rand(tuple(shape), generator=generator, device=device) < q

    def masks(self, shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
        """(E, *shape) boolean masks; for OMCD at most one is set per element."""
        return torch.stack(list(self._each_mask(shape, generator, device)))

    def _scales(self) -> list[float]:
        return [w / q if q > 0 else 0.0 for w, q in zip(self.weights, self.keep, strict=True)]

    def combine(self, per_expert: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``Σ_k (w_k / q_k) m_k ⊙ y_k`` for precomputed per-expert outputs (E, ...)."""
        out = torch.zeros_like(per_expert[0])
        masks = self._each_mask(per_expert.shape[1:], generator, per_expert.device)
        for y, scale, mask in zip(per_expert, self._scales(), masks, strict=True):
            out.addcmul_(y * scale, mask.to(out.dtype))
        return out

    def project_up(self, lx: torch.Tensor, ups: torch.Tensor, scale: float, generator: torch.Generator
                   ) -> torch.Tensor:
        """The same blend straight from the down projection ``lx`` (..., r) and ``ups`` (E, out, r), one expert
        at a time: no (E, ..., out) tensor, which on a CPU costs more than the GEMMs."""
        shape = (*lx.shape[:-1], ups.shape[1])
        out = lx.new_zeros(shape)
        masks = self._each_mask(shape, generator, lx.device)
        for up, factor, mask in zip(ups, self._scales(), masks, strict=True):
            if factor:
                out.addcmul_(lx @ (up.T * (scale * factor)), mask.to(out.dtype))
        return out

    def expected_gate(self) -> torch.Tensor:
        """The direct blend this estimates (what recorders see)."""
        return torch.tensor(self.weights, dtype=torch.float32)
