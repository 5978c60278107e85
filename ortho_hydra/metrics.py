"""Router diagnostics and the load-balancing loss (all on gate matrices of shape (B, E))."""

from __future__ import annotations

import math

import torch


def normalized_entropy(gates: torch.Tensor) -> torch.Tensor:
    """Per-sample ``H(g) / ln E`` in [0, 1]; 1 is the uniform prior."""
    g = gates.double().clamp_min(0)
    num_experts = g.shape[-1]
    if num_experts < 2:
        return torch.zeros(g.shape[:-1], dtype=g.dtype, device=g.device)
    h = -(torch.where(g > 0, g * g.log(), torch.zeros_like(g))).sum(-1)
    return h / math.log(num_experts)


def kl_to_uniform(gates: torch.Tensor) -> torch.Tensor:
    """KL(mean gate || uniform) over the batch, in nats."""
    mean = gates.double().reshape(-1, gates.shape[-1]).mean(0).clamp_min(0)
    num_experts = mean.shape[-1]
    terms = torch.where(mean > 0, mean * (mean * num_experts).log(), torch.zeros_like(mean))
    return terms.sum()


def mean_gate_kl(p: torch.Tensor, q: torch.Tensor, floor: float = 1e-12) -> float:
    """Mean over rows of KL(p_row ‖ q_row) between two gate matrices of one shape, in nats (fp64; each entry floored
    at ``floor`` so a gate that is exactly 0 in one stays finite)."""
    ps, qs = p.double().clamp_min(floor), q.double().clamp_min(floor)
    return float((ps * (ps.log() - qs.log())).sum(-1).mean())


def expert_usage(gates: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose argmax is each expert, shape (E,)."""
    flat = gates.reshape(-1, gates.shape[-1])
    counts = torch.bincount(flat.argmax(-1), minlength=flat.shape[-1]).double()
    return counts / max(flat.shape[0], 1)


def balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """Switch-style ``E * sum_i f_i * mean_g_i``; f (argmax fractions) carries no gradient."""
    flat = gates.reshape(-1, gates.shape[-1])
    fractions = expert_usage(flat.detach()).to(flat.dtype)
    return flat.shape[-1] * (fractions * flat.mean(0)).sum()


def style_purity(labels: torch.Tensor, assignments: torch.Tensor, num_experts: int) -> float:
    """Normalised mutual information between style labels and argmax experts.

    NMI = I(S; X) / sqrt(H(S) H(X)), 0 when either side is constant.  Entropy alone cannot
    tell routing-by-style from routing-by-noise; this can.
    """
    labels = labels.reshape(-1).long()
    assignments = assignments.reshape(-1).long()
    num_styles = int(labels.max().item()) + 1
    joint = torch.zeros(num_styles, num_experts, dtype=torch.float64)
    joint.index_put_((labels, assignments), torch.ones_like(labels, dtype=torch.float64), accumulate=True)
    joint /= joint.sum()
    ps, px = joint.sum(1), joint.sum(0)

    def entropy(p: torch.Tensor) -> float:
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    hs, hx = entropy(ps), entropy(px)
    if hs <= 0 or hx <= 0:
        return 0.0
    nz = joint > 0
    mi = float((joint[nz] * (joint[nz] / (ps[:, None] * px[None, :])[nz]).log()).sum())
    return mi / math.sqrt(hs * hx)
