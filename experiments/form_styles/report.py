"""The study's report: results JSON, markdown tables, and the generated blocks of the READMEs.

Everything here is computed from ``results/runs.jsonl`` and ``results/meta.json``; no figure is typed by hand.
``python -m experiments.form_styles.report`` re-writes ``results/form_styles.{json,md}`` and the blocks between
``<!-- form_styles:NAME -->`` and ``<!-- /form_styles:NAME -->`` in ``experiments/form_styles/README.md`` and the
main README.  ``tests/unit/test_form_styles_results.py`` checks those blocks against the JSON.

Intervals: "±" is the half-width of the 95 % t-interval over the reported seeds (seeds 1-5; the selection seed 0
is never reported).  Differences with the reference arm are paired by seed; the held-out loss is compared as a
ratio (the interval of the mean log ratio, exponentiated).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from .plan import ARMS, MOE_ARMS, REFERENCE, RUN_ARMS, Plan

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
READMES = (HERE / "README.md", HERE.parents[1] / "README.md")
STYLE_NAMES = ("serif", "typewriter", "oblique", "condensed")
# two-sided 95 % Student t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df in T95:
        return T95[df]
    return T95[max(k for k in T95 if k <= df)] if df < 30 else 1.96


def interval(values: Sequence[float]) -> dict:
    """Mean and the 95 % t half-width over seeds (NaN half-width for one value)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = t95(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "half": half, "low": mean - half, "high": mean + half, "n": n}


def load(out: Path = RESULTS) -> tuple[list[dict], dict]:
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line.strip()]
    meta = json.loads((out / "meta.json").read_text())
    explore = out / "positive_explore.json"  # the diagnosis run after a failed positive control (positive_explore)
    if explore.is_file():
        meta = {**meta, "positive_explore": json.loads(explore.read_text())}
    return runs, meta


def summarise(runs: list[dict], meta: dict) -> dict:
    plan = _plan(meta["plan"])
    seeds = {a: {r["seed"]: r for r in runs if r["stage"] == "seed" and r["arm"] == a} for a in ARMS}
    arms = {}
    for arm, by_seed in seeds.items():
        if not by_seed:
            continue
        rs = [by_seed[s] for s in sorted(by_seed)]
        entry = {"label": ARMS[arm].label, "lr": rs[0]["lr"], "seeds": sorted(by_seed),
                 "rank": meta["matched_rank"] if ARMS[arm].matched else plan.rank, "experts": ARMS[arm].experts}
        for metric in ("pin", "content", "bleed", "heldout_loss"):
            entry[metric] = interval([r[metric] for r in rs])
        if ARMS[arm].experts > 1:
            entry["purity"] = interval([r["purity"] for r in rs])
        entry["pin_by_style"] = [statistics.fmean(r["per_style"][k]["pin"] for r in rs) for k in range(4)]
        arms[arm] = entry
    comparisons = {}
    ref = seeds.get(REFERENCE, {})
    for arm in arms:
        if arm == REFERENCE or not ref:
            continue
        common = sorted(set(seeds[arm]) & set(ref))
        if len(common) < 2:
            continue
        a, b = [seeds[arm][s] for s in common], [ref[s] for s in common]
        entry = {m: interval([x[m] - y[m] for x, y in zip(a, b, strict=True)]) for m in ("pin", "content", "bleed")}
        logs = interval([math.log(x["heldout_loss"] / y["heldout_loss"]) for x, y in zip(a, b, strict=True)])
        entry["loss_ratio"] = {"mean": math.exp(logs["mean"]), "low": math.exp(logs["low"]),
                               "high": math.exp(logs["high"]), "n": logs["n"]}
        entry["noninferior"] = {
            "pin": entry["pin"]["low"] > -plan.margin_pin,
            "content": entry["content"]["low"] > -plan.margin_content,
            "bleed": entry["bleed"]["high"] < plan.margin_bleed,
            "heldout_loss": entry["loss_ratio"]["high"] < plan.margin_loss_ratio,
        }
        comparisons[arm] = entry
    verdicts = {}
    for arm in MOE_ARMS:
        if arm not in arms:
            continue
        e, c = arms[arm], comparisons.get(arm)
        verdicts[arm] = bool(e["pin"]["mean"] >= plan.promise_pin and e["content"]["mean"] >= plan.promise_content
                             and c is not None and c["noninferior"]["pin"])
    selection = {}
    for arm in ARMS:
        grid = sorted((r for r in runs if r["stage"] == "select" and r["arm"] == arm), key=lambda r: r["lr"])
        if grid:
            chosen = min(grid, key=lambda r: r["validation_loss"])["lr"]
            selection[arm] = {"lrs": [r["lr"] for r in grid], "validation_loss": [r["validation_loss"] for r in grid],
                              "chosen": chosen}
    positive = [r for r in runs if r["stage"] == "positive"]
    control = {"runs": [{k: r[k] for k in ("style", "lr", "seed", "pin", "content", "bleed")} for r in positive]}
    if positive and len(positive) < len(STYLE_NAMES):
        control["passes"] = None  # stopped part-way: no verdict
    elif positive:
        control["passes"] = all(r["pin"] >= plan.positive_control_pin and r["content"] >= plan.positive_control_content
                                for r in positive)
    seconds = sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in runs)
    return {"plan": meta["plan"], "matched_rank": meta["matched_rank"], "adapted_layers": meta["adapted_layers"],
            "probe": meta["probe"], "base": meta["base"], "world": meta.get("world", {}),
            "positive_control": control, "selection": selection,
            "positive_explore": meta.get("positive_explore", []),
            "arms": arms, "comparisons": comparisons, "promise_holds": verdicts, "run_seconds": seconds,
            "runs": len(runs)}


