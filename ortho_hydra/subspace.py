"""A weight's principal subspaces: seeded randomised SVD, cached per weight, and subspace similarity.

LoRA-X transfer (:mod:`.transfer`) needs the top-R left and right singular vectors of every adapted weight of two
base models.  A full SVD of a 3072 x 12288 weight costs seconds on a CPU, times hundreds of layers; the randomised
range finder (``torch.svd_lowrank``, Halko et al.) costs a few GEMMs at rank R + oversampling and, with a few
power iterations, is accurate to fp32 wherever the spectrum has a gap at R; where it has none, directions near the
cut-off are interchangeable and the sketch may pick others than an exact SVD would.  Weights up to 1024 wide get
the exact SVD (well under a second).  The sketch is drawn from a seeded generator, so a transfer is reproducible
bit for bit on one machine.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

OVERSAMPLE = 10
POWER_ITERATIONS = 6
EXACT_FRACTION = 0.5  # past this share of min(out, in) the sketch saves nothing; take the exact SVD
EXACT_SIZE = 1024  # up to this min(out, in) the exact SVD costs well under a second: take it


@dataclass(frozen=True)
class Subspace:
    """Top singular triplets of one weight, best first: ``u`` (out, k), ``s`` (k,), ``v`` (in, k)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor
    energy: float  # ‖W‖²_F, so that energy shares need no more singular values than were computed
    exact: bool  # every singular value is present (``k == min(out, in)``)

    @property
    def rank(self) -> int:
        return int(self.s.numel())

    def truncated(self, rank: int) -> Subspace:
        return Subspace(self.u[:, :rank], self.s[:rank], self.v[:, :rank], self.energy,
                        self.exact and rank >= self.rank)

    def rank_for_energy(self, fraction: float) -> int | None:
        """The smallest k whose top-k singular values hold ``fraction`` of ‖W‖²_F; None if more are needed."""
        if self.energy <= 0:
            return 1
        share = torch.cumsum(self.s.double() ** 2, 0) / self.energy
        reached = (share >= fraction - 1e-12).nonzero()
        if len(reached):
            return int(reached[0]) + 1
        return self.rank if self.exact else None


def principal_subspace(weight: torch.Tensor, rank: int, *, seed: int = 0, power_iterations: int = POWER_ITERATIONS,
                       exact_size: int = EXACT_SIZE) -> Subspace:
    """The top ``rank`` singular triplets of ``weight`` in fp32, on its device; exact when the sketch saves nothing."""
    w = weight.detach().float()
    rank = min(rank, min(w.shape))
    energy = float(w.double().pow(2).sum())
    oversample = max(OVERSAMPLE, rank // 4)
    if takes_exact(tuple(w.shape), rank, exact_size):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return Subspace(u[:, :rank].contiguous(), s[:rank].contiguous(), vh[:rank].T.contiguous(), energy,
                        exact=rank == min(w.shape))
    devices = [w.device] if w.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(w, q=rank + oversample, niter=power_iterations)
    return Subspace(u[:, :rank].contiguous(), s[:rank].contiguous(), v[:, :rank].contiguous(), energy, exact=False)


def takes_exact(shape: tuple[int, ...], rank: int, exact_size: int = EXACT_SIZE) -> bool:
    """Whether :func:`principal_subspace` takes the exact SVD for this shape and rank."""
    smallest = min(shape)
    return smallest <= exact_size or rank + max(OVERSAMPLE, rank // 4) >= EXACT_FRACTION * smallest


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖AᵀB‖²_F / R for orthonormal bases A, B (n, R): 1 when they span the same space, R/n for random ones."""
    rank = min(a.shape[1], b.shape[1])
    if rank == 0:
        return 1.0
    return float((a.T.double() @ b.double()).pow(2).sum()) / rank


def weight_digest(weight: torch.Tensor) -> str:
    """A content hash of the weight's stored values, dtype and shape: the cache key (names lie; two bases share names).

    It hashes the bytes as stored, one weight at a time, with no fp32 copy: a 2 B-parameter bf16 model hashes in
    seconds.  Equal values stored in two dtypes get two keys, which costs a recomputation, never a wrong hit.
    """
    data = weight.detach()
    data = (data.cpu() if data.device.type != "cpu" else data).contiguous()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(data.shape)} {data.dtype}".encode())
    h.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class SubspaceCache:
    """Subspaces by weight content and seed, least recently used first out past ``max_bytes``.

    A request for rank R reuses any cached subspace of rank >= R; an energy request grows the rank until the
    share is reached.  Sweeps over R and τ (the benchmark, a user trying settings) then cost one SVD per weight.
    """

    def __init__(self, max_bytes: int = 512 << 20, exact_size: int = EXACT_SIZE) -> None:
        self.max_bytes, self.exact_size = max_bytes, exact_size
        self._items: OrderedDict[tuple[str, int], Subspace] = OrderedDict()
        self.computed = 0  # SVDs actually run (tests and the benchmark read it)

    def _bytes(self) -> int:
        return sum(sp.u.numel() + sp.v.numel() + sp.s.numel() for sp in self._items.values()) * 4

    def _store(self, key: tuple[str, int], subspace: Subspace) -> None:
        self._items[key] = subspace
        self._items.move_to_end(key)
        while len(self._items) > 1 and self._bytes() > self.max_bytes:
            self._items.popitem(last=False)

    def get(self, weight: torch.Tensor, rank: int, *, seed: int = 0, digest: str | None = None) -> Subspace:
        """The top-``rank`` subspace; ``digest``: the weight's :func:`weight_digest`, when the caller has it."""
        key = (digest or weight_digest(weight), seed)
        cached = self._items.get(key)
        if cached is not None and (cached.rank >= rank or cached.exact):
            self._items.move_to_end(key)
            return cached.truncated(rank)
        if takes_exact(tuple(weight.shape), rank, self.exact_size):
            rank_to_keep, rank = rank, min(weight.shape)  # the exact SVD has them all: keep them for later R
        else:
            rank_to_keep = rank
        subspace = principal_subspace(weight, rank, seed=seed, exact_size=self.exact_size)
        self.computed += 1
        self._store(key, subspace)
        return subspace.truncated(rank_to_keep)

    def for_energy(self, weight: torch.Tensor, fraction: float, *, seed: int = 0, start: int = 32) -> Subspace:
        """The smallest top-k subspace holding ``fraction`` of the weight's energy."""
        smallest = min(weight.shape)
        rank = min(start, smallest)
        digest = weight_digest(weight)  # hashed once, however often the rank doubles
        while True:
            subspace = self.get(weight, rank, seed=seed, digest=digest)
            needed = subspace.rank_for_energy(fraction)
            if needed is not None:
                return subspace.truncated(needed)
            rank = min(2 * rank, smallest)
