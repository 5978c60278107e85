"""A demo helper: an approximate RGB image of a latent, without VAE weights.

Uses the model's own ``latent_rgb_factors``, the same linear map ComfyUI's live sampling preview
uses; it shows colour layout, not a decoded picture.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..comfy_glue import menus
from ..comfy_glue.images import latent_to_rgb


class OrthoHydraLatentPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraLatentPreview",
            display_name="Ortho-Hydra Latent Preview (no VAE)",
            category=menus.DEMO,
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
