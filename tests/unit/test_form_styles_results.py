"""The form-style study's published figures come from its committed results, and its statistics are right.

* Every generated block in experiments/form_styles/README.md and the main README equals what the report code
  makes from results/runs.jsonl + meta.json now, and results/form_styles.{json,md} are that output.
* The README's plan table is experiments/form_styles/plan.py.
* Intervals and verdicts, checked on synthetic runs against hand computations.
"""

import json
import math
import statistics

import pytest

from experiments.form_styles import report
from experiments.form_styles.plan import ARMS, PLAN

RESULTS = report.RESULTS
HAVE_RESULTS = (RESULTS / "runs.jsonl").is_file() and (RESULTS / "meta.json").is_file()


@pytest.mark.skipif(not HAVE_RESULTS, reason="the study has not been run in this checkout")
def test_committed_results_are_what_the_report_makes_from_the_runs():
    runs, meta = report.load(RESULTS)
    summary = report.summarise(runs, meta)
    committed = json.loads((RESULTS / "form_styles.json").read_text())
    assert committed == json.loads(json.dumps(summary))  # the same numbers, to the last digit
    assert (RESULTS / "form_styles.md").read_text() == report.markdown(summary)


@pytest.mark.skipif(not HAVE_RESULTS, reason="the study has not been run in this checkout")
def test_every_figure_in_the_readmes_is_generated_from_the_results():
    runs, meta = report.load(RESULTS)
    summary = report.summarise(runs, meta)
    found = 0
    for path in report.READMES:
        blocks = report.blocks_in(path.read_text())
        for name, text in blocks.items():
            assert text == "\n".join(report.BLOCKS[name](summary)), f"{path.name}: block {name} is stale"
            found += 1
    assert found >= 4


def test_the_readme_plan_is_the_plan_module():
    text = (report.HERE / "README.md").read_text()
    blocks = report.blocks_in(text)
    assert blocks["plan"] == "\n".join(report.table_plan(PLAN))
    for arm in ARMS.values():
        assert arm.label in blocks["plan"]


def test_interval_is_the_95_percent_t_interval():
    values = [0.8, 0.9, 1.0, 0.85, 0.95]
    got = report.interval(values)
    sd = statistics.stdev(values)
    assert got["mean"] == pytest.approx(0.9)
    assert got["half"] == pytest.approx(2.776 * sd / math.sqrt(5))
    assert got["low"] == pytest.approx(0.9 - got["half"])
    assert math.isnan(report.interval([0.5])["half"])


def _run(arm, seed, pin, content=1.0, bleed=0.0, loss=1.0, purity=0.5):
    per_style = [{"pin": pin, "bleed": bleed, "content_ok": [True]} for _ in range(4)]
    return {"key": f"seed|{arm}|0.001|{seed}", "stage": "seed", "arm": arm, "lr": 1e-3, "seed": seed, "pin": pin,
            "content": content, "bleed": bleed, "heldout_loss": loss, "purity": purity, "per_style": per_style}


def test_verdicts_follow_the_planned_rules():
    plan = {k: list(v) if isinstance(v, tuple) else v for k, v in PLAN.__dict__.items()}
    meta = {"plan": plan, "matched_rank": 20, "adapted_layers": 10, "probe": {}, "base": {}}
    runs = []
    for seed, (ref, good, close, low) in enumerate([(0.95, 0.96, 0.92, 0.5), (0.93, 0.94, 0.88, 0.6),
                                                      (0.97, 0.97, 0.90, 0.55)], start=1):
        runs += [_run("lora_named", seed, ref), _run("ortho_init_lg", seed, good), _run("ortho_lg", seed, close),
                 _run("hydra_zero", seed, low)]
    s = report.summarise(runs, meta)
    diffs = [0.96 - 0.95, 0.94 - 0.93, 0.97 - 0.97]
    c = s["comparisons"]["ortho_init_lg"]["pin"]
    assert c["mean"] == pytest.approx(statistics.fmean(diffs))
    assert c["half"] == pytest.approx(4.303 * statistics.stdev(diffs) / math.sqrt(3))
    assert s["promise_holds"]["ortho_init_lg"] is True
    # mean pin 0.90 reaches the bar, but (arm - reference) = -0.03, -0.05, -0.07: lower bound below -0.05
    assert s["comparisons"]["ortho_lg"]["noninferior"]["pin"] is False
    assert s["promise_holds"]["ortho_lg"] is False
    assert s["promise_holds"]["hydra_zero"] is False
    assert s["comparisons"]["hydra_zero"]["loss_ratio"]["mean"] == pytest.approx(1.0)


def test_a_report_of_the_positive_control_alone_says_what_has_not_run():
    plan = {k: list(v) if isinstance(v, tuple) else v for k, v in PLAN.__dict__.items()}
    meta = {"plan": plan, "matched_rank": 20, "adapted_layers": 10, "probe": {}, "base": {}}
    runs = [{"key": f"positive|lora_r8|0.01|0|{style}", "stage": "positive", "arm": "lora_r8", "style": style,
             "lr": 0.01, "seed": 0, "pin": pin, "content": 0.95, "bleed": 0.1}
            for style, pin in zip(report.STYLE_NAMES, (1.0, 0.93, 0.86, 1.0), strict=True)]
    s = report.summarise(runs, meta)
    assert s["positive_control"]["passes"] is False  # oblique 0.86 < 0.9
    assert s["arms"] == {} and s["promise_holds"] == {}
    text = report.headline(s)[0]
    assert "**fails**" in text and "oblique 0.86" in text and "comparison has not been run" in text
    rows = report.table_positive(s)
    assert [r.rsplit("|", 2)[1].strip() for r in rows[2:]] == ["yes", "yes", "no", "yes"]
    part = report.summarise(runs[:2], meta)  # a run stopped after two styles gives no verdict
    assert part["positive_control"]["passes"] is None
    assert "**incomplete** (2 of 4 styles ran)" in report.headline(part)[0]
