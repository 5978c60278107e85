"""The dataset-cache node: VAE latents and encoded conditioning written for the torchrun trainer
(:mod:`comfy_glue.dataset_cache`)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..comfy_glue import menus
from ..comfy_glue.dataset_cache import cache_dataset
from ..comfy_glue.types import StyleSetType, reported


class OrthoHydraCacheDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraCacheDataset",
            display_name="Ortho-Hydra Cache Dataset",
            category=menus.TRAIN,
            description="Encodes images with the VAE and captions with the text encoder once, and writes them as "
                        "safetensors shards plus a manifest under output/ortho_hydra_datasets/<name>, for the "
                        "torchrun trainer (python -m ortho_hydra_train). Re-running with the same inputs skips "
                        "the work.",
            inputs=[
                io.Image.Input("images", tooltip="The training images (one batch; one size)."),
                io.Vae.Input("vae", tooltip="The VAE of the model you will train on (the latents are cached)."),
                io.String.Input("dataset_name", default="ortho_hydra_dataset",
                                tooltip="Folder name under output/ortho_hydra_datasets; pass that folder to the "
                                        "command's --dataset."),
                io.String.Input("captions", default="", multiline=True,
                                tooltip="One caption per line, one per image, or a single prompt for all (with "
                                        "clip). Leave empty when a conditioning is connected."),
                io.Int.Input("shard_size", default=64, min=1, max=4096,
                             tooltip="Images per shard file; progress and interrupts are checked per shard."),
                io.Clip.Input("clip", optional=True, tooltip="The text encoder for the captions."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Already encoded conditioning instead of clip + captions: one entry "
                                              "for all images, or one per image."),
                StyleSetType.Input("styles", optional=True,
                                   tooltip="Style labels and names from Load Style Folders (for label guidance)."),
            ],
            outputs=[io.String.Output(display_name="path"), io.Latent.Output(display_name="latents"),
                     io.String.Output(display_name="summary")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, vae, dataset_name: str, captions: str, shard_size: int, clip=None, conditioning=None,
                styles=None) -> io.NodeOutput:
        path, latents, summary = cache_dataset(images, vae, dataset_name, captions, shard_size, clip, conditioning,
                                               styles)
        return reported(path, latents, summary, text=summary)
