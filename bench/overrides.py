"""What router overrides cost at sampling time, side by side in one run.

MMDiT depth 8 (hidden 512), adapter on every attention and MLP Linear (r = 16, E = 4), 8 Euler steps
on a 64x64 latent, cfg 3.  Cases: the base model; the adapter with every expert pinned (folded into the
weights: no hooks); router-live; and a schedule (live for 40% of the steps, then expert 2 pinned), which
stays in the hooks and switches from σ without re-patching.

    .venv/bin/python bench/overrides.py [--rounds 3] [--depth 8]

Target: fully folded <= 1.02x the base model.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import environment, report
from devkit.host import boot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--latent", type=int, default=64)
    args = parser.parse_args()
    boot(cpu=True)
    import comfy.model_management as mm
    import torch

    from devkit import tiny_dit
    from devkit.adapters import library, lora_weights, randomized_adapter
    from devkit.host import import_pack

    pack = import_pack()
    ov = library().overrides
    base = tiny_dit.load_mmdit(depth=args.depth, seed=0)
    adapter = randomized_adapter(lora_weights(base, pattern=r"(attn_qkv|attn_proj|mlp_fc1|mlp_fc2)$"), rank=16,
                                 experts=4, seed=0)
    stack = ov.OverrideStack(num_blocks=ov.count_blocks(list(adapter.layers)))
    pin = dataclasses.replace(adapter, override=stack.then(ov.Override((ov.Keyframe(0.0, ov.GateRule("pin", 1)),))))
    schedule = dataclasses.replace(adapter, override=stack.then(ov.Override(
        (ov.Keyframe(0.0, ov.GateRule("live")), ov.Keyframe(0.4, ov.GateRule("pin", 2))))))
    models = {
        "base model": base,
        "pinned, folded into weights": pack.nodes.patcher.apply_adapter(base, pin)[0],
        "router-live": pack.nodes.patcher.apply_adapter(base, adapter)[0],
        "scheduled (live 40%, then pin)": pack.nodes.patcher.apply_adapter(base, schedule)[0],
    }
    latent = torch.zeros(1, 16, args.latent, args.latent)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)

    def timed(model) -> float:
        mm.load_models_gpu([model])  # patching outside the timer; the switch cost is ComfyUI's, not ours
        start = time.perf_counter()
        tiny_dit.sample(model, latent, pos, neg, steps=args.steps, cfg=3.0)
        return time.perf_counter() - start

    for model in models.values():
        timed(model)
    samples = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            samples[name].append(timed(model))
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [{"case": k, "median s": med[k], "min s": min(samples[k]), "vs base": med[k] / med["base model"]}
            for k in models]
    report("overrides_cpu", rows, {**environment("cpu"), "model": f"MMDiT depth {args.depth}",
                                   "sampling": f"{args.steps} steps, latent {args.latent}, cfg 3"})
    ratio = med["pinned, folded into weights"] / med["base model"]
    print(f"\nfolded / base = {ratio:.3f} (target <= 1.02): {'PASS' if ratio <= 1.02 else 'FAIL'}")


if __name__ == "__main__":
    main()
