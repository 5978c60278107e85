"""Training form -> runtime form, with λ wholly on the up side (exact under any Hydra runtime)."""

from __future__ import annotations

import torch

from .runtime import ExpertLayer
from .trainable import OrthoHydraLinear


@torch.no_grad()
def distill(layer: OrthoHydraLinear) -> ExpertLayer:
    """Freeze the Cayley factors: ``down = Q_eff``, ``up_e = P_eff_e diag(λ)``, router as trained."""
    down, ups = layer.factors()
    return ExpertLayer(
        name=layer.name,
        down=down.detach().float().contiguous(),
        ups=ups.detach().float().contiguous(),
        router_weight=layer.router.weight.detach().float().clone(),
        router_bias=layer.router.bias.detach().float().clone(),
        alpha=layer.alpha,
        router=layer.router_spec,
    )
