"""ComfyUI node classes: thin translations between ComfyUI types and ``ortho_hydra``."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .bake import OrthoHydraBakeLoRA
from .dataset_cache import OrthoHydraCacheDataset
from .demo_conditioning import OrthoHydraDemoConditioning
from .expert_bank import OrthoHydraLoraBank
from .gallery import OrthoHydraExpertGallery
from .latent_preview import OrthoHydraLatentPreview
from .load_apply import OrthoHydraApply, OrthoHydraLoadAndApply, OrthoHydraLoader
from .router import OrthoHydraRouter
from .router_fit import OrthoHydraFitRouter
from .router_trace import OrthoHydraRouterTrace
from .save_plot import OrthoHydraPlotTraining, OrthoHydraSave
from .slots import OrthoHydraMergeSlots
from .style_folders import OrthoHydraLoadStyleFolders
from .style_profiles import OrthoHydraCaptureStyle, OrthoHydraLoadStyle, OrthoHydraSaveStyle, register_profile_folder
from .train import OrthoHydraTrain
from .transfer import OrthoHydraTransfer
from .web_routes import register_routes

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
