"""The LoRA-bank node: ordinary LoRA files stacked as one expert bank (:mod:`comfy_glue.lora_bank`)."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError
from ortho_hydra.text_lists import adapter_names_from, parse_list

from ..comfy_glue import menus
from ..comfy_glue.lora_bank import MAX_LORAS, NONE, bank_report, build_bank, lora_choices, stack_entries
from ..comfy_glue.types import OrthoHydraAdapterType, reported

LoraStackType = io.Custom("LORA_STACK")


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
            description="Turns 2 to 8 ordinary LoRA files into one adapter whose expert i is LoRA i at its "
                        "strength, exactly: pinning expert i equals LoraLoaderModelOnly(LoRA i, that strength), and "
                        "a blend with renormalize off equals stacking the loaders. The router starts uniform (live "
                        "routing averages the LoRAs). Pin, blend, schedule, mix, bake or save it like any "
                        "Ortho-Hydra adapter. Text-encoder keys are left out, and the report says which.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model the LoRAs were trained for (its key map "
                                                "places every LoRA key)."),
                io.Combo.Input("lora_1", options=[*choices, NONE], tooltip="A LoRA .safetensors file from "
                                                                           "models/loras ('none' with a stack)."),
                io.Combo.Input("lora_2", options=[*choices, NONE], tooltip="A second LoRA."),
                *optional,
                io.String.Input("names", default="", tooltip="Expert names, comma-separated, one per LoRA; empty "
                                                             "uses the file names."),
                io.String.Input("strengths", default="", optional=True,
                                tooltip="Model strength of each picked LoRA, comma-separated (empty: 1 each); "
                                        "expert i is LoRA i at its strength. Stack entries bring their own."),
                LoraStackType.Input("lora_stack", optional=True,
                                    tooltip="A LORA_STACK from another pack's stacker: each (name, model strength, "
                                            "clip strength) becomes one more expert, after the picked LoRAs, at its "
                                            "model strength (clip strengths do not apply to a model-only bank)."),
            ],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, model, lora_1: str, lora_2: str, names: str = "", strengths: str = "", lora_stack=None,
                **more) -> io.NodeOutput:
        picked = [f for f in [lora_1, lora_2, *(more.get(f"lora_{i}") for i in range(3, MAX_LORAS + 1))]
                  if f not in (None, NONE)]
        given = parse_list(strengths, float, key="strengths", example="1.0,0.8 (one number per picked LoRA)")
        if given and len(given) != len(picked):
            raise OrthoHydraError(f"{len(given)} strengths for {len(picked)} picked LoRAs.", key="strengths",
                                  fix="give one strength per picked LoRA, or leave it empty for 1 each")
        entries = list(zip(picked, given or [1.0] * len(picked), strict=True)) + stack_entries(lora_stack)
        files = [name for name, _ in entries]
        if len(entries) < 2 or len(entries) > MAX_LORAS:
            raise OrthoHydraError(f"{len(entries)} LoRAs picked; an expert bank holds 2 to {MAX_LORAS}.",
                                  key="lora_2", fix=f"pick 2 to {MAX_LORAS} LoRAs (widgets and stack together)")
        if len(set(files)) != len(files):
            raise OrthoHydraError(f"the same LoRA is picked twice ({', '.join(files)}).", key="lora_2",
                                  fix="pick at least two different LoRA files")
        stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
        bank = build_bank(model, files, adapter_names_from(stems, names), [s for _, s in entries])
        report = bank_report(bank)
        return reported(bank, report, text=report)
