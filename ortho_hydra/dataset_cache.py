"""A cached training set on disk: VAE latents, encoded conditioning and style labels, in shards, with a manifest.

Layout of ``<folder>/``: ``shard-<k>.safetensors`` (``latents``: (n, C, H, W) fp32, ``cond.<i>``: (1, tokens,
width) and ``pooled.<i>``: (1, width) per image, i counted within the shard), then ``manifest.json`` (format
version, count, latent shape, shards, labels, style names, the inputs' fingerprint and what they were encoded
with).  Every file is written atomically and the manifest last, so a folder without one is an interrupted cache,
never a short dataset.  The node ``OrthoHydraCacheDataset`` writes it, the torchrun command reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_path
from .errors import OrthoHydraError
from .safetensors_io import read_safetensors, write_safetensors

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class CachedDataset:
    latents: torch.Tensor
    positive: list  # ComfyUI conditioning, one entry per image
    labels: torch.Tensor | None
    style_names: tuple[str, ...]
    manifest: dict


def read_manifest(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


class DatasetWriter:
    """Write shard by shard (each atomically), then the manifest; stale shards of an earlier cache are removed."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / MANIFEST).unlink(missing_ok=True)  # from here on the folder is an incomplete cache
        self.shards: list[str] = []
        self.count = 0
        self.latent_shape: list[int] | None = None

    def add_shard(self, latents: torch.Tensor, conditioning: list) -> None:
        if len(conditioning) != latents.shape[0]:
            raise OrthoHydraError(f"{latents.shape[0]} latents and {len(conditioning)} conditionings in a shard.",
                                  path=self.folder, key="count", fix="give one conditioning per image")
        bad = (~torch.isfinite(latents.reshape(latents.shape[0], -1))).any(1).nonzero().flatten().tolist()
        if bad:
            raise OrthoHydraError(f"latents of images {bad} (counted from {self.count}) are not finite.",
                                  path=self.folder, key="latents", fix="check the images and the VAE (a VAE "
                                                                      "that overflows in fp16 needs fp32 or bf16)")
        shape = list(latents.shape[1:])
        if self.latent_shape is not None and shape != self.latent_shape:
            raise OrthoHydraError(f"latents of shape {shape} after {self.latent_shape}.", path=self.folder,
                                  key="latents", fix="give images of one size")
        self.latent_shape = shape
        tensors = {"latents": latents.detach().float().cpu().contiguous()}
        for i, (cond, extra) in enumerate(conditioning):
            tensors[f"cond.{i}"] = cond.detach().float().cpu().clone()  # one entry may serve every image
            if extra.get("pooled_output") is not None:
                tensors[f"pooled.{i}"] = extra["pooled_output"].detach().float().cpu().clone()
        name = f"shard-{len(self.shards):05d}.safetensors"
        write_safetensors(self.folder / name, tensors, {"format": "ortho_hydra_dataset"})
        self.shards.append(name)
        self.count += latents.shape[0]

    def finish(self, labels: list[int] | None = None, style_names: list[str] | None = None,
               fingerprint: str = "", encoded_with: dict | None = None) -> dict:
        if labels is not None and len(labels) != self.count:
            raise OrthoHydraError(f"{len(labels)} labels for {self.count} images.", path=self.folder, key="labels",
                                  fix="give one style label per image")
        manifest = {"format_version": FORMAT_VERSION, "count": self.count, "latent_shape": self.latent_shape,
                    "shards": self.shards, "labels": labels, "style_names": list(style_names or []),
                    "fingerprint": fingerprint, "encoded_with": encoded_with or {}}
        for stale in self.folder.glob("shard-*.safetensors"):
            if stale.name not in self.shards:
                stale.unlink()
        with atomic_path(self.folder / MANIFEST) as tmp:
            Path(tmp).write_text(json.dumps(manifest, indent=1))
        return manifest


def write(folder: str | os.PathLike, latents: torch.Tensor, conditioning: list, labels: list[int] | None = None,
          style_names: list[str] | None = None, shard_size: int = 256, **info) -> dict:
    """Write a whole dataset at once (``conditioning``: ComfyUI's list, one entry per image)."""
    if len(conditioning) != latents.shape[0]:
        raise OrthoHydraError(f"{latents.shape[0]} latents and {len(conditioning)} conditionings.", path=folder,
                              key="count", fix="give one conditioning per image")
    writer = DatasetWriter(folder)
    for start in range(0, latents.shape[0], shard_size):
        writer.add_shard(latents[start:start + shard_size], conditioning[start:start + shard_size])
    return writer.finish(labels, style_names, **info)


def read(folder: str | os.PathLike) -> CachedDataset:
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise OrthoHydraError("no manifest.json: not a cached Ortho-Hydra dataset (or its caching was interrupted).",
                              path=folder, key=MANIFEST, fix="cache the dataset with the Ortho-Hydra Cache Dataset "
                                                             "node, then point --dataset at its folder")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OrthoHydraError(f"format version {manifest.get('format_version')}, this pack reads "
                              f"{FORMAT_VERSION}.", path=folder / MANIFEST, key="format_version",
                              fix="cache the dataset again")
    latents, positive = [], []
    for name in manifest["shards"]:
        path = folder / name
        if not path.is_file():
            raise OrthoHydraError("a shard the manifest lists is missing.", path=path, key=name,
                                  fix="cache the dataset again")
        tensors = read_safetensors(path)[0]
        latents.append(tensors["latents"])
        for i in range(tensors["latents"].shape[0]):
            if f"cond.{i}" not in tensors:
                raise OrthoHydraError(f"no conditioning for image {i} of this shard.", path=path, key=f"cond.{i}",
                                      fix="cache the dataset again")
            extra = {"pooled_output": tensors[f"pooled.{i}"]} if f"pooled.{i}" in tensors else {}
            positive.append([tensors[f"cond.{i}"], extra])
    stacked = torch.cat(latents) if latents else torch.zeros(0)
    if stacked.shape[0] != manifest["count"] or list(stacked.shape[1:]) != manifest["latent_shape"]:
        raise OrthoHydraError(f"the shards hold {tuple(stacked.shape)}, the manifest says {manifest['count']} x "
                              f"{manifest['latent_shape']}.", path=folder, key="latents",
                              fix="the dataset is damaged; cache it again")
    labels = torch.tensor(manifest["labels"]) if manifest.get("labels") is not None else None
    return CachedDataset(stacked, positive, labels, tuple(manifest.get("style_names") or ()), manifest)
