"""Router de-uniformisation: Ortho-Hydra against the two HydraLoRA baselines on a tiny real MMDiT.

Claim under test: with identical optimisation, data and a 1,000-step budget, HydraLoRA (``zero``, and
``jitter`` with σ=0.1) leaves the router at its uniform prior while Ortho-Hydra (``ortho``) moves it off
within a few hundred steps.  Every arm gets the same frozen, briefly pretrained W0, the same routed layers,
rank, experts, optimiser, batches, balance-loss weight and router-lr multiplier, at two learning rates
(a base and 10x), 3 seeds each.  Settings: ``config.py``; data: ``data.py``; model, training and evaluation:
``study.py``; the table, verdict and plot: ``report.py``.

Writes results/deuniformization.{csv,md,png,log} (``--quick``: results/quick/deuniformization_quick.*).

    .venv/bin/python -m experiments.deuniformization.run            # full run, ~15 min on 2 CPU cores
    .venv/bin/python -m experiments.deuniformization.run --quick    # 60-step smoke test
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from experiments.console_log import stdout_copied_to
from ortho_hydra.training import StepGates

from .config import Config
from .data import NUM_STYLES, make_data
from .report import INITS, RunResult, describe, plot, report
from .study import CSV_FIELDS, build_model, evaluate, pretrain_base, routed_targets, train_run

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 steps, 1 seed, base lr only")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    parser.add_argument("--lr", type=float, default=1e-3, help="base learning rate; 10x is also run")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="explicit lr list (overrides --lr)")
    parser.add_argument("--balance", type=float, default=Config.balance, help="balance-loss weight, every arm")
    parser.add_argument("--balance-start", type=float, default=Config.balance_start,
                        help="step the balance term switches on, or a fraction of the run when < 1 (paper: 0.4)")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--tag", default="", help="suffix for the output files (supplementary runs)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    return parser.parse_args()



def run(args: argparse.Namespace, cfg: Config, stem: Path) -> None:
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    lrs = args.lrs or ([args.lr] if args.quick else [args.lr, 10 * args.lr])
    wall = time.perf_counter()
    train, heldout = make_data(cfg)
    print(f"data: {len(train.x0)} train / {len(heldout.x0)} held-out latents ({NUM_STYLES} styles, "
          f"{cfg.train_contents}+{cfg.heldout_contents} contents), {cfg.channels}x{cfg.latent}x{cfg.latent}")
    model = build_model(cfg)
    pretrain_base(model, cfg)
    model.requires_grad_(False).eval()
    base_loss = evaluate(model, StepGates(), heldout, cfg)["loss"]
    for name, linear in routed_targets(model).items():
        out_f, in_f = linear.weight.shape
        fits = cfg.experts * cfg.rank <= min(out_f, in_f)
        print(f"routed {name}: {in_f}->{out_f}, E·r = {cfg.experts * cfg.rank} "
              f"{'<=' if fits else '>'} {min(out_f, in_f)}{'' if fits else '  (ortho falls back!)'}")

    runs = [(lr, seed, init) for lr in lrs for seed in seeds for init in args.inits]
    total_steps, stamps = len(runs) * (cfg.steps + 1), []

    def progress() -> None:  # one estimate of the whole run's time, from steps 5..25
        stamps.append(time.perf_counter())
        if len(stamps) == 25:
            per_step = (stamps[-1] - stamps[4]) / 20
            print(f"time per training step: {per_step * 1000:.1f} ms -> ~{per_step * total_steps / 60:.1f} min "
                  f"for {total_steps} steps", flush=True)

    results: list[RunResult] = []
    with open(f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for k, (lr, seed, init) in enumerate(runs):
            result = train_run(model, train, heldout, cfg, init, lr, seed, writer, progress)
            handle.flush()
            results.append(result)
            print(f"[{k + 1}/{len(runs)}] {init:6s} lr {lr:g} seed {seed}: 1−H̄ final {result.one_minus_h[-1]:.2e}, "
                  f"first >{cfg.threshold}: {result.first_cross(cfg.threshold)}, held-out loss "
                  f"{result.final_eval['loss']:.4f}, purity {result.final_eval['purity']:.2f}, "
                  f"{result.seconds:.1f}s ({time.perf_counter() - wall:.0f}s elapsed)", flush=True)

    per_step = statistics.fmean(r.seconds / (cfg.steps + 1) for r in results)
    footer = (f"Time per training step {per_step * 1000:.1f} ms (2 threads); total wall time "
              f"{(time.perf_counter() - wall) / 60:.1f} min.")
    text = report(results, cfg, lrs, describe(cfg, seeds, len(routed_targets(model)), len(heldout.x0), base_loss),
                  f"Router de-uniformisation ({'quick' if args.quick else 'full'} run)", footer)
    print("\n" + text)
    Path(f"{stem}.md").write_text(text)
    plot(results, cfg, lrs, Path(f"{stem}.png"))
    print(f"wrote {stem}.csv, .md, .png, .log")


def main() -> None:
    args = parse_args()
    torch.set_flush_denormal(True)  # Adam moments of near-zero gradients must not hit the slow subnormal path
    torch.set_num_threads(Config.threads)
    cfg = Config(steps=args.steps or (60 if args.quick else 1000), balance=args.balance,
                 balance_start=args.balance_start)
    out_dir = (args.out or (RESULTS / "quick" if args.quick else RESULTS)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / ("deuniformization" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else ""))
    with stdout_copied_to(f"{stem}.log"):
        run(args, cfg, stem)


if __name__ == "__main__":
    main()