# ------------------------------------------------------------------------------------------------------ tables


def _pm(entry: dict, fmt: str = ".2f") -> str:
    if math.isnan(entry["half"]):
        return f"{entry['mean']:{fmt}}"
    return f"{entry['mean']:{fmt}} ± {entry['half']:{fmt}}"


def _ci(entry: dict, fmt: str = "+.2f") -> str:
    return f"{entry['mean']:{fmt}} [{entry['low']:{fmt}}, {entry['high']:{fmt}}]"


def table_positive(s: dict) -> list[str]:
    rows = ["| style (trained alone) | pin accuracy | content accuracy | bleed | passes (≥ 0.90 / ≥ 0.90) |",
            "|---|---|---|---|---|"]
    plan = s["plan"]
    for r in s["positive_control"]["runs"]:
        ok = r["pin"] >= plan["positive_control_pin"] and r["content"] >= plan["positive_control_content"]
        rows.append(f"| {r['style']} | {r['pin']:.2f} | {r['content']:.2f} | {r['bleed']:.3f} | "
                    f"{'yes' if ok else 'no'} |")
    return rows


def table_positive_explore(s: dict) -> list[str]:
    rows = s.get("positive_explore", [])
    if not rows:
        return ["_Not run._"]
    out = ["| style | steps | lr | adapted Linears | rank | held-out characters: pin / content | training "
           "characters: pin / content |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['style']} | {r['steps']} | {r['lr']:g} | {r['targets']} | {r['rank']} | "
                   f"{r['held_out']['pin']:.2f} / {r['held_out']['content']:.2f} | "
                   f"{r['train']['pin']:.2f} / {r['train']['content']:.2f} |")
    return out


def table_probe(s: dict) -> list[str]:
    p = s["probe"]
    rows = ["| check | value | threshold |", "|---|---|---|",
            f"| accuracy on never-seen characters, clean renders | {p['held_out_accuracy_clean']:.3f} | ≥ 0.95 |",
            f"| accuracy on never-seen characters, augmented renders | {p['held_out_accuracy_augmented']:.3f} "
            "| ≥ 0.95 |"]
    for family, e in p["impostor_acceptance"].items():
        if e["rate"] is None:
            rows.append(f"| impostors accepted: {family} | {e['note']} | ≤ 1/6 |")
        else:
            rows.append(f"| impostors accepted: {family} | {e['accepted']}/{e['count']} ({e['rate']:.3f}) | ≤ 1/6 |")
    return rows


