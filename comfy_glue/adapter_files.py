"""Adapter files through folder_paths, parsed once per (path, size, mtime)."""

from __future__ import annotations

import os
import re
import threading

import folder_paths

from ortho_hydra import Adapter, OrthoHydraError, load
from ortho_hydra.moe_format import describe
from ortho_hydra.training_state import RESUME_SUFFIX

_cache: dict[tuple, Adapter] = {}
_lock = threading.Lock()
_MAX_ENTRIES = 8


_kinds: dict[tuple, bool] = {}


def _is_adapter(name: str) -> bool:
    """Whether a file's header holds routed experts (any kind this pack loads); read once per (path, size, mtime)."""
    try:
        key = file_fingerprint(name)
    except (OrthoHydraError, OSError):
        return False
    if key not in _kinds:
        for stale in [k for k in _kinds if k[0] == key[0]]:  # a rewritten file: forget its old verdict
            del _kinds[stale]
        try:
            describe(key[0])
            _kinds[key] = True
        except (OrthoHydraError, OSError, ValueError):
            _kinds[key] = False
    return _kinds[key]


def adapter_choices() -> list[str]:
    """Files in ``models/loras`` a user can pick: mixture-of-experts adapters first, then every other file (plain
    LoRAs, which the loader refuses by name and the expert bank takes), each part in ComfyUI's order.  Resume files
    live in their own folder and are never listed."""
    names = [n for n in folder_paths.get_filename_list("loras") if not n.endswith(RESUME_SUFFIX)]
    kinds = {n: n.endswith(".safetensors") and _is_adapter(n) for n in names}
    return [n for n in names if kinds[n]] + [n for n in names if not kinds[n]]


def resolve(name: str) -> str:
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise OrthoHydraError(f"'{name}' is not in models/loras.", path=name, key="lora_name",
                              fix="put the file in ComfyUI/models/loras and refresh (press R) the node list")
    return path


def file_fingerprint(name: str) -> tuple:
    """What makes a cached parse stale: a retrained file changes size or mtime."""
    path = resolve(name)
    st = os.stat(path)
    return path, st.st_size, st.st_mtime_ns


def load_cached(name: str, router_correction: str = "training") -> Adapter:
    key = (*file_fingerprint(name), router_correction)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    adapter = load(key[0], router_correction=router_correction)
    with _lock:
        for stale in [k for k in _cache if k[0] == key[0]]:
            del _cache[stale]
        while len(_cache) >= _MAX_ENTRIES:
            del _cache[next(iter(_cache))]
        _cache[key] = adapter
    return adapter


def validation_error(name: str) -> str | None:
    """A message for ComfyUI's /prompt validation (a 400 naming the file), or None when the file looks right.

    Only the header is read: cheap enough for every queued prompt.
    """
    try:
        describe(resolve(name))
    except OrthoHydraError as exc:
        return str(exc)
    return None


_SAFE_NAME = re.compile(r"^[\w\- .]+$")


def checked_file_name(name: str, key: str) -> str:
    """A user-typed file name for models/: letters, digits, '-', '_', '.' and spaces, no leading dot."""
    if not _SAFE_NAME.match(name) or name.startswith("."):
        raise OrthoHydraError(f"'{name}' is not a safe file name.", key=key,
                              fix="use letters, digits, '-', '_', '.' and spaces")
    return name


def lora_output_path(name: str, key: str) -> str:
    """Where a node writes a file named by the user: ``models/loras/<name>[.safetensors]``, the name checked."""
    checked_file_name(name, key)
    return os.path.join(folder_paths.get_folder_paths("loras")[0],
                        name if name.endswith(".safetensors") else f"{name}.safetensors")
