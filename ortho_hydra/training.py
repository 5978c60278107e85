"""Host-independent pieces of training: noise-level draws, the router trace, the balance term."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from . import metrics

TIMESTEP_SAMPLING = ("uniform", "logit_normal", "shift")
LR_SCHEDULES = ("constant", "cosine", "linear")


def draw_noise_levels(count: int, mode: str, generator: torch.Generator, shift: float = 3.0) -> torch.Tensor:
    """Noise levels u in (0, 1) (1 = pure noise); the host maps them to its σ via percent = 1 - u.

    uniform: u ~ U(0, 1); logit_normal: u = sigmoid(N(0, 1)), the reference trainer's default; shift: uniform u
    pushed toward noise, u' = s·u / (1 + (s - 1)·u), as SD3-style schedules do.
    """
    if mode not in TIMESTEP_SAMPLING:
        raise ValueError(f"unknown timestep sampling {mode!r}; choose one of {', '.join(TIMESTEP_SAMPLING)}")
    if mode == "logit_normal":
        u = torch.sigmoid(torch.randn(count, generator=generator))
    else:
        u = torch.rand(count, generator=generator)
        if mode == "shift":
            u = shift * u / (1 + (shift - 1) * u)
    return u.clamp(1e-4, 1 - 1e-4)


def fixed_noise(indices: list[int], sample_shape: tuple[int, ...], seed: int, mode: str,
                shift: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One noise level and one noise draw per image, seeded by the run's seed and the image's index, so every step
    sees the same ones (a debugging aid: a set-up that cannot overfit a fixed batch is broken)."""
    levels, noises = [], []
    for i in indices:
        gen = torch.Generator().manual_seed(seed * 7919 + i)
        levels.append(draw_noise_levels(1, mode, gen, shift)[0])
        noises.append(torch.randn(sample_shape, generator=gen))
    return torch.stack(levels), torch.stack(noises)


def step_noise(global_batch: int, sample_shape: tuple[int, ...], seed: int, step: int, micro: int,
               rows: slice) -> torch.Tensor:
    """One micro-batch's noise: drawn for the whole global batch from (seed, step, micro), then this process's
    ``rows``, so N processes draw what one process draws at N times the batch."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 97 + micro)
    return torch.randn((global_batch, *sample_shape), generator=gen)[rows]


def calibration_generator(seed: int) -> torch.Generator:
    """The noise source of the router-calibration pass before step 1 (apart from the training draws)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7)


def total_loss(mse: torch.Tensor, *terms: tuple[float, torch.Tensor | None]) -> torch.Tensor:
    """The training objective: the x0 MSE plus each (weight, term) that is on (weight > 0 and a term was made)."""
    total = mse
    for weight, term in terms:
        if weight and term is not None:
            total = total + weight * term
    return total


def lr_factor(step: int, total_steps: int, schedule: str) -> float:
    """The learning-rate multiplier for update ``step`` (0-based) of ``total_steps``: 1, or a decay towards 0.

    A function of the step alone, so a resumed run (any world size) continues the same curve.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    progress = min(max(step, 0), total_steps) / total_steps
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every parameter group's own base lr (kept in the group, so it survives a state-dict round trip)."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def mean_balance_loss(gates: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Switch-style balance loss averaged over routed modules."""
    losses = [metrics.balance_loss(g) for g in gates.values() if g is not None]
    return torch.stack(losses).mean() if losses else None


