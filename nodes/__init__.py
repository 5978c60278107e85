"""ComfyUI node classes: thin translations between ComfyUI types and ``ortho_hydra``."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .demo_conditioning import OrthoHydraDemoConditioning
from .latent_preview import OrthoHydraLatentPreview
from .load_apply import OrthoHydraApply, OrthoHydraLoadAndApply, OrthoHydraLoader

NODES: list[type[io.ComfyNode]] = [
    OrthoHydraLoader,
    OrthoHydraApply,
    OrthoHydraLoadAndApply,
    OrthoHydraDemoConditioning,
    OrthoHydraLatentPreview,
]


class OrthoHydraExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> OrthoHydraExtension:
    return OrthoHydraExtension()