def table_arms(s: dict) -> list[str]:
    rows = ["| arm | rank | lr | seeds | pin accuracy | content accuracy | bleed | held-out loss | routing purity |",
            "|---|---|---|---|---|---|---|---|---|"]
    for e in s["arms"].values():
        purity = _pm(e["purity"]) if "purity" in e else "–"
        rows.append(f"| {e['label']} | {e['rank']} | {e['lr']:g} | {len(e['seeds'])} | {_pm(e['pin'])} | "
                    f"{_pm(e['content'])} | {_pm(e['bleed'], '.3f')} | {_pm(e['heldout_loss'], '.4f')} | {purity} |")
    return rows


def table_comparison(s: dict) -> list[str]:
    plan = s["plan"]
    rows = [f"| arm | Δ pin (margin −{plan['margin_pin']:g}) | Δ content (margin −{plan['margin_content']:g}) | "
            f"Δ bleed (margin +{plan['margin_bleed']:g}) | held-out loss ratio (margin {plan['margin_loss_ratio']:g}) "
            f"| pins styles (pin ≥ {plan['promise_pin']:g}, content ≥ {plan['promise_content']:g}, Δ pin "
            "non-inferior) |", "|---|---|---|---|---|---|"]
    for arm, c in s["comparisons"].items():
        ni = c["noninferior"]
        lr = c["loss_ratio"]
        verdict = "–" if arm not in s["promise_holds"] else ("**yes**" if s["promise_holds"][arm] else "no")
        rows.append(f"| {ARMS[arm].label} | {_ci(c['pin'])} {'✓' if ni['pin'] else '✗'} | "
                    f"{_ci(c['content'])} {'✓' if ni['content'] else '✗'} | {_ci(c['bleed'], '+.3f')} "
                    f"{'✓' if ni['bleed'] else '✗'} | {lr['mean']:.3f} [{lr['low']:.3f}, {lr['high']:.3f}] "
                    f"{'✓' if ni['heldout_loss'] else '✗'} | {verdict} |")
    return rows


def table_selection(s: dict) -> list[str]:
    lrs = sorted({lr for e in s["selection"].values() for lr in e["lrs"]})
    rows = ["| arm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |",
            "|---|" + "---|" * len(lrs) + "---|"]
    for arm, e in s["selection"].items():
        by = dict(zip(e["lrs"], e["validation_loss"], strict=True))
        cells = [f"**{by[lr]:.4f}**" if lr == e["chosen"] else (f"{by[lr]:.4f}" if lr in by else "–") for lr in lrs]
        rows.append(f"| {ARMS[arm].label} | " + " | ".join(cells) + f" | {e['chosen']:g} |")
    return rows


def table_pin_by_style(s: dict) -> list[str]:
    rows = ["| arm | " + " | ".join(STYLE_NAMES) + " |", "|---|" + "---|" * len(STYLE_NAMES)]
    for e in s["arms"].values():
        rows.append(f"| {e['label']} | " + " | ".join(f"{v:.2f}" for v in e["pin_by_style"]) + " |")
    return rows


def table_world(s: dict) -> list[str]:
    w, b = s["world"], s["base"]
    rows = ["| check | value |", "|---|---|"]
    if "base_build_seconds" in w:
        rows.append(f"| base model build (recipe {w['recipe_hash']}, 2 shared CPU cores, 1 torch thread) | "
                    f"{w['base_build_seconds'] / 60:.1f} min |")
    if "ink" in w:
        rows.append("| mean ink per face / neutral | " + ", ".join(f"{k} {v['ratio']:.3f}" for k, v in w["ink"].items())
                    + " |")
        c = w["ink_only_check"]
        rows.append(f"| nearest centroid on ink mass alone, never-seen characters (chance {c['chance']:.2f}) | "
                    f"{c['ink_mass']:.2f} |")
        rows.append(f"| nearest centroid on ink mass + ink histogram | {c['ink_mass_and_histogram']:.2f} |")
    rows += [f"| base model, held-out characters: held-out loss (4 styles) | {b['heldout_loss']:.4f} |",
             f"| base model samples of held-out characters: content probe reads the character | {b['content']:.2f} |",
             f"| base model samples of held-out characters: form probe rejects (not a style) | "
             f"{b['samples_rejected']:.2f} |"]
    return rows


