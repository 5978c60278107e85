"""Boot a ComfyUI install as a library and import this pack the way ComfyUI does (shared with ``devkit.host``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_MODULE = "comfyui_ortho_hydra"


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit``, else ``$COMFYUI_DIR``, else the ComfyUI this pack sits in (``custom_nodes/<pack>``), else the
    project's own test host (``.host/ComfyUI``, made by ``make setup``)."""
    candidates = [explicit, os.environ.get("COMFYUI_DIR"), PACK_ROOT.parents[1], PACK_ROOT / ".host" / "ComfyUI"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "main.py").is_file() and (Path(candidate) / "comfy").is_dir():
            return Path(candidate).resolve()
    raise FileNotFoundError("no ComfyUI found: pass --comfyui DIR or set COMFYUI_DIR (the folder with main.py), or "
                            "run `make setup` for the project's own")


def boot(comfy_dir: Path, cpu: bool) -> None:
    """Put ComfyUI first on sys.path and select its device before comfy.model_management is imported."""
    if str(comfy_dir) in sys.path:
        sys.path.remove(str(comfy_dir))
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management

    # Bind `nodes` to ComfyUI's module: this pack's own `nodes` package must not shadow it.
    shadow = sys.modules.get("nodes")
    if shadow is not None and Path(getattr(shadow, "__file__", "") or "").resolve().parent != comfy_dir.resolve():
        del sys.modules["nodes"]
    import nodes  # noqa: F401


def import_pack(root: Path = PACK_ROOT) -> ModuleType:
    """This repository (or another checkout of the pack at ``root``: a benchmark's earlier trainer) as the custom-node
    package ComfyUI would see (after :func:`boot`).  One process holds one checkout's pack."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    for sub in ("ortho_hydra", "nodes"):
        importlib.import_module(f"{PACK_MODULE}.{sub}")
    return module
