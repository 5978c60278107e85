"""The benchmark subject shared by bench/apply.py, bench/overrides.py and bench/trace.py."""

from __future__ import annotations

MAIN_LINEARS = r"(attn_qkv|attn_proj|mlp_fc1|mlp_fc2)$"


def routed_mmdit(depth: int, rank: int = 16, experts: int = 4, seed: int = 0):
    """(base ModelPatcher, adapter): ComfyUI's MMDiT (hidden 64·depth) with experts on every attention and MLP
    Linear, on the CPU host booted by the caller."""
    from devkit import tiny_dit
    from devkit.adapters import lora_weights, randomized_adapter

    base = tiny_dit.load_mmdit(depth=depth, seed=seed)
    adapter = randomized_adapter(lora_weights(base, pattern=MAIN_LINEARS), rank=rank, experts=experts, seed=seed)
    return base, adapter


def stochastic_blend_model(base, adapter, mode: str):
    """``base`` patched with ``adapter`` under an ``omcd`` / ``mc_dropout`` blend of its four experts for the whole
    run (the weights and keep probabilities every stochastic-blend benchmark uses)."""
    import dataclasses

    from devkit.host import import_pack

    pack = import_pack()
    ov = pack.ortho_hydra.overrides
    rule = ov.GateRule(mode, weights=(1.0, 0.5, 0.5, 0.2), keep=(0.25, 0.25, 0.25, 0.25), seed=1)
    stack = ov.OverrideStack(num_blocks=ov.count_blocks(list(adapter.layers)))
    blended = dataclasses.replace(adapter, override=stack.then(ov.Override((ov.Keyframe(0.0, rule),))))
    return pack.comfy_glue.patcher.apply_adapter(base, blended)[0]


def sampling_parser(description: str):
    """The options every sampling benchmark takes (rounds, model depth, steps, latent size)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--latent", type=int, default=64)
    return parser


def sampling_ratios(models: dict, reference: str, args, ratio_label: str) -> tuple[dict, list[dict]]:
    """Warm each model once, then time ``args.steps``-step sampling of every model side by side, round by round
    (``bench.timing.paired_ratios``): (results, report rows with ``ratio_label`` as the ratio column)."""
    import time

    import comfy.model_management as mm
    import torch

    from bench.timing import paired_ratios
    from devkit import tiny_dit

    latent = torch.zeros(1, 16, args.latent, args.latent)
    pos, neg = tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2)

    def timed(model) -> float:
        mm.load_models_gpu([model])  # patching outside the timer; the switch cost is ComfyUI's, not ours
        start = time.perf_counter()
        tiny_dit.sample(model, latent, pos, neg, steps=args.steps, cfg=3.0)
        return time.perf_counter() - start

    for model in models.values():
        timed(model)
    results = paired_ratios({name: (lambda m=model: timed(m)) for name, model in models.items()}, reference,
                            args.rounds)
    rows = [{"case": k, "median s": r["median_s"], ratio_label: r["ratio"],
             "ratio range": f"{r['ratio_min']:.3f}..{r['ratio_max']:.3f}"} for k, r in results.items()]
    return results, rows
