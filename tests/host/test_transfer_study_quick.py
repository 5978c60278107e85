"""experiments/transfer --quick end to end on the real host (one adapter kind), so the study cannot rot unseen:
a change to a shared helper (``heldout`` gaining a return value) once broke it without any test failing."""

import json

import pytest

from experiments.transfer import config
from experiments.transfer import run as transfer

pytestmark = pytest.mark.study  # a study's smoke run: the slow tier (make test-slow)


def test_quick_transfer_run_measures_every_arm_and_reports_its_own_numbers(tmp_path):
    transfer.main(["--quick", "--kinds", "lora", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "transfer_broad_quick.json").read_text())
    (run,) = data["runs"]
    assert run["kind"] == "lora" and set(run["arms"]) == set(config.ARMS)
    for arm in run["arms"].values():
        assert arm["loss"] > 0 and 0.0 <= arm["probe"] <= 1.0
    for row in run["layers"]:
        assert 0.0 <= row["similarity"] <= 1.0 + 1e-9 and 0.0 <= row["retained"] <= 1.0 + 1e-9
    # the verdict's percentages are the gap fractions of these losses, recomputed here from their definition
    none, oracle = run["arms"]["none"]["loss"], run["arms"]["oracle"]["loss"]
    for arm in ("copy", "subspace", "subspace+null"):
        closed = (none - run["arms"][arm]["loss"]) / (none - oracle)
        assert f"{arm} closes {closed:.0%} of the loss gap" in data["verdict"]
    assert (tmp_path / "transfer_broad_quick.md").read_text().startswith("# LoRA-X transfer")
