"""What the studies read off recorded gates: routing purity and collapse, per routed layer.

Pure torch: unit-tested on synthetic gates (``tests/unit/test_style_separation_metrics.py``).
"""

from __future__ import annotations

import statistics

import torch

from ortho_hydra import metrics

COLLAPSE_SHARE = 0.9  # one expert is the argmax for >= this share of samples: the layer collapsed
UNIFORM_TOL = 1e-3  # a sample whose max gate is within this of 1/E is unassigned


def routing_purity(gates: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    """NMI(style, argmax expert), averaged over routed layers; ``gates[layer]`` is (N, E), rows as ``labels``."""
    if not gates:
        return float("nan")
    values = []
    for gate in gates.values():
        values.append(metrics.style_purity(labels, gate.argmax(-1), gate.shape[-1]))
    return statistics.fmean(values)


def layer_collapse(gate: torch.Tensor, share: float = COLLAPSE_SHARE, tol: float = UNIFORM_TOL) -> tuple[bool, bool]:
    """(collapsed, uniform) for one layer's (N, E) gates.

    A sample is *unassigned* when its max gate is within ``tol`` of 1/E (the router has no opinion).  The layer
    *collapsed* when one expert is the argmax of at least ``share`` of all N samples (unassigned ones count in
    N, never for an expert); it is *uniform* when at least ``share`` of the samples are unassigned.
    """
    num = gate.shape[0]
    num_experts = gate.shape[-1]
    top, arg = gate.max(-1)
    assigned = top > 1.0 / num_experts + tol
    counts = torch.bincount(arg[assigned], minlength=num_experts)
    collapsed = bool(num) and int(counts.max()) >= share * num
    uniform = bool(num) and int((~assigned).sum()) >= share * num
    return collapsed, uniform


def collapse_share(gates: dict[str, torch.Tensor], share: float = COLLAPSE_SHARE,
                   tol: float = UNIFORM_TOL) -> tuple[float, float]:
    """(share of routed layers that collapsed, share that are uniform); NaN without routed layers."""
    if not gates:
        return float("nan"), float("nan")
    flags = [layer_collapse(g, share, tol) for g in gates.values()]
    return (sum(c for c, _ in flags) / len(flags), sum(u for _, u in flags) / len(flags))
