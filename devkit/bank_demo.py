"""Example workflow 08: four style LoRAs -> expert bank -> mixer (a direct blend), sampled."""

from __future__ import annotations

from .demo_assets import BANK_LORAS, DIT_NAME
from .host import ROOT
from .workflow import WorkflowGraph, apply_sample_save, write_json

WORKFLOW = ROOT / "example_workflows" / "demo" / "08_lora_bank_mixer.json"
NAMES = "style 1, style 2, style 3, style 4"
BLEND = "0.6, 0.4, 0, 0"


def workflow() -> dict:
    """The bank of the four demo LoRAs, blended 0.6 / 0.4 by the router node's mixer, next to LoRA 1 pinned."""
    # widgets in the frontend's order: required inputs first (lora_1, lora_2, names), then the optional ones
    g = WorkflowGraph()
    model = g.node("UNETLoader", [DIT_NAME, "default"], outputs=[("MODEL", "MODEL")], pos=(0, 0))
    bank = g.node("OrthoHydraLoraBank", [*BANK_LORAS[:2], NAMES, *BANK_LORAS[2:], "none", "none", "none", "none"],
                  {"model": ("MODEL", (model, 0))}, [("adapter", "ORTHO_HYDRA"), ("summary", "STRING")], pos=(0, 160))
    positive = g.node("OrthoHydraDemoConditioning", [1, "fixed", 8], {"model": ("MODEL", (model, 0))},
                      [("conditioning", "CONDITIONING")], pos=(0, 420))
    negative = g.node("OrthoHydraDemoConditioning", [2, "fixed", 8], {"model": ("MODEL", (model, 0))},
                      [("conditioning", "CONDITIONING")], pos=(0, 560))
    latent = g.node("EmptySD3LatentImage", [128, 128, 1], outputs=[("LATENT", "LATENT")], pos=(0, 700))
    for row, (label, mode, expert, weights) in enumerate((("blend", "blend", 0, BLEND), ("pin_1", "pin", 0, ""))):
        y = 420 * row
        routed = g.node("OrthoHydraRouter", [mode, expert, weights, False, 1.0, 1, "all", -1, -1, "", 0.0, 1.0, "",
                                             "step", "both", "", 0],
                        {"adapter": ("ORTHO_HYDRA", (bank, 0)), "profile": ("STYLE_PROFILE", None)},
                        [("adapter", "ORTHO_HYDRA"), ("summary", "STRING")], pos=(400, y))
        apply_sample_save(g, (model, 0), (routed, 0), positive, negative, latent, f"ortho_hydra_bank_{label}", y)
    return {**g.to_json(), "extra": {"ortho_hydra": "four style LoRAs -> expert bank -> mixer"}}


if __name__ == "__main__":
    print(write_json(WORKFLOW, workflow()))
