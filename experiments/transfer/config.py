"""The transfer study's plan: adapter kinds and their training recipes, the arms, the v2 successors, the settings."""

from __future__ import annotations

import dataclasses

KINDS = {"ortho": "Ortho-Hydra (E=4, ortho_init + label guidance, 4 styles)",
         "ortho_frozen": "Ortho-Hydra, frozen bases (E=4, ortho + label guidance, 4 styles)",
         "lora": "plain LoRA (E=1, one style: cool stripes)"}
ROUTED = ("ortho", "ortho_frozen")
# per kind: trainer init and lr, as experiments/style_separation chose them (ortho_lg 1e-2, ortho_init_lg and the
# single LoRA 3e-3)
RECIPES = {"ortho": ("ortho_init", 3e-3), "ortho_frozen": ("ortho", 1e-2), "lora": ("hydra_zero", 3e-3)}
ARMS = ("none", "copy", "subspace", "subspace+null", "oracle")
LORA_STYLE = 1
PIN_SAMPLES, PIN_SEED = 16, 4242
# v2 variants: the recipe's own (600 steps at lr 1e-3, neutral plus two house palettes), a milder continuation of
# it, and a successor broadened in positions (every shape also shifted by up to 1 px) in the neutral palette only,
# so that v2 changes what the base draws where, not the colours the styles live in
V2 = {"broad": {}, "mild": {"steps": 150, "lr": 2.5e-4, "warmup": 10},
      "positions": {"extra_palettes": [], "jitter": 1}}


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int = 240
    rank: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    transfer_rank: int = 32  # R: E·r = 32 holds every expert's slice
    ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    taus: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)
    label_guidance_steps: int = 144  # as style_separation: 60 % of the steps
