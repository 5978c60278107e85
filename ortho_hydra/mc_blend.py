"""Stochastic blends of experts per output element: Orthogonal Monte Carlo Dropout (OMCD) and plain MC dropout.

OMCD (Zhang et al., arXiv 2510.03262): at every forward call, every output element goes to at most one expert,
expert k with probability q_k (Σ q_k ≤ 1), and its contribution is scaled by w_k / q_k:
``Δy = Σ_k (w_k / q_k) m_k ⊙ y_k``.  The masks of two experts never overlap, so their masked contributions are
exactly orthogonal, and the expectation is the direct blend ``Σ_k w_k y_k``.  MC dropout draws each m_k
independently from Bernoulli(q_k) with the same rescale: unbiased too, but the contributions overlap.

Both are stochastic, so they are applied in the hooks and never folded into weights.  Masks come from a generator
seeded by the rule's seed, the layer and the sampler σ of the call, so the same seed and sampler settings give the
same image.

Cost.  Every element needs its own draw, so the draw and the selection are the price of the method.  The draw is
16 random bits per element (four per 64-bit word, a fifth of ``torch.rand``'s cost); keep probabilities live on
the 1/65536 grid those bits resolve, and each rescale divides by the probability actually realised on that grid,
so the blend stays exactly unbiased.  OMCD then computes the E expert outputs of a block of rows in one GEMM
while that block is in cache and picks each element's expert with one gather: no (E, tokens, out) tensor.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

STOCHASTIC_MODES = ("omcd", "mc_dropout")
GRID = 1 << 16  # keep probabilities are realised on this grid: one 16-bit draw per element (and expert)
_BLOCK_ELEMENTS = 1 << 20  # (rows x E x out) values computed at a time; fastest of 2^16..2^24 at 512 and 2048 wide


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
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"blend weights contain NaN/Inf: {list(weights)}")
    realised = _grid_counts(tuple(float(v) for v in keep), exclusive=mode == "omcd")
    if any(count == 0 and weight != 0 for count, weight in zip(realised, weights, strict=True)):
        raise ValueError(f"keep probabilities below 1/{GRID} cannot be drawn (masks use 16-bit draws), got "
                         f"{list(keep)}; raise them or set those experts' weights to 0")


def _grid_counts(keep: tuple[float, ...], exclusive: bool) -> list[int]:
    """How many of the GRID equally likely 16-bit values select each expert.

    OMCD: expert k owns the values in [edge_{k-1}, edge_k), edges the rounded cumulative sums, so the counts never
    add up to more than GRID.  MC dropout: each expert's own round(q_k · GRID).
    """
    if not exclusive:
        return [round(q * GRID) for q in keep]
    edges, total = [0], 0.0
    for q in keep:
        total += q
        edges.append(min(round(total * GRID), GRID))
    return [b - a for a, b in itertools.pairwise(edges)]


def random_bits(shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """Uniform int16 values of ``shape``: every 64-bit draw gives four of them."""
    count = 1
    for size in shape:
        count *= int(size)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)  # the full 64-bit range: every bit uniform
    return words.view(torch.int16)[:count].view(tuple(shape))


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

    @property
    def num_experts(self) -> int:
        return len(self.weights)

    def _counts(self) -> list[int]:
        return _grid_counts(self.keep, self.exclusive)

    def realised_keep(self) -> tuple[float, ...]:
        """The keep probabilities the 16-bit draws realise (each within 1/65536 of the asked one)."""
        return tuple(count / GRID for count in self._counts())

    def scales(self) -> list[float]:
        """``w_k / q_k`` with q_k as realised, so that the expectation is exactly ``Σ w_k y_k``."""
        return [w * GRID / count if count else 0.0 for w, count in zip(self.weights, self._counts(), strict=True)]

    def _thresholds(self) -> list[int]:
        """int16 cut points: OMCD, the upper edge of each expert's range; MC dropout, each expert's bound."""
        counts, cuts, edge = self._counts(), [], 0
        for count in counts:
            edge = edge + count if self.exclusive else count
            cuts.append(edge - GRID // 2)
        return cuts

    def draw(self, shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu"
             ) -> torch.Tensor:
        """The random bits of one call: ``shape`` for OMCD, (E, *shape) for MC dropout (one draw per expert)."""
        return random_bits(tuple(shape) if self.exclusive else (self.num_experts, *shape), generator, device)

    def masks_from_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """(E, *shape) boolean masks from :meth:`draw`'s bits; for OMCD at most one is set per element."""
        wide, cuts = bits.to(torch.int32), self._thresholds()
        if not self.exclusive:
            return wide < torch.tensor(cuts, dtype=torch.int32, device=bits.device).view(-1, *[1] * (bits.dim() - 1))
        lows = [-(GRID // 2), *cuts[:-1]]
        return torch.stack([(wide >= low) & (wide < high) for low, high in zip(lows, cuts, strict=True)])

    def masks(self, shape: Sequence[int], generator: torch.Generator, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
        """(E, *shape) boolean masks of one call; for OMCD at most one is set per element."""
        return self.masks_from_bits(self.draw(shape, generator, device))

    def combine(self, per_expert: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``Σ_k (w_k / q_k) m_k ⊙ y_k`` for precomputed per-expert outputs (E, ...): the plain reference form."""
        masks = self.masks(per_expert.shape[1:], generator, per_expert.device)
        scales = torch.tensor(self.scales(), dtype=per_expert.dtype, device=per_expert.device)
        return (per_expert * masks.to(per_expert.dtype) * scales.view(-1, *[1] * (per_expert.dim() - 1))).sum(0)

    def project_up(self, lx: torch.Tensor, ups: torch.Tensor, scale: float, generator: torch.Generator,
                   add_to: torch.Tensor | None = None) -> torch.Tensor:
        """The same blend straight from the down projection ``lx`` (..., r) and ``ups`` (E, out, r), plus
        ``add_to`` when given (the Linear's output, added in the same pass).

        Works a block of rows at a time so the E expert outputs of a block stay in cache.  The masks are those of
        :meth:`combine` for the same generator state.
        """
        _, out_features, rank = ups.shape
        rows = lx.reshape(-1, rank)
        bits = self.draw((rows.shape[0], out_features), generator, lx.device)
        stacked = ups * torch.tensor(self.scales(), dtype=ups.dtype, device=ups.device).view(-1, 1, 1) * scale
        if self.exclusive and sum(self._counts()) < GRID:  # some elements go to no expert: a zero expert
            stacked = torch.cat([stacked, stacked.new_zeros(1, out_features, rank)])
        columns = stacked.reshape(-1, rank).T.to(lx.dtype)  # (r, E'·out)
        blocks = stacked.shape[0]
        result = torch.empty((rows.shape[0], out_features), dtype=lx.dtype if add_to is None else add_to.dtype,
                             device=lx.device)
        base = None if add_to is None else add_to.reshape(-1, out_features)
        cuts = [c for c in self._thresholds() if c < GRID // 2] if self.exclusive else None
        step = max(1, _BLOCK_ELEMENTS // (blocks * out_features))
        for start in range(0, rows.shape[0], step):
            stop = min(start + step, rows.shape[0])
            experts = (rows[start:stop] @ columns).view(stop - start, blocks, out_features)
            if self.exclusive:
                block_bits = bits[start:stop]
                index = torch.zeros(block_bits.shape, dtype=torch.int32, device=lx.device)
                for cut in cuts:  # the expert of an element = how many upper edges its draw has passed
                    index += block_bits >= cut
                picked = experts.gather(1, index.unsqueeze(1)).squeeze(1)  # int32 indices are accepted
            else:
                keep = self.masks_from_bits(bits[:, start:stop]).transpose(0, 1)
                picked = (experts * keep.to(experts.dtype)).sum(1)
            if base is None:
                result[start:stop] = picked
            else:
                torch.add(base[start:stop], picked.to(result.dtype), out=result[start:stop])
        return result.view(*lx.shape[:-1], out_features)

    def expected_gate(self) -> torch.Tensor:
        """The direct blend this estimates (what recorders see)."""
        return torch.tensor(self.weights, dtype=torch.float32)
