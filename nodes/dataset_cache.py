"""The dataset-cache node: VAE latents and encoded conditioning written for the torchrun trainer
(:mod:`comfy_glue.dataset_cache`)."""

from __future__ import annotations

import comfy.model_management
import comfy.utils
import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError
from ortho_hydra.dataset_cache import DatasetWriter, read, read_manifest

from ..comfy_glue.dataset_cache import conditioning_for, content_digest, dataset_folder, vae_fingerprint
from ..comfy_glue.types import StyleSetType


class OrthoHydraCacheDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraCacheDataset",
            display_name="Cache Ortho-Hydra Dataset",
            category="training/ortho_hydra",
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
        folder = dataset_folder(dataset_name)
        count = images.shape[0]
        labels, names = (list(styles.labels), list(styles.names)) if styles is not None else (None, [])
        if labels is not None and len(labels) != count:
            raise OrthoHydraError(f"{len(labels)} style labels for {count} images.", key="styles",
                                  fix="connect the images that came with these styles")
        positive, text_key = conditioning_for(count, conditioning, clip, captions)
        pixels = images[..., :3]
        vae_id = vae_fingerprint(vae)
        fingerprint = content_digest(pixels, text_key, labels, names, vae_id)
        existing = read_manifest(folder)
        if existing is not None and existing.get("fingerprint") == fingerprint:
            cached = read(folder)
            return io.NodeOutput(folder, {"samples": cached.latents},
                                 f"{folder}: unchanged ({cached.manifest['count']} images), skipped")
        if existing is not None:
            raise OrthoHydraError(f"'{dataset_name}' already holds another dataset ({existing.get('count')} images of "
                                  f"{existing.get('latent_shape')}).", path=folder, key="dataset_name",
                                  fix="choose another dataset_name, or delete that folder to replace it")
        writer = DatasetWriter(folder)
        shards = (count + shard_size - 1) // shard_size
        pbar = comfy.utils.ProgressBar(shards)
        latents = []
        for start in range(0, count, shard_size):
            comfy.model_management.throw_exception_if_processing_interrupted()
            encoded = vae.encode(pixels[start:start + shard_size]).float().cpu()
            writer.add_shard(encoded, positive[start:start + shard_size])
            latents.append(encoded)
            pbar.update(1)
        manifest = writer.finish(labels, names, fingerprint,
                                 {"vae": vae_id, "latent_channels": int(latents[0].shape[1]),
                                  "text": "clip" if clip is not None else "conditioning"})
        summary = (f"{folder}: {count} images as {shards} shards, latents {manifest['latent_shape']}"
                   + (f", styles {', '.join(names)}" if names else ""))
        return io.NodeOutput(folder, {"samples": torch.cat(latents)}, summary)
