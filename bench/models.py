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


def sampling_parser(description: str):
    """The options every sampling benchmark takes (rounds, model depth, steps, latent size)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--latent", type=int, default=64)
    return parser
