"""Example workflow 07: carry the demo adapter to the demo DiT's next version, and sample both ways."""

from __future__ import annotations

from .demo_assets import ADAPTER_NAME, DIT_NAME, DIT_V2_NAME
from .host import ROOT
from .workflow import WorkflowGraph, apply_sample_save, write_json

WORKFLOW = ROOT / "example_workflows" / "demo" / "07_transfer_to_new_base.json"
OUTPUT_NAME = "ortho_hydra_demo_moe_v2"


def workflow() -> dict:
    """Load v1, v2 and the adapter; transfer (report shown on the node); sample v2 with the naive copy and the
    transferred adapter side by side."""
    g = WorkflowGraph()
    v1 = g.node("UNETLoader", [DIT_NAME, "default"], outputs=[("MODEL", "MODEL")], pos=(0, 0))
    v2 = g.node("UNETLoader", [DIT_V2_NAME, "default"], outputs=[("MODEL", "MODEL")], pos=(0, 140))
    adapter = g.node("OrthoHydraLoader", [ADAPTER_NAME, "training", True],
                     outputs=[("adapter", "ORTHO_HYDRA"), ("summary", "STRING")], pos=(0, 280))
    positive = g.node("OrthoHydraDemoConditioning", [1, "fixed", 8], {"model": ("MODEL", (v2, 0))},
                      [("conditioning", "CONDITIONING")], pos=(0, 440))
    negative = g.node("OrthoHydraDemoConditioning", [2, "fixed", 8], {"model": ("MODEL", (v2, 0))},
                      [("conditioning", "CONDITIONING")], pos=(0, 580))
    latent = g.node("EmptySD3LatentImage", [128, 128, 2], outputs=[("LATENT", "LATENT")], pos=(0, 720))
    moved = g.node("OrthoHydraTransfer", ["none", 32, 0.9, 0.0, "subspace", OUTPUT_NAME, 0],
                   {"source_model": ("MODEL", (v1, 0)), "target_model": ("MODEL", (v2, 0)),
                    "adapter": ("ORTHO_HYDRA", (adapter, 0)), "latent": ("LATENT", (latent, 0)),
                    "conditioning": ("CONDITIONING", (positive, 0))},
                   [("adapter", "ORTHO_HYDRA"), ("report", "STRING"), ("path", "STRING")], pos=(360, 0))
    for row, (label, source) in enumerate((("naive_copy", (adapter, 0)), ("transferred", (moved, 0)))):
        y = 420 * row
        apply_sample_save(g, (v2, 0), source, positive, negative, latent, f"ortho_hydra_v2_{label}", y)
    return {**g.to_json(), "extra": {"ortho_hydra": "transfer an adapter to a new base version"}}


if __name__ == "__main__":
    print(write_json(WORKFLOW, workflow()))
