"""No module of the core (``ortho_hydra/``) imports ComfyUI, or the pack's ComfyUI glue, anywhere (read statically,
function-level and type-checking imports included): the core is pure torch and runs without a host."""

import os
from pathlib import Path

from imports import ROOT, file_imports, imported_names, sources

# ComfyUI's top-level modules and packages, as of the hosts we test (0.3.75 and 0.33); the test host's own tree adds
# whatever a newer release has
COMFYUI = {"comfy", "comfy_api", "comfy_api_nodes", "comfy_config", "comfy_execution", "comfy_extras", "folder_paths",
           "nodes", "node_helpers", "latent_preview", "execution", "server", "main", "cuda_malloc",
           "hook_breaker_ac10a0", "protocol", "new_updater", "app", "api_server", "middleware", "utils", "alembic_db",
           "comfyui_version"}
OURS_GLUE = {"ortho_hydra_train", "devkit", "bench", "experiments"}  # the pack's nodes/ is "nodes" above


def host_modules() -> set[str]:
    """Top-level names the test host's ComfyUI tree can be imported by (when it is installed)."""
    comfy = Path(os.environ.get("OH_COMFYUI") or ROOT / ".host" / "ComfyUI")
    if not comfy.is_dir():
        return set()
    return {p.stem for p in comfy.glob("*.py")} | {p.name for p in comfy.iterdir() if p.is_dir()
                                                    and any(p.glob("*.py"))}


def host_imports(names: set[str], forbidden: set[str]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in forbidden)


def test_the_check_sees_comfyui_imports_anywhere():
    source = ("import torch\nfrom .math import f\n\ndef g():\n    import comfy.model_management as mm\n"
              "    from folder_paths import get_full_path\n")
    assert host_imports(imported_names(source, "ortho_hydra.example"), COMFYUI) == [
        "comfy.model_management", "folder_paths.get_full_path"]
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import comfy_extras.nodes_train as t\n"
    assert host_imports(imported_names(typing_only, "ortho_hydra.example"), COMFYUI) == ["comfy_extras.nodes_train"]


def test_no_core_module_imports_comfyui_or_the_glue():
    forbidden = COMFYUI | host_modules() | OURS_GLUE
    forbidden -= {"ortho_hydra", "tests", "custom_nodes", "models", "input", "output", "user", "temp"}
    core = sources("ortho_hydra")
    assert len(core) > 20
    found = {str(p.relative_to(ROOT)): host_imports(file_imports(p), forbidden) for p in core}
    assert {path: names for path, names in found.items() if names} == {}
