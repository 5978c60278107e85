"""BasisCache: the trainer's SVD bases by weight content, and the content digest it keys them by."""

import warnings

import pytest
import torch

from ortho_hydra.basis import BasisCache, disjoint_basis
from ortho_hydra.subspace import weight_digest


def weight(seed: int, shape=(96, 64), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_a_hit_returns_the_computed_basis_as_a_copy_and_runs_no_svd():
    cache, w = BasisCache(), weight(0)
    first = cache.get(w, 4, 8, seed=3)
    expected = disjoint_basis(w, 4, 8, seed=3)
    assert torch.equal(first.in_basis, expected.in_basis) and torch.equal(first.out_bases, expected.out_bases)
    again = cache.get(w.clone(), 4, 8, seed=3)  # same content, another tensor
    assert (cache.computed, cache.hits) == (1, 1)
    assert torch.equal(again.in_basis, expected.in_basis) and torch.equal(again.out_bases, expected.out_bases)
    again.out_bases.zero_()  # a run that changes its bases in place (a resume) leaves the cache alone
    assert torch.equal(cache.get(w, 4, 8, seed=3).out_bases, expected.out_bases)


@pytest.mark.parametrize("change", ["content", "dtype", "seed", "experts", "rank"])
def test_anything_the_basis_depends_on_is_in_the_key(change):
    cache, w = BasisCache(), weight(0)
    cache.get(w, 4, 8, seed=0)
    other = {"content": (weight(1), 4, 8, 0), "dtype": (w.double(), 4, 8, 0), "seed": (w, 4, 8, 1),
             "experts": (w, 2, 8, 0), "rank": (w, 4, 4, 0)}[change]
    cache.get(other[0], other[1], other[2], seed=other[3])
    assert cache.computed == 2 and cache.hits == 0


def test_the_least_recently_used_basis_leaves_first_past_the_byte_budget():
    w0, w1, w2 = weight(0), weight(1), weight(2)
    one = disjoint_basis(w0, 4, 8)
    cache = BasisCache(max_bytes=2 * (one.in_basis.nbytes + one.out_bases.nbytes))
    cache.get(w0, 4, 8)
    cache.get(w1, 4, 8)
    cache.get(w0, 4, 8)  # w0 is now the most recent
    cache.get(w2, 4, 8)  # evicts w1
    cache.get(w0, 4, 8)
    assert (cache.computed, cache.hits) == (3, 2)
    cache.get(w1, 4, 8)
    assert cache.computed == 4


def test_a_replicated_basis_warns_on_a_hit_as_on_a_computation():
    cache, w = BasisCache(), weight(0, shape=(24, 20))
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cache.get(w, 4, 8).replicated
        assert any("replicating the top-8 slice" in str(c.message) for c in caught)
    assert cache.hits == 1


def test_the_digest_reads_stored_bytes_dtype_and_shape():
    w = weight(0, dtype=torch.bfloat16)
    assert weight_digest(w) == weight_digest(w.clone())
    assert weight_digest(w) != weight_digest(w.float())  # same values, another dtype: another key (no wrong hit)
    assert weight_digest(w) != weight_digest(w.reshape(64, 96))
    assert weight_digest(w.t()) == weight_digest(w.t().contiguous())  # the values, whatever the strides
    changed = w.clone()
    changed[5, 7] += 1
    assert weight_digest(changed) != weight_digest(w)
    with torch.inference_mode():
        frozen = w.clone()  # a weight ComfyUI loaded inside inference mode
    assert weight_digest(frozen) == weight_digest(w)
