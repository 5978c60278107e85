"""The de-uniformisation study's report: per-run results, the table, the verdict, the plot.

Import-safe without the ComfyUI host (the unit tests build synthetic :class:`RunResult` lists and judge them).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config

INITS = ("ortho", "zero", "jitter")  # arm order in tables and plots (jitter: i.i.d., as published)
BASELINES = ("zero", "jitter")


@dataclass
class RunResult:
    """One arm (init, lr, seed): router statistics every ``log_every`` steps, then held-out evaluations."""

    init: str
    lr: float
    seed: int
    steps: list[int] = field(default_factory=list)
    one_minus_h: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    router_grad0: float = 0.0
    router_grad0_balance: float = 0.0
    router_grad: list[float] = field(default_factory=list)  # at every logged step
    spread: list[float] = field(default_factory=list)  # per-expert up spread at every logged step
    lam: list[float] = field(default_factory=list)  # mean |λ| at every logged step (ortho)
    lam_final: float = float("nan")
    spread_final: float = 0.0
    fallback: bool = False
    init_eval: dict[str, float] = field(default_factory=dict)
    final_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def at(self, step: int) -> float:
        return self.one_minus_h[self.steps.index(step)]

    def first_cross(self, threshold: float) -> int | None:
        return next((s for s, v in zip(self.steps, self.one_minus_h, strict=True) if v > threshold), None)


def _mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _group(results: list[RunResult], init: str, lr: float) -> list[RunResult]:
    return [r for r in results if r.init == init and r.lr == lr]


def report_table(results: list[RunResult], cfg: Config, lrs: list[float]) -> list[str]:
    marks = [s for s in (100, 300) if s < cfg.steps] + [cfg.steps]
    head = (["init", "lr"] + [f"1−H̄ @{s}" for s in marks]
            + [f"KL @{cfg.steps}", f"first 1−H̄>{cfg.threshold} (per seed)", "held-out loss",
               "style purity init→final", "router ‖∇‖ step 0 (balance part)", "mean abs λ final",
               "expert spread final", "fallback"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lr in lrs:
        for init in INITS:
            group = _group(results, init, lr)
            if not group:
                continue
            crosses = [r.first_cross(cfg.threshold) for r in group]
            cells = [init, f"{lr:g}"]
            cells += [_mean_sd([r.at(s) for r in group], ".2e") for s in marks]
            cells.append(_mean_sd([r.kl[-1] for r in group], ".2f"))
            cells.append(", ".join("never" if c is None else str(c) for c in crosses))
            cells.append(_mean_sd([r.final_eval["loss"] for r in group], ".4f"))
            cells.append(f"{_mean_sd([r.init_eval['purity'] for r in group], '.2f')} → "
                         f"{_mean_sd([r.final_eval['purity'] for r in group], '.2f')}")
            cells.append(f"{_mean_sd([r.router_grad0 for r in group], '.1e')} "
                         f"({_mean_sd([r.router_grad0_balance for r in group], '.1e')})")
            lam = [r.lam_final for r in group]
            cells.append("—" if math.isnan(lam[0]) else _mean_sd(lam, ".3f"))
            cells.append(_mean_sd([r.spread_final for r in group], ".2e"))
            cells.append("yes" if any(r.fallback for r in group) else "no")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def departure(group: list[RunResult], cfg: Config, purity_floor: float = 0.3, collapse_fraction: float = 0.5) -> str:
    """How an arm sits off the uniform prior at the end: specialises, collapses or drifts.

    specialises: held-out style purity (NMI) ≥ ``purity_floor``, i.e. styles get their own experts;
    collapses: otherwise, with KL(mean gate ‖ uniform) ≥ ``collapse_fraction``·ln E, i.e. most samples share
    one expert; drifts: neither.
    """
    purity = statistics.fmean(r.final_eval["purity"] for r in group)
    kl = statistics.fmean(r.kl[-1] for r in group)
    ceiling = math.log(cfg.experts)
    kind = ("specialises" if purity >= purity_floor
            else "collapses" if kl >= collapse_fraction * ceiling else "drifts")
    start = statistics.fmean(r.init_eval["purity"] for r in group)
    return (f"`{group[0].init}` {kind} (KL {kl:.2f} of ln {cfg.experts} = {ceiling:.2f}, "
            f"style purity {start:.2f} → {purity:.2f})")


@dataclass
class Judgement:
    """The claim at one lr: ``holds`` is None when an init is missing; ``failures`` say why it fails."""

    holds: bool | None
    failures: list[str] = field(default_factory=list)
    deadline: int = 0
    ortho_loss: float = float("nan")
    best_baseline_loss: float = float("nan")


def judge(results: list[RunResult], cfg: Config, lr: float, loss_tolerance: float = 0.05) -> Judgement:
    """The claim: no baseline seed crosses ``cfg.threshold`` within ``cfg.steps``, every ortho seed crosses by
    about step 300, and ortho's held-out loss is within ``loss_tolerance`` of the best baseline's."""
    ortho = _group(results, "ortho", lr)
    baselines = {init: _group(results, init, lr) for init in BASELINES}
    if not ortho or not all(baselines.values()):
        return Judgement(holds=None)
    failures = []
    for init, group in baselines.items():
        crossed = [(r.seed, r.first_cross(cfg.threshold)) for r in group if r.first_cross(cfg.threshold) is not None]
        if crossed:
            where = ", ".join(f"seed {s} at step {c}" for s, c in crossed)
            failures.append(f"`{init}` leaves the uniform prior ({where}; 1−H̄ at {cfg.steps} = "
                            f"{_mean_sd([r.at(cfg.steps) for r in group], '.2e')}, step-0 router ‖∇‖ "
                            f"{_mean_sd([r.router_grad0 for r in group], '.1e')}, expert spread "
                            f"{_mean_sd([r.spread_final for r in group], '.1e')})")
    deadline = min(350, cfg.steps)  # "about step 300"
    late = [(r.seed, r.first_cross(cfg.threshold)) for r in ortho
            if r.first_cross(cfg.threshold) is None or r.first_cross(cfg.threshold) > deadline]
    if late:
        where = ", ".join(f"seed {s}: {'never' if c is None else f'step {c}'}" for s, c in late)
        failures.append(f"`ortho` does not cross by step {deadline} ({where}; mean |λ| final "
                        f"{_mean_sd([r.lam_final for r in ortho], '.3f')}, fallback "
                        f"{'yes' if any(r.fallback for r in ortho) else 'no'})")
    ortho_loss = statistics.fmean(r.final_eval["loss"] for r in ortho)
    best = min(statistics.fmean(r.final_eval["loss"] for r in g) for g in baselines.values())
    if ortho_loss > best * (1 + loss_tolerance):
        failures.append(f"`ortho` held-out loss {ortho_loss:.4f} is more than {loss_tolerance:.0%} above the best "
                        f"baseline's {best:.4f}")
    return Judgement(not failures, failures, deadline, ortho_loss, best)


def verdict(results: list[RunResult], cfg: Config, lr: float, loss_tolerance: float = 0.05) -> str:
    """The claim at one lr in one sentence, then how each arm that left the uniform prior sits off it."""
    j = judge(results, cfg, lr, loss_tolerance)
    if j.holds is None:
        return f"lr {lr:g}: no verdict (needs all three inits)"
    if j.holds:
        text = (f"**claim holds at lr {lr:g}**: both baselines keep 1−H̄ < {cfg.threshold} through {cfg.steps} "
                f"steps (all seeds) while ortho crosses by step {j.deadline}, at held-out loss {j.ortho_loss:.4f} "
                f"vs best baseline {j.best_baseline_loss:.4f}.")
    else:
        text = f"**claim fails at lr {lr:g}**: " + "; ".join(j.failures) + "."
    moved = [group for group in (_group(results, init, lr) for init in INITS)
             if any(r.first_cross(cfg.threshold) is not None for r in group)]
    if moved:
        text += " Off the prior at the end: " + "; ".join(departure(group, cfg) for group in moved) + "."
    return text


def headline(results: list[RunResult], cfg: Config, lrs: list[float]) -> str:
    """The report's one-line conclusion across learning rates."""
    judged = {lr: j.holds for lr in lrs if (j := judge(results, cfg, lr)).holds is not None}
    listed = ", ".join(f"{lr:g}" for lr in judged)
    if not judged:
        return "**Verdict: none** (no learning rate has all three inits)."
    if all(judged.values()):
        return f"**Verdict: the claim holds at every learning rate tested** ({listed})."
    if not any(judged.values()):
        return f"**Verdict: the claim does not hold at any learning rate tested** ({listed})."
    held = ", ".join(f"{lr:g}" for lr, h in judged.items() if h)
    failed = ", ".join(f"{lr:g}" for lr, h in judged.items() if not h)
    return f"**Verdict: mixed**: the claim holds at lr {held} and fails at lr {failed}."


