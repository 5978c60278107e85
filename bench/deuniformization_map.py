"""Where does the routing claim hold?  A phase diagram of router de-uniformisation.

The seed's claim: under identical optimisation the HydraLoRA baselines keep the router at its uniform prior for
1,000 steps while Ortho-Hydra leaves it within a few hundred.  ``bench/deuniformization.py`` tested it at one
optimiser and two large learning rates; this sweeps what the claim could depend on, with the same model, data,
training step and metrics (it reuses that experiment's code):

* init: ``ortho``; ``zero``; ``jitter`` (ups i.i.d. N(0, 0.1²), as published); ``jitter_zero_sum``;
* optimiser: AdamW, and SGD with momentum 0.9 (under SGD a tiny symmetric gradient stays tiny, under Adam it is
  normalised to a full-size step);
* router weight init std: 0 (exactly uniform gates) and 0.01 (the reference default);
* learning rate: 2e-5 (the paper), 2e-4, 2e-3, router lr x10;
* batch: 1 (the paper) and 16 (pruned to AdamW at router std 0.01: batch changes gradient noise, not symmetry);
* 3 seeds per cell, 1,000 steps, balance loss off (paper-style).

Shrunk to fit 30 minutes on 2 cores: MMDiT depth 1 (hidden 64), 4x4 latents (4 image tokens), rank 4, E 4,
routed fc1/fc2 (2 Linears), 1 thread.  Per cell: the first step at which 1 - H̄ > 0.005 (or none within 1,000) and
style purity (NMI) at the end; per run, router gradient norms over the first 50 steps, the experts' up spread
(baselines) and |λ| (ortho).

    .venv/bin/python bench/deuniformization_map.py          # writes bench/out/deuniformization_map.{md,csv,png,log}
    .venv/bin/python bench/deuniformization_map.py --quick  # 2 cells, 1 seed, 40 steps (a test runs it)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.deuniformization import CSV_FIELDS, Config, build_model, evaluate, pretrain_base, train_run
from bench.deuniformization_data import make_data
from experiments.console_log import stdout_copied_to
from ortho_hydra.training import StepGates

ROOT = Path(__file__).resolve().parents[1]
INITS = ("ortho", "zero", "jitter", "jitter_zero_sum")
OPTIMIZERS = ("adamw", "sgd")
ROUTER_STDS = (0.0, 0.01)
LRS = (2e-5, 2e-4, 2e-3)
BATCHES = (1, 16)
EVIDENCE_STEPS = 50
CLAIM_ORTHO_BY = 300  # "Ortho-Hydra leaves within a few hundred steps"

MAP_CONFIG = Config(depth=1, latent=4, batch=1, rank=4, experts=4, balance=0.0, steps=1000, log_every=10,
                    pretrain_steps=200, train_contents=24, heldout_contents=8, dense_log_until=EVIDENCE_STEPS,
                    threads=1)


@dataclass(frozen=True)
class Cell:
    init: str
    optimizer: str
    router_std: float
    lr: float
    batch: int

    def label(self) -> str:
        return f"{self.optimizer}, std {self.router_std:g}, lr {self.lr:g}, batch {self.batch}"


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


def cells(quick: bool) -> list[Cell]:
    if quick:
        return [Cell("ortho", "adamw", 0.01, 2e-3, 1), Cell("zero", "adamw", 0.0, 2e-3, 1)]
    out = []
    for init, opt, std, lr, batch in itertools.product(INITS, OPTIMIZERS, ROUTER_STDS, LRS, BATCHES):
        if batch != 1 and (opt != "adamw" or std != 0.01):
            continue  # pruned: see the module docstring
        out.append(Cell(init, opt, std, lr, batch))
    return out


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


def _mean(values) -> float:
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
                cells_.append("·" if r is None else f"{r.first_cross()} / {_mean(r.purity):.2f}")
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
        lines.append(f"| {cell.init} | {cell.optimizer} | {cell.router_std:g} | {cell.lr:g} | {_mean(r.grad50):.2e} "
                     f"| {_mean(r.spread):.2e} | {_mean(r.lam):.2e} |")
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


def main(argv: Sequence[str] | None = None) -> dict[Cell, CellResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(MAP_CONFIG, steps=40) if args.quick else MAP_CONFIG
    seeds = range(1 if args.quick else args.seeds)
    stem = args.out / ("deuniformization_map_quick" if args.quick else "deuniformization_map")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    with stdout_copied_to(f"{stem}.log"):
        return run(cells(args.quick), cfg, seeds, stem)


def run(todo: list[Cell], cfg: Config, seeds, stem: Path) -> dict[Cell, CellResult]:
    wall = time.perf_counter()
    train, heldout = make_data(cfg)
    model = build_model(cfg)
    pretrain_base(model, cfg, stem.parent)
    model.requires_grad_(False).eval()
    base_loss = evaluate(model, StepGates(), heldout, cfg)["loss"]
    results: dict[Cell, CellResult] = {}
    sink = csv.DictWriter(io.StringIO(), fieldnames=CSV_FIELDS)  # the per-step rows are kept in RunResult
    total = len(todo) * len(seeds)
    with open(f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["init", "optimizer", "router_std", "lr", "batch", "seed",
                                                    "first_cross", "purity", "heldout_loss", "grad50", "spread",
                                                    "lam", "seconds"])
        writer.writeheader()
        for k, (cell, seed) in enumerate(itertools.product(todo, seeds)):
            run_cfg = dataclasses.replace(cfg, optimizer=cell.optimizer, router_std=cell.router_std,
                                          batch=cell.batch)
            r = train_run(model, train, heldout, run_cfg, cell.init, cell.lr, seed, sink, lambda: None)
            entry = results.setdefault(cell, CellResult(cell))
            cross = r.first_cross(cfg.threshold)
            early = [g for s, g in zip(r.steps, r.router_grad, strict=True) if s < EVIDENCE_STEPS]
            entry.crosses.append(cross)
            entry.purity.append(r.final_eval["purity"])
            entry.heldout.append(r.final_eval["loss"])
            entry.grad50.append(_mean(early))
            entry.spread.append(r.spread_final)
            entry.lam.append(r.lam_final)
            writer.writerow({"init": cell.init, "optimizer": cell.optimizer, "router_std": cell.router_std,
                             "lr": cell.lr, "batch": cell.batch, "seed": seed, "first_cross": cross,
                             "purity": r.final_eval["purity"], "heldout_loss": r.final_eval["loss"],
                             "grad50": entry.grad50[-1], "spread": r.spread_final, "lam": r.lam_final,
                             "seconds": r.seconds})
            handle.flush()
            print(f"[{k + 1}/{total}] {cell.init:15s} {cell.label()} seed {seed}: first cross {cross}, purity "
                  f"{r.final_eval['purity']:.2f} ({r.seconds:.1f}s, {time.perf_counter() - wall:.0f}s elapsed)",
                  flush=True)
    minutes = (time.perf_counter() - wall) / 60
    setup = (f"MMDiT depth {cfg.depth} (hidden {64 * cfg.depth}), {cfg.latent}x{cfg.latent} latents, rank "
             f"{cfg.rank}, E {cfg.experts}, routed fc1/fc2, balance off, router lr x{cfg.router_lr_mult:g}, "
             f"{cfg.steps} steps, base pretrained {cfg.pretrain_steps} steps (held-out loss {base_loss:.3f}).")
    text = report(results, cfg.steps, list(seeds), setup, f"Wall time {minutes:.1f} min, {cfg.threads} thread.")
    Path(f"{stem}.md").write_text(text)
    plot(results, cfg.steps, Path(f"{stem}.png"))
    print(text)
    return results


if __name__ == "__main__":
    main()
