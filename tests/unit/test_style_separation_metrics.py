"""The style-separation study's metrics on synthetic inputs (no ComfyUI host needed)."""

import itertools
import math

import pytest
import torch

from experiments.gate_measures import collapse_share, layer_collapse, routing_purity
from experiments.style_separation.report import (
    RunRecord,
    match_experts,
    paired_ci,
    paired_style,
    paired_table,
    pin_accuracy,
    reachable_share,
    style_check,
    verdict,
)
from experiments.toy_harness import sigma_style_means

STYLES = ("warm", "cool stripes", "dots", "grain")


def test_hungarian_matching_finds_the_best_one_to_one_assignment():
    # expert 0 draws style 2, expert 1 style 0, expert 2 style 3, expert 3 style 1; plus some noise
    conf = torch.tensor([[1, 0, 14, 1, 0],
                         [12, 2, 0, 0, 2],
                         [0, 1, 3, 10, 2],
                         [0, 15, 0, 1, 0]])
    mapping, matched = match_experts(conf, 4)
    assert mapping == [2, 0, 3, 1] and matched == 14 + 12 + 10 + 15
    best = max(sum(int(conf[e, s]) for e, s in enumerate(p)) for p in itertools.permutations(range(4)))
    assert matched == best


def test_hungarian_matching_beats_greedy_when_two_experts_want_the_same_style():
    # greedy (each expert its own argmax) would give both experts style 0; one-to-one must split them
    conf = torch.tensor([[9, 8], [10, 0]])
    mapping, matched = match_experts(conf, 2)
    assert mapping == [1, 0] and matched == 18


def test_pin_accuracy_perfect_chance_and_neutral():
    perfect = [[s] * 16 for s in (3, 1, 0, 2)]
    result = pin_accuracy(perfect, 4, 5)
    assert result["accuracy"] == 1.0 and result["mapping"] == [3, 1, 0, 2]
    assert torch.tensor(result["confusion"]).sum() == 64
    # every expert draws the same style: only one of them can be matched to it
    same = [[1] * 16 for _ in range(4)]
    assert pin_accuracy(same, 4, 5)["accuracy"] == pytest.approx(0.25)
    # neutral-looking samples (class 4) are never in a matched style
    neutral = [[4] * 16 for _ in range(4)]
    assert pin_accuracy(neutral, 4, 5)["accuracy"] == 0.0
    mixed = [[0] * 12 + [4] * 4, [1] * 16, [2] * 8 + [4] * 8, [3] * 16]
    assert pin_accuracy(mixed, 4, 5)["accuracy"] == pytest.approx((12 + 16 + 8 + 16) / 64)


def test_pin_accuracy_of_a_single_lora_is_its_most_common_style_share():
    result = pin_accuracy([[2] * 10 + [0] * 4 + [4] * 2], 4, 5)
    assert result["accuracy"] == pytest.approx(10 / 16) and result["mapping"] == [2]
    assert pin_accuracy([[4] * 16], 4, 5)["accuracy"] == 0.0  # all neutral: no style at all


def test_collapse_uniform_and_healthy_layers():
    n, e = 40, 4
    uniform = torch.full((n, e), 0.25) + 1e-5 * torch.randn(n, e, generator=torch.Generator().manual_seed(0))
    collapsed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(n, 1)
    labels = torch.arange(n) % e
    healthy = torch.nn.functional.one_hot(labels, e).float() * 0.6 + 0.1
    assert layer_collapse(uniform) == (False, True)  # no opinion is not a collapse
    assert layer_collapse(collapsed) == (True, False)
    assert layer_collapse(healthy) == (False, False)
    # 36 of 40 on expert 0 is exactly 90 %: collapsed; 35 of 40 is not
    mostly = torch.tensor([[0.1, 0.7, 0.1, 0.1]]).repeat(n, 1)
    mostly[:36] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    assert layer_collapse(mostly)[0]
    mostly[35] = torch.tensor([0.1, 0.7, 0.1, 0.1])
    assert not layer_collapse(mostly)[0]
    # unassigned samples count in the denominator, never for an expert
    half = torch.cat([collapsed[:20], uniform[:20]])
    assert layer_collapse(half) == (False, False)
    share, uni = collapse_share({"a": uniform, "b": collapsed, "c": healthy, "d": collapsed})
    assert share == 0.5 and uni == 0.25
    assert all(math.isnan(v) for v in collapse_share({}))


