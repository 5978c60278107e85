"""Router telemetry: sample once while recording every layer's gates, then show them."""

from __future__ import annotations

import json

import comfy.sample
from comfy_api.v0_0_2 import io, ui

from ..comfy_glue import menus
from ..comfy_glue.gate_recording import recording, summarize_records
from ..comfy_glue.images import heatmap, usage_bars
from ..comfy_glue.types import sampler_inputs


class OrthoHydraRouterTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraRouterTrace",
            display_name="Ortho-Hydra Router Trace (sampler)",
            category=menus.TOOLS,
            description="Samples like KSampler while recording every routed layer's gates per step, for the "
                        "positive and negative sides separately: a steps x layers heatmap (hue = dominant expert, "
                        "saturation = 1 - normalised entropy), expert-usage bars and the raw numbers as JSON.",
            inputs=[
                io.Model.Input("model", tooltip="A model patched by Apply Ortho-Hydra (router-live)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise."),
                *sampler_inputs("Noise seed.", "Sampling steps.", 1000),
                io.Combo.Input("side", options=["positive", "negative"], default="positive",
                               tooltip="Which CFG side the images show (the JSON has both)."),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.Image.Output(display_name="heatmap"),
                     io.Image.Output(display_name="usage"), io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, side: str) -> io.NodeOutput:
        samples = latent_image["samples"]
        noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
        with recording(model) as gates:
            out = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                                      noise_mask=latent_image.get("noise_mask"), seed=seed)
        records, adapter = gates.records(), gates.adapter
        summary = summarize_records(records, adapter.num_experts)
        shown = summary[side] or summary["positive"]
        names = adapter.display_expert_names()
        data = {"experts": names, "steps": steps, "sides": summary}
        heat = heatmap(shown, adapter.num_experts)
        bars = usage_bars(shown, adapter.num_experts, names)
        result = {**latent_image, "samples": out}
        return io.NodeOutput(result, heat, bars, json.dumps(data), ui=ui.PreviewImage(heat, cls=cls))
