"""ComfyUI node classes (V3 schema): thin declarations that call into the glue (``comfy_glue``) and the core
(``ortho_hydra``).  Every module here defines node classes only; nothing outside this package imports it but the
pack's ``__init__``, tests and tools."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from ..comfy_glue.model_folders import register_folders
from ..comfy_glue.web_routes import register_routes
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
from .style_profiles import OrthoHydraCaptureStyle, OrthoHydraLoadStyle, OrthoHydraSaveStyle
from .train import OrthoHydraTrain
from .transfer import OrthoHydraTransfer

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


register_folders()
register_routes()


class OrthoHydraExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> OrthoHydraExtension:
    return OrthoHydraExtension()
