"""The router-collapse study's table: collapsed share, NMI and held-out loss per variant and init."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence


def table(rows: list[dict], inits: Sequence[str], variants: Sequence[str]) -> str:
    lines = ["| variant | " + " | ".join(f"{i}: collapsed / NMI / held-out" for i in inits) + " |",
             "|---|" + "---|" * len(inits)]
    for variant in variants:
        cells = []
        for init in inits:
            runs = [r for r in rows if r["variant"] == variant and r["init"] == init]
            if not runs:
                cells.append("–")
                continue
            c = statistics.fmean(r["collapse"] for r in runs)
            p = statistics.fmean(r["purity"] for r in runs)
            h = statistics.fmean(r["heldout_loss"] for r in runs)
            cells.append(f"{c:.0%} / {p:.2f} / {h:.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(rows: list[dict], steps: int, seeds, minutes: float, inits, variants, env: dict) -> str:
    return (f"# Router collapse on the toy world\n\n{steps} steps, seeds {list(seeds)}, node defaults otherwise "
            f"(fp32).  Cells: share of routed layers collapsed / NMI(style, expert) / held-out x0 MSE "
            f"(mean over seeds).\n\n{table(rows, inits, variants)}\n\nWall time {minutes:.1f} min on "
            f"{os.cpu_count()} cores (load average {os.getloadavg()[1]:.1f} over 5 min); {env}.\n")
