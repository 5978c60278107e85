"""LoRA-X transfer against closed forms: fp64 projections from a full SVD, identities, and the accounting."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from ortho_hydra import Adapter, ExpertLayer, OrthoHydraError, PlainLoRA, RouterSpec
from ortho_hydra.subspace import SubspaceCache, principal_subspace, similarity
from ortho_hydra.transfer import TransferOptions, transfer

OUT, IN, R, RANK, E = 96, 80, 12, 4, 3


def gapped_weight(seed: int, out: int = OUT, inn: int = IN, rank: int = R) -> tuple[torch.Tensor, ...]:
    """W = U diag(s) Vᵀ with a clear gap after ``rank`` (top 10..5, the rest <= 0.5); returns (W, U, s, V) fp64."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, out, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inn, inn, generator=g, dtype=torch.float64))
    k = min(out, inn)
    s = torch.cat([torch.linspace(10, 5, rank, dtype=torch.float64), 0.5 * torch.rand(k - rank, generator=g,
                                                                                      dtype=torch.float64)])
    return u[:, :k] @ torch.diag(s) @ v[:, :k].T, u, s, v


def routed_layer(name: str, seed: int, u: torch.Tensor | None = None, v: torch.Tensor | None = None,
                 inv_scale: bool = False) -> ExpertLayer:
    """E ups and a down, random; confined to span(u) x span(v) when bases are given."""
    g = torch.Generator().manual_seed(seed)
    if u is None:
        ups = torch.randn(E, OUT, RANK, generator=g)
        down = torch.randn(RANK, IN, generator=g)
    else:
        ups = torch.stack([(u @ torch.randn(u.shape[1], RANK, generator=g, dtype=torch.float64)).float()
                           for _ in range(E)])
        down = (torch.randn(RANK, v.shape[1], generator=g, dtype=torch.float64) @ v.T).float()
    scale = torch.rand(IN, generator=g) + 0.5 if inv_scale else None
    return ExpertLayer(name=name, down=down, ups=ups, router_weight=torch.randn(E, RANK, generator=g),
                       router_bias=torch.zeros(E), alpha=float(RANK), router=RouterSpec(source="input"),
                       inv_scale=scale)


def getters(weights: dict[str, torch.Tensor]) -> dict:
    return {k: (lambda w=w: w.float()) for k, w in weights.items()}


def pinned(layer, e: int) -> torch.Tensor:
    gate = torch.nn.functional.one_hot(torch.tensor(e), layer.num_experts).float()
    return layer.delta_weight(gate).double()


def projector(basis: torch.Tensor) -> torch.Tensor:
    return basis @ basis.T


def test_randomised_subspace_matches_full_svd_in_fp64():
    w, u, _, v = gapped_weight(0)
    sub = principal_subspace(w.float(), R, seed=3, exact_size=0)
    assert not sub.exact  # the sketch path, not the exact fallback
    assert torch.allclose(projector(sub.u.double()), projector(u[:, :R]), atol=1e-5)
    assert torch.allclose(projector(sub.v.double()), projector(v[:, :R]), atol=1e-5)
    again = principal_subspace(w.float(), R, seed=3, exact_size=0)
    assert torch.equal(sub.u, again.u)  # seeded: reproducible bit for bit


