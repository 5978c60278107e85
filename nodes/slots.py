"""Merge adapters trained on orthogonal slots into one expert bank (Orthogonal Adaptation, on W0's own basis)."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ortho_hydra.slots import merge_slot_adapters
from ortho_hydra.text_lists import adapter_names_from

from ..comfy_glue import menus
from ..comfy_glue.types import OrthoHydraAdapterType, reported

MAX_ADAPTERS = 8


def overlap_report(names: list[str], table: list[list[float]]) -> str:
    """The pairwise output-subspace overlap ‖P_iᵀP_j‖_F / √r, one line per pair (0: disjoint, 1: shared)."""
    lines = ["output-subspace overlap (0 = disjoint, 1 = the same directions):"]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            lines.append(f"  {names[i]} / {names[j]}: {table[i][j]:.2e}")
    return "\n".join(lines)


class OrthoHydraMergeSlots(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        optional = [OrthoHydraAdapterType.Input(f"adapter_{i}", optional=True,
                                                tooltip="Another slot-trained adapter (optional).")
                    for i in range(3, MAX_ADAPTERS + 1)]
        return io.Schema(
            node_id="OrthoHydraMergeSlots",
            display_name="Ortho-Hydra Merge Slots",
            category=menus.TOOLS,
            description="Stacks adapters trained with OrthoHydraTrain's 'slots' option (one expert each, on "
                        "disjoint slices of W0's singular vectors) into one adapter whose expert i is adapter i, "
                        "exactly. Refuses adapters on the same slot, cut into different slot counts, or trained "
                        "on another base model (checked by the W0 fingerprint stamped at training time), and "
                        "reports the pairwise output-subspace overlap. Pin, blend or route the result like any "
                        "Ortho-Hydra adapter; a blend with weight 1 on every expert is their plain sum.",
            inputs=[
                OrthoHydraAdapterType.Input("adapter_1", tooltip="A slot-trained adapter (from the loader)."),
                OrthoHydraAdapterType.Input("adapter_2", tooltip="A slot-trained adapter on another slot."),
                *optional,
                io.String.Input("names", default="", tooltip="Expert names, comma-separated, one per adapter; "
                                                             "empty uses the file names."),
            ],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="overlap")],
        )

    @classmethod
    def execute(cls, adapter_1, adapter_2, names: str = "", **more) -> io.NodeOutput:
        adapters = [adapter_1, adapter_2] + [more[f"adapter_{i}"] for i in range(3, MAX_ADAPTERS + 1)
                                             if more.get(f"adapter_{i}") is not None]
        stems = [os.path.splitext(os.path.basename(a.path))[0] if a.path else f"adapter {i + 1}"
                 for i, a in enumerate(adapters)]
        labels = adapter_names_from(stems, names)
        merged, table = merge_slot_adapters(adapters, labels)
        report = overlap_report(labels, table)
        return reported(merged, report, text=report)
