"""Load an adapter file and apply it router-live."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ortho_hydra.components import require_all_applied
from ortho_hydra.moe_format import ROUTER_CORRECTIONS

from ..comfy_glue import menus
from ..comfy_glue.adapter_files import adapter_choices, file_fingerprint, load_cached, validation_error
from ..comfy_glue.patcher import applied_adapters, apply_adapter
from ..comfy_glue.types import OrthoHydraAdapterType, reported

_STRENGTH_TIP = "Multiplier on the adapter's output. 0 disables it; negative values push away from the styles."
_CORRECTION_TIP = ("'training' restores the gates the router was trained with on reference-trainer files; "
                   "'none' uses the router as stored, like the reference ComfyUI node.")


def _lora_input() -> io.Combo.Input:
    return io.Combo.Input("lora_name", options=adapter_choices(),
                          tooltip="A Hydra / Ortho-Hydra *_moe.safetensors or ChimeraHydra *_chimera.safetensors "
                                  "file from models/loras. Adapter files are listed first, plain LoRAs after them "
                                  "(those go in the expert bank).")


def _strict_input() -> io.Boolean.Input:
    return io.Boolean.Input("strict", default=True,
                            tooltip="Refuse a file that holds components this pack does not apply (soft tokens, "
                                    "unknown keys, stray ChimeraHydra routers its metadata does not declare). Off: "
                                    "apply the LoRA / Hydra / ChimeraHydra layers and ReFT edits, and list what was "
                                    "left out in the summary.")


def _loaded(lora_name: str, router_correction: str, strict: bool):
    adapter = load_cached(lora_name, router_correction)
    if strict:
        require_all_applied(adapter.metadata, adapter.path)
    return adapter


def _reft_strength_input() -> io.Float.Input:
    return io.Float.Input("strength_reft", default=1.0, min=-10.0, max=10.0, step=0.01,
                          tooltip="Strength of the file's ReFT block edits (reference-trainer files), separate from "
                                  "the LoRA / Hydra strength; ignored when the file has none.")


def _correction_input() -> io.Combo.Input:
    return io.Combo.Input("router_correction", options=list(ROUTER_CORRECTIONS), default="training",
                          tooltip=_CORRECTION_TIP)


class OrthoHydraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraLoader",
            display_name="Ortho-Hydra Load Adapter",
            category=menus.APPLY,
            description="Reads a mixture-of-experts LoRA file (ours or the reference trainer's) and summarises it.",
            inputs=[_lora_input(), _correction_input(), _strict_input()],
            outputs=[OrthoHydraAdapterType.Output(display_name="adapter"),
                     io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str) -> bool | str:
        return validation_error(lora_name) or True

    @classmethod
    def fingerprint_inputs(cls, lora_name: str, router_correction: str = "training", strict: bool = True) -> tuple:
        return (*file_fingerprint(lora_name), router_correction, strict)

    @classmethod
    def execute(cls, lora_name: str, router_correction: str = "training", strict: bool = True) -> io.NodeOutput:
        adapter = _loaded(lora_name, router_correction, strict)
        summary = adapter.summary()
        return reported(adapter, summary, text=summary)


class OrthoHydraApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraApply",
            display_name="Ortho-Hydra Apply Adapter",
            category=menus.APPLY,
            description="Patches a clone of the diffusion model so every adapted Linear routes each sample "
                        "through its experts, as in training.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (DiT) to patch; the input is left untouched."),
                OrthoHydraAdapterType.Input("adapter", tooltip="An adapter from Load Ortho-Hydra Adapter or the "
                                                               "router node."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=_STRENGTH_TIP),
                _reft_strength_input(),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, adapter, strength: float, strength_reft: float = 1.0) -> io.NodeOutput:
        patched, _ = apply_adapter(model, adapter, strength, strength_reft=strength_reft)
        return io.NodeOutput(patched)


class OrthoHydraLoadAndApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraLoadAndApply",
            display_name="Ortho-Hydra Load + Apply",
            category=menus.APPLY,
            description="Load an adapter file and apply it router-live in one node.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (DiT) to patch; the input is left untouched."),
                _lora_input(),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip=_STRENGTH_TIP),
                _correction_input(),
                _strict_input(),
                _reft_strength_input(),
            ],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str) -> bool | str:
        return validation_error(lora_name) or True

    @classmethod
    def fingerprint_inputs(cls, model, lora_name: str, strength: float, router_correction: str = "training",
                           strict: bool = True, strength_reft: float = 1.0):
        return (*file_fingerprint(lora_name), strength, router_correction, strict, strength_reft)

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, router_correction: str = "training",
                strict: bool = True, strength_reft: float = 1.0) -> io.NodeOutput:
        adapter = _loaded(lora_name, router_correction, strict)
        patched, patch_plan = apply_adapter(model, adapter, strength, strength_reft=strength_reft)
        coverage = patch_plan.coverage()
        applied = applied_adapters(patched)
        if applied and applied[-1].adapter is adapter:
            coverage += f"; {applied[-1].placement()}"
        if adapter.reft:
            coverage += f"; {len(adapter.reft)} ReFT block edits applied at strength_reft {strength_reft:g}"
        summary = adapter.summary() + "\n" + coverage
        return reported(patched, summary, text=summary)
