"""Boot the real ComfyUI installed by ``make setup`` as a library, on the CPU."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
COMFY_DIR = ROOT / ".host" / "ComfyUI"
PACK_MODULE = "comfyui_ortho_hydra"


def boot(cpu: bool | None = None) -> Path:
    """Put ComfyUI on sys.path and select its device before comfy.model_management is imported."""
    if not (COMFY_DIR / "main.py").is_file():
        raise RuntimeError(f"ComfyUI host not found at {COMFY_DIR}; run `make setup` first")
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    import comfy.cli_args

    if cpu is None:
        cpu = os.environ.get("OH_DEVICE", "cpu") == "cpu"
    comfy.cli_args.args.cpu = cpu
    import comfy.model_management

    # Bind the name `nodes` to ComfyUI's module now: tests also put this repository on sys.path, where `nodes` is
    # the pack's own package, and whichever is imported first wins for the whole process.
    shadow = sys.modules.get("nodes")
    if shadow is not None and Path(getattr(shadow, "__file__", "") or "").resolve().parent != COMFY_DIR.resolve():
        del sys.modules["nodes"]
    sys.path.remove(str(COMFY_DIR))
    sys.path.insert(0, str(COMFY_DIR))
    import nodes  # noqa: F401

    return COMFY_DIR


def import_pack() -> ModuleType:
    """Import this repository as the custom-node package ComfyUI would see."""
    boot()
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    for sub in ("ortho_hydra", "nodes"):  # the pack imports these lazily; tests want them now
        importlib.import_module(f"{PACK_MODULE}.{sub}")
    return module
