"""The transfer study's verdict: gap closed against its definition, and 'holds' only under both conditions."""

import pytest

from experiments.transfer.report import gap_closed, verdict


def run(kind: str, none: float, copy: float, sub: float, null: float, oracle: float) -> dict:
    arms = {"none": none, "copy": copy, "subspace": sub, "subspace+null": null, "oracle": oracle}
    return {"kind": kind, "arms": {a: {"loss": v, "probe": 0.0} for a, v in arms.items()}}


def test_gap_closed_is_the_share_of_the_distance_from_no_adapter_to_the_oracle():
    assert gap_closed(1.0, 0.25, 0.0, lower_is_better=True) == pytest.approx(0.75)
    assert gap_closed(0.2, 0.8, 1.0, lower_is_better=False) == pytest.approx(0.75)
    assert gap_closed(1.0, 1.2, 0.0, lower_is_better=True) == pytest.approx(-0.2)  # worse than no adapter


def test_the_claim_holds_only_when_most_of_the_gap_closes_and_the_copy_loses_every_seed():
    good = {"runs": [run("lora", 1.0, 0.8, 0.3, 0.5, 0.0) for _ in range(3)]}
    assert "claim holds here" in verdict(good)
    one_loss = {"runs": [*good["runs"][:2], run("lora", 1.0, 0.2, 0.3, 0.5, 0.0)]}
    assert "does not hold" in verdict(one_loss) and "2/3 seeds" in verdict(one_loss)
    small = {"runs": [run("lora", 1.0, 0.9, 0.7, 0.8, 0.0) for _ in range(3)]}  # beats copy, closes 30 %
    assert "does not hold" in verdict(small) and "subspace closes 30%" in verdict(small)
