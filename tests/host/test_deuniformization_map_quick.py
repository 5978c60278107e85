"""experiments/deuniformization_map --quick on the real host's MMDiT: both cells run and the outputs agree."""

import csv

import pytest

from experiments.deuniformization_map import config as grid
from experiments.deuniformization_map import run as dmap

pytestmark = pytest.mark.study  # a study's smoke run: the slow tier (make test-slow)


def test_quick_map_runs_and_its_outputs_agree(tmp_path):
    results = dmap.main(["--quick", "--out", str(tmp_path)])
    assert set(results) == set(grid.cells(quick=True))
    rows = list(csv.DictReader((tmp_path / "deuniformization_map_quick.csv").open()))
    assert len(rows) == 2
    for row in rows:
        cell = grid.Cell(row["init"], row["optimizer"], float(row["router_std"]), float(row["lr"]), int(row["batch"]))
        saved = None if row["first_cross"] == "" else int(row["first_cross"])
        assert results[cell].crosses == [saved]
        assert 0.0 <= float(row["purity"]) <= 1.0
    # the exact deadlock cell (zero init, router std 0) never leaves; ortho at lr 2e-3 does
    assert results[grid.Cell("zero", "adamw", 0.0, 2e-3, 1)].crosses == [None]
    assert results[grid.Cell("ortho", "adamw", 0.01, 2e-3, 1)].crosses[0] is not None
    assert (tmp_path / "deuniformization_map_quick.png").stat().st_size > 0
