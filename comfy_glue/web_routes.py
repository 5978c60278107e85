"""Small HTTP routes for the front-end extension (registered when ComfyUI's server is running)."""

from __future__ import annotations

import logging

from ortho_hydra import OrthoHydraError
from ortho_hydra.moe_format import describe

from .adapter_files import adapter_choices, resolve

log = logging.getLogger("ortho_hydra")


def experts_response(name: str | None) -> tuple[int, dict]:
    """(status, body) for GET /ortho_hydra/experts?lora_name=…; only names folder_paths lists are read."""
    if not name or name not in adapter_choices():
        return 400, {"error": f"unknown adapter {name!r}: pick a file listed in models/loras"}
    try:
        return 200, {"lora_name": name, **describe(resolve(name))}
    except OrthoHydraError as exc:
        return 400, {"error": str(exc)}


def register_routes() -> bool:
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return False
    if getattr(PromptServer, "instance", None) is None:
        return False

    @PromptServer.instance.routes.get("/ortho_hydra/experts")
    async def experts(request):
        status, body = experts_response(request.query.get("lora_name"))
        return web.json_response(body, status=status)

    return True
