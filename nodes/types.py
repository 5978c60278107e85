"""The pack's own ComfyUI socket types."""

from comfy_api.latest import io

OrthoHydraAdapterType = io.Custom("ORTHO_HYDRA")
StyleProfileType = io.Custom("STYLE_PROFILE")
RouterTraceType = io.Custom("ROUTER_TRACE")
