"""experiments/style_separation --quick end to end on the real host: every output exists, every metric is in range."""

import csv
import json
import math

import folder_paths
import pytest

from experiments.style_separation import run as style_separation
from experiments.style_separation.report import rerender

pytestmark = pytest.mark.study  # a study's smoke run: the slow tier (make test-slow)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("style_separation")
    loras_before = folder_paths.get_folder_paths("loras")
    result = style_separation.main(["--quick", "--out", str(out)])
    assert folder_paths.get_folder_paths("loras") == loras_before  # the trainer's temp folder is gone again
    return out, result


def _in_unit(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def test_quick_run_writes_every_output(quick):
    out, result = quick
    stem = out / "style_separation_quick"
    for ext in ("md", "json", "csv", "png", "log"):
        assert (out / f"{stem.name}.{ext}").stat().st_size > 0, ext
    for extra in ("gallery", "matrix"):
        assert (out / f"{stem.name}_{extra}.png").stat().st_size > 0, extra
    saved = json.loads((out / f"{stem.name}.json").read_text())["runs"]
    assert [(r["arm"], r["lr"], r["seed"]) for r in saved] == [(r["arm"], r["lr"], r["seed"]) for r in result["runs"]]
    rows = list(csv.DictReader((out / f"{stem.name}.csv").open()))
    assert {r["arm"] for r in rows} == {"single", "ortho_lg"}
    text = (out / f"{stem.name}.md").read_text()
    assert "| single LoRA (E=1) |" in text and "target 1, pin accuracy" in text
    assert "Notes" in rerender(out / f"{stem.name}.json", ["- a note"])


def test_quick_run_metrics_are_well_formed(quick):
    _, result = quick
    assert _in_unit(result["probe"]["held_out_accuracy"]) and result["probe"]["held_out_accuracy"] >= 0.95
    runs = {r["arm"]: r for r in result["runs"]}
    assert set(runs) == {"single", "ortho_lg"} and all(r["full"] for r in runs.values())
    for arm, r in runs.items():
        assert _in_unit(r["pin_accuracy"]) and _in_unit(r["live_accuracy"]), arm
        assert len(r["style_loss"]) == 4 and all(math.isfinite(v) and v > 0 for v in r["style_loss"])
        assert math.isfinite(r["heldout_loss"]) and r["heldout_loss"] > 0
        assert sum(map(sum, r["pin_confusion"])) == 16 * (1 if arm == "single" else 4)
    routed = runs["ortho_lg"]
    assert _in_unit(routed["purity"]) and _in_unit(routed["collapse"]) and _in_unit(routed["uniform"])
    assert all(_in_unit(v) for v in routed["purity_by_sigma"].values())
    assert sorted(routed["pin_mapping"]) == [0, 1, 2, 3]  # a one-to-one expert -> style matching
    assert math.isnan(runs["single"]["purity"])  # E = 1 has no routing to measure
    base = result["base_model"]
    assert _in_unit(base["sample_neutral_share"]) and _in_unit(base["img2img_style_kept"])
