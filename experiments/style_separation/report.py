"""The style-separation study's report: expert matching, per-run records, tables, verdict, plot.

Pure torch (plus matplotlib for the plot): it never imports ComfyUI, so it is unit-tested on synthetic inputs
(``tests/unit/test_style_separation_metrics.py``).  Past 350 lines because every table and verdict of one report
lives here, next to the metric functions they read.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import ARMS, PIN_TARGET, REFERENCE, SUBJECT, SUBJECT_INIT

# ---------------------------------------------------------------------------------------------------- metrics


def confusion_counts(predictions: Sequence[Sequence[int]], num_classes: int) -> torch.Tensor:
    """(E, num_classes) counts: row e holds the probe's classes of expert e's samples."""
    out = torch.zeros(len(predictions), num_classes, dtype=torch.long)
    for e, preds in enumerate(predictions):
        for p in preds:
            out[e, int(p)] += 1
    return out


def match_experts(confusion: torch.Tensor, num_styles: int) -> tuple[list[int], int]:
    """Hungarian matching of experts (rows) to styles (columns ``< num_styles``), by brute force.

    Returns (style of each expert, matched sample count), maximising the count of samples that fall in their
    expert's style; ties go to the first permutation in lexicographic order.  Columns at or past ``num_styles``
    (the probe's "neutral" class) are never a match.  With E <= 8 the E!·C(S, E) candidates are few.
    """
    experts = confusion.shape[0]
    if experts > num_styles:
        raise ValueError(f"{experts} experts cannot be matched one-to-one to {num_styles} styles")
    best, best_map = -1, []
    for perm in itertools.permutations(range(num_styles), experts):
        score = sum(int(confusion[e, s]) for e, s in enumerate(perm))
        if score > best:
            best, best_map = score, list(perm)
    return best_map, best


def pin_accuracy(predictions: Sequence[Sequence[int]], num_styles: int, num_classes: int | None = None) -> dict:
    """Share of pinned samples in their expert's matched style (chance 1/num_styles for E = num_styles).

    ``predictions[e]`` are the probe's classes for the samples drawn with expert e pinned.  With one expert (a
    plain LoRA) there is nothing to match: the accuracy is the share of its samples in their most common style.
    Probe classes at or past ``num_styles`` (neutral) never count as correct.
    """
    num_classes = num_classes or num_styles
    conf = confusion_counts(predictions, num_classes)
    total = int(conf.sum())
    if total == 0:
        raise ValueError("no pinned samples")
    if conf.shape[0] == 1:
        style = int(conf[0, :num_styles].argmax())
        mapping, matched = [style], int(conf[0, style])
    else:
        mapping, matched = match_experts(conf, num_styles)
    return {"accuracy": matched / total, "mapping": mapping, "confusion": conf.tolist()}


def reachable_share(delta: torch.Tensor, in_basis: torch.Tensor, out_bases: torch.Tensor) -> tuple[float, float, float]:
    """How much of an update ΔW (out, in) Ortho-Hydra could express with these frozen bases.

    Ortho-Hydra's expert e is ``U_e R_e diag(λ) R_q Vᵀ``: its rows lie in span(V) (``in_basis`` (r, in), shared)
    and its columns in span(U_e) (``out_bases[e]`` (out, r)), so any gate mixture lies in span(U_0..U_E-1) ⊗
    span(V).  Returns (ΔW's energy, share of it inside that set, share inside the best single expert's set); both
    shares are upper bounds (the rotations and the shared λ constrain the experts further).
    """
    d = delta.double()
    total = float(d.square().sum())
    if total == 0:
        return 0.0, float("nan"), float("nan")
    v = torch.linalg.qr(in_basis.double().T).Q  # (in, r) orthonormal
    rows = d @ v  # (out, r): ΔW restricted to span(V)
    experts = out_bases.shape[0]
    u_all = torch.linalg.qr(out_bases.double().permute(1, 0, 2).reshape(out_bases.shape[1], -1)).Q
    inside = float((u_all.T @ rows).square().sum())
    best = max(float((torch.linalg.qr(out_bases[e].double()).Q.T @ rows).square().sum()) for e in range(experts))
    return total, inside / total, best / total


# ---------------------------------------------------------------------------------------------------- records


@dataclass
class RunRecord:
    """One trained adapter (arm, lr, seed) and what was measured on it."""

    arm: str
    lr: float
    seed: int
    heldout_loss: float = float("nan")
    style_loss: list[float] = field(default_factory=list)
    pin_accuracy: float = float("nan")
    pin_mapping: list[int] = field(default_factory=list)
    pin_confusion: list[list[int]] = field(default_factory=list)
    purity: float = float("nan")
    purity_by_sigma: dict[str, float] = field(default_factory=dict)
    style_sigma_loss: dict[str, list[float]] = field(default_factory=dict)  # σ -> per-style held-out loss
    collapse: float = float("nan")
    uniform: float = float("nan")
    gate_max: float = float("nan")  # mean max gate over routed layers and held-out samples (1/E: uniform)
    live_accuracy: float = float("nan")
    final_train_loss: float = float("nan")
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    full: bool = False  # False: only the held-out loss was measured (an lr-grid run that was not chosen)

    def to_dict(self) -> dict:
        return asdict(self)


def mean_sd(values: Sequence[float], fmt: str = ".2f") -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def _sd(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def chosen(records: list[RunRecord], arm: str) -> list[RunRecord]:
    return sorted((r for r in records if r.arm == arm and r.full), key=lambda r: r.seed)


def style_ratios(records: list[RunRecord], arm: str, reference: str = REFERENCE) -> list[float]:
    """Per style: mean held-out loss of ``arm`` over its seeds / the reference arm's."""
    mine, ref = chosen(records, arm), chosen(records, reference)
    if not mine or not ref:
        return []
    styles = len(mine[0].style_loss)
    return [_mean([r.style_loss[s] for r in mine]) / _mean([r.style_loss[s] for r in ref]) for s in range(styles)]


