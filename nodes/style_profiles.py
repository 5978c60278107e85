"""Capture a style profile from a reference latent, and keep profiles as small JSON files."""

from __future__ import annotations

import os

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError
from ortho_hydra.profiles import StyleProfile, adapter_fingerprint, load_profile, save_profile

from .adapter_files import checked_file_name
from .gate_recording import recording
from .types import StyleProfileType
from .widgets import parse_list

PROFILE_FOLDER = "ortho_hydra_profiles"


def register_profile_folder() -> None:
    """models/ortho_hydra_profiles, for *.json style profiles."""
    if PROFILE_FOLDER not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, PROFILE_FOLDER)
        folder_paths.folder_names_and_paths[PROFILE_FOLDER] = ([path], {".json"})


def profile_dir() -> str:
    register_profile_folder()
    path = folder_paths.get_folder_paths(PROFILE_FOLDER)[0]
    os.makedirs(path, exist_ok=True)
    return path


def capture(model, latent: torch.Tensor, conditioning, percents: list[float], seed: int, name: str) -> StyleProfile:
    """Run the patched DiT once per σ level (cfg 1: positive rows only) and average each layer's gate."""
    sampling = model.get_model_object("model_sampling")
    sampler = comfy.samplers.sampler_object("euler")
    noise = comfy.sample.prepare_noise(latent, seed)
    pbar = comfy.utils.ProgressBar(len(percents))
    with recording(model, fix="capture from a live (unpinned) adapter: connect Apply Ortho-Hydra's output to the "
                              "capture node") as gates:
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


def _percents(text: str) -> list[float]:
    values = parse_list(text, float, key="percents", example="0.2, 0.5, 0.8")
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise OrthoHydraError(f"percents must be in [0, 1), got {values}.", key="percents", fix="e.g. 0.2, 0.5, 0.8")
    return values


class OrthoHydraCaptureStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraCaptureStyle",
            display_name="Capture Ortho-Hydra Style",
            category="loaders/ortho_hydra",
            description="Runs the router-live model on a reference latent (a VAE-encoded image of the style) at a "
                        "few noise levels and records each layer's mean gate: a profile you can replay at zero "
                        "cost with the router node.",
            inputs=[
                io.Model.Input("model", tooltip="The model patched by Apply Ortho-Hydra (router-live)."),
                io.Latent.Input("latent", tooltip="The reference: a VAE-encoded image of the style."),
                io.Conditioning.Input("conditioning", tooltip="Conditioning for the reference (its caption)."),
                io.String.Input("percents", default="0.2, 0.5, 0.8",
                                tooltip="Noise levels as fractions of the denoise (0 = pure noise end)."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Noise seed; same seed, same profile."),
                io.String.Input("name", default="style", tooltip="Profile name."),
            ],
            outputs=[StyleProfileType.Output(display_name="profile"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, percents: str, seed: int, name: str) -> io.NodeOutput:
        profile = capture(model, latent["samples"], conditioning, _percents(percents), seed, name)
        usage = ", ".join(f"{n}: {w:.2f}" for n, w in zip(profile.expert_names, profile.mean_usage(), strict=False))
        return io.NodeOutput(profile, f"profile '{name}' over {len(profile.layers)} layers; mean usage {usage}")


class OrthoHydraSaveStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraSaveStyle",
            display_name="Save Ortho-Hydra Style",
            category="loaders/ortho_hydra",
            description="Saves a style profile as models/ortho_hydra_profiles/<name>.json.",
            inputs=[StyleProfileType.Input("profile", tooltip="The profile to save."),
                    io.String.Input("name", default="style", tooltip="File name (letters, digits, - _ . space).")],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, profile: StyleProfile, name: str) -> io.NodeOutput:
        checked_file_name(name, "name")
        path = os.path.join(profile_dir(), f"{name}.json")
        save_profile(profile, path)
        return io.NodeOutput(path)


class OrthoHydraLoadStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_profile_folder()
        return io.Schema(
            node_id="OrthoHydraLoadStyle",
            display_name="Load Ortho-Hydra Style",
            category="loaders/ortho_hydra",
            description="Loads a saved style profile; the router node checks it belongs to the adapter.",
            inputs=[io.Combo.Input("profile_name", options=folder_paths.get_filename_list(PROFILE_FOLDER),
                                   tooltip="A profile from models/ortho_hydra_profiles.")],
            outputs=[StyleProfileType.Output(display_name="profile")],
        )

    @classmethod
    def validate_inputs(cls, profile_name: str) -> bool | str:
        path = folder_paths.get_full_path(PROFILE_FOLDER, profile_name)
        if path is None:
            return f"'{profile_name}' is not in models/{PROFILE_FOLDER}. Fix: save a profile first, then refresh."
        try:
            load_profile(path)
        except OrthoHydraError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, profile_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_profile(folder_paths.get_full_path_or_raise(PROFILE_FOLDER, profile_name)))
