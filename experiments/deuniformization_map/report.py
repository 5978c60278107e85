"""The map's reading of its cells: where the claim holds, the tables, the mechanism evidence and the plot."""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import BATCHES, CLAIM_ORTHO_BY, INITS, LRS, OPTIMIZERS, ROUTER_STDS, Cell


@dataclass
class CellResult:
    cell: Cell
    crosses: list[int | None] = field(default_factory=list)  # per seed
    purity: list[float] = field(default_factory=list)
    heldout: list[float] = field(default_factory=list)
    grad50: list[float] = field(default_factory=list)  # mean router gradient norm over the first 50 steps
    spread: list[float] = field(default_factory=list)  # expert up spread at the end
    lam: list[float] = field(default_factory=list)  # mean |λ| at the end

    def first_cross(self) -> str:
        """Median first crossing over seeds ('none' when the median seed never crosses)."""
        median = statistics.median(math.inf if c is None else c for c in self.crosses)
        return "none" if math.isinf(median) else str(int(median))

    def stays(self, steps: int) -> bool:
        return all(c is None or c > steps for c in self.crosses)

    def leaves_by(self, steps: int) -> bool:
        return all(c is not None and c <= steps for c in self.crosses)


def claim_holds(results: dict[Cell, CellResult], steps: int) -> list[Cell]:
    """Settings (optimiser, std, lr, batch) where both baselines stay uniform on every seed and ortho leaves by
    ``CLAIM_ORTHO_BY`` on every seed."""
    settings = {dataclasses.replace(c, init="ortho") for c in results}
    out = []
    for setting in sorted(settings, key=lambda c: (c.optimizer, c.router_std, c.lr, c.batch)):
        ortho = results.get(setting)
        baselines = [results.get(dataclasses.replace(setting, init=i)) for i in ("zero", "jitter")]
        if ortho and all(baselines) and ortho.leaves_by(CLAIM_ORTHO_BY) and all(b.stays(steps) for b in baselines):
            out.append(setting)
    return out


def nan_mean(values) -> float:
    values = [v for v in values if v == v]
    return statistics.fmean(values) if values else float("nan")


def tables(results: dict[Cell, CellResult], steps: int) -> list[str]:
    lines = []
    columns = [(lr, b) for lr in LRS for b in BATCHES]
    for init in INITS:
        lines += [f"### `{init}`: first step with 1 − H̄ > 0.005 (median of seeds) / purity NMI at {steps}", "",
                  "| optimiser, router std | " + " | ".join(f"lr {lr:g}, batch {b}" for lr, b in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for opt, std in itertools.product(OPTIMIZERS, ROUTER_STDS):
            cells_ = []
            for lr, b in columns:
                r = results.get(Cell(init, opt, std, lr, b))
                cells_.append("·" if r is None else f"{r.first_cross()} / {nan_mean(r.purity):.2f}")
            lines.append(f"| {opt}, {std:g} | " + " | ".join(cells_) + " |")
        lines.append("")
    return lines


def evidence(results: dict[Cell, CellResult]) -> list[str]:
    lines = ["| init | optimiser | router std | lr | router grad (mean, first 50 steps) | up spread at end "
             "| |λ| at end |", "|---|---|---|---|---|---|---|"]
    for cell, r in sorted(results.items(), key=lambda kv: (kv[0].lr, kv[0].optimizer, kv[0].router_std,
                                                              INITS.index(kv[0].init))):
        if cell.batch != 1 or cell.lr != LRS[0]:
            continue
        lines.append(f"| {cell.init} | {cell.optimizer} | {cell.router_std:g} | {cell.lr:g} | {nan_mean(r.grad50):.2e} "
                     f"| {nan_mean(r.spread):.2e} | {nan_mean(r.lam):.2e} |")
    return lines


def report(results: dict[Cell, CellResult], steps: int, seeds: Sequence[int], setup: str, footer: str) -> str:
    holds = claim_holds(results, steps)
    settings = {dataclasses.replace(c, init="ortho") for c in results}
    verdict = (f"The claim (both baselines uniform on every seed for {steps} steps, ortho off by step "
               f"{CLAIM_ORTHO_BY} on every seed) holds in {len(holds)} of {len(settings)} settings"
               + (": " + "; ".join(c.label() for c in holds) if holds else "") + ".")
    return "\n".join([f"# Router de-uniformisation map ({len(results)} cells, seeds {list(seeds)})", "", setup, "",
                      verdict, "", *tables(results, steps),
                      f"### Mechanism evidence at lr {LRS[0]:g}, batch 1 (means over seeds)", "", *evidence(results),
                      "", footer, ""])


def plot(results: dict[Cell, CellResult], steps: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(lr, b) for lr in LRS for b in BATCHES]
    rows = list(itertools.product(OPTIMIZERS, ROUTER_STDS))
    fig, axes = plt.subplots(1, len(INITS), figsize=(4.2 * len(INITS), 3.4), constrained_layout=True)
    for ax, init in zip(axes, INITS, strict=True):
        grid = torch.full((len(rows), len(columns)), float("nan"))
        for i, (opt, std) in enumerate(rows):
            for j, (lr, b) in enumerate(columns):
                r = results.get(Cell(init, opt, std, lr, b))
                if r is not None:
                    value = r.first_cross()
                    grid[i, j] = math.log10(steps * 1.5 if value == "none" else max(int(value), 1))
                    ax.text(j, i, value, ha="center", va="center", fontsize=7)
        ax.imshow(grid.numpy(), cmap="viridis_r", vmin=0, vmax=math.log10(steps * 1.5), aspect="auto")
        ax.set_title(init)
        ax.set_xticks(range(len(columns)), [f"{lr:g}\nb{b}" for lr, b in columns], fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{o} σ{s:g}" for o, s in rows], fontsize=7)
    fig.suptitle(f"first step with 1 - H̄ > 0.005 (median of seeds; 'none' = not within {steps})")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
