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

    import nodes

    # The pack's node package is only ever `<PACK_MODULE>.nodes` (it imports the glue relatively, so it cannot load
    # as a top-level `nodes`): the top-level name is ComfyUI's, and a different one means another folder shadows it.
    if Path(nodes.__file__).resolve() != (comfy_dir / "nodes.py").resolve():
        raise ImportError(f"`nodes` is {nodes.__file__}, not ComfyUI's {comfy_dir / 'nodes.py'}: something imported "
                          "another module by that name first. Fix: import the pack as a package (import_pack), "
                          "never its nodes/ folder by a top-level name")


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
