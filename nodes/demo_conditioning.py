"""A demo helper: conditioning from a seed, for models used without a text encoder.

It exists so the embedded demo and tests can drive a DiT end to end with no CLIP/T5 weights.
It carries no meaning: it is seeded noise of the model's context width.
"""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ortho_hydra.text_lists import parse_list

from ..comfy_glue import menus
from ..comfy_glue.context_widths import context_widths


class OrthoHydraDemoConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraDemoConditioning",
            display_name="Ortho-Hydra Demo Conditioning",
            category=menus.DEMO,
            description="Demo helper: seeded random conditioning of the model's context width, for driving a "
                        "DiT without a text encoder. Not a prompt.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model whose context width is used."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Same seed, same conditioning."),
                io.Int.Input("tokens", default=8, min=1, max=512, tooltip="Number of context tokens."),
                io.String.Input("seed_list", default="", optional=True,
                                tooltip="Optional comma-separated seeds: one conditioning entry per seed, in order "
                                        "(e.g. one per training image). Overrides 'seed' when set."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, model, seed: int, tokens: int, seed_list: str = "") -> io.NodeOutput:
        token_width, pooled_width = context_widths(model)
        seeds = parse_list(seed_list, int, key="seed_list", example="7919, 7920, 7921") or [seed]
        entries = []
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            cond = torch.randn(1, tokens, token_width, generator=gen)
            extra = {"pooled_output": torch.randn(1, pooled_width, generator=gen)} if pooled_width else {}
            entries.append([cond, extra])
        return io.NodeOutput(entries)
