"""A demo helper: an approximate RGB image of a latent, without VAE weights.

Uses the model's own ``latent_rgb_factors``, the same linear map ComfyUI's live sampling preview
uses; it shows colour layout, not a decoded picture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.v0_0_2 import io


def latent_to_rgb(samples: torch.Tensor, factors, bias=None, upscale: int = 8) -> torch.Tensor:
    """(B, C, H, W) or (B, C, T, H, W) latent -> (B, H·upscale, W·upscale, 3) image in [0, 1]."""
    if samples.ndim == 5:
        samples = samples[:, :, 0]
    weight = torch.tensor(factors, dtype=torch.float32)  # (C, 3)
    rgb = samples.float().movedim(1, -1) @ weight
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    image = ((rgb + 1.0) / 2.0).clamp(0, 1)
    if upscale > 1:
        image = F.interpolate(image.movedim(-1, 1), scale_factor=upscale, mode="nearest").movedim(1, -1)
    return image


class OrthoHydraLatentPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraLatentPreview",
            display_name="Ortho-Hydra Latent Preview (no VAE)",
            category="latent/ortho_hydra",
            description="Demo helper: approximate RGB of a latent through the model's latent_rgb_factors "
                        "(as ComfyUI's live preview does), for graphs without VAE weights.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose latent format defines the RGB factors."),
                io.Latent.Input("samples", tooltip="The latent to show."),
                io.Int.Input("upscale", default=8, min=1, max=16, tooltip="Nearest-neighbour enlargement."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, model, samples, upscale: int) -> io.NodeOutput:
        fmt = model.model.latent_format
        if fmt.latent_rgb_factors is None:
            raise ValueError(f"{type(fmt).__name__} has no latent_rgb_factors; decode with a VAE instead")
        return io.NodeOutput(latent_to_rgb(samples["samples"], fmt.latent_rgb_factors,
                                           fmt.latent_rgb_factors_bias, upscale))
