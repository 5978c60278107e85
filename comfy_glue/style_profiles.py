"""Capture a style profile from a reference latent, and keep profiles as small JSON files."""

from __future__ import annotations

import os

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ortho_hydra import OrthoHydraError
from ortho_hydra.profiles import StyleProfile, adapter_fingerprint
from ortho_hydra.text_lists import parse_list

from .gate_recording import recording
from .model_folders import PROFILE_FOLDER, folder_dir


def profile_dir() -> str:
    return folder_dir(PROFILE_FOLDER)


def capture(model, latent: torch.Tensor, conditioning, percents: list[float], seed: int, name: str) -> StyleProfile:
    """Run the patched DiT once per σ level (cfg 1: positive rows only) and average each layer's gate."""
    sampling = model.get_model_object("model_sampling")
    sampler = comfy.samplers.sampler_object("euler")
    noise = comfy.sample.prepare_noise(latent, seed)
    pbar = comfy.utils.ProgressBar(len(percents))
    with recording(model, fix="capture from a live (unpinned) adapter: connect Ortho-Hydra Apply Adapter's output to "
                              "the capture node") as gates:
        for percent in percents:
            comfy.model_management.throw_exception_if_processing_interrupted()
            sigma = float(sampling.percent_to_sigma(percent))
            sigmas = torch.tensor([sigma, 0.0])
            comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, conditioning, conditioning, latent,
                                       disable_pbar=True, seed=seed)
            pbar.update(1)
    records, adapter = gates.records(), gates.adapter
    layers = {}
    for layer_name, entries in records.items():
        rows = []
        for entry in entries:
            gate = entry["gate"]
            if entry["uncond_rows"] is not None:
                gate = gate[~entry["uncond_rows"]]
            rows.append(gate)
        mean = torch.cat(rows).double().mean(0).clamp_min(0)  # recordings hold the distribution, never centered
        layers[layer_name] = (mean / mean.sum()).tolist()
    return StyleProfile(name=name, adapter_hash=adapter_fingerprint(adapter), num_experts=adapter.num_experts,
                        layers=layers, expert_names=adapter.display_expert_names(),
                        sigmas=[float(sampling.percent_to_sigma(p)) for p in percents],
                        source=os.path.basename(adapter.path or "adapter"))


def parse_percents(text: str) -> list[float]:
    values = parse_list(text, float, key="percents", example="0.2, 0.5, 0.8")
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise OrthoHydraError(f"percents must be in [0, 1), got {values}.", key="percents", fix="e.g. 0.2, 0.5, 0.8")
    return values


