"""experiments/mc_compose --quick end to end on the real host, and its verdict rule on synthetic intervals."""

import pytest
import torch

from experiments.mc_compose import report
from experiments.mc_compose import run as mc_compose

pytestmark = pytest.mark.study  # a study's smoke run: the slow tier (make test-slow)


def test_quick_composition_run_reports_every_method_and_part(tmp_path):
    out = mc_compose.main(["--quick", "--out", str(tmp_path)])
    assert set(out["results"]) == set(mc_compose.METHODS)
    for parts in out["results"].values():
        for mean, low, high in parts.values():
            assert 0.0 <= low <= mean <= high <= 1.0
        assert parts["both"][0] <= min(parts["palette"][0], parts["texture"][0])
    assert "OMCD" in (tmp_path / "mc_compose_quick.md").read_text()


def test_bootstrap_interval_and_verdict():
    mean, low, high = report.bootstrap(torch.tensor([True] * 48 + [False] * 16))
    assert mean == 0.75 and 0.6 < low < 0.75 < high < 0.87
    better = {"OMCD": {"both": (0.9, 0.85, 0.95)}, "direct blend": {"both": (0.5, 0.4, 0.6)}}
    assert report.verdict(better).startswith("**OMCD helps here**")
    same = {"OMCD": {"both": (0.55, 0.45, 0.65)}, "direct blend": {"both": (0.5, 0.4, 0.6)}}
    assert report.verdict(same).startswith("**OMCD does not help here**")
