"""Why do unsupervised routers collapse onto one expert, and which default stops it?

On the toy world (``devkit/toy_world.py``: 6 contents x 4 styles, conditioning names the content only) every
variant trains with the pack's own trainer at the node's defaults (lr 2e-4, batch 1, rank 16, E 4, router lr x10,
balance term from step 0, router-input calibration on, logit-normal noise levels, 500 steps), fp32 on the CPU,
and changes one thing at a time; the old defaults (balance weight 1e-5 on the micro-batch's own usage) are the
first rows.  Collapse is the share of routed layers where one expert is the argmax for >= 90 % of
held-out samples at σ in {0.25, 0.5, 0.75} (the style-separation study's instrument); purity is
NMI(style, argmax expert) on the same gates; held-out loss is the x0 MSE over 5 noise levels.  The table:
``report.py``.

    .venv/bin/python -m experiments.router_collapse.run            # writes results/router_collapse.{md,json,log}
    .venv/bin/python -m experiments.router_collapse.run --quick    # 1 init, 2 variants, 40 steps (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from devkit.environment import environment
from devkit.host import loras_folder
from experiments.console_log import stdout_copied_to
from experiments.gate_measures import collapse_share, routing_purity
from experiments.toy_harness import PURITY_SIGMAS, build_world, heldout

from .report import render

RESULTS = Path(__file__).resolve().parent / "results"

# variant -> TrainConfig overrides on top of the node's defaults
VARIANTS: dict[str, dict] = {
    "old defaults (balance 1e-5, per batch)": {"balance_weight": 1e-5, "router_lr_scale": 10.0},
    "old defaults, router lr x1": {"balance_weight": 1e-5, "router_lr_scale": 1.0},
    "old defaults, no calibration": {"balance_weight": 1e-5, "router_lr_scale": 10.0, "calibrate_router": False},
    "balance 1e-2, router lr x10 (previous defaults)": {"router_lr_scale": 10.0},
    "defaults (balance 1e-2, router lr x1)": {},
    "balance 1e-2, memory 32": {"balance_memory": 32, "router_lr_scale": 10.0},
    "balance 1e-1, memory 32": {"balance_weight": 1e-1, "balance_memory": 32, "router_lr_scale": 10.0},
    "balance 1e-2, memory 32, no calibration": {"balance_memory": 32, "router_lr_scale": 10.0,
                                                "calibrate_router": False},
}
INITS = ("hydra_zero", "ortho", "ortho_init")
QUICK_BEFORE, QUICK_AFTER = "old defaults (balance 1e-5, per batch)", "defaults (balance 1e-2, router lr x1)"


def train_variant(pack, world, init: str, overrides: dict, steps: int, seed: int):
    train = pack.nodes.train
    config = train.TrainConfig(steps=steps, init=init, training_dtype="fp32", gradient_checkpointing=False, seed=seed,
                               output_name=f"router_collapse_{init}_{seed}", **overrides)
    positive = _toy_world().per_image_conditioning(world.train_content.tolist())
    started = time.perf_counter()
    live, _, loss_map, _ = train.train(world.base, world.train_x, positive, config, labels=world.train_style)
    return live, loss_map["loss"], time.perf_counter() - started


def _toy_world():
    from devkit import toy_world

    return toy_world


def measure(pack, world, live) -> dict:
    losses, gates, _ = heldout(pack, live, world, routed=True)
    labels = world.held_style.repeat(len(PURITY_SIGMAS))
    pooled = {layer: torch.cat([gates[s][layer] for s in PURITY_SIGMAS]) for layer in gates[PURITY_SIGMAS[0]]}
    collapsed, uniform = collapse_share(pooled)
    return {"collapse": collapsed, "uniform": uniform, "purity": routing_purity(pooled, labels),
            "heldout_loss": float(losses.mean()),
            "top_share": statistics.fmean(_top_share(g) for g in pooled.values())}


def _top_share(gates: torch.Tensor) -> float:
    """The share of samples sent to the most used expert."""
    counts = torch.bincount(gates.argmax(-1), minlength=gates.shape[-1]).double()
    return float(counts.max() / counts.sum())


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--inits", nargs="+", default=list(INITS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    args = parser.parse_args(argv)
    inits = ["ortho"] if args.quick else args.inits
    variants = [QUICK_BEFORE, QUICK_AFTER] if args.quick else args.variants
    steps = args.steps or (40 if args.quick else 500)
    seeds = range(1 if args.quick else args.seeds)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    stem = out / ("router_collapse_quick" if args.quick else "router_collapse")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    with stdout_copied_to(Path(f"{stem}.log")):
        return run(inits, variants, steps, seeds, stem)


def run(inits, variants, steps: int, seeds, stem: Path) -> dict:
    from devkit.host import boot, import_pack

    boot(cpu=True)

    pack = import_pack()
    wall = time.perf_counter()
    world = build_world(_toy_world(), pack, print)
    rows = []
    with tempfile.TemporaryDirectory(prefix="router_collapse_") as loras, loras_folder(loras):
        for variant in variants:
            for init in inits:
                for seed in seeds:
                    live, losses, seconds = train_variant(pack, world, init, VARIANTS[variant], steps, seed)
                    row = {"variant": variant, "init": init, "seed": seed, "train_seconds": seconds,
                           "final_train_loss": statistics.fmean(losses[-20:]), **measure(pack, world, live)}
                    rows.append(row)
                    print(f"{variant:26s} {init:11s} seed {seed}: collapsed {row['collapse']:.0%}, "
                          f"NMI {row['purity']:.2f}, top share {row['top_share']:.2f}, held-out "
                          f"{row['heldout_loss']:.4f} ({seconds:.0f}s)", flush=True)
    minutes = (time.perf_counter() - wall) / 60
    text = render(rows, steps, seeds, minutes, inits, variants, environment())
    Path(f"{stem}.md").write_text(text)
    result = {"steps": steps, "rows": rows, "minutes": minutes, "environment": environment()}
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2))
    print(text)
    return result


if __name__ == "__main__":
    main()