def headline(s: dict) -> list[str]:
    control = s["positive_control"]
    if "passes" in control:
        runs = control["runs"]
        verdict = {True: "**passes**", False: "**fails**",
                   None: f"**incomplete** ({len(runs)} of {len(STYLE_NAMES)} styles ran)"}[control["passes"]]
        first = (f"Positive control (single LoRA r={s['plan']['rank']}, one style alone, held-out characters): "
                 f"{verdict} (pin "
                 + ", ".join(f"{r['style']} {r['pin']:.2f}" for r in runs) + "; content "
                 + ", ".join(f"{r['content']:.2f}" for r in runs) + ").")
    else:
        first = "The positive control has not been run."
    if not s["arms"]:
        return [first + " The comparison has not been run."]
    holds = [ARMS[a].label for a, v in s["promise_holds"].items() if v]
    ref = s["arms"].get(REFERENCE)
    line = (f"Held-out characters, seeds {', '.join(map(str, ref['seeds']))}: the fair supervised baseline "
            f"({ARMS[REFERENCE].label}) pins {_pm(ref['pin'])}" if ref else "")
    verdict = (f"the promise (pin ≥ {s['plan']['promise_pin']:g}, content kept, non-inferior by "
               f"{s['plan']['margin_pin']:g}) holds for: {', '.join(holds)}." if holds else
               "the promise holds for no mixture-of-experts arm.")
    best = max((a for a in s["arms"] if a in MOE_ARMS), key=lambda a: s["arms"][a]["pin"]["mean"], default=None)
    best_text = (f" The best mixture-of-experts arm, {ARMS[best].label}, pins {_pm(s['arms'][best]['pin'])} "
                 f"(content {_pm(s['arms'][best]['content'])})." if best else "")
    not_run = [ARMS[a].label for a in ARMS if a not in s["arms"]]
    missing = f" Not run: {', '.join(not_run)}." if not_run else ""
    return [f"{first} {line}; {verdict}{best_text}{missing} (± : 95 % t-interval over seeds.)"]


def _plan(plan: Plan | dict) -> Plan:
    if isinstance(plan, Plan):
        return plan
    return Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan.items()})


def table_plan(plan: Plan | dict) -> list[str]:
    """The arms and the settings the study runs with (``plan.py``)."""
    p = _plan(plan)
    rows = ["| arm | experts | trainer init | rank | label guidance | style name in the conditioning |",
            "|---|---|---|---|---|---|"]
    for arm in ARMS.values():
        rank = "MoE-sized (same parameter count as E=4, r=8)" if arm.matched else str(p.rank)
        rows.append(f"| {arm.label} | {arm.experts} | {arm.init} | {rank} | {'yes' if arm.guided else 'no'} | "
                    f"{'yes' if arm.named else 'no'} |")
    rows += ["", "| setting | value |", "|---|---|",
             f"| training | the pack's trainer (`nodes/train.py`), {p.steps} steps, batch {p.batch_size}, AdamW, "
             "cosine schedule, fp32, every attention and MLP Linear, trainer defaults otherwise |",
             f"| label guidance | weight {p.label_guidance:g} for {p.guidance_steps} steps, then decayed |",
             f"| learning rate | grid {', '.join(f'{lr:g}' for lr in p.lrs)}, chosen per arm by the validation "
             f"characters' loss on seed {p.selection_seed}; seed {p.selection_seed} is never reported |",
             f"| seeds reported | {', '.join(map(str, p.seeds))} |",
             f"| held-out loss | x0 MSE at σ ∈ {{{', '.join(f'{x:g}' for x in p.loss_sigmas)}}}, fixed noise |",
             f"| routing purity | NMI(style, argmax expert) of live gates at σ ∈ "
             f"{{{', '.join(f'{x:g}' for x in p.purity_sigmas)}}}, mean over routed layers |",
             f"| samples | euler {p.sample_steps} steps, cfg {p.cfg:g}, {p.samples_per_char} per (style, character) |",
             f"| arms run (revision 1), in order | {', '.join(ARMS[a].label for a in RUN_ARMS)}; the others "
             "are planned and not run |",
             f"| the promise holds for an arm | mean pin ≥ {p.promise_pin:g}, mean content ≥ {p.promise_content:g}, "
             f"and pin non-inferior to {ARMS[REFERENCE].label}: lower 95 % bound of the paired difference above "
             f"−{p.margin_pin:g} |",
             f"| secondary margins | content −{p.margin_content:g}, bleed +{p.margin_bleed:g}, held-out loss ratio "
             f"{p.margin_loss_ratio:g} (upper bound) |",
             f"| positive control passes | single LoRA r={p.rank}, one style alone, lr {p.positive_control_lr:g}, seed "
             f"{p.selection_seed}, {p.positive_control_samples} samples per held-out character: pin ≥ "
             f"{p.positive_control_pin:g} and content ≥ {p.positive_control_content:g} for every style |"]
    return rows


