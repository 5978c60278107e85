"""The expert-gallery node: one seed rendered with each expert pinned, plus live routing, as a labelled grid
(:mod:`comfy_glue.gallery`)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ortho_hydra.text_lists import split_list

from ..comfy_glue import menus
from ..comfy_glue.gallery import expert_gallery
from ..comfy_glue.types import OrthoHydraAdapterType, sampler_inputs


class OrthoHydraExpertGallery(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraExpertGallery",
            display_name="Ortho-Hydra Expert Gallery",
            category=menus.TOOLS,
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
        return io.NodeOutput(*expert_gallery(model, adapter, positive, negative, latent, seed, steps, cfg,
                                             sampler_name, scheduler, strength, names, vae))
