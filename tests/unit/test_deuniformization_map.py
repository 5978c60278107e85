"""The phase diagram's reading of its cells: which settings support the claim (it writes the README's verdict)."""

from experiments.deuniformization_map.config import Cell
from experiments.deuniformization_map.report import CellResult, claim_holds, report


def _cell(init, crosses, opt="adamw", std=0.01, lr=2e-5, batch=1):
    cell = Cell(init, opt, std, lr, batch)
    return cell, CellResult(cell, crosses=list(crosses), purity=[0.1] * len(crosses))


def test_claim_holds_only_where_baselines_stay_and_ortho_leaves_early_on_every_seed():
    results = dict([_cell("ortho", [100, 200, 250]), _cell("zero", [None] * 3), _cell("jitter", [None] * 3),
                    _cell("ortho", [100, 400, 200], lr=2e-4), _cell("zero", [None] * 3, lr=2e-4),
                    _cell("jitter", [None] * 3, lr=2e-4),
                    _cell("ortho", [10, 10, 10], lr=2e-3), _cell("zero", [None, None, 900], lr=2e-3),
                    _cell("jitter", [None] * 3, lr=2e-3)])
    holds = claim_holds(results, 1000)
    assert holds == [Cell("ortho", "adamw", 0.01, 2e-5, 1)]  # 2e-4: one ortho seed too late; 2e-3: zero left
    text = report(results, 1000, [0, 1, 2], "setup", "footer")
    assert "holds in 1 of 3 settings: adamw, std 0.01, lr 2e-05, batch 1." in text


def test_first_cross_is_the_median_seed_and_none_when_the_median_never_crosses():
    assert _cell("zero", [None, 30, None])[1].first_cross() == "none"
    assert _cell("zero", [None, 30, 50])[1].first_cross() == "50"
    assert _cell("zero", [70, 30, 50])[1].first_cross() == "50"
