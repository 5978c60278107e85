"""Boot the real ComfyUI installed by ``make setup`` as a library, on the CPU."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from ortho_hydra_train import host as comfy_host

ROOT = Path(__file__).resolve().parents[1]
# `make test-host HOST=...` points this at another host's copy (.hosts/comfyui-<version>/ComfyUI).
COMFY_DIR = Path(os.environ.get("OH_COMFYUI") or ROOT / ".host" / "ComfyUI").resolve()
PACK_MODULE = comfy_host.PACK_MODULE


def boot(cpu: bool | None = None) -> Path:
    """Put the test host's ComfyUI on sys.path and select its device before comfy.model_management is imported."""
    if not (COMFY_DIR / "main.py").is_file():
        raise RuntimeError(f"ComfyUI host not found at {COMFY_DIR}; run `make setup` first")
    if cpu is None:
        cpu = os.environ.get("OH_DEVICE", "cpu") == "cpu"
    comfy_host.boot(COMFY_DIR, cpu)
    return COMFY_DIR


def import_pack() -> ModuleType:
    """Import this repository as the custom-node package ComfyUI would see."""
    boot()
    return comfy_host.import_pack()