def test_routing_purity_is_nmi_averaged_over_layers():
    labels = torch.arange(40) % 4
    by_style = torch.nn.functional.one_hot(labels, 4).float()
    permuted = torch.nn.functional.one_hot((labels + 1) % 4, 4).float()
    constant = torch.tensor([[0.4, 0.2, 0.2, 0.2]]).repeat(40, 1)
    assert routing_purity({"a": by_style, "b": permuted}, labels) == pytest.approx(1.0)
    assert routing_purity({"a": by_style, "b": constant}, labels) == pytest.approx(0.5)
    assert math.isnan(routing_purity({}, labels))


def _record(arm, seed, pin, losses):
    return RunRecord(arm=arm, lr=1e-3, seed=seed, heldout_loss=sum(losses) / 4, style_loss=list(losses),
                     pin_accuracy=pin, purity=0.5, collapse=0.0, uniform=0.0, live_accuracy=1.0, full=True)


def test_verdict_reads_both_targets_off_the_records():
    single = [_record("single", s, 1.0, [0.5, 0.4, 0.3, 0.2]) for s in range(3)]
    good = [_record("ortho_lg", s, 0.95, [0.49, 0.4, 0.29, 0.2]) for s in range(3)]
    lines = verdict(single + good, STYLES)
    assert "**PASS**" in lines[0] and "**PASS**" in lines[1]
    worse = [_record("ortho_lg", s, 0.6, [0.6, 0.4, 0.3, 0.2]) for s in range(3)]
    lines = verdict(single + worse, STYLES)
    assert "**FAIL**" in lines[0] and "FAIL (warm)" in lines[1]
    checks = style_check(single + worse, "ortho_lg")
    assert checks[0]["ratio"] == pytest.approx(1.2) and not checks[0]["no_worse"] and checks[1]["no_worse"]
    free = [_record("ortho_init_lg", s, 1.0, [0.5, 0.4, 0.3, 0.2]) for s in range(3)]
    lines = verdict(single + worse + free, STYLES, "ortho_init_lg")  # the variant is judged on its own runs
    assert "ortho_init" in lines[0] and "1.00" in lines[0] and "**PASS**" in lines[0] and "**PASS**" in lines[1]


def test_reachable_share_of_an_update_under_ortho_hydras_frozen_bases():
    from ortho_hydra.basis import disjoint_basis

    w0 = torch.randn(12, 10, generator=torch.Generator().manual_seed(0))
    basis = disjoint_basis(w0, 2, 2)
    v, u0, u1 = basis.in_basis.T, basis.out_bases[0], basis.out_bases[1]  # (10, 2), (12, 2), (12, 2)
    m = torch.tensor([[1.0, 2.0], [-0.5, 0.3]])
    energy, share, best = reachable_share(u0 @ m @ v.T, basis.in_basis, basis.out_bases)
    assert energy > 0 and share == pytest.approx(1.0) and best == pytest.approx(1.0)
    _, share, best = reachable_share(u0 @ m @ v.T + u1 @ m @ v.T, basis.in_basis, basis.out_bases)
    assert share == pytest.approx(1.0) and best == pytest.approx(0.5)  # two experts' worth: no single one holds it
    outside = torch.linalg.svd(w0).Vh[2:3]  # a row direction orthogonal to the shared in-basis
    _, share, best = reachable_share(u0 @ torch.ones(2, 1) @ outside, basis.in_basis, basis.out_bases)
    assert share == pytest.approx(0.0, abs=1e-9) and best == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(reachable_share(torch.zeros(12, 10), basis.in_basis, basis.out_bases)[1])


