"""Side-by-side timing: candidates are interleaved round by round so drift hits all alike."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from devkit.environment import environment  # noqa: F401  (the benchmarks import it from here)

OUT_DIR = Path(__file__).resolve().parent / "out"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(cases: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1,
                device: str = "cpu") -> dict[str, dict[str, float]]:
    """Median and spread of wall time per case, each round running every case once."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "rounds": len(v)}
            for name, v in samples.items()}


def report(name: str, rows: list[dict], env: dict[str, str]) -> Path:
    """Print a markdown table and keep the raw numbers in bench/out/<name>.json."""
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    keys = list(rows[0])
    print(f"\n{name} ({', '.join(f'{k}={v}' for k, v in env.items())})")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return path


def round_ratio(results: dict[str, dict], case: str, reference: str) -> dict[str, float]:
    """Median, min and max over rounds of ``case`` / ``reference`` from one :func:`paired_ratios` run."""
    ratios = [t / ref for t, ref in zip(results[case]["seconds"], results[reference]["seconds"], strict=True)]
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def paired_ratios(cases: dict[str, Callable[[], float]], reference: str, rounds: int) -> dict[str, dict[str, float]]:
    """Per-round ratios to ``reference``, the case order rotated every round, reported as medians.

    On a shared machine whole rounds drift by 10%; a ratio taken within one round cancels that drift, and the
    rotation cancels any cost of running first or after a particular case.  Each case callable returns its own
    measured seconds (so set-up outside its timer is excluded).  Each entry keeps its per-round ``seconds``, so
    a ratio between two other cases can be taken within rounds too (:func:`round_ratio`).
    """
    names = list(cases)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(cases[name]())
    out = {}
    for name in names:
        ratios = [t / ref for t, ref in zip(times[name], times[reference], strict=True)]
        out[name] = {"median_s": statistics.median(times[name]), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios), "seconds": times[name]}
    return out
