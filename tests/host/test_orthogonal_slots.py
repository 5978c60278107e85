"""experiments/orthogonal_slots --quick end to end on the real host: both arms, metrics in range, slots disjoint."""

import json
import math

import pytest

from experiments.orthogonal_slots import run as orthogonal_slots

pytestmark = pytest.mark.study  # a study's smoke run: the slow tier (make test-slow)


def test_quick_run_trains_both_arms_and_measures_them(tmp_path):
    out = orthogonal_slots.main(["--quick", "--out", str(tmp_path)])
    results = out["results"]
    assert set(results) == {"plain", "slots"}
    for entry in results.values():
        (run,) = entry["runs"]
        assert len(run["styles"]) == 4
        for row in run["styles"]:
            assert math.isfinite(row["alone"]) and math.isfinite(row["merged"])
            assert math.isclose(row["rise"], row["merged"] - row["alone"], rel_tol=1e-12, abs_tol=1e-12)
            assert 0.0 <= row["probe_alone"] <= 1.0 and 0.0 <= row["probe_merged"] <= 1.0
    assert results["slots"]["runs"][0]["overlap"] < 1e-4  # disjoint output subspaces by construction
    assert results["plain"]["runs"][0]["overlap"] > 0.05  # independently trained LoRAs share directions
    assert json.loads((tmp_path / "orthogonal_slots_quick.json").read_text())["steps"] == 30
    assert "Verdict" in (tmp_path / "orthogonal_slots_quick.md").read_text()
