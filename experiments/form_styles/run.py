"""Run the form-style study: positive control, lr selection on validation characters, then the seeds.

    python -m experiments.form_styles.run --stage positive    # positive control (4 single-style LoRAs)
    python -m experiments.form_styles.run --stage compare     # lr grid on seed 0, then seeds 1-5 at each arm's lr
    python -m experiments.form_styles.run --quick             # smoke run: 2 arms, 1 lr, 1 seed, 30 steps

Every finished run is appended to ``results/runs.jsonl`` (``--quick``: ``results/quick/``) and skipped when the
command is run again, so an interrupted study resumes where it stopped.  The report is written at the end
(``python -m experiments.form_styles.report`` re-writes it from the committed files).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from .plan import ARMS, PLAN, QUICK, RUN_ARMS, Plan

RESULTS = Path(__file__).resolve().parent / "results"


def _key(stage: str, arm: str, lr: float, seed: int, extra: str = "") -> str:
    return f"{stage}|{arm}|{lr:g}|{seed}{'|' + extra if extra else ''}"


def _done(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in records}


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def positive_control(study, plan: Plan, out: Path, log) -> list[dict]:
    """A single LoRA (r=8) per style, trained on that style alone; pinned on held-out characters."""
    from devkit import glyph_world as gw

    path = out / "runs.jsonl"
    done = _done(path)
    records = []
    lr = plan.positive_control_lr
    for style in range(len(gw.STYLES)):
        key = _key("positive", "lora_r8", lr, plan.selection_seed, gw.STYLES[style])
        if key in done:
            records.append(done[key])
            continue
        _, adapter, losses, seconds = study.train("lora_r8", lr, plan.selection_seed, styles=[style])
        model = study.pinned(adapter, 0)
        held = study.splits["held_out"]
        lat, contents = study.samples(model, held.chars, repeats=plan.positive_control_samples)
        read = study.read(lat, contents, style)
        record = {"key": key, "stage": "positive", "arm": "lora_r8", "style": gw.STYLES[style], "lr": lr,
                  "seed": plan.selection_seed, "train_seconds": seconds,
                  "final_train_loss": statistics.fmean(losses[-20:]),
                  "pin": read["pin"], "bleed": read["bleed"],
                  "content": sum(read["content_ok"]) / len(read["content_ok"]), "called": read["called"]}
        _append(path, record)
        records.append(record)
        log(f"positive control {gw.STYLES[style]}: pin {record['pin']:.2f}, content {record['content']:.2f}, "
            f"bleed {record['bleed']:.3f} ({seconds:.0f} s)")
    return records


def compare(study, plan: Plan, arms: Sequence[str], out: Path, log) -> list[dict]:
    """Each arm: the lr grid on the selection seed, judged by validation loss; then every seed at the chosen lr."""
    path = out / "runs.jsonl"
    done = _done(path)
    records = []
    started, finished = time.perf_counter(), 0
    total = len(arms) * (len(plan.lrs) + len(plan.seeds))

    def one(stage: str, arm: str, lr: float, seed: int, full: bool) -> dict:
        nonlocal finished
        key = _key(stage, arm, lr, seed)
        if key in done:
            finished += 1
            return done[key]
        live, adapter, losses, seconds = study.train(arm, lr, seed)
        record = {"key": key, "stage": stage, "arm": arm, "lr": lr, "seed": seed, "train_seconds": seconds,
                  "final_train_loss": statistics.fmean(losses[-20:])}
        t = time.perf_counter()
        if full:
            record.update(study.measure(arm, adapter, live))
        else:
            record["validation_loss"] = study.validation_loss(arm, live)
        record["eval_seconds"] = time.perf_counter() - t
        _append(path, record)
        finished += 1
        left = (time.perf_counter() - started) / max(1, finished) * (total - finished) / 60
        log(f"[{finished}/{total}] {stage} {arm} lr {lr:g} seed {seed}: val loss {record['validation_loss']:.4f}"
            + (f", held-out pin {record['pin']:.2f} content {record['content']:.2f} bleed {record['bleed']:.3f}"
               if full else "") + f" ({seconds:.0f}+{record['eval_seconds']:.0f} s; ~{left:.0f} min left)")
        return record

    for arm in arms:
        grid = [one("select", arm, lr, plan.selection_seed, full=False) for lr in plan.lrs]
        best = min(grid, key=lambda r: r["validation_loss"])
        records += grid
        records += [one("seed", arm, best["lr"], seed, full=True) for seed in plan.seeds]
    return records


def main(argv: Sequence[str] | None = None, base_recipe: dict | None = None, models_dir: str | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("positive", "compare", "all"), default="all")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(RUN_ARMS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (run with OMP_WAIT_POLICY=PASSIVE "
                                                               "on shared cores)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else PLAN
    arms = ["lora_named", "ortho_init_lg"] if args.quick else args.arms
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    wall = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - wall:7.0f}s] {message}", flush=True)

    log(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    from .study import GlyphStudy

    study = GlyphStudy(plan, log=log, base_recipe=base_recipe, models_dir=models_dir)
    log(f"base model ready ({study.base_seconds:.0f} s); form probe held-out accuracy "
        f"{study.probe_report['held_out_accuracy_augmented']:.3f}; matched rank {study.matched_rank}")
    from devkit import form_probe, glyph_world

    world = {"recipe_hash": glyph_world.recipe_hash(base_recipe), "base_build_seconds": study.base_build_seconds,
             "ink": glyph_world.ink_report(), "ink_only_check": form_probe.ink_only_check()}
    meta = {"plan": asdict(plan), "matched_rank": study.matched_rank, "adapted_layers": len(study.targets),
            "probe": study.probe_report, "base": study.base_reference(), "world": world,
            "load_average_start": os.getloadavg()}
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "meta.json").read_text()) if (out / "meta.json").is_file() else {}
    meta["invocations"] = previous.get("invocations", [])
    (out / "meta.json").write_text(json.dumps(meta, indent=2))  # first, so a run stopped part-way can be reported
    if args.stage in ("positive", "all"):
        positive_control(study, plan, out, log)
    if args.stage in ("compare", "all"):
        compare(study, plan, arms, out, log)
    meta["invocations"] = [*meta["invocations"],
                           {"stage": args.stage, "arms": arms, "wall_minutes": (time.perf_counter() - wall) / 60,
                            "load_average_end": os.getloadavg()}]
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    from . import report

    summary = report.write(out)
    log(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
