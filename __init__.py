"""comfyui-ortho-hydra: registers the Ortho-Hydra nodes with ComfyUI (V3 extension API).

Node modules are imported when ComfyUI asks for the extension, so ``ortho_hydra`` stays importable
(and testable) without a ComfyUI host.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import OrthoHydraExtension

    return OrthoHydraExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
