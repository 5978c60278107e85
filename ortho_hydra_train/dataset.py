"""A cached training set on disk: VAE latents, encoded conditioning and style labels, with a manifest.

Layout of ``<folder>/``: ``manifest.json`` (format version, count, latent shape, labels, style names, the model
fingerprint it was cached for), ``latents.safetensors`` (``latents``: (N, C, H, W) fp32) and
``conditioning.safetensors`` (``cond.<i>``: (1, tokens, width), ``pooled.<i>``: (1, width) when the text encoder
has a pooled output).  Every file is written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ortho_hydra.atomic import atomic_path
from ortho_hydra.errors import OrthoHydraError
from ortho_hydra.safetensors_io import read_safetensors, write_safetensors

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class CachedDataset:
    latents: torch.Tensor
    positive: list  # ComfyUI conditioning, one entry per image
    labels: torch.Tensor | None
    style_names: tuple[str, ...]
    manifest: dict


def write(folder: str | os.PathLike, latents: torch.Tensor, conditioning: list, labels: list[int] | None = None,
          style_names: list[str] | None = None, fingerprint: dict | None = None) -> Path:
    """Write a dataset folder; ``conditioning`` is ComfyUI's list, one ``[cond, {"pooled_output": ...}]`` per
    image."""
    folder = Path(folder)
    count = latents.shape[0]
    if len(conditioning) != count or (labels is not None and len(labels) != count):
        raise OrthoHydraError(f"{count} latents, {len(conditioning)} conditionings and "
                              f"{'no' if labels is None else len(labels)} labels.", path=folder, key="count",
                              fix="give one conditioning (and one label) per image")
    cond = {}
    for i, (tensor, extra) in enumerate(conditioning):
        cond[f"cond.{i}"] = tensor.detach().float().cpu().contiguous()
        if extra.get("pooled_output") is not None:
            cond[f"pooled.{i}"] = extra["pooled_output"].detach().float().cpu().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "latents.safetensors", {"latents": latents.detach().float().cpu().contiguous()},
                      {"format": "ortho_hydra_dataset"})
    write_safetensors(folder / "conditioning.safetensors", cond, {"format": "ortho_hydra_dataset"})
    manifest = {"format_version": FORMAT_VERSION, "count": count, "latent_shape": list(latents.shape[1:]),
                "labels": labels, "style_names": list(style_names or []), "fingerprint": fingerprint or {}}
    with atomic_path(folder / MANIFEST) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=1))
    return folder


def read(folder: str | os.PathLike) -> CachedDataset:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise OrthoHydraError("no manifest.json: not a cached Ortho-Hydra dataset.", path=folder, key=MANIFEST,
                              fix="cache the dataset with the pack's dataset node, or point --dataset at its folder")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OrthoHydraError(f"format version {manifest.get('format_version')}, this pack reads "
                              f"{FORMAT_VERSION}.", path=path, key="format_version", fix="cache the dataset again")
    latents = read_safetensors(folder / "latents.safetensors")[0]["latents"]
    cond = read_safetensors(folder / "conditioning.safetensors")[0]
    count = manifest["count"]
    if latents.shape[0] != count or list(latents.shape[1:]) != manifest["latent_shape"]:
        raise OrthoHydraError(f"latents are {tuple(latents.shape)}, the manifest says {count} x "
                              f"{manifest['latent_shape']}.", path=folder / "latents.safetensors", key="latents",
                              fix="the dataset is damaged or half-written; cache it again")
    positive = []
    for i in range(count):
        if f"cond.{i}" not in cond:
            raise OrthoHydraError(f"no conditioning for image {i}.", path=folder / "conditioning.safetensors",
                                  key=f"cond.{i}", fix="cache the dataset again")
        extra = {"pooled_output": cond[f"pooled.{i}"]} if f"pooled.{i}" in cond else {}
        positive.append([cond[f"cond.{i}"], extra])
    labels = torch.tensor(manifest["labels"]) if manifest.get("labels") is not None else None
    return CachedDataset(latents, positive, labels, tuple(manifest.get("style_names") or ()), manifest)
