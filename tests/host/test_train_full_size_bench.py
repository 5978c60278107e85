"""bench/train_full_size.py at toy size, end to end: every configuration runs in its own process and reports its
phases, and the table it writes is the one its JSON gives."""

import json
import os
import subprocess
import sys

from bench import train_full_size as bench
from devkit.host import ROOT


def test_quick_run_measures_every_configuration_and_phase(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 2
    command = ["-m", "bench.train_full_size", "--quick", "--steps", str(steps), "--threads", "1",
               "--out", str(tmp_path), "--configs", "ours-on", "core-off", "before-on", "--before", str(ROOT)]
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / f"{bench.NAME}.json").read_text())
    runs = {run["config"]: run for run in results["runs"]}
    assert list(runs) == ["ours-on", "core-off", "before-on"]  # ours, ComfyUI's, another checkout's: every path
    for key, run in runs.items():
        assert "error" not in run, run.get("error")
        assert run["inference_weights"], key  # loaded inside inference mode, as ComfyUI's executor does
        expected = ["setup", "steps"] if run["trainer"] == "core" else ["setup", "calibration", "steps"]
        assert list(run["phases"]) == expected, key
        assert all(p["seconds"] > 0 and abs(p["peak_over_model_gib"]) < 4 for p in run["phases"].values()), key
        assert len(run["step_seconds"]) == len(run["step_cpu_seconds"]) == steps - 1, key
        assert run["s_per_step"] > 0 and run["cpu_s_per_step"] > 0, key
        assert run["resident_with_model_gib"] > 0
    layers = 2 * 10  # 2 blocks x (self q, k, v, o; cross q, k, v, o; mlp 1, 2)
    assert runs["ours-on"]["basis_cache"] == {"svds": layers, "hits": layers}  # the second setup ran no SVD
    assert runs["ours-on"]["cached_setup"]["seconds"] > 0
    assert runs["before-on"]["root"] == str(ROOT)
    if runs["ours-on"]["bf16_gemm"] == "fp32":
        assert runs["ours-on"]["gemm_upcast_transient_gib"] > 0
    assert results["verdict"] == bench.verdict(results)
    written = (tmp_path / f"{bench.NAME}.md").read_text()
    assert written == f"Command: `{results['command']}`\n\n{bench.table(results)}\n{bench.targets_text(results)}"
    assert written.count("\n| ") == 1 + 3  # the header and one row per run