def test_similarity_closed_form():
    _, u, _, _ = gapped_weight(1)
    assert similarity(u[:, :R].float(), u[:, :R].float()) == pytest.approx(1.0, abs=1e-6)
    assert similarity(u[:, :R].float(), u[:, R:2 * R].float()) == pytest.approx(0.0, abs=1e-6)
    half = torch.cat([u[:, :R // 2], u[:, R:R + R // 2]], 1)  # shares half the directions
    assert similarity(u[:, :R].float(), half.float()) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("mode", ["subspace", "subspace+null"])
def test_transfer_to_the_same_weights_is_the_identity(mode):
    w, u, _, v = gapped_weight(2)
    # subspace (LoRA-X) keeps adapters that live in the top-R subspace; subspace+null keeps any adapter
    layer = routed_layer("a", 5, u[:, :R], v[:, :R]) if mode == "subspace" else routed_layer("a", 5)
    adapter = Adapter(layers={"a": layer})
    result = transfer(adapter, getters({"a": w}), getters({"a": w}), TransferOptions(rank=R, mode=mode))
    moved = result.adapter.layers["a"]
    for e in range(E):
        ref = pinned(layer, e)
        assert (pinned(moved, e) - ref).norm() / ref.norm() < 1e-5
    assert result.layers[0].similarity == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("mode", ["subspace", "subspace+null"])
def test_fully_similar_target_is_lossless(mode):
    """Target = source + a perturbation outside the top-R subspace: the subspaces agree, the transfer is exact."""
    w, u, _, v = gapped_weight(3)
    g = torch.Generator().manual_seed(7)
    tail = u[:, R:IN] @ torch.diag(0.4 * torch.rand(IN - R, generator=g, dtype=torch.float64)) @ v[:, R:].T
    w_target = w + tail
    assert (w_target - w).norm() > 0.5  # a real change of the weight, not a no-op
    layer = routed_layer("a", 6, u[:, :R], v[:, :R]) if mode == "subspace" else routed_layer("a", 6)
    result = transfer(Adapter(layers={"a": layer}), getters({"a": w}), getters({"a": w_target}),
                      TransferOptions(rank=R, mode=mode), cache=SubspaceCache(exact_size=0))
    moved = result.adapter.layers["a"]
    for e in range(E):
        ref = pinned(layer, e)
        assert (pinned(moved, e) - ref).norm() / ref.norm() < 1e-5


SKETCH = SubspaceCache(exact_size=0)  # force the randomised SVD on these small weights


@pytest.mark.parametrize("sketch", [False, True], ids=["exact", "randomised"])
@pytest.mark.parametrize("mode", ["subspace", "subspace+null", "copy"])
def test_transfer_matches_fp64_projection_of_every_expert(mode, sketch):
    """ΔW_e' = T_U ΔW_e T_Vᵀ; T = P_t (subspace), P_t P_s + (I−P_t)(I−P_s) (+null), I (copy); SVDs in fp64."""
    w_s, u_s, _, v_s = gapped_weight(4)
    w_t = w_s + 0.8 * gapped_weight(5)[0] / 10  # a different model version: subspaces rotate but stay related
    layer = routed_layer("a", 8, inv_scale=True)
    plain = PlainLoRA("p", torch.randn(RANK, IN), torch.randn(OUT, RANK), alpha=2.0)
    adapter = Adapter(layers={"a": layer}, plain_layers={"p": plain})
    result = transfer(adapter, getters({"a": w_s, "p": w_s}), getters({"a": w_t, "p": w_t}),
                      TransferOptions(rank=R, mode=mode), cache=SKETCH if sketch else None)
    ut, _, vht = torch.linalg.svd(w_t)
    pu_t, pv_t = projector(ut[:, :R]), projector(vht[:R].T)
    pu_s, pv_s = projector(u_s[:, :R]), projector(v_s[:, :R])
    eye_o, eye_i = torch.eye(OUT, dtype=torch.float64), torch.eye(IN, dtype=torch.float64)
    t_u = {"subspace": pu_t, "subspace+null": pu_t @ pu_s + (eye_o - pu_t) @ (eye_o - pu_s), "copy": eye_o}[mode]
    t_v = {"subspace": pv_t, "subspace+null": pv_t @ pv_s + (eye_i - pv_t) @ (eye_i - pv_s), "copy": eye_i}[mode]
    for e in range(E):
        expected = t_u @ pinned(layer, e) @ t_v.T
        assert (pinned(result.adapter.layers["a"], e) - expected).norm() / expected.norm() < 1e-4
    expected = t_u @ plain.delta_weight().double() @ t_v.T
    got = result.adapter.plain_layers["p"].delta_weight().double()
    assert (got - expected).norm() / expected.norm() < 1e-4
    sim = float((u_s[:, :R].T @ ut[:, :R]).pow(2).sum()) / R
    assert result.layers[0].similarity_out == pytest.approx(sim, abs=1e-4)
    # '|dW| kept' (from Gram matrices) is the dense ratio at a uniform gate
    uniform = torch.full((E,), 1.0 / E)
    dense = (result.adapter.layers["a"].delta_weight(uniform).double().norm()
             / layer.delta_weight(uniform).double().norm())
    assert result.layers[0].retained == pytest.approx(float(dense), rel=1e-5)
    # the router is kept as it was
    assert torch.equal(result.adapter.layers["a"].router_weight, layer.router_weight)


def test_dropped_and_skipped_accounting():
    w, _, _, v = gapped_weight(9)
    g = torch.Generator().manual_seed(1)
    unrelated, _ = torch.linalg.qr(torch.randn(OUT, OUT, generator=g, dtype=torch.float64))
    w_far = unrelated[:, :IN] @ torch.diag(torch.linspace(10, 1, IN, dtype=torch.float64)) @ v.T.flip(0)
    layers = {n: routed_layer(n, i) for i, n in enumerate(["near", "far", "gone", "also_near"])}
    sources = getters({"near": w, "far": w, "gone": w, "also_near": w})
    targets = getters({"near": w, "far": w_far, "also_near": w})  # the target lacks "gone" (a pruned block)
    result = transfer(Adapter(layers=layers), sources, targets, TransferOptions(rank=R, threshold=0.5))
    status = {row.name: row.status for row in result.layers}
    assert status == {"near": "kept", "far": "dropped", "gone": "skipped", "also_near": "kept"}
    assert result.counts() == {"kept": 2, "dropped": 1, "skipped": 1}
    assert set(result.adapter.layers) == {"near", "also_near"}
    far = next(row for row in result.layers if row.name == "far")
    assert far.similarity < 0.5 and far.retained == 0.0
    assert "not in the target model" in next(row.reason for row in result.layers if row.name == "gone")
    table = result.table({"near": 0.01})
    assert "2 kept, 1 dropped" in table and "1 skipped" in table and "0.0100" in table
    assert '"dropped": 1' in result.adapter.metadata["oh_transfer"]


def test_energy_rank_is_the_smallest_holding_the_share():
    w, _, s, _ = gapped_weight(10)
    share = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
    for fraction in (0.5, 0.9, 0.99):
        expected = int((share >= fraction).nonzero()[0]) + 1
        got = SubspaceCache(exact_size=0).for_energy(w.float(), fraction).rank
        assert got == expected
    layer = routed_layer("a", 1)
    result = transfer(Adapter(layers={"a": layer}), getters({"a": w}), getters({"a": w}),
                      TransferOptions(rank=0, energy=0.9))
    assert result.layers[0].rank == int((share >= 0.9).nonzero()[0]) + 1


def test_cache_runs_one_svd_per_weight_across_a_sweep():
    w_s, w_t = gapped_weight(11)[0], gapped_weight(12)[0]
    adapter = Adapter(layers={"a": routed_layer("a", 2)})
    cache = SubspaceCache(exact_size=0)
    for rank in (16, 8, 4):
        for tau in (0.0, 0.5):
            transfer(adapter, getters({"a": w_s}), getters({"a": w_t}), TransferOptions(rank=rank, threshold=tau),
                     cache=cache)
    assert cache.computed == 2  # the first, largest R of each weight; smaller R and every τ reuse it
    exact = SubspaceCache()  # these weights are small enough for the exact SVD: every R comes from the first one
    for rank in (4, 16, 8):
        transfer(adapter, getters({"a": w_s}), getters({"a": w_t}), TransferOptions(rank=rank), cache=exact)
    assert exact.computed == 2


def test_weights_are_fetched_one_layer_at_a_time():
    """Streaming: layer k's weights are no longer alive when layer k+1's are fetched."""
    alive: list[weakref.ref] = []
    fetched: list[str] = []

    def fetch(name: str, seed: int):
        def get():
            gc.collect()
            fetched.append(f"{name}: {sum(ref() is not None for ref in alive)} alive")
            w = gapped_weight(seed)[0].float()
            alive.append(weakref.ref(w))
            return w
        return get

    names = [f"l{i}" for i in range(3)]
    adapter = Adapter(layers={n: routed_layer(n, i) for i, n in enumerate(names)})
    transfer(adapter, {n: fetch(n, i) for i, n in enumerate(names)},
             {n: fetch(n, 20 + i) for i, n in enumerate(names)}, TransferOptions(rank=R), cache=SubspaceCache(0))
    # each layer fetches source then target: at most the source of the same layer is alive
    assert fetched == [f"l{i}: {k} alive" for i in range(3) for k in (0, 1)]


def test_bad_inputs_are_refused_with_the_key_and_a_fix():
    w = gapped_weight(13)[0]
    adapter = Adapter(layers={"a": routed_layer("a", 0)})
    with pytest.raises(OrthoHydraError, match="same layer shapes"):
        transfer(adapter, getters({"a": w}), getters({"a": w[:, :40]}))
    with pytest.raises(OrthoHydraError, match="none of the adapter's 1 layers"):
        transfer(adapter, getters({"b": w}), getters({"b": w}))
    with pytest.raises(OrthoHydraError, match=r"rank 81 is larger than a's 96x80") as exc:
        transfer(adapter, getters({"a": w}), getters({"a": w}), TransferOptions(rank=81))
    assert exc.value.key == "rank" and "rank <= 80" in exc.value.fix
    for tau in (-0.1, 1.5):
        with pytest.raises(OrthoHydraError, match="outside \\[0, 1\\]"):
            transfer(adapter, getters({"a": w}), getters({"a": w}), TransferOptions(threshold=tau))
    with pytest.raises(OrthoHydraError, match="mode"):
        transfer(adapter, getters({"a": w}), getters({"a": w}), TransferOptions(mode="magic"))
    with pytest.raises(OrthoHydraError, match="was trained on"):
        transfer(adapter, getters({"a": w.T}), getters({"a": w.T}))