def describe(cfg: Config, seeds: list[int], num_layers: int, num_heldout: int, base_loss: float) -> str:
    """The setup paragraph of the report: everything that is held identical across arms."""
    return (f"Tiny ComfyUI MMDiT depth {cfg.depth} (hidden {64 * cfg.depth}), latent {cfg.channels}x{cfg.latent}"
            f"x{cfg.latent}, base pretrained {cfg.pretrain_steps} steps on smooth random fields (shared W0). "
            f"Routed: MLP fc1/fc2 of every x_block ({num_layers} layers), r={cfg.rank}, E={cfg.experts}, AdamW "
            f"(wd {cfg.weight_decay:g}), batch {cfg.batch}, {cfg.steps} steps, balance weight {cfg.balance:g} from "
            f"step 0, router lr ×{cfg.router_lr_mult:g}, jitter σ={cfg.jitter_std:g}, seeds {seeds}. "
            f"1−H̄ is measured on each training batch and averaged over routed layers; ± is the std over seeds. "
            f"KL is KL(batch-mean gate ‖ uniform), averaged over layers; its maximum ln E = "
            f"{math.log(cfg.experts):.3f} means every sample goes to one expert. Held-out: {num_heldout} latents of "
            f"unseen contents at σ ∈ {list(cfg.eval_sigmas)}; held-out loss of the base model alone: {base_loss:.4f}. "
            f"Style purity = NMI(style, argmax expert) on held-out, averaged over layers.")


