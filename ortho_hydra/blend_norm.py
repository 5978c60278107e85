"""Global-norm control for a hand blend: one factor over every layer in scope, so that blending N nearly
orthogonal styles does not overdrive the image (the blend's energy grows like √N when the parts are orthogonal).

With mixing weights m (the gate, minus 1/E for a centered router), the blend adds ``ΔW = s Σ_e m_e up_e D`` per
layer.  The factor c makes ``‖c·ΔW‖`` over all layers in scope equal the strongest single part ``max_e ‖m_e s up_e
D‖`` (global Frobenius norms).  Norms come from r x r Gram matrices, never from an (out, in) ΔW.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .runtime import ExpertLayer


def _gram(layer: ExpertLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, r, r) ``s² up_eᵀ up_f`` blocks stacked as (E, E, r, r), and ``D Dᵀ`` (r, r), in fp64."""
    ups = layer.ups.double() * layer.scale  # (E, out, r)
    down = layer.folded_down(torch.float64)
    return torch.einsum("eor,fos->efrs", ups, ups), down @ down.T


def _norm_sq(cross: torch.Tensor, dd: torch.Tensor, mixing: torch.Tensor) -> float:
    """‖Σ_e m_e up_e D‖²_F = Σ_ef m_e m_f tr(up_eᵀ up_f D Dᵀ)."""
    traces = torch.einsum("efrs,sr->ef", cross, dd)
    return float(mixing @ traces @ mixing)


def global_norm_factor(layers: Iterable[ExpertLayer], gate: torch.Tensor) -> float:
    """The factor on the mixing weights that gives the blend the norm of its strongest part (1 for a single part)."""
    blend, parts = 0.0, None
    for layer in layers:
        mixing = layer.router.mixing_weights(gate.double())
        cross, dd = _gram(layer)
        blend += _norm_sq(cross, dd, mixing)
        single = torch.tensor([_norm_sq(cross, dd, torch.nn.functional.one_hot(torch.tensor(e), len(mixing))
                                        .double() * mixing[e]) for e in range(len(mixing))], dtype=torch.float64)
        parts = single if parts is None else parts + single
    if parts is None or blend <= 0:
        return 1.0
    return float(parts.max().sqrt()) / blend ** 0.5


def scaled_gate(gate: torch.Tensor, factor: float, centered: bool) -> torch.Tensor:
    """The gate whose mixing weights are ``factor`` times ``gate``'s."""
    num = gate.shape[-1]
    mixing = gate - 1.0 / num if centered else gate
    return mixing * factor + (1.0 / num if centered else 0.0)
