"""The pack's own ComfyUI socket types."""

from dataclasses import dataclass

import comfy.samplers
from comfy_api.v0_0_2 import io, ui

OrthoHydraAdapterType = io.Custom("ORTHO_HYDRA")
StyleProfileType = io.Custom("STYLE_PROFILE")
RouterTraceType = io.Custom("ROUTER_TRACE")


def reported(*outputs, text: str) -> io.NodeOutput:
    """Node outputs with ``text`` also shown on the node (ComfyUI's UI text; web/ortho_hydra.js draws it), so a
    summary or report is seen without wiring its STRING output anywhere."""
    return io.NodeOutput(*outputs, ui=ui.PreviewText(text))


def sampler_inputs(seed_tip: str, steps_tip: str, max_steps: int) -> list:
    """The KSampler-style widgets (seed, steps, cfg, sampler, scheduler) our sampling nodes share."""
    return [
        io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True, tooltip=seed_tip),
        io.Int.Input("steps", default=20, min=1, max=max_steps, tooltip=steps_tip),
        io.Float.Input("cfg", default=4.0, min=0.0, max=100.0, step=0.1, tooltip="Guidance scale."),
        io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                       tooltip="Sampler."),
        io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                       tooltip="Noise schedule."),
    ]


@dataclass(frozen=True)
class StyleSet:
    """Per-image style labels (label i = style i) and the style names, from the style-folders loader."""

    labels: tuple[int, ...]
    names: tuple[str, ...]


StyleSetType = io.Custom("ORTHO_HYDRA_STYLES")