def report(results: list[RunResult], cfg: Config, lrs: list[float], setup: str, title: str, footer: str) -> str:
    """The Markdown report: setup paragraph, table, headline and per-lr verdicts."""
    return "\n".join([f"# {title}", "", setup, "", *report_table(results, cfg, lrs), "",
                      headline(results, cfg, lrs), "", *[f"- {verdict(results, cfg, lr)}" for lr in lrs], "",
                      footer, ""])


def plot(results: list[RunResult], cfg: Config, lrs: list[float], path: Path) -> None:
    """1−H̄ (top) and KL to uniform (bottom) vs step, mean line and min–max band over seeds, one column per lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(lrs), figsize=(6 * len(lrs), 7), squeeze=False, sharex=True)
    colors = {"ortho": "tab:red", "zero": "tab:blue", "jitter": "tab:green"}
    floor = 1e-8  # log axes need positive values; exact zeros sit on the floor
    for col, lr in enumerate(lrs):
        for row, (key, label) in enumerate((("one_minus_h", "1 − H̄ (normalised entropy)"),
                                            ("kl", "KL(mean gate ‖ uniform) [nats]"))):
            ax = axes[row][col]
            for init in INITS:
                group = _group(results, init, lr)
                if not group:
                    continue
                series = torch.tensor([getattr(r, key) for r in group], dtype=torch.float64).clamp_min(floor)
                steps = group[0].steps
                ax.plot(steps, series.mean(0), color=colors[init], label=f"{init} ({len(group)} seeds)")
                ax.fill_between(steps, series.min(0).values, series.max(0).values, color=colors[init], alpha=0.2)
            if key == "one_minus_h":
                ax.axhline(cfg.threshold, color="k", ls="--", lw=0.8, label=f"threshold {cfg.threshold}")
                ax.set_title(f"lr {lr:g} (router ×{cfg.router_lr_mult:g})")
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("step")
            ax.legend(fontsize=8)
    fig.suptitle(f"Router de-uniformisation, tiny MMDiT depth {cfg.depth}, r={cfg.rank}, E={cfg.experts}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
