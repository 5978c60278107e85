"""The pack's own ComfyUI socket types."""

import inspect
from dataclasses import dataclass

import comfy.samplers
from comfy_api.v0_0_2 import io, ui

from ortho_hydra import Adapter

OrthoHydraAdapterType = io.Custom("ORTHO_HYDRA")

# Research knobs are "advanced" inputs where the host knows them (ComfyUI 0.33's front end folds them away until the
# node's "show advanced" is on); older hosts show every widget.  Widget order is unchanged either way, so saved
# graphs load as before.
ADVANCED: dict = {"advanced": True} if "advanced" in inspect.signature(io.Input.__init__).parameters else {}
StyleProfileType = io.Custom("STYLE_PROFILE")
RouterTraceType = io.Custom("ROUTER_TRACE")


def reported(*outputs, text: str) -> io.NodeOutput:
    """Node outputs with ``text`` also shown on the node (ComfyUI's UI text; web/ortho_hydra.js draws it), so a
    summary or report is seen without wiring its STRING output anywhere.  A node that outputs an adapter also
    sends its experts' names (``ortho_hydra_experts``), so a mixer downstream of any such node (bank, trainer, fit,
    merge, transfer) names its sliders without a file to read."""
    shown = ui.PreviewText(text).as_dict()
    adapter = next((o for o in outputs if isinstance(o, Adapter)), None)
    if adapter is not None:
        shown["ortho_hydra_experts"] = [experts_payload(adapter)]
    return io.NodeOutput(*outputs, ui=shown)


def experts_payload(adapter: Adapter) -> dict:
    """What the expert mixer needs of an adapter: the same fields GET /ortho_hydra/experts gives for a file."""
    count = adapter.num_experts
    names = list(adapter.expert_names or ())
    if len(names) != count:
        names = [f"expert {e}" for e in range(count)]
    return {"num_experts": count, "expert_names": names}


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
