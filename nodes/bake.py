"""Export a constant override as a standard LoRA file that any LoRA loader reproduces."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ortho_hydra.bake import baked_lora
from ortho_hydra.safetensors_io import write_safetensors

from ..comfy_glue import menus
from ..comfy_glue.adapter_files import lora_output_path
from ..comfy_glue.patcher import make_plan
from ..comfy_glue.types import OrthoHydraAdapterType, reported


def constant_gates(adapter, plan=None) -> dict:
    """Each routed layer's constant gate by name; with ``plan``, also its legs', which a fused file's layer split
    over separate q / k / v Linears names apart (as the apply path sees them)."""
    layers = dict(adapter.layers)
    if plan is not None:
        layers.update({leg.layer.name: leg.layer for target in plan.targets.values() for leg in target.legs
                       if leg.layer.routed})
    return {name: adapter.override.constant_gate(name, layer.num_experts) for name, layer in layers.items()}


class OrthoHydraBakeLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraBakeLoRA",
            display_name="Ortho-Hydra Bake to LoRA",
            category=menus.TOOLS,
            description="Writes a pinned, blended or profiled adapter as a plain LoRA (lora_up / lora_down / alpha "
                        "in ComfyUI's naming) into models/loras. Live or scheduled routing cannot be baked.",
            inputs=[
                io.Model.Input("model", tooltip="The base model the LoRA is for (resolves the layer names)."),
                OrthoHydraAdapterType.Input("adapter", tooltip="An adapter with a constant override (router node)."),
                io.String.Input("filename", default="ortho_hydra_baked", tooltip="File name in models/loras "
                                                                                 "(.safetensors is added)."),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, adapter, filename: str) -> io.NodeOutput:
        path = lora_output_path(filename, "filename")
        plan = make_plan(model, adapter)
        tensors = baked_lora(plan, constant_gates(adapter, plan))
        override = adapter.override.describe()
        write_safetensors(path, tensors, {"ss_network_module": "networks.lora", "oh_baked_from":
                                          os.path.basename(adapter.path or "adapter"), "oh_override": override})
        return reported(path, text=f"baked to {path}")
