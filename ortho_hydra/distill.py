"""Training form -> runtime form, with λ wholly on the up side (exact under any Hydra runtime)."""

from __future__ import annotations

import torch

from .runtime import ExpertLayer
from .trainable import OrthoHydraLinear


@torch.no_grad()
def distill(layer: OrthoHydraLinear) -> ExpertLayer:
    """Freeze the Cayley factors: ``down = Q_eff``, ``up_e = P_eff_e diag(λ)``, router as trained."""
    live = layer.as_runtime()
    return live.with_tensors(**{name: t.detach().float().clone().contiguous() for name, t in live.tensors().items()})
