"""Training step time and peak memory: Ortho-Hydra's trainer against ComfyUI's TrainLoraNode.

Same model (MMDiT depth 8, hidden 512), same data (64x64 latents, batch 2), same rank (16), fp32 on the
CPU; Ortho-Hydra with E = 4 on every Linear (the core node adapts every weight).  Each measurement runs in
its own process, so peak RSS belongs to one trainer; seconds per step is the median interval between the
trainers' own per-step progress updates, first step dropped (set-up, such as the SVD bases, is excluded).

    .venv/bin/python -m bench.train [--rounds 2]

Targets: <= 1.25x TrainLoraNode's step time and <= 1.2x its memory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def child(case: str, steps: int, depth: int, latent: int) -> None:
    from devkit.host import boot

    boot(cpu=True)
    import folder_paths
    import torch

    from devkit import tiny_dit
    from devkit.host import import_pack

    folder_paths.add_model_folder_path("loras", tempfile.mkdtemp(), is_default=True)
    model = tiny_dit.load_mmdit(depth=depth, seed=0)
    latents = torch.randn(4, 16, latent, latent, generator=torch.Generator().manual_seed(0))
    positive = tiny_dit.mmdit_conditioning(seed=1)
    import comfy.utils

    stamps: list[float] = []
    original = comfy.utils.ProgressBar.update_absolute

    def stamped(self, value, total=None, preview=None):  # both trainers advance a ProgressBar once per step
        stamps.append(time.perf_counter())
        return original(self, value, total, preview)

    comfy.utils.ProgressBar.update_absolute = stamped
    before = _rss_mb()
    start = time.perf_counter()
    if case == "core":
        from comfy_extras.nodes_train import TrainLoraNode

        # a list of single latents: 0.3.75's node leaves multi_res unset for one batched LATENT
        TrainLoraNode.execute(model=[model], latents=[{"samples": latents[i:i + 1]} for i in range(len(latents))],
                              positive=[positive], batch_size=[2],
                              steps=[steps], grad_accumulation_steps=[1], learning_rate=[1e-4], rank=[16],
                              optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=["fp32"],
                              lora_dtype=["fp32"], algorithm=["LoRA"], gradient_checkpointing=[False],
                              existing_lora=["[None]"])
    else:
        train = import_pack().nodes.train
        config = train.TrainConfig(steps=steps, learning_rate=1e-4, batch_size=2, grad_accumulation=1, rank=16,
                                   experts=4, alpha=0.0, init="ortho", jitter_std=0.1, balance_weight=1e-5,
                                   router_lr_scale=10.0, targets="all_linear", target_regex="",
                                   timestep_sampling="uniform", shift=3.0, gradient_checkpointing=False,
                                   training_dtype="fp32", seed=0, save_every=0, output_name="bench")
        train.train(model, latents, positive, config)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    intervals = [b - a for a, b in itertools.pairwise(stamps)][1:]  # drop the first (warm-up) step
    step = statistics.median(intervals) if intervals else float("nan")
    print(json.dumps({"case": case, "steps": steps, "seconds": seconds, "step_s": step, "peak_mb": peak,
                      "before_mb": before}))


def run(case: str, steps: int, args) -> dict:
    cmd = [sys.executable, "-m", "bench.train", "--child", case, "--steps", str(steps), "--depth", str(args.depth),
           "--latent", str(args.latent)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.depth, args.latent)
        return
    from bench.timing import environment, report

    per_step: dict[str, list[float]] = {"core": [], "ours": []}
    peak: dict[str, list[float]] = {"core": [], "ours": []}
    extra: dict[str, list[float]] = {"core": [], "ours": []}
    for _ in range(args.rounds):
        for case in ("core", "ours"):
            result = run(case, args.steps, args)
            per_step[case].append(result["step_s"])
            peak[case].append(result["peak_mb"])
            extra[case].append(result["peak_mb"] - result["before_mb"])
    names = {"core": "ComfyUI TrainLoraNode (LoRA r=16, every weight)",
             "ours": "OrthoHydraTrain (r=16, E=4, all Linear)"}
    med = {k: statistics.median(v) for k, v in per_step.items()}
    rows = [{"case": names[k], "s/step": med[k], "vs core step": med[k] / med["core"],
             "peak RSS MB": statistics.median(peak[k]), "vs core peak": statistics.median(peak[k]) /
             statistics.median(peak["core"]), "training RSS MB": statistics.median(extra[k])} for k in names]
    from devkit.host import boot

    boot(cpu=True)
    report("train_cpu", rows, {**environment("cpu"), "model": f"MMDiT depth {args.depth}",
                               "data": f"4 latents {args.latent}x{args.latent}, batch 2, fp32"})
    step_ratio = med["ours"] / med["core"]
    mem_ratio = statistics.median(peak["ours"]) / statistics.median(peak["core"])
    print(f"\nstep time ours/core = {step_ratio:.3f} (target <= 1.25): {'PASS' if step_ratio <= 1.25 else 'FAIL'}")
    print(f"peak memory ours/core = {mem_ratio:.3f} (target <= 1.2): {'PASS' if mem_ratio <= 1.2 else 'FAIL'}")


if __name__ == "__main__":
    main()