def _unless_empty(table, key: str):
    """A results table, or one line saying why it has no rows (no arm has run: the positive control failed)."""
    def render(s: dict) -> list[str]:
        if s[key]:
            return table(s)
        control = s["positive_control"].get("passes")
        why = "the positive control failed, so no comparison was run" if control is False else "no arm has run yet"
        return [f"_No rows: {why}._"]
    return render


BLOCKS = {"plan": lambda s: table_plan(s["plan"]), "positive": table_positive, "probe": table_probe,
          "positive_explore": table_positive_explore,
          "world": table_world,
          "arms": _unless_empty(table_arms, "arms"), "comparison": _unless_empty(table_comparison, "comparisons"),
          "selection": _unless_empty(table_selection, "selection"),
          "pin_by_style": _unless_empty(table_pin_by_style, "arms"), "headline": headline}


def markdown(s: dict) -> str:
    parts = ["# Form-style study: results", "",
             "Generated by `python -m experiments.form_styles.report` from `runs.jsonl` and `meta.json`. "
             "± is the half-width of the 95 % t-interval over seeds; [a, b] are 95 % paired t-intervals.", ""]
    titles = {"headline": "Verdict", "positive": "Positive control",
              "positive_explore": "Why the positive control fails (diagnosis, not an arm)", "probe": "Form probe",
              "world": "The world",
              "arms": "Every arm on held-out characters", "comparison": f"Against {ARMS[REFERENCE].label} (paired)",
              "pin_by_style": "Pin accuracy by style", "selection": "Learning-rate selection (seed 0, validation loss)"}
    for name in ("headline", "world", "positive", "positive_explore", "probe", "arms", "comparison", "pin_by_style",
                 "selection"):
        parts += [f"## {titles[name]}", "", *BLOCKS[name](s), ""]
    return "\n".join(parts)


def fill_plan(text: str, plan: Plan) -> str:
    """Write the plan block alone (before any result exists)."""
    block = "<!-- form_styles:plan -->\n" + "\n".join(table_plan(plan)) + "\n<!-- /form_styles:plan -->"
    return re.sub(r"<!-- form_styles:plan -->\n.*?<!-- /form_styles:plan -->", lambda _: block, text, flags=re.S)


def fill(text: str, s: dict) -> str:
    """Replace every generated block in ``text`` with its current content."""
    def block(match: re.Match) -> str:
        name = match.group(1)
        return f"<!-- form_styles:{name} -->\n" + "\n".join(BLOCKS[name](s)) + f"\n<!-- /form_styles:{name} -->"

    return re.sub(r"<!-- form_styles:(\w+) -->\n.*?<!-- /form_styles:\1 -->", block, text, flags=re.S)


def blocks_in(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- form_styles:(\w+) -->\n(.*?)\n<!-- /form_styles:\1 -->",
                                                        text, flags=re.S)}


def write(out: Path = RESULTS, readmes: Sequence[Path] = READMES) -> dict:
    runs, meta = load(out)
    s = summarise(runs, meta)
    (out / "form_styles.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "form_styles.md").write_text(markdown(s))
    if out.resolve() == RESULTS.resolve():
        for path in readmes:
            if path.is_file():
                path.write_text(fill(path.read_text(), s))
    return s


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    s = write(args.out)
    print(markdown(s))


if __name__ == "__main__":
    main()
