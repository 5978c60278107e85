"""Every figure published from bench/train_full_size.py comes from its committed results: the tables, the targets,
bench/README.md's block and the README's paragraph are regenerated from the JSON here and must match."""

import json
from pathlib import Path

import pytest

from bench import train_full_size as bench

ROOT = Path(__file__).resolve().parents[2]


def committed(name: str) -> dict:
    return json.loads((ROOT / "bench" / "results" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", [bench.NAME, bench.DEPTH, bench.BEFORE])
def test_each_results_table_and_verdict_is_its_json(name):
    results = committed(name)
    assert results["verdict"] == bench.verdict(results)
    assert not any("error" in run for run in results["runs"])
    table = (ROOT / "bench" / "results" / f"{name}.md").read_text()
    assert table == f"Command: `{results['command']}`\n\n{bench.table(results)}\n{bench.targets_text(results)}"


def test_bench_readme_and_readme_quote_the_results():
    full, depth, before = committed(bench.NAME), committed(bench.DEPTH), committed(bench.BEFORE)
    bench_readme = (ROOT / "bench" / "README.md").read_text()
    assert bench.read_block(bench_readme) == bench.bench_readme_block(full, depth, before)
    readme = (ROOT / "README.md").read_text()
    assert bench.read_block(readme) == bench.readme_paragraph(full, depth)


def test_the_2b_run_is_the_issues_configuration():
    full = committed(bench.NAME)
    ours = bench.find(full, "ours-on")
    assert (ours["blocks"], ours["channels"], ours["px"], ours["rank"]) == (28, 2048, 512, 16)
    assert 1.9e9 < ours["parameters"] < 2.1e9 and ours["inference_weights"]
    assert {run["config"] for run in full["runs"]} >= {"ours-on", "core-on"}


def _run(config: str, blocks: int, px: int, setup: float, steps: float) -> dict:
    return {"config": config, "blocks": blocks, "px": px, "s_per_step": 1.0,
            "phases": {"setup": {"peak_over_model_gib": setup, "seconds": 1.0},
                       "steps": {"peak_over_model_gib": steps, "seconds": 1.0}}}


def test_the_depth_fit_is_the_line_through_the_shallow_runs():
    # setup = 0.1 + 0.02·blocks, steps = 0.3 + 0.05·blocks at 512 px; 4x the step slope at 1024 px
    depth = {"runs": [_run("ours-on", b, px, 0.1 + 0.02 * b, 0.3 + k * b) for px, k in ((512, 0.05), (1024, 0.2))
                      for b in (4, 8)]}
    full = {"runs": [_run("ours-on", 28, 512, 0.66, 1.8)]}
    fit = bench.depth_fit(depth, full)
    assert fit["px"]["512"]["predicted_gib"] == pytest.approx({"setup": 0.66, "steps": 1.7})
    assert fit["px"]["512"]["relative_error"] == pytest.approx(1.7 / 1.8 - 1)
    assert fit["px"]["1024"]["predicted_need_gib"] == pytest.approx(0.3 + 0.2 * 28)
    assert "measured_need_gib" not in fit["px"]["1024"]
