"""Style-profile nodes: capture a profile from a reference latent, save and load it
(:mod:`comfy_glue.style_profiles`)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError
from ortho_hydra.profiles import StyleProfile, load_profile, save_profile

from ..comfy_glue import menus
from ..comfy_glue.adapter_files import checked_file_name
from ..comfy_glue.model_folders import PROFILE_FOLDER, register_folder
from ..comfy_glue.style_profiles import capture, parse_percents, profile_dir
from ..comfy_glue.types import StyleProfileType, reported


class OrthoHydraCaptureStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraCaptureStyle",
            display_name="Ortho-Hydra Capture Style Profile",
            category=menus.STYLE,
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
        profile = capture(model, latent["samples"], conditioning, parse_percents(percents), seed, name)
        usage = ", ".join(f"{n}: {w:.2f}" for n, w in zip(profile.expert_names, profile.mean_usage(), strict=False))
        summary = f"profile '{name}' over {len(profile.layers)} layers; mean usage {usage}"
        return reported(profile, summary, text=summary)


class OrthoHydraSaveStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraSaveStyle",
            display_name="Ortho-Hydra Save Style Profile",
            category=menus.STYLE,
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
        return reported(path, text=f"saved {path}")


class OrthoHydraLoadStyle(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_folder(PROFILE_FOLDER)
        return io.Schema(
            node_id="OrthoHydraLoadStyle",
            display_name="Ortho-Hydra Load Style Profile",
            category=menus.STYLE,
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
