"""The LoRA-bank node: ordinary LoRA files stacked as one expert bank (:mod:`comfy_glue.lora_bank`)."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError
from ortho_hydra.text_lists import adapter_names_from

from ..comfy_glue import menus
from ..comfy_glue.lora_bank import MAX_LORAS, NONE, build_bank, lora_choices
from ..comfy_glue.types import OrthoHydraAdapterType, reported


class OrthoHydraLoraBank(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = lora_choices()
        optional = [io.Combo.Input(f"lora_{i}", options=[NONE, *choices], default=NONE, optional=True,
                                   tooltip="Another LoRA (optional).") for i in range(3, MAX_LORAS + 1)]
        return io.Schema(
            node_id="OrthoHydraLoraBank",
            display_name="Ortho-Hydra Expert Bank (LoRA stack)",
            category=menus.APPLY,
            description="Turns 2 to 8 ordinary LoRA files into one adapter whose expert i is LoRA i, exactly: "
                        "pinning expert i equals LoraLoaderModelOnly(LoRA i, strength 1), and a blend with "
                        "renormalize off equals stacking the loaders at those strengths. The router starts "
                        "uniform (live routing averages the LoRAs). Pin, blend, schedule, mix, bake or save it "
                        "like any Ortho-Hydra adapter.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRAs were trained for (its key map "
                                                "places every LoRA key)."),
                io.Combo.Input("lora_1", options=choices, tooltip="A LoRA .safetensors file from models/loras."),
                io.Combo.Input("lora_2", options=choices, tooltip="A second LoRA."),
                *optional,
                io.String.Input("names", default="", tooltip="Expert names, comma-separated, one per LoRA; empty "
                                                             "uses the file names."),
            ],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, model, lora_1: str, lora_2: str, names: str = "", **more) -> io.NodeOutput:
        files = [lora_1, lora_2] + [more[f"lora_{i}"] for i in range(3, MAX_LORAS + 1)
                                    if more.get(f"lora_{i}") not in (None, NONE)]
        if len(set(files)) != len(files):
            raise OrthoHydraError(f"the same LoRA is picked twice ({', '.join(files)}).", key="lora_2",
                                  fix="pick at least two different LoRA files")
        stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
        labels = adapter_names_from(stems, names)
        bank = build_bank(model, files, labels)
        summary = bank.summary()
        return reported(bank, summary, text=summary)
