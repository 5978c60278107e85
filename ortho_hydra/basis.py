"""Frozen bases for Ortho-Hydra: disjoint slices of the weight's top singular vectors."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .subspace import weight_digest


@dataclass(frozen=True)
class ExpertBasis:
    """``in_basis`` (r, in) is shared; ``out_bases`` (E, out, r) holds one slice per expert."""

    in_basis: torch.Tensor
    out_bases: torch.Tensor
    replicated: bool  # True when E*r did not fit: every expert got the top slice (deadlock case)


def _fix_signs(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Singular vectors are defined up to sign; pin it so the basis is reproducible across BLAS builds.
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs, v * signs


def _warn_replicated(num_experts: int, rank: int, limit: int) -> None:
    warnings.warn(f"Ortho-Hydra: {num_experts} experts x rank {rank} = {num_experts * rank} > min(out, in) = "
                  f"{limit}; replicating the top-{rank} slice for every expert (no disjoint subspaces, "
                  f"the router starts degenerate). Use num_experts*rank <= {limit}.", stacklevel=3)


def disjoint_basis(weight: torch.Tensor, num_experts: int, rank: int, *, seed: int = 0,
                   niter: int = 6, oversample: int = 8) -> ExpertBasis:
    """Top-(E*r) singular vectors of ``weight`` (out, in), cut into E disjoint out-slices.

    Expert 0 takes the top slice.  When E*r exceeds min(out, in) disjoint slices cannot
    fit: warn and replicate the top-r slice, flagging ``replicated``.
    """
    out_features, in_features = weight.shape
    limit = min(out_features, in_features)
    if rank < 1 or num_experts < 1:
        raise ValueError(f"rank and num_experts must be >= 1, got rank={rank}, num_experts={num_experts}")
    if rank > limit:
        raise ValueError(f"rank {rank} exceeds min(out, in) = {limit} of a {out_features}x{in_features} weight; "
                         f"use rank <= {limit}")
    replicated = num_experts * rank > limit
    wanted = rank if replicated else num_experts * rank
    if replicated:
        _warn_replicated(num_experts, rank, limit)
    w = weight.detach().float()
    q = min(wanted + oversample, limit)
    gen_device = w.device if w.device.type != "meta" else torch.device("cpu")
    with torch.random.fork_rng(devices=[gen_device] if gen_device.type == "cuda" else []):
        torch.manual_seed(seed)
        u, _, v = torch.svd_lowrank(w, q=q, niter=niter)
    u, v = _fix_signs(u[:, :wanted], v[:, :wanted])
    in_basis = v[:, :rank].T.contiguous()
    if replicated:
        out_bases = u[:, :rank].unsqueeze(0).expand(num_experts, -1, -1).contiguous()
    else:
        out_bases = u.reshape(out_features, num_experts, rank).permute(1, 0, 2).contiguous()
    return ExpertBasis(in_basis=in_basis, out_bases=out_bases, replicated=replicated)


class BasisCache:
    """Disjoint bases by weight content (:func:`~.subspace.weight_digest`, as the transfer's subspace cache keys them)
    and every setting they depend on, kept on the CPU, least recently used out past ``max_bytes``.

    Why: setup takes one randomised SVD per adapted weight (280 at 2 B parameters, most of a minute on a CPU); a
    second run on the same model, with any seed-independent change of settings (steps, lr, data), hashes the
    weights instead.  A hit returns copies on the weight's device, so a run that changes its bases in place (a
    resume) never changes the cache.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, ExpertBasis] = OrderedDict()
        self.computed = 0  # SVDs actually run (tests and the benchmark read them)
        self.hits = 0

    def _bytes(self) -> int:
        return sum(b.in_basis.nbytes + b.out_bases.nbytes for b in self._items.values())

    def get(self, weight: torch.Tensor, num_experts: int, rank: int, *, seed: int = 0) -> ExpertBasis:
        """:func:`disjoint_basis` of ``weight``, computed once per content and settings."""
        key = (weight_digest(weight), num_experts, rank, seed)
        cached = self._items.get(key)
        if cached is not None:
            self._items.move_to_end(key)
            self.hits += 1
            if cached.replicated:  # the warning a fresh computation gives
                _warn_replicated(num_experts, rank, min(weight.shape))
            return ExpertBasis(cached.in_basis.to(weight.device, copy=True),
                               cached.out_bases.to(weight.device, copy=True), cached.replicated)
        basis = disjoint_basis(weight, num_experts, rank, seed=seed)
        self.computed += 1
        self._items[key] = ExpertBasis(basis.in_basis.to("cpu", copy=True), basis.out_bases.to("cpu", copy=True),
                                       basis.replicated)
        while len(self._items) > 1 and self._bytes() > self.max_bytes:
            self._items.popitem(last=False)
        return basis
