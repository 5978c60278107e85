"""The widths of the conditioning a diffusion model takes, read from its layers (for demo conditioning)."""

from __future__ import annotations

import torch


def context_widths(model) -> tuple[int, int]:
    """(token width, pooled width) the diffusion model expects; pooled 0 when it has none."""
    dm = model.model.diffusion_model
    token = getattr(getattr(dm, "context_embedder", None), "in_features", None)
    if token is None:
        token = model.model.model_config.unet_config.get("crossattn_emb_channels")
    pooled = 0
    y_embedder = getattr(dm, "y_embedder", None)
    if y_embedder is not None:
        first = next((m for m in y_embedder.modules() if isinstance(m, torch.nn.Linear)), None)
        pooled = first.in_features if first is not None else 0
    if token is None:
        raise ValueError(f"cannot tell the context width of {type(dm).__name__}; this helper supports "
                         "MMDiT (SD3) and Cosmos-style models")
    return int(token), int(pooled)
