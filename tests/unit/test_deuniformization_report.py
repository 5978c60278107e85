"""The de-uniformisation report's verdict on synthetic runs: every decision is read off the inputs."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.deuniformization.config import Config
from experiments.deuniformization.report import RunResult, departure, headline, judge, report, verdict

CFG = Config()  # 1,000 steps, threshold 0.005, E = 4
LR, HIGH_LR = 1e-3, 1e-2
SEEDS = (0, 1, 2)


def run(init: str, *, lr: float = LR, seed: int = 0, cross: int | None = None, steps: int = CFG.steps,
        loss: float = 1.0, kl: float = 0.05, purity: float = 0.0, start_purity: float = 0.0,
        below: float = 1e-4) -> RunResult:
    """A run logged every 10 steps: 1−H̄ = ``below`` until step ``cross`` (never if None), 0.3 from there on."""
    marks = list(range(0, steps + 1, 10))
    if marks[-1] != steps:
        marks.append(steps)
    off = [cross is not None and s >= cross for s in marks]
    return RunResult(init=init, lr=lr, seed=seed, steps=marks, one_minus_h=[0.3 if o else below for o in off],
                     kl=[kl if o else 1e-6 for o in off], loss=[loss] * len(marks), router_grad0=1e-5,
                     router_grad0_balance=1e-5, lam_final=0.02 if init == "ortho" else float("nan"),
                     spread_final=1e-3, init_eval={"loss": 1.1, "purity": start_purity},
                     final_eval={"loss": loss, "purity": purity})


def arms(lr: float = LR, seeds=SEEDS, **per_init) -> list[RunResult]:
    """Three seeds of each init; ``per_init[init]`` is a dict of :func:`run` options or a per-seed list of them."""
    out = []
    for init in ("ortho", "zero", "jitter"):
        options = per_init.get(init, {})
        for k, seed in enumerate(seeds):
            out.append(run(init, lr=lr, seed=seed, **(options[k] if isinstance(options, list) else options)))
    return out


def claim_holds(lr: float = LR, **ortho) -> list[RunResult]:
    return arms(lr, ortho={"cross": 40, **ortho})


def test_claim_holds_when_only_ortho_leaves_the_prior_in_time():
    results = claim_holds()
    j = judge(results, CFG, LR)
    assert j.holds is True and j.failures == [] and j.deadline == 350
    text = verdict(results, CFG, LR)
    assert text.startswith("**claim holds at lr 0.001**")
    assert "through 1000 steps" in text and "ortho crosses by step 350" in text
    assert "held-out loss 1.0000 vs best baseline 1.0000" in text
    # only ortho left the prior, so only ortho is described off it
    assert "`ortho` drifts" in text and "`zero`" not in text and "`jitter`" not in text
    assert headline(results, CFG, [LR]) == "**Verdict: the claim holds at every learning rate tested** (0.001)."


def test_a_baseline_at_exactly_the_threshold_has_not_left_it():
    results = arms(ortho={"cross": 40}, zero={"below": CFG.threshold}, jitter={"below": CFG.threshold})
    assert judge(results, CFG, LR).holds is True
    results = arms(ortho={"cross": 40}, zero={"below": CFG.threshold * 1.01})
    assert judge(results, CFG, LR).holds is False


def test_one_baseline_seed_crossing_fails_the_claim_and_is_named():
    results = arms(ortho={"cross": 40}, zero=[{}, {"cross": 20}, {}])
    j = judge(results, CFG, LR)
    assert j.holds is False and len(j.failures) == 1
    text = verdict(results, CFG, LR)
    assert text.startswith("**claim fails at lr 0.001**: `zero` leaves the uniform prior (seed 1 at step 20;")
    assert "seed 0 at" not in text and "seed 2 at" not in text
    assert "`jitter` leaves" not in text and "`ortho` does not cross" not in text
    # the arms off the prior at the end, in table order; zero's mean is over all three seeds
    assert text.index("`ortho` drifts") < text.index("`zero` drifts")


def test_both_baselines_crossing_are_both_reported():
    results = arms(ortho={"cross": 10}, zero={"cross": 20}, jitter={"cross": 10})
    j = judge(results, CFG, LR)
    assert j.holds is False
    assert [f.split(" ", 1)[0] for f in j.failures] == ["`zero`", "`jitter`"]
    assert "seed 0 at step 20, seed 1 at step 20, seed 2 at step 20" in j.failures[0]


def test_ortho_late_or_never_fails_and_lists_only_those_seeds():
    results = arms(ortho=[{"cross": 400}, {"cross": None}, {"cross": 100}])
    j = judge(results, CFG, LR)
    assert j.holds is False
    assert len(j.failures) == 1 and j.failures[0].startswith(
        "`ortho` does not cross by step 350 (seed 0: step 400, seed 1: never; mean |λ| final 0.020")
    assert "seed 2" not in j.failures[0]
    assert judge(arms(ortho={"cross": 350}), CFG, LR).holds is True  # the deadline itself is in time


def test_the_deadline_is_the_run_length_for_short_runs():
    short = Config(steps=60)
    assert judge(arms(ortho={"cross": 50, "steps": 60}, zero={"steps": 60}, jitter={"steps": 60}),
                 short, LR).holds is True
    results = arms(ortho={"cross": None, "steps": 60}, zero={"steps": 60}, jitter={"steps": 60})
    assert "`ortho` does not cross by step 60 (seed 0: never" in verdict(results, short, LR)


@pytest.mark.parametrize(("ortho_loss", "holds"), [(0.9, True), (0.944, True), (0.946, False), (1.0, False)])
def test_ortho_loss_is_judged_against_the_best_baseline_with_5_percent_tolerance(ortho_loss, holds):
    results = arms(ortho={"cross": 40, "loss": ortho_loss}, zero={"loss": 1.0}, jitter={"loss": 0.9})
    j = judge(results, CFG, LR)
    assert j.holds is holds
    assert j.best_baseline_loss == pytest.approx(0.9)
    if not holds:
        assert j.failures == [f"`ortho` held-out loss {ortho_loss:.4f} is more than 5% above the best "
                              f"baseline's 0.9000"]


def test_a_missing_init_gives_no_verdict():
    results = [r for r in claim_holds() if r.init != "jitter"]
    assert judge(results, CFG, LR).holds is None
    assert verdict(results, CFG, LR) == "lr 0.001: no verdict (needs all three inits)"
    assert headline(results, CFG, [LR]).startswith("**Verdict: none**")


def test_mixed_learning_rates_give_a_mixed_headline_and_one_verdict_each():
    results = claim_holds(LR) + arms(HIGH_LR, ortho={"cross": 10}, zero={"cross": 10})
    assert headline(results, CFG, [LR, HIGH_LR]) == ("**Verdict: mixed**: the claim holds at lr 0.001 and fails "
                                                     "at lr 0.01.")
    text = report(results, CFG, [LR, HIGH_LR], "setup", "title", "footer")
    assert "- **claim holds at lr 0.001**" in text and "- **claim fails at lr 0.01**: `zero` leaves" in text
    # a judged lr decides the headline; an lr without all inits does not
    partial = [*results, run("ortho", lr=0.1, cross=10)]
    assert "fails at lr 0.01." in headline(partial, CFG, [LR, HIGH_LR, 0.1])


def test_everything_leaving_fails_at_every_learning_rate():
    results = [r for lr in (LR, HIGH_LR) for r in arms(lr, ortho={"cross": 10}, zero={"cross": 20},
                                                       jitter={"cross": 10})]
    assert headline(results, CFG, [LR, HIGH_LR]) == ("**Verdict: the claim does not hold at any learning rate "
                                                     "tested** (0.001, 0.01).")


def test_leaving_the_prior_by_collapse_is_told_apart_from_specialising():
    ln_e = math.log(CFG.experts)
    collapsed = claim_holds(kl=1.1, purity=0.05, start_purity=0.02)
    text = verdict(collapsed, CFG, LR)
    assert text.startswith("**claim holds at lr 0.001**")  # the claim is only about leaving the prior ...
    assert text.endswith(f"Off the prior at the end: `ortho` collapses (KL 1.10 of ln 4 = {ln_e:.2f}, "
                         "style purity 0.02 → 0.05).")  # ... but the report says how it left
    specialised = verdict(claim_holds(kl=1.1, purity=0.8), CFG, LR)
    assert "`ortho` specialises" in specialised and "collapses" not in specialised
    drifted = verdict(claim_holds(kl=0.2, purity=0.1), CFG, LR)
    assert "`ortho` drifts" in drifted


@pytest.mark.parametrize(("kl_fraction", "purity", "kind"), [
    (0.5, 0.29, "collapses"),  # half of ln E is collapse
    (0.49, 0.29, "drifts"),
    (0.99, 0.30, "specialises"),  # purity decides first: a collapsed-looking mean gate can still split styles
    (0.0, 0.30, "specialises"),
])
def test_departure_thresholds(kl_fraction, purity, kind):
    group = [run("zero", cross=10, kl=kl_fraction * math.log(CFG.experts), purity=purity)]  # one seed: exact mean
    assert departure(group, CFG).startswith(f"`zero` {kind} (")


def test_departure_averages_over_seeds():
    group = [run("jitter", seed=0, cross=10, purity=0.5), run("jitter", seed=1, cross=10, purity=0.0)]
    assert departure(group, CFG).startswith("`jitter` drifts")  # mean purity 0.25 < 0.3
    assert "style purity 0.00 → 0.25" in departure(group, CFG)


def test_the_report_modules_import_without_the_comfyui_host():
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; import experiments.deuniformization.run, experiments.deuniformization.report; "
            "hosts = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'folder_paths', 'nodes')); "
            "assert not hosts, hosts")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
