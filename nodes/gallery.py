"""One seed rendered with each expert pinned, plus live routing, as a labelled grid."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw

from ortho_hydra.overrides import GateRule, Keyframe, Override

from .latent_preview import latent_to_rgb
from .patcher import apply_adapter
from .types import OrthoHydraAdapterType, sampler_inputs
from .widgets import split_list


def pinned(adapter, expert: int):
    return adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert)),)))


def labelled_row(images: list[torch.Tensor], labels: list[str], strip: int = 18) -> torch.Tensor:
    """(H, W, 3) tiles side by side, each with its label drawn on a strip above it."""
    tiles = []
    for image, label in zip(images, labels, strict=True):
        array = (image.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        canvas = Image.new("RGB", (array.shape[1], array.shape[0] + strip), (24, 24, 24))
        canvas.paste(Image.fromarray(array), (0, strip))
        ImageDraw.Draw(canvas).text((3, 3), label[: max(4, array.shape[1] // 7)], fill=(235, 235, 235))
        tiles.append(np.asarray(canvas))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    return torch.from_numpy(row.astype(np.float32) / 255.0).unsqueeze(0)


class OrthoHydraExpertGallery(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraExpertGallery",
            display_name="Ortho-Hydra Expert Gallery",
            category="loaders/ortho_hydra",
            description="Renders one seed with each expert pinned, plus live routing, as a labelled grid: what "
                        "each expert does.",
            inputs=[
                io.Model.Input("model", tooltip="The base model (unpatched)."),
                OrthoHydraAdapterType.Input("adapter", tooltip="The adapter whose experts to show."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent", tooltip="The latent to start from (first sample is used)."),
                *sampler_inputs("One seed for every tile.", "Sampling steps per tile.", 200),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Adapter strength."),
                io.String.Input("expert_names", default="", tooltip="Optional labels, comma-separated; default: "
                                                                    "the names stored in the file."),
                io.Vae.Input("vae", optional=True, tooltip="Decode with this VAE; without one, a latent preview."),
            ],
            outputs=[io.Image.Output(display_name="grid")],
        )

    @classmethod
    def execute(cls, model, adapter, positive, negative, latent, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, strength: float, expert_names: str, vae=None) -> io.NodeOutput:
        names = split_list(expert_names) or adapter.display_expert_names()
        if len(names) != adapter.num_experts:
            names = adapter.display_expert_names()
        samples = latent["samples"][:1]
        noise = comfy.sample.prepare_noise(samples, seed)
        variants = [(pinned(adapter, e), f"{e}: {names[e]}") for e in range(adapter.num_experts)]
        variants.append((adapter, "live"))
        pbar = comfy.utils.ProgressBar(len(variants))
        images, labels = [], []
        fmt = model.model.latent_format
        for variant, label in variants:
            comfy.model_management.throw_exception_if_processing_interrupted()
            patched, _ = apply_adapter(model, variant, strength)
            out = comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                      samples, disable_pbar=True, seed=seed)
            image = vae.decode(out)[0] if vae is not None else \
                latent_to_rgb(out, fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)[0]
            images.append(image)
            labels.append(label)
            pbar.update(1)
        return io.NodeOutput(labelled_row(images, labels))
