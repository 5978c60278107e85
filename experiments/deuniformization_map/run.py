"""Where does the routing claim hold?  A phase diagram of router de-uniformisation.

The seed's claim: under identical optimisation the HydraLoRA baselines keep the router at its uniform prior for
1,000 steps while Ortho-Hydra leaves it within a few hundred.  ``experiments/deuniformization`` tested it at one
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

    .venv/bin/python -m experiments.deuniformization_map.run          # results/deuniformization_map.{md,csv,png,log}
    .venv/bin/python -m experiments.deuniformization_map.run --quick  # 2 cells, 1 seed, 40 steps (a test runs it)

The grid: ``config.py``; the reading of the cells (claim, tables, plot): ``report.py``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.console_log import stdout_copied_to
from experiments.deuniformization.config import Config
from experiments.deuniformization.data import make_data
from experiments.deuniformization.study import CSV_FIELDS, build_model, evaluate, pretrain_base, train_run
from ortho_hydra.training import StepGates

from .config import EVIDENCE_STEPS, MAP_CONFIG, Cell, cells
from .report import CellResult, nan_mean, plot, report

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> dict[Cell, CellResult]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(MAP_CONFIG, steps=40) if args.quick else MAP_CONFIG
    seeds = range(1 if args.quick else args.seeds)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    stem = out / ("deuniformization_map_quick" if args.quick else "deuniformization_map")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    with stdout_copied_to(f"{stem}.log"):
        return run(cells(args.quick), cfg, seeds, stem)


def run(todo: list[Cell], cfg: Config, seeds, stem: Path) -> dict[Cell, CellResult]:
    wall = time.perf_counter()
    train, heldout = make_data(cfg)
    model = build_model(cfg)
    pretrain_base(model, cfg)
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
            entry.grad50.append(nan_mean(early))
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
