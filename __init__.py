"""comfyui-ortho-hydra: registers the Ortho-Hydra nodes with ComfyUI (V3 extension API).

The core library has one import identity, the top-level name ``ortho_hydra``, whether it is reached from
ComfyUI (which imports this folder under its directory name), from tests or from scripts: two copies of it would
hold two ``ExpertLayer`` classes, and objects from one would not be recognised by the other.  Node modules are
imported when ComfyUI asks for the extension, so the core stays importable (and testable) without a host.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

WEB_DIRECTORY = "./web"
_CORE = "ortho_hydra"
_CORE_DIR = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), _CORE)


def _load_core():
    core = _sys.modules.get(_CORE)
    if core is None:
        spec = _importlib_util.spec_from_file_location(_CORE, _os.path.join(_CORE_DIR, "__init__.py"),
                                                       submodule_search_locations=[_CORE_DIR])
        core = _importlib_util.module_from_spec(spec)
        _sys.modules[_CORE] = core
        try:
            spec.loader.exec_module(core)
        except BaseException:
            del _sys.modules[_CORE]
            raise
    elif _os.path.realpath(_os.path.dirname(core.__file__)) != _os.path.realpath(_CORE_DIR):
        raise ImportError(f"another package named '{_CORE}' is already imported from {core.__file__}; "
                          f"comfyui-ortho-hydra needs its own ({_CORE_DIR}). Remove or rename the other one.")
    _sys.modules[f"{__name__}.{_CORE}"] = core  # `import <pack>.ortho_hydra` gives the same module object
    return core


ortho_hydra = _load_core()


async def comfy_entrypoint():
    from .nodes import OrthoHydraExtension

    return OrthoHydraExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
