"""ComfyUI node classes: thin translations between ComfyUI types and ``ortho_hydra``."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from ..comfy_glue.dataset_cache import OrthoHydraCacheDataset
from ..comfy_glue.lora_bank import OrthoHydraLoraBank
from ..comfy_glue.router_fit import OrthoHydraFitRouter
from ..comfy_glue.style_folders import OrthoHydraLoadStyleFolders
from ..comfy_glue.style_profiles import (
    OrthoHydraCaptureStyle,
    OrthoHydraLoadStyle,
    OrthoHydraSaveStyle,
    register_profile_folder,
)
from ..comfy_glue.transfer import OrthoHydraTransfer
from ..comfy_glue.web_routes import register_routes
from .bake import OrthoHydraBakeLoRA
from .demo_conditioning import OrthoHydraDemoConditioning
from .gallery import OrthoHydraExpertGallery
from .latent_preview import OrthoHydraLatentPreview
from .load_apply import OrthoHydraApply, OrthoHydraLoadAndApply, OrthoHydraLoader
from .router import OrthoHydraRouter
from .router_trace import OrthoHydraRouterTrace
from .save_plot import OrthoHydraPlotTraining, OrthoHydraSave
from .slots import OrthoHydraMergeSlots
from .train import OrthoHydraTrain

NODES: list[type[io.ComfyNode]] = [
    OrthoHydraLoader,
    OrthoHydraApply,
    OrthoHydraLoadAndApply,
    OrthoHydraRouter,
    OrthoHydraRouterTrace,
    OrthoHydraCaptureStyle,
    OrthoHydraSaveStyle,
    OrthoHydraLoadStyle,
    OrthoHydraBakeLoRA,
    OrthoHydraExpertGallery,
    OrthoHydraLoadStyleFolders,
    OrthoHydraTrain,
    OrthoHydraCacheDataset,
    OrthoHydraMergeSlots,
    OrthoHydraLoraBank,
    OrthoHydraFitRouter,
    OrthoHydraTransfer,
    OrthoHydraSave,
    OrthoHydraPlotTraining,
    OrthoHydraDemoConditioning,
    OrthoHydraLatentPreview,
]


register_profile_folder()
register_routes()


class OrthoHydraExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> OrthoHydraExtension:
    return OrthoHydraExtension()
