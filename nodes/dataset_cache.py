"""Cache a training set from inside ComfyUI for the torchrun trainer: VAE latents and encoded conditioning.

The format is :mod:`ortho_hydra.dataset_cache`; this node encodes with ComfyUI's own VAE and text encoder (as
VAEEncode and CLIPTextEncode do) shard by shard, and skips the work when the same inputs were cached before.
"""

from __future__ import annotations

import hashlib
import json
import os

import comfy.model_management
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError
from ortho_hydra.dataset_cache import DatasetWriter, read, read_manifest

from .adapter_files import checked_file_name
from .types import StyleSetType

DATASETS = "ortho_hydra_datasets"


def dataset_folder(name: str) -> str:
    """``output/ortho_hydra_datasets/<name>``; the name check refuses separators and a leading dot, so it cannot
    leave the folder."""
    checked_file_name(name, "dataset_name")
    return os.path.join(folder_paths.get_output_directory(), DATASETS, name)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(str((part.dtype, tuple(part.shape))).encode())
            h.update(part.detach().float().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def vae_fingerprint(vae) -> str:
    """Keys, shapes and a strided sample of every weight: enough to tell two VAEs apart, cheap to compute."""
    parts = []
    for key, tensor in sorted(vae.first_stage_model.state_dict().items()):
        flat = tensor.detach().flatten()
        parts += [key, list(tensor.shape), flat[:: max(1, flat.numel() // 16)][:16].float().cpu()]
    return _digest(*parts)[:16]


def per_image(values: list, count: int, what: str, key: str) -> list:
    """One entry for all images, or one per image."""
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise OrthoHydraError(f"{len(values)} {what} for {count} images.", key=key,
                              fix=f"give one {what[:-1]} per image, or a single one for all")
    return list(values)


def conditioning_for(count: int, conditioning, clip, captions: str) -> tuple[list, object]:
    """Per-image conditioning from a CONDITIONING input or from a text encoder and captions (one per line)."""
    lines = [line.strip() for line in captions.splitlines() if line.strip()]
    if conditioning is not None and (clip is not None or lines):
        raise OrthoHydraError("both a conditioning and a text encoder with captions are connected.", key="clip",
                              fix="use one: the conditioning, or clip with captions")
    if conditioning is not None:
        return per_image(list(conditioning), count, "conditionings", "conditioning"), _digest(
            *[c for entry in conditioning for c in (entry[0], entry[1].get("pooled_output"))
              if isinstance(c, torch.Tensor)])
    if clip is None or not lines:
        raise OrthoHydraError("no conditioning: connect a CONDITIONING, or a text encoder (clip) with captions.",
                              key="captions", fix="type one caption per line (or one prompt for all) and connect "
                                                  "the text encoder")
    lines = per_image(lines, count, "captions", "captions")
    encoded = {}
    for text in dict.fromkeys(lines):  # each distinct caption once
        encoded[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))[0]
    return [encoded[text] for text in lines], lines


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
        fingerprint = _digest(pixels, text_key, labels, names, vae_id)
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
