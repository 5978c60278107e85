"""Router telemetry: sample once while recording every layer's gates, then show them."""

from __future__ import annotations

import colorsys
import json

import comfy.sample
import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui

from ortho_hydra.metrics import normalized_entropy

from .gate_recording import recording
from .types import sampler_inputs
from .widgets import figure_to_image, pyplot


def summarize_records(records: dict, num_experts: int) -> dict:
    """{side: {layer: [(σ, mean gate (E,), normalised entropy)] per model call}} from raw hook records."""
    out: dict[str, dict[str, list]] = {"positive": {}, "negative": {}}
    for layer, entries in records.items():
        for entry in entries:
            gate, uncond = entry["gate"], entry["uncond_rows"]
            sides = {"positive": gate if uncond is None else gate[~uncond],
                     "negative": None if uncond is None else gate[uncond]}
            for side, rows in sides.items():
                if rows is None or rows.shape[0] == 0:
                    continue
                out[side].setdefault(layer, []).append({
                    "sigma": entry["sampler_sigma"], "gate": rows.double().mean(0).tolist(),
                    "entropy": float(normalized_entropy(rows).mean())})
    return out


def heatmap(side: dict[str, list], num_experts: int, cell: int = 12) -> torch.Tensor:
    """Steps x layers; hue = dominant expert, saturation = 1 - normalised entropy."""
    layers = sorted(side)
    steps = max((len(v) for v in side.values()), default=0)
    image = np.ones((max(steps, 1) * cell, max(len(layers), 1) * cell, 3), dtype=np.float32)
    for j, layer in enumerate(layers):
        for i, entry in enumerate(side[layer]):
            expert = int(np.argmax(entry["gate"]))
            rgb = colorsys.hsv_to_rgb(expert / max(num_experts, 1), max(0.0, 1.0 - entry["entropy"]), 0.95)
            image[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = rgb
    return torch.from_numpy(image).unsqueeze(0)


def usage_bars(side: dict[str, list], num_experts: int, names: list[str]) -> torch.Tensor:
    totals = np.zeros(num_experts)
    for entries in side.values():
        for entry in entries:
            totals[int(np.argmax(entry["gate"]))] += 1
    share = totals / max(totals.sum(), 1)
    fig, ax = pyplot().subplots(figsize=(max(3, num_experts * 0.8), 2.6), dpi=100)
    colors = [colorsys.hsv_to_rgb(e / num_experts, 0.85, 0.9) for e in range(num_experts)]
    ax.bar(range(num_experts), share, color=colors)
    ax.set_xticks(range(num_experts), names, fontsize=7, rotation=20)
    ax.set(ylim=(0, 1), ylabel="dominant share", title="expert usage (layers x steps)")
    fig.tight_layout()
    return figure_to_image(fig)


class OrthoHydraRouterTrace(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraRouterTrace",
            display_name="Ortho-Hydra Router Trace (sampler)",
            category="sampling/ortho_hydra",
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
