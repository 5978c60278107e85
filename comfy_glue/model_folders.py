"""The pack's own folders under ComfyUI's ``models/``, registered with ``folder_paths`` (so extra_model_paths.yaml
can move them and the file lists see them): style profiles, and the trainer's resume files apart from the LoRAs."""

from __future__ import annotations

import os

import folder_paths

PROFILE_FOLDER = "ortho_hydra_profiles"  # *.json style profiles
RESUME_FOLDER = "ortho_hydra_resume"  # the trainer's *.resume.safetensors (optimizer state, step, data order)
FOLDERS = {PROFILE_FOLDER: {".json"}, RESUME_FOLDER: {".safetensors"}}


def register_folder(name: str) -> None:
    """models/<name>, unless ComfyUI (or a user's extra paths) registered it already."""
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([os.path.join(folder_paths.models_dir, name)], set(FOLDERS[name]))


def register_folders() -> None:
    for name in FOLDERS:
        register_folder(name)


def folder_dir(name: str) -> str:
    """The folder new files of this kind are written to (the first registered path), created when missing."""
    register_folder(name)
    path = folder_paths.get_folder_paths(name)[0]
    os.makedirs(path, exist_ok=True)
    return path
