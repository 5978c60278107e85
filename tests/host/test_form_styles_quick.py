"""The form-style study end to end at toy size: a two-step base model, 30 training steps, the quick plan.

It checks the plumbing (every arm trains through the pack's trainer, every metric is measured on the held-out
characters, a re-run resumes instead of retraining, the report reads the records), not the science: the study's
own results are in experiments/form_styles/results/.  Marked ``study`` (the slow tier): the probes are fitted once
per host (a few minutes on 2 cores, then cached) and the quick plan trains 6 adapters of 30 steps.
"""

import json

import pytest

from devkit import glyph_world as gw
from experiments.form_styles import run
from experiments.form_styles.plan import QUICK


@pytest.mark.study
def test_the_quick_study_measures_every_arm_on_held_out_characters_and_resumes(tmp_path):
    base = gw.recipe(steps=2, warmup=1, batch=4)
    summary = run.main(["--quick", "--out", str(tmp_path)], base_recipe=base, models_dir=str(tmp_path / "models"))
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    positive = [r for r in records if r["stage"] == "positive"]
    assert sorted(r["style"] for r in positive) == sorted(gw.STYLES)
    assert sorted((r["stage"], r["arm"]) for r in records if r["stage"] != "positive") == [
        ("seed", "lora_named"), ("seed", "ortho_init_lg"), ("select", "lora_named"), ("select", "ortho_init_lg")]
    held = len(gw.SPLIT["held_out"]) * QUICK.samples_per_char
    for r in (r for r in records if r["stage"] == "seed"):
        assert len(r["per_style"]) == len(gw.STYLES)
        for k, entry in enumerate(r["per_style"]):
            assert len(entry["called"]) == len(entry["content_ok"]) == held
            assert entry["pin"] == sum(c == k for c in entry["called"]) / held
            assert 0.0 <= entry["bleed"] <= 1.0
        assert r["pin"] == sum(e["pin"] for e in r["per_style"]) / len(gw.STYLES)
        assert r["heldout_loss"] > 0 and r["validation_loss"] > 0
    moe = next(r for r in records if r["stage"] == "seed" and r["arm"] == "ortho_init_lg")
    assert moe["mapping"] == [0, 1, 2, 3] and 0.0 <= moe["purity"] <= 1.0
    assert set(summary["arms"]) == {"lora_named", "ortho_init_lg"}
    assert summary["comparisons"] == {}  # one seed: no paired interval is made
    before = (tmp_path / "runs.jsonl").read_text()
    run.main(["--quick", "--out", str(tmp_path)], base_recipe=base, models_dir=str(tmp_path / "models"))
    assert (tmp_path / "runs.jsonl").read_text() == before  # every run was found and skipped
