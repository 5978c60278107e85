"""The transfer study's report: gap closed, tables, verdict, plot and the README's summary table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from .config import ARMS, KINDS


def gap_closed(none: float, arm: float, oracle: float, lower_is_better: bool) -> float:
    gap = (none - oracle) if lower_is_better else (oracle - none)
    gain = (none - arm) if lower_is_better else (arm - none)
    return gain / gap if abs(gap) > 1e-12 else float("nan")


def _ms(values: Sequence[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(data: dict) -> str:
    lines = [f"# {data['title']}", "", data["setup"], ""]
    for kind, label in KINDS.items():
        runs = [r for r in data["runs"] if r["kind"] == kind]
        if not runs:
            continue
        lines += [f"## {label}", "", "| on v2 | held-out loss | probe accuracy | loss gap closed | probe gap closed |",
                  "|---|---|---|---|---|"]
        src = [r["v1_on_v1"] for r in runs]
        lines.append(f"| (v1 adapter on v1, for reference) | {_ms([x['loss'] for x in src])} | "
                     f"{_ms([x['probe'] for x in src])} | | |")
        for arm in ARMS:
            loss = [r["arms"][arm]["loss"] for r in runs]
            probe = [r["arms"][arm]["probe"] for r in runs]
            closed_l = [gap_closed(r["arms"]["none"]["loss"], r["arms"][arm]["loss"], r["arms"]["oracle"]["loss"],
                                   True) for r in runs]
            closed_p = [gap_closed(r["arms"]["none"]["probe"], r["arms"][arm]["probe"],
                                   r["arms"]["oracle"]["probe"], False) for r in runs]
            lines.append(f"| {arm} | {_ms(loss)} | {_ms(probe)} | {_ms(closed_l)} | {_ms(closed_p)} |")
        sims = [row["similarity"] for r in runs for row in r.get("layers", [])]
        kept = [row["retained"] for r in runs for row in r.get("layers", [])]
        if sims:
            lines += ["", f"Per-layer similarity at R = {data['settings']['transfer_rank']}: min {min(sims):.3f}, "
                          f"median {statistics.median(sims):.3f}, max {max(sims):.3f} over {len(sims)} layer-runs; "
                          f"LoRA-X `subspace` keeps a median {statistics.median(kept):.0%} of each layer's ‖ΔW‖ "
                          f"(uniform gate; min {min(kept):.0%}, max {max(kept):.0%})."]
        if runs[0].get("rank_sweep"):
            lines += ["", "| R | subspace loss | subspace+null loss |", "|---|---|---|"]
            for rank in data["settings"]["ranks"]:
                cells = [_ms([r["rank_sweep"][mode][str(rank)] for r in runs]) for mode in ("subspace",
                                                                                            "subspace+null")]
                lines.append(f"| {rank} | {cells[0]} | {cells[1]} |")
            lines += ["", "| τ | layers kept | subspace loss |", "|---|---|---|"]
            for tau in data["settings"]["taus"]:
                kept = [r["tau_sweep"][f"{tau:g}"]["kept"] for r in runs]
                lines.append(f"| {tau:g} | {_ms(kept)} | {_ms([r['tau_sweep'][f'{tau:g}']['loss'] for r in runs])}"
                             f" |")
        lines.append("")
    lines += ["## Verdict", "", data.get("verdict", ""), "", data["footer"]]
    return "\n".join(lines)


def verdict(data: dict) -> str:
    out = []
    for kind, label in KINDS.items():
        runs = [r for r in data["runs"] if r["kind"] == kind]
        if not runs:
            continue
        parts = []
        for arm in ("copy", "subspace", "subspace+null"):
            closed = statistics.fmean(gap_closed(r["arms"]["none"]["loss"], r["arms"][arm]["loss"],
                                                 r["arms"]["oracle"]["loss"], True) for r in runs)
            parts.append(f"{arm} closes {closed:.0%} of the loss gap")
        best = min(("subspace", "subspace+null"),
                   key=lambda a: statistics.fmean(r["arms"][a]["loss"] for r in runs))
        beats = sum(r["arms"][best]["loss"] < r["arms"]["copy"]["loss"] for r in runs)
        closed_best = statistics.fmean(gap_closed(r["arms"]["none"]["loss"], r["arms"][best]["loss"],
                                                  r["arms"]["oracle"]["loss"], True) for r in runs)
        holds = closed_best >= 0.5 and beats == len(runs)
        out.append(f"**{label}**: {'; '.join(parts)}; the better transfer ({best}) beats the naive copy in "
                   f"{beats}/{len(runs)} seeds. The claim {'holds' if holds else 'does not hold'} here "
                   f"(it needs most of the gap closed and a win over the copy in every seed).")
    return "\n\n".join(out)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), dpi=100)
    for kind, marker in (("ortho", "o"), ("ortho_frozen", "^"), ("lora", "s")):
        runs = [r for r in data["runs"] if r["kind"] == kind]
        xs = [row["similarity"] for r in runs for row in r.get("layers", [])]
        ys = [row["benefit"] for r in runs for row in r.get("layers", [])]
        axes[0].scatter(xs, ys, marker=marker, alpha=0.6, label=KINDS[kind].split(" (")[0])
        if runs and runs[0].get("rank_sweep"):
            ranks = data["settings"]["ranks"]
            for mode, ls in (("subspace", "-"), ("subspace+null", "--")):
                axes[1].plot(ranks, [statistics.fmean(r["rank_sweep"][mode][str(k)] for r in runs) for k in ranks],
                             ls=ls, marker=marker, label=f"{KINDS[kind].split(' (')[0]} {mode}")
            for arm, colour in (("none", "grey"), ("copy", "red"), ("oracle", "green")):
                axes[1].axhline(statistics.fmean(r["arms"][arm]["loss"] for r in runs), color=colour, lw=0.8,
                                ls=":" if kind == "lora" else "-.")
            taus = data["settings"]["taus"]
            axes[2].plot(taus, [statistics.fmean(r["tau_sweep"][f"{t:g}"]["loss"] for r in runs) for t in taus],
                         marker=marker, label=KINDS[kind].split(" (")[0])
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set(title="per layer: similarity vs loss gain from transferring it", xlabel="min(sim out, sim in)",
                ylabel="held-out loss(copy) − loss(this layer transferred)")
    axes[1].set(title="held-out loss on v2 vs R (lines: none grey, copy red, oracle green)", xlabel="R",
                ylabel="held-out loss", xscale="log")
    axes[2].set(title="held-out loss on v2 vs τ (subspace)", xlabel="τ", ylabel="held-out loss")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_table(datas: Sequence[dict]) -> str:
    """One row per (successor, kind): loss gap closed and probe accuracy per arm, similarity, ΔW kept."""
    lines = ["| v2 | adapter | loss gap closed: copy / LoRA-X / LoRA-X+null | probe: none / copy / LoRA-X / "
             "LoRA-X+null / oracle | similarity (median) | ‖ΔW‖ kept by LoRA-X (median) |",
             "|---|---|---|---|---|---|"]
    for data in datas:
        for kind, label in KINDS.items():
            runs = [r for r in data["runs"] if r["kind"] == kind]
            if not runs:
                continue
            closed = [statistics.fmean(gap_closed(r["arms"]["none"]["loss"], r["arms"][a]["loss"],
                                                  r["arms"]["oracle"]["loss"], True) for r in runs)
                      for a in ("copy", "subspace", "subspace+null")]
            probe = [statistics.fmean(r["arms"][a]["probe"] for r in runs) for a in ARMS]
            rows = [row for r in runs for row in r["layers"]]
            lines.append(f"| {data['v2']} | {label.split(' (')[0]} | {' / '.join(f'{c:.0%}' for c in closed)} | "
                         f"{' / '.join(f'{p:.2f}' for p in probe)} | "
                         f"{statistics.median(row['similarity'] for row in rows):.3f} | "
                         f"{statistics.median(row['retained'] for row in rows):.0%} |")
    return "\n".join(lines)
