"""experiments/router_collapse --quick end to end on the real host: runs, metrics in range, the table reads the runs."""

import json
import math
import statistics

import pytest

from experiments.router_collapse import run as router_collapse

pytestmark = pytest.mark.study  # a study's smoke run: the slow tier (make test-slow)


def test_quick_run_measures_both_variants_and_tabulates_them(tmp_path):
    result = router_collapse.main(["--quick", "--out", str(tmp_path)])
    rows = result["rows"]
    assert [(r["variant"], r["init"]) for r in rows] == [(router_collapse.QUICK_BEFORE, "ortho"),
                                                        (router_collapse.QUICK_AFTER, "ortho")]
    for r in rows:
        assert 0.0 <= r["collapse"] <= 1.0 and 0.0 <= r["purity"] <= 1.0
        assert 0.25 <= r["top_share"] <= 1.0  # E = 4: the busiest expert takes at least a quarter
        assert math.isfinite(r["heldout_loss"]) and r["heldout_loss"] > 0
    assert json.loads((tmp_path / "router_collapse_quick.json").read_text())["rows"] == rows
    text = (tmp_path / "router_collapse_quick.md").read_text()
    for r in rows:
        cell = f"{r['collapse']:.0%} / {r['purity']:.2f} / {statistics.fmean([r['heldout_loss']]):.3f}"
        assert f"| {r['variant']} | {cell} |" in text