def test_paired_ci_against_a_hand_computed_t_interval():
    diffs = [0.004, -0.002, 0.010, 0.001, 0.006, -0.003, 0.002, 0.005]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = 2.364624 * sd / math.sqrt(n)  # Student t, 7 degrees of freedom, 97.5 % quantile (printed tables)
    out = paired_ci(diffs)
    assert out["n"] == 8 and out["wins"] == 2
    assert out["mean"] == pytest.approx(mean) and out["sd"] == pytest.approx(sd)
    assert out["low"] == pytest.approx(mean - half, rel=1e-5) and out["high"] == pytest.approx(mean + half, rel=1e-5)
    three = paired_ci([1.0, 2.0, 4.0])  # mean 7/3, sd sqrt(7/3), t(2) = 4.302653
    assert three["high"] - three["mean"] == pytest.approx(4.302653 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-5)
    one = paired_ci([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["low"]) and math.isnan(one["high"])
    with pytest.raises(ValueError):
        paired_ci([])


def test_sigma_style_means_by_loop():
    gen = torch.Generator().manual_seed(3)
    values = torch.rand(3, 10, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3, 3])
    out = sigma_style_means(values, (0.1, 0.5, 0.9), labels, 4)
    assert list(out) == ["0.1", "0.5", "0.9"]
    for k, key in enumerate(out):
        for s in range(4):
            picked = [float(values[k, i]) for i in range(10) if int(labels[i]) == s]
            assert out[key][s] == pytest.approx(sum(picked) / len(picked))
    with pytest.raises(ValueError):
        sigma_style_means(values, (0.1, 0.5), labels, 4)


def test_paired_style_matches_seeds_and_reads_one_noise_level():
    def rec(arm, seed, losses, at_low):
        r = _record(arm, seed, 1.0, losses)
        r.style_sigma_loss = {"0.1": at_low, "0.9": list(losses)}
        return r

    single = [rec("single", s, [0.5 + 0.01 * s, 0.4, 0.3, 0.2], [0.1, 0.1, 0.1, 0.1]) for s in range(4)]
    # the subject ran seeds 1..4: only 1..3 pair up; seed 0 of the single LoRA and seed 4 of the arm are left out
    subject = [rec("ortho_init_lg", s, [0.5 + 0.01 * s + d, 0.4 - d, 0.3, 0.2], [0.1 + d, 0.1, 0.1, 0.1])
               for s, d in ((1, 0.02), (2, 0.021), (3, 0.019), (4, 9.0))]
    rows = paired_style(single + subject, "ortho_init_lg")
    assert [r["n"] for r in rows] == [3, 3, 3, 3]
    assert rows[0]["mean"] == pytest.approx(0.02) and rows[0]["wins"] == 0
    assert rows[1]["mean"] == pytest.approx(-0.02) and rows[1]["wins"] == 3
    assert rows[2]["mean"] == pytest.approx(0.0) and rows[2]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert rows[0]["arm"] == pytest.approx((0.53 + 0.541 + 0.549) / 3)
    assert rows[0]["reference"] == pytest.approx((0.51 + 0.52 + 0.53) / 3)
    low = paired_style(single + subject, "ortho_init_lg", sigma="0.1")
    assert low[0]["mean"] == pytest.approx(0.02) and low[1]["mean"] == pytest.approx(0.0)
    table = paired_table(single + subject, STYLES, "ortho_init_lg")
    assert len(table) == 4 + 3 and table[4].startswith("| mean over σ |") and table[5].startswith("| 0.1 |")
    assert "+0.0200 [" in table[4] and "0/3" in table[4] and "3/3" in table[4]
    assert paired_table(single[:1] + subject[:1], STYLES, "ortho_init_lg") == []  # one pair: no interval
    line = verdict(single + subject, STYLES, "ortho_init_lg")[1]
    # warm: +0.020, +0.021, +0.019 (interval above 0); cool stripes: the same below 0; dots, grain: exactly 0
    assert "paired over 3 seeds" in line and "worse on warm" in line and "better on cool stripes" in line
    assert "not distinguishable on dots, grain" in line
