import warnings

import pytest
import torch
from reference_math import cayley64

from ortho_hydra import cayley, disjoint_basis


def test_cayley_is_orthogonal_fp32_and_matches_fp64_inverse_form():
    torch.manual_seed(0)
    seeds = torch.randn(5, 16, 16)
    rotations = cayley(seeds)
    assert rotations.dtype == torch.float32
    eye = torch.eye(16)
    for i in range(5):
        r = rotations[i]
        assert torch.allclose(r.T @ r, eye, atol=1e-6), float((r.T @ r - eye).abs().max())
        assert torch.allclose(r.double(), cayley64(seeds[i]), atol=1e-6)
        assert torch.linalg.det(r.double()).item() == pytest.approx(1.0, abs=1e-5)


def test_cayley_zero_seed_is_identity_and_ignores_symmetric_part():
    eye = torch.eye(8)
    assert torch.equal(cayley(torch.zeros(3, 8, 8)), eye.expand(3, 8, 8))
    sym = torch.randn(8, 8)
    sym = sym + sym.T
    assert torch.allclose(cayley(sym), eye, atol=1e-7)


def _structured_weight(out: int, inn: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, out, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inn, inn, generator=g, dtype=torch.float64))
    k = min(out, inn)
    s = 10.0 * 0.93 ** torch.arange(k, dtype=torch.float64)  # distinct, well separated
    return (u[:, :k] * s) @ v[:, :k].T, u[:, :k], v[:, :k]


def test_disjoint_basis_slices_are_orthogonal_and_follow_the_svd():
    w, u, v = _structured_weight(96, 80)
    basis = disjoint_basis(w.float(), num_experts=4, rank=6, seed=3)
    assert not basis.replicated
    p = basis.out_bases.double()
    assert p.shape == (4, 96, 6) and basis.in_basis.shape == (6, 80)
    for i in range(4):
        assert torch.allclose(p[i].T @ p[i], torch.eye(6, dtype=torch.float64), atol=1e-5)
        for j in range(4):
            if i != j:
                assert (p[i].T @ p[j]).norm() < 1e-5
        # expert i spans exactly the i-th slice of the true singular vectors
        exact = u[:, 6 * i: 6 * (i + 1)]
        assert torch.allclose(p[i] @ p[i].T, exact @ exact.T, atol=1e-4)
    q = basis.in_basis.double()
    assert torch.allclose(q.T @ q, v[:, :6] @ v[:, :6].T, atol=1e-4)


def test_disjoint_basis_is_deterministic_per_seed():
    w, _, _ = _structured_weight(64, 64, seed=1)
    a = disjoint_basis(w.float(), 3, 4, seed=7)
    b = disjoint_basis(w.float(), 3, 4, seed=7)
    assert torch.equal(a.out_bases, b.out_bases) and torch.equal(a.in_basis, b.in_basis)


def test_basis_fallback_replicates_warns_and_flags():
    w, _u, _ = _structured_weight(20, 24)
    with pytest.warns(UserWarning, match="replicating the top-4 slice"):
        basis = disjoint_basis(w.float(), num_experts=6, rank=4)  # 24 > min(20, 24)
    assert basis.replicated
    for e in range(1, 6):
        assert torch.equal(basis.out_bases[e], basis.out_bases[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not disjoint_basis(w.float(), num_experts=5, rank=4).replicated  # 20 fits exactly


def test_rank_above_matrix_size_is_refused():
    with pytest.raises(ValueError, match="rank 40 exceeds min"):
        disjoint_basis(torch.randn(32, 48), 2, 40)
