"""The orthogonal-slots study's report: the tables and the verdict, read off the runs' results."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from .config import ARMS


def mean(values) -> float:
    values = list(values)
    return statistics.fmean(values) if values else float("nan")


def sd(values) -> float:
    values = list(values)
    return statistics.stdev(values) if len(values) > 1 else 0.0


def per_seed(runs: list[dict], key: str) -> list[float]:
    """Each seed's mean over styles of ``key``."""
    return [mean(r[key] for r in run["styles"]) for run in runs]


def report(results: dict, styles: Sequence[str], base_loss: Sequence[float], setup: str, footer: str) -> str:
    lines = ["# Orthogonal slots: do independently trained style adapters merge without crosstalk?", "", setup, "",
             "| arm | lr | alone: held-out loss | merged: held-out loss | crosstalk (rise) | share of own gain lost "
             "| probe alone | probe merged | output overlap |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, entry in results.items():
        runs = entry["runs"]
        flat = [row for run in runs for row in run["styles"]]
        cells = [f"{mean(per_seed(runs, k)):.4f} ± {sd(per_seed(runs, k)):.4f}"
                 for k in ("alone", "merged", "rise")]
        cells.append(f"{mean(r['gain_lost'] for r in flat):.2f}")
        cells += [f"{mean(per_seed(runs, k)):.2f}" for k in ("probe_alone", "probe_merged")]
        cells.append(f"{mean(run['overlap'] for run in runs):.2e}")
        lines.append(f"| {ARMS[arm][0]} | {entry['lr']:g} | " + " | ".join(cells) + " |")
    lines += ["", "Per style (mean over seeds): held-out loss alone → merged, probe merged", "",
              "| arm | " + " | ".join(styles) + " |", "|---|" + "---|" * len(styles)]
    for arm, entry in results.items():
        cells = []
        for s in range(len(styles)):
            rows = [run["styles"][s] for run in entry["runs"]]
            cells.append(f"{mean(r['alone'] for r in rows):.3f} → {mean(r['merged'] for r in rows):.3f}, "
                         f"{mean(r['probe_merged'] for r in rows):.2f}")
        lines.append(f"| {ARMS[arm][0]} | " + " | ".join(cells) + " |")
    lines += ["", f"Base model with the style tokens: {', '.join(f'{v:.3f}' for v in base_loss)}.", "",
              *verdict(results, base_loss), "", footer, ""]
    return "\n".join(lines)


def verdict(results: dict, base_loss: Sequence[float]) -> list[str]:
    """The claim holds if the slots' crosstalk is clearly below the plain LoRAs' (beyond seed spread) while the slot
    adapters, alone, learn their styles about as well; no crosstalk from adapters that learned nothing proves
    nothing."""
    if set(results) != set(ARMS):
        return ["Verdict: both arms are needed."]
    rise = {arm: per_seed(results[arm]["runs"], "rise") for arm in ARMS}
    alone = {arm: mean(per_seed(results[arm]["runs"], "alone")) for arm in ARMS}
    base = mean(base_loss)
    learned = (base - alone["slots"]) / (base - alone["plain"]) if base > alone["plain"] else float("nan")
    slots, plain = mean(rise["slots"]), mean(rise["plain"])
    lower = slots + sd(rise["slots"]) < plain - sd(rise["plain"])
    numbers = (f"Crosstalk (merged minus alone, held-out loss): slots {slots:.4f} ± {sd(rise['slots']):.4f}, "
               f"plain LoRA {plain:.4f} ± {sd(rise['plain']):.4f}; alone, the slot adapters recover "
               f"{learned:.0%} of the plain LoRAs' loss reduction over the base model.")
    if not lower:
        return [f"**Verdict: the claim does not hold here.**  {numbers}"]
    if not learned >= 0.5:
        return [f"**Verdict: not informative.**  {numbers}  The slot adapters learn too little alone for their "
                "low crosstalk to mean anything."]
    return [f"**Verdict: the claim holds here.**  {numbers}"]
