"""Boot the real ComfyUI installed by ``make setup`` as a library, on the CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
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


def import_pack(root: Path = ROOT) -> ModuleType:
    """Import this repository (or the checkout at ``root``) as the custom-node package ComfyUI would see."""
    boot()
    return comfy_host.import_pack(Path(root))


@contextlib.contextmanager
def loras_folder(path: str | os.PathLike) -> Iterator[Path]:
    """``path`` as ComfyUI's default "loras" folder (where the trainer and the save nodes write) while the block runs.

    Afterwards ``folder_paths`` is as it was before: every folder list, and the file-list cache (which would otherwise
    keep listing the folder's files, and stat a folder that may be gone).
    """
    boot()
    import folder_paths

    table = folder_paths.folder_names_and_paths
    before = {name: (entry, list(entry[0]), list(entry[1])) for name, entry in table.items()}
    listed = dict(folder_paths.filename_list_cache)
    folder_paths.add_model_folder_path("loras", str(path), is_default=True)
    folder_paths.add_model_folder_path("ortho_hydra_resume", str(path), is_default=True)  # resume files beside
    try:
        yield Path(path)
    finally:
        for name in set(table) - set(before):
            del table[name]
        for name, (entry, folders, extensions) in before.items():  # the same objects, their contents restored
            for container, items in ((entry[0], folders), (entry[1], extensions)):  # extensions: a set or a list
                container.clear()
                (container.update if isinstance(container, set) else container.extend)(items)
            table[name] = entry
        folder_paths.filename_list_cache.clear()
        folder_paths.filename_list_cache.update(listed)