def style_check(records: list[RunRecord], arm: str, reference: str = REFERENCE) -> list[dict]:
    """Per style: mean loss of arm and reference, their seed std, and whether the arm is no worse.

    ``no_worse``: the arm's mean is at most the reference's; ``within_noise``: the excess is at most the larger
    of the two seed standard deviations.
    """
    mine, ref = chosen(records, arm), chosen(records, reference)
    out = []
    for s in range(len(mine[0].style_loss) if mine else 0):
        a, b = [r.style_loss[s] for r in mine], [r.style_loss[s] for r in ref]
        excess = _mean(a) - _mean(b)
        out.append({"arm": _mean(a), "reference": _mean(b), "ratio": _mean(a) / _mean(b), "no_worse": excess <= 0,
                    "within_noise": excess <= max(_sd(a), _sd(b))})
    return out


def paired_ci(diffs: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean of paired differences with its two-sided Student-t confidence interval (NaN bounds for one pair)."""
    values = [float(d) for d in diffs]
    n = len(values)
    if n == 0:
        raise ValueError("no paired differences")
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "sd": float("nan"), "low": float("nan"), "high": float("nan"), "wins": 0}
    from scipy import stats  # ComfyUI's own requirement; imported here so the metrics above stay torch-only

    sd = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half,
            "wins": sum(v < 0 for v in values)}


def paired_seeds(records: list[RunRecord], arm: str, reference: str = REFERENCE) -> list[tuple[RunRecord, RunRecord]]:
    """(arm run, reference run) for every seed both arms ran at their chosen lr, by seed."""
    ref = {r.seed: r for r in chosen(records, reference)}
    return [(r, ref[r.seed]) for r in chosen(records, arm) if r.seed in ref]


def paired_style(records: list[RunRecord], arm: str, reference: str = REFERENCE, sigma: str | None = None,
                 confidence: float = 0.95) -> list[dict]:
    """Per style: the held-out loss difference arm − reference on the same seed, with its t interval.

    ``sigma`` (a key of ``style_sigma_loss``) restricts it to one noise level; None is the mean over levels.
    Each entry also carries both arms' mean losses and ``wins``, the seeds where the arm's loss is lower.
    """
    pairs = paired_seeds(records, arm, reference)
    if not pairs:
        return []

    def loss(r: RunRecord, s: int) -> float:
        return r.style_loss[s] if sigma is None else r.style_sigma_loss[sigma][s]

    out = []
    for s in range(len(pairs[0][0].style_loss)):
        entry = paired_ci([loss(a, s) - loss(b, s) for a, b in pairs], confidence)
        entry["arm"] = statistics.fmean(loss(a, s) for a, _ in pairs)
        entry["reference"] = statistics.fmean(loss(b, s) for _, b in pairs)
        out.append(entry)
    return out


def summary(records: list[RunRecord], styles: Sequence[str]) -> dict:
    """Per arm: the chosen lr and mean/std of every metric over seeds (what the JSON keeps beside the runs)."""
    out = {}
    for arm in ARMS:
        runs = chosen(records, arm)
        if not runs:
            continue
        entry = {"name": ARMS[arm][0], "lr": runs[0].lr, "seeds": [r.seed for r in runs]}
        for key in ("pin_accuracy", "purity", "collapse", "uniform", "gate_max", "live_accuracy", "heldout_loss"):
            values = [getattr(r, key) for r in runs]
            entry[key] = {"mean": _mean(values), "std": _sd(values), "values": values}
        entry["style_loss"] = {name: {"mean": _mean([r.style_loss[s] for r in runs]),
                                      "std": _sd([r.style_loss[s] for r in runs])} for s, name in enumerate(styles)}
        entry["style_ratio_vs_single"] = dict(zip(styles, style_ratios(records, arm), strict=False))
        if arm != REFERENCE and len(paired_seeds(records, arm)) > 1:
            sigmas = [None, *runs[0].style_sigma_loss]
            entry["paired_vs_single"] = {
                "mean over sigma" if sigma is None else sigma: dict(zip(styles, paired_style(records, arm,
                                                                                             sigma=sigma),
                                                                        strict=False))
                for sigma in sigmas if sigma is None or all(sigma in r.style_sigma_loss
                                                            for pair in paired_seeds(records, arm) for r in pair)}
        out[arm] = entry
    return out


# ---------------------------------------------------------------------------------------------------- report


def main_table(records: list[RunRecord], styles: Sequence[str]) -> list[str]:
    head = ["arm", "lr", "pin accuracy", "routing purity (NMI)", "collapsed layers", "uniform layers",
            "mean max gate", "live img2img style kept", "held-out loss", *[f"loss ÷ single: {s}" for s in styles]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, (name, experts, _, _) in ARMS.items():
        runs = chosen(records, arm)
        if not runs:
            continue
        routed = experts > 1
        ratios = style_ratios(records, arm)
        cells = [name, f"{runs[0].lr:g}", mean_sd([r.pin_accuracy for r in runs]),
                 mean_sd([r.purity for r in runs]) if routed else "n/a (E=1)",
                 mean_sd([r.collapse for r in runs]) if routed else "n/a",
                 mean_sd([r.uniform for r in runs]) if routed else "n/a",
                 mean_sd([r.gate_max for r in runs]) if routed else "n/a",
                 mean_sd([r.live_accuracy for r in runs]), mean_sd([r.heldout_loss for r in runs], ".4f"),
                 *([f"{x:.3f}" for x in ratios] if ratios else ["n/a"] * len(styles))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def style_table(records: list[RunRecord], styles: Sequence[str], base_style_loss: Sequence[float]) -> list[str]:
    head = ["arm", *styles, "mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| base model (no adapter) | " + " | ".join(f"{v:.4f}" for v in base_style_loss)
             + f" | {statistics.fmean(base_style_loss):.4f} |"]
    for arm, (name, *_rest) in ARMS.items():
        runs = chosen(records, arm)
        if not runs:
            continue
        cells = [mean_sd([r.style_loss[s] for r in runs], ".4f") for s in range(len(styles))]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean_sd([r.heldout_loss for r in runs], '.4f')} |")
    return lines


def lr_table(records: list[RunRecord], lrs: Sequence[float], selection_seed: int = 0) -> list[str]:
    head = ["arm", *[f"lr {lr:g}" for lr in lrs], "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, (name, *_rest) in ARMS.items():
        grid = {r.lr: r.heldout_loss for r in records if r.arm == arm and r.seed == selection_seed}
        if not grid:
            continue
        pick = chosen(records, arm)
        cells = [f"{grid[lr]:.4f}" if lr in grid else "–" for lr in lrs]
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {pick[0].lr:g} |" if pick else " | – |"))
    return lines


def pin_detail(records: list[RunRecord], styles: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """Per arm and seed: which style each pinned expert drew, as probe counts."""
    lines = []
    for arm, (name, *_rest) in ARMS.items():
        for r in chosen(records, arm):
            rows = []
            for e, row in enumerate(r.pin_confusion):
                counts = ", ".join(f"{class_names[c]} {n}" for c, n in enumerate(row) if n)
                match = styles[r.pin_mapping[e]] if e < len(r.pin_mapping) else "?"
                rows.append(f"e{e}→{match} [{counts}]")
            lines.append(f"- {name}, seed {r.seed}: pin accuracy {r.pin_accuracy:.2f}; " + "; ".join(rows))
    return lines


def verdict(records: list[RunRecord], styles: Sequence[str], arm: str = SUBJECT) -> list[str]:
    """The two targets, judged on one label-guided Ortho-Hydra arm (the subject, or its ortho_init variant)."""
    name = ARMS[arm][0]
    runs = chosen(records, arm)
    if not runs:
        return [f"- {name} was not run: no verdict."]
    pins = [r.pin_accuracy for r in runs]
    pin_ok = _mean(pins) >= PIN_TARGET
    out = [f"- {name}, target 1, pin accuracy ≥ {PIN_TARGET}: {_mean(pins):.2f} (seeds: "
           f"{', '.join(f'{p:.2f}' for p in pins)}) → **{'PASS' if pin_ok else 'FAIL'}**."]
    checks = style_check(records, arm)
    if checks:
        worse = [styles[s] for s, c in enumerate(checks) if not c["no_worse"]]
        noisy = [styles[s] for s, c in enumerate(checks) if not c["no_worse"] and c["within_noise"]]
        detail = ", ".join(f"{styles[s]} {c['arm']:.4f} vs {c['reference']:.4f} (×{c['ratio']:.3f})"
                           for s, c in enumerate(checks))
        if not worse:
            status = "PASS"
        elif worse == noisy:
            status = f"FAIL on the means ({', '.join(worse)}), within seed noise"
        else:
            status = f"FAIL ({', '.join(worse)})"
        paired = paired_style(records, arm) if len(paired_seeds(records, arm)) > 1 else []
        if paired:
            sides = {"worse": [], "better": [], "not distinguishable": []}
            for s, e in enumerate(paired):
                side = "worse" if e["low"] > 0 else "better" if e["high"] < 0 else "not distinguishable"
                sides[side].append(styles[s])
            detail += (f"; paired over {paired[0]['n']} seeds (95 % t interval of the difference): "
                       + "; ".join(f"{side} on {', '.join(names)}" for side, names in sides.items() if names))
        out.append(f"- {name}, target 2, per-style held-out loss no worse than the single LoRA's: {detail} → "
                   f"**{status}**.")
    else:
        out.append(f"- {name}, target 2: the single LoRA was not run, no comparison.")
    return out


def _diff(entry: dict) -> str:
    if math.isnan(entry["low"]):
        return f"{entry['mean']:+.4f}"
    return f"{entry['mean']:+.4f} [{entry['low']:+.4f}, {entry['high']:+.4f}]"


def paired_table(records: list[RunRecord], styles: Sequence[str], arm: str, reference: str = REFERENCE) -> list[str]:
    """Same-seed differences arm − reference per style (95 % t interval), overall and at every recorded σ."""
    pairs = paired_seeds(records, arm, reference)
    if len(pairs) < 2:
        return []
    name, ref_name = ARMS[arm][0], ARMS[reference][0]
    lines = [f"{name} − {ref_name}, held-out loss on the same seed ({len(pairs)} seeds: "
             f"{', '.join(str(a.seed) for a, _ in pairs)}); mean [95 % t interval]; ratio of the means; seeds where "
             f"{name} is lower.  A row per σ is that level's loss alone.", "",
             "| σ | " + " | ".join(styles) + " |", "|" + "---|" * (len(styles) + 1)]
    sigmas = [None, *sorted(pairs[0][0].style_sigma_loss, key=float)]
    sigmas = [s for s in sigmas if s is None or all(s in r.style_sigma_loss for pair in pairs for r in pair)]
    for sigma in sigmas:
        cells = [f"{_diff(e)}; ×{e['arm'] / e['reference']:.3f}; {e['wins']}/{e['n']}"
                 for e in paired_style(records, arm, reference, sigma)]
        lines.append(f"| {'mean over σ' if sigma is None else sigma} | " + " | ".join(cells) + " |")
    return lines


def gain_fractions(records: list[RunRecord], arm: str, base_style_loss: Sequence[float],
                   reference: str = REFERENCE) -> list[float]:
    """Per style: the share of the reference arm's loss reduction (base model -> reference) that ``arm`` recovers.

    1 means as good as the single LoRA on that style, 0 means no better than the untouched base model.
    """
    mine, ref = chosen(records, arm), chosen(records, reference)
    if not mine or not ref:
        return []
    out = []
    for s, base in enumerate(base_style_loss):
        gain = base - _mean([r.style_loss[s] for r in ref])
        out.append((base - _mean([r.style_loss[s] for r in mine])) / gain if gain > 0 else float("nan"))
    return out


def observations(records: list[RunRecord], styles: Sequence[str] = (),
                 base_style_loss: Sequence[float] = ()) -> list[str]:
    """Plain statements read off the numbers, one per routed arm, against the subject arm."""
    out = []
    subject = chosen(records, SUBJECT)
    ref = chosen(records, REFERENCE)
    for arm, (name, experts, _, _) in ARMS.items():
        runs = chosen(records, arm)
        if not runs:
            continue
        pin, purity = _mean([r.pin_accuracy for r in runs]), _mean([r.purity for r in runs])
        loss = _mean([r.heldout_loss for r in runs])
        text = f"- {name}: pin accuracy {pin:.2f}"
        if experts > 1:
            text += (f", purity {purity:.2f}, collapsed {_mean([r.collapse for r in runs]):.2f} / uniform "
                     f"{_mean([r.uniform for r in runs]):.2f} of routed layers")
        text += f", held-out loss {loss:.4f}"
        if ref and arm != REFERENCE:
            text += f" ({loss / _mean([r.heldout_loss for r in ref]):.3f}× the single LoRA's)"
        gains = gain_fractions(records, arm, base_style_loss) if base_style_loss and arm != REFERENCE else []
        if gains:
            text += ("; share of the single LoRA's per-style loss reduction recovered: "
                     + ", ".join(f"{name} {g:.2f}" for name, g in zip(styles, gains, strict=False)))
        if subject and arm not in (SUBJECT, REFERENCE):
            gap = pin - _mean([r.pin_accuracy for r in subject])
            text += f"; pin accuracy {gap:+.2f} against Ortho-Hydra + label guidance"
        out.append(text + ".")
    return out


def capacity(records: list[RunRecord], styles: Sequence[str], base_style_loss: Sequence[float],
             reach: dict | None) -> list[str]:
    """Can Ortho-Hydra's parametrisation hold what the single LoRA learned?  Evidence lines, read off the run."""
    out = []
    if reach and reach.get("all"):
        out.append(
            f"- The single LoRA's trained update ΔW (which carries every style) keeps "
            f"{mean_sd([100 * v for v in reach['all']], '.1f')} % of its energy inside the set Ortho-Hydra can reach "
            f"at rank {reach['rank']} (column space: the {reach['experts']} disjoint slices of W0's top left singular "
            f"vectors; row space: W0's top-{reach['rank']} right singular vectors), and "
            f"{mean_sd([100 * v for v in reach['best']], '.1f')} % inside any one expert's set; an update of random "
            f"direction would keep {100 * reach['chance']:.1f} % (energy-weighted over the {reach['layers']} layers, "
            f"{len(reach['all'])} seeds).  These are upper bounds: the experts are further tied by one shared λ.")
    for arm in ("ortho", SUBJECT, SUBJECT_INIT):
        gains = gain_fractions(records, arm, base_style_loss)
        if gains:
            out.append(f"- {ARMS[arm][0]} recovers " + ", ".join(f"{n} {g:.2f}" for n, g in zip(styles, gains,
                                                                                            strict=False))
                       + " of the single LoRA's per-style loss reduction (0: base model, 1: single LoRA).")
    subject, hydra = chosen(records, SUBJECT), chosen(records, "hydra_zero_lg")
    if subject and hydra:
        pin_s, pin_h = _mean([r.pin_accuracy for r in subject]), _mean([r.pin_accuracy for r in hydra])
        if pin_h >= PIN_TARGET > pin_s:
            out.append(f"- The same label guidance on HydraLoRA zero reaches pin accuracy {pin_h:.2f} (Ortho-Hydra "
                       f"{pin_s:.2f}), so the guidance and the router work; what fails is that Ortho-Hydra's experts "
                       "cannot express the styles (their pinned samples read as neutral).")
        else:
            out.append(f"- HydraLoRA zero with the same label guidance: pin accuracy {pin_h:.2f} (Ortho-Hydra "
                       f"{pin_s:.2f}).")
    return out


def report(records: list[RunRecord], styles: Sequence[str], class_names: Sequence[str], setup: str,
           lrs: Sequence[float], base_style_loss: Sequence[float], title: str, footer: str,
           notes: Sequence[str] = (), reach: dict | None = None) -> str:
    targets = [*verdict(records, styles), *(verdict(records, styles, SUBJECT_INIT)
                                            if chosen(records, SUBJECT_INIT) else [])]
    parts = [f"# {title}", "", setup, "", "## Arms × metrics (mean ± std over seeds, chosen lr)", "",
             *main_table(records, styles), "", "## Targets (Ortho-Hydra + label guidance)", "", *targets, "",
             "## Per arm", "", *observations(records, styles, base_style_loss), ""]
    lines = capacity(records, styles, base_style_loss, reach)
    if lines:
        parts += ["## Ortho-Hydra's capacity", "", *lines, ""]
    paired = paired_table(records, styles, SUBJECT_INIT) if chosen(records, SUBJECT_INIT) else []
    if paired:
        parts += ["## Paired per style and noise level (target 2, same seeds)", "", *paired, ""]
    if notes:
        parts += ["## Notes", "", *notes, ""]
    parts += ["## Per-style held-out denoising loss (x0-space MSE, fixed noise and levels)", "",
              *style_table(records, styles, base_style_loss), "", "## Learning-rate grid (held-out loss, seed 0)",
              "", *lr_table(records, lrs), "", "## Pinned experts: probe classes of their samples", "",
              *pin_detail(records, styles, class_names), "", footer, ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------- plot


def plot(records: list[RunRecord], styles: Sequence[str], path: Path) -> Path:
    """Pin accuracy and routing purity per arm (seeds as dots, mean as bar), per-style loss ÷ single LoRA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ARMS if chosen(records, a)]
    names = [ARMS[a][0].replace(" + label guidance", "\n+ label guid.") for a in arms]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    x = torch.arange(len(arms)).float()
    for ax, key, title, chance in ((axes[0], "pin_accuracy", "pin accuracy (probe, Hungarian-matched)", 0.25),
                                   (axes[1], "purity", "routing purity NMI(style, argmax expert)", None)):
        for i, arm in enumerate(arms):
            values = [getattr(r, key) for r in chosen(records, arm)]
            values = [v for v in values if not math.isnan(v)]
            if not values:
                ax.text(i, 0.02, "n/a", ha="center", fontsize=8)
                continue
            ax.bar(i, statistics.fmean(values), color="tab:red" if arm == SUBJECT else "tab:gray", alpha=0.6)
            ax.scatter([i] * len(values), values, color="k", s=14, zorder=3)
            if len(values) > 1:
                lo, hi = min(values), max(values)
                ax.plot([i, i], [lo, hi], color="k", lw=1)
        if chance is not None:
            ax.axhline(chance, color="k", ls=":", lw=0.8, label="chance (E=4)")
            ax.axhline(PIN_TARGET, color="tab:red", ls="--", lw=0.8, label=f"target {PIN_TARGET}")
            ax.legend(fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_xticks(x.tolist(), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    width = 0.8 / max(1, len(styles))
    for s, style in enumerate(styles):
        means, lows, highs = [], [], []
        ref = _mean([r.style_loss[s] for r in chosen(records, REFERENCE)]) if chosen(records, REFERENCE) else 1.0
        for arm in arms:
            values = [r.style_loss[s] / ref for r in chosen(records, arm)]
            means.append(statistics.fmean(values))
            lows.append(statistics.fmean(values) - min(values))
            highs.append(max(values) - statistics.fmean(values))
        ax.bar((x + (s - (len(styles) - 1) / 2) * width).tolist(), means, width, yerr=[lows, highs], capsize=2,
               label=style)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x.tolist(), names, rotation=30, ha="right", fontsize=8)
    ax.set_title("per-style held-out loss ÷ single LoRA (bars: seed min–max)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Do trained experts carry styles? (toy world, tiny MMDiT)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rerender(json_path: Path, notes: Sequence[str] = ()) -> str:
    """Rewrite the Markdown report next to ``json_path`` from its records, with extra ``notes`` lines."""
    data = json.loads(Path(json_path).read_text())
    records = [RunRecord(**r) for r in data["runs"]]
    text = report(records, data["styles"], data["class_names"], data["setup"], data["settings"]["lrs"],
                  data["base_model"]["style_loss"], data["title"], data["footer"], notes, data.get("reach"))
    Path(json_path).with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Re-render a style-separation report from its JSON, with notes.")
    parser.add_argument("json", type=Path)
    parser.add_argument("--notes", type=Path, default=None, help="a Markdown file of lines for the Notes section")
    args = parser.parse_args()
    lines = args.notes.read_text().strip().splitlines() if args.notes else []
    print(rerender(args.json, lines))
