"""One seed rendered with each expert pinned, plus live routing, as a labelled grid."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import numpy as np
import torch
from comfy_api.v0_0_2 import io
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
                        "each expert does. Several positive entries give one row each.",
            inputs=[
                io.Model.Input("model", tooltip="The base model (unpatched)."),
                OrthoHydraAdapterType.Input("adapter", tooltip="The adapter whose experts to show."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning. With several entries (e.g. a demo "
                                                         "seed list), one row per entry, seeded seed + row."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent", tooltip="The latent to start from (first sample is used)."),
                *sampler_inputs("One seed for every tile.", "Sampling steps per tile.", 200),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01, tooltip="Adapter strength."),
                io.String.Input("expert_names", default="", tooltip="Optional labels, comma-separated; default: "
                                                                    "the names stored in the file."),
                io.Vae.Input("vae", optional=True, tooltip="Decode with this VAE; without one, a latent preview."),
            ],
            outputs=[io.Image.Output(display_name="grid"),
                     io.Latent.Output(display_name="tiles", tooltip="Every tile's latent, row by row (experts in "
                                                                   "order, then live), e.g. for SaveLatent.")],
        )

    @classmethod
    def execute(cls, model, adapter, positive, negative, latent, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, strength: float, expert_names: str, vae=None) -> io.NodeOutput:
        names = split_list(expert_names) or adapter.display_expert_names()
        if len(names) != adapter.num_experts:
            names = adapter.display_expert_names()
        # one row per conditioning entry (e.g. one per content), each from its own latent and seed
        rows = [[entry] for entry in positive] if len(positive) > 1 else [positive]
        batch = latent["samples"]
        variants = [(pinned(adapter, e), f"{e}: {names[e]}") for e in range(adapter.num_experts)]
        variants.append((adapter, "live"))
        pbar = comfy.utils.ProgressBar(len(variants) * len(rows))
        fmt = model.model.latent_format
        tiles: dict[tuple[int, int], torch.Tensor] = {}
        for column, (variant, _) in enumerate(variants):
            patched, _ = apply_adapter(model, variant, strength)
            for row, row_positive in enumerate(rows):
                comfy.model_management.throw_exception_if_processing_interrupted()
                start = batch[min(row, batch.shape[0] - 1)][None]
                noise = comfy.sample.prepare_noise(start, seed + row)
                tiles[row, column] = comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler,
                                                         row_positive, negative, start, disable_pbar=True,
                                                         seed=seed + row)
                pbar.update(1)
        labels = [label for _, label in variants]
        grid_rows = []
        for row in range(len(rows)):
            outs = [tiles[row, column] for column in range(len(variants))]
            images = [vae.decode(out)[0] if vae is not None else
                      latent_to_rgb(out, fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)[0] for out in outs]
            grid_rows.append(labelled_row(images, labels))
        gap = torch.ones(1, 4, grid_rows[0].shape[2], 3)
        grid = torch.cat([t for r in grid_rows for t in (r, gap)][:-1], dim=1)
        samples = torch.cat([tiles[row, column] for row in range(len(rows)) for column in range(len(variants))])
        return io.NodeOutput(grid, {"samples": samples})