class UsageBalance:
    """The Switch balance term ``E · Σ_i f_i · mean_g_i`` with the usage f averaged over recent micro-batches.

    Why: f is the share of samples whose argmax is expert i.  At batch 1 it is one-hot, so the per-batch term
    only flattens each sample's own gate and cannot see that one expert takes every sample; the trainer's default
    batch is 1.  Here f is an exponential moving average over the last ~``memory`` micro-batches (uniform at the
    start), which makes the term about the run's load, as at a large batch.  ``memory`` 1 is the per-batch term.
    """

    def __init__(self, memory: int = 1) -> None:
        if memory < 1:
            raise ValueError(f"balance memory must be >= 1 micro-batch, got {memory}")
        self.decay = 1.0 - 1.0 / memory
        self.usage: dict[str, torch.Tensor] = {}

    def loss(self, gates: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The term averaged over routed modules; updates the running usage with this micro-batch."""
        losses = []
        for name, gate in gates.items():
            if gate is None:
                continue
            flat = gate.reshape(-1, gate.shape[-1])
            experts = flat.shape[-1]
            now = metrics.expert_usage(flat.detach()).double().cpu()
            before = self.usage.get(name, torch.full((experts,), 1.0 / experts, dtype=torch.float64))
            self.usage[name] = self.decay * before + (1.0 - self.decay) * now
            usage = self.usage[name].to(flat.device, flat.dtype)
            losses.append(experts * (usage * flat.mean(0)).sum())
        return torch.stack(losses).mean() if losses else None

    def state(self) -> dict[str, list[float]]:
        return {name: usage.tolist() for name, usage in self.usage.items()}

    def load_state(self, state: Mapping[str, list[float]]) -> None:
        self.usage = {name: torch.tensor(values, dtype=torch.float64) for name, values in state.items()}


def optimizer_groups(network: nn.Module, lr: float, router_lr_scale: float) -> list[dict]:
    """Optimiser parameter groups ``[others at lr, routers at lr · router_lr_scale]``, in registration order.

    A router parameter is any parameter of a submodule named ``router`` (OrthoHydraLinear.router).
    """
    router, others = [], []
    for name, param in network.named_parameters():
        (router if "router" in name.split(".")[:-1] else others).append(param)
    return [{"params": others, "lr": lr}, {"params": router, "lr": lr * router_lr_scale}]


def label_guidance_loss(gates: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor | None:
    """Mean over routed modules of the cross-entropy ``−log g[label]`` between each sample's gate and its label.

    Label i asks for expert i.  Gates are routing distributions (B, E); the clamp keeps a hard zero finite.
    """
    losses = []
    for gate in gates.values():
        picked = gate.gather(-1, labels.to(gate.device).long().reshape(-1, 1)).squeeze(-1)
        losses.append(-picked.clamp_min(1e-12).log().mean())
    return torch.stack(losses).mean() if losses else None


GUIDANCE_HOLD_FRACTION = 0.6  # the studies' recipe: guidance held for 60 % of the run, then decayed


def guidance_hold(hold_steps: int, total_steps: int) -> int:
    """How long label guidance is held: ``hold_steps``, or when it is 0, :data:`GUIDANCE_HOLD_FRACTION` of the run
    (so a guidance weight with the step count left at 0 is never a silent no-op)."""
    if hold_steps < 0:
        raise ValueError(f"label_guidance_steps must be >= 0, got {hold_steps}")
    return hold_steps or max(round(GUIDANCE_HOLD_FRACTION * total_steps), 1)


def guidance_weight(step: int, weight: float, hold_steps: int) -> float:
    """``weight`` for the first ``hold_steps`` steps, then a linear decay to 0 over the next ``hold_steps // 2``.

    The decay hands routing over to the router alone, so the trained adapter needs no labels at inference.
    """
    if weight <= 0 or hold_steps <= 0:
        return 0.0
    if step < hold_steps:
        return float(weight)
    decay = max(hold_steps // 2, 1)
    return float(weight) * max(0.0, 1.0 - (step - hold_steps + 1) / decay)


def balance_starts_at(balance_start: float, total_steps: int) -> int:
    """The step the balance term switches on: a fraction of the run when < 1 (the paper's 0.4), else a step."""
    if balance_start < 0:
        raise ValueError(f"balance_start must be >= 0, got {balance_start}")
    return round(balance_start * total_steps) if balance_start < 1 else int(balance_start)


class StepGates(dict):
    """The routing distributions of the current micro-step, by layer: the trainer's one explicit gate store.

    Hooks call it as a gate sink; the loop reads it for the balance and label terms, then clears it.  Gates keep
    their autograd graph only while ``needs_graph`` (a loss term reads them); otherwise they are stored detached, so
    the store holds no graph past the backward pass.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.needs_graph = True

    def __call__(self, layer: str, gate: torch.Tensor, context=None) -> None:
        self[layer] = gate if self.needs_graph else gate.detach()


@dataclass
class RouterTrace:
    """Every N steps: per-layer normalised entropy, KL(mean gate || uniform), usage; optional style purity."""

    num_experts: int
    steps: list[int] = field(default_factory=list)
    layers: dict[str, dict[str, list]] = field(default_factory=dict)
    mean_entropy: list[float] = field(default_factory=list)
    mean_kl: list[float] = field(default_factory=list)
    purity: list[float] = field(default_factory=list)
    init: str = ""
    replicated_layers: list[str] = field(default_factory=list)

    def record(self, step: int, gates: dict[str, torch.Tensor], labels: torch.Tensor | None = None) -> None:
        self.steps.append(step)
        entropies, kls, purities = [], [], []
        for name, gate in gates.items():
            g = gate.detach().float().cpu()
            entry = self.layers.setdefault(name, {"entropy": [], "kl": [], "usage": []})
            h = float(metrics.normalized_entropy(g).mean())
            kl = float(metrics.kl_to_uniform(g))
            entry["entropy"].append(h)
            entry["kl"].append(kl)
            entry["usage"].append(metrics.expert_usage(g).tolist())
            entropies.append(h)
            kls.append(kl)
            if labels is not None and labels.numel() == g.shape[0]:
                purities.append(metrics.style_purity(labels, g.argmax(-1), self.num_experts))
        self.mean_entropy.append(sum(entropies) / max(len(entropies), 1))
        self.mean_kl.append(sum(kls) / max(len(kls), 1))
        if purities:
            self.purity.append(sum(purities) / len(purities))

    def usage_matrix(self) -> tuple[list[str], torch.Tensor]:
        """Layers x experts mean usage over the whole trace."""
        names = sorted(self.layers)
        if not names:
            return names, torch.zeros(0, self.num_experts)
        rows = [torch.tensor(self.layers[n]["usage"]).mean(0) for n in names]
        return names, torch.stack(rows)

    def to_json(self) -> dict:
        return {"num_experts": self.num_experts, "steps": self.steps, "mean_entropy": self.mean_entropy,
                "mean_kl": self.mean_kl, "purity": self.purity, "init": self.init,
                "replicated_layers": self.replicated_layers, "layers": self.layers}
