"""Does a LoRA-X transfer carry a style adapter from the toy base v1 to its successor v2, without data?

The world is the style-separation toy world (``devkit/toy_world.py``); v2 is v1 pretrained 600 more steps on a
broader mix (``toy_world.recipe_v2``).  Two adapter kinds, each trained by the pack's own trainer with the settings
``bench/style_separation.py`` chose for them (rank 8, 240 steps, AdamW, fp32, attention+mlp; ``RECIPES``):

* Ortho-Hydra (E = 4, ``ortho_init`` + label guidance: expert i is trained on style i), on all four styles;
* Ortho-Hydra with frozen bases (``ortho`` + label guidance): every ΔW stays in W0's top singular subspaces, the
  LoRA-X premise by construction;
* a plain LoRA (E = 1), on one style ("cool stripes").

Each is trained on v1 and, as the oracle, on v2 (same seed, data and budget), for 3 seeds.  The v1 adapter goes
to v2 by the naive copy, LoRA-X ``subspace`` and ``subspace+null`` (the node's code path: ``nodes/transfer.py``
finds the weights, ``ortho_hydra.transfer`` moves the factors), and is judged on v2 against no adapter and the
oracle:

* held-out loss: x0 MSE on held-out renders at 5 noise levels with fixed noise (the LoRA: its style's renders);
* probe accuracy: Ortho-Hydra: each expert pinned, 16 samples, share the probe reads as that expert's style
  (expert i = style i, as label guidance trained it; chance 0.25); the LoRA: share of 16 samples in its style;
* gap closed: (none − transfer) / (none − oracle), per metric, mean over seeds;
* per layer: source/target similarity against the loss change from transferring that layer alone (the others
  copied).

Sweeps (held-out loss only): R over ``Settings.ranks`` in both modes; τ over ``Settings.taus`` at the default R.

    .venv/bin/python bench/transfer.py                # v2 "broad"; ~6 min on 2 shared CPU cores, bases cached
    .venv/bin/python bench/transfer.py --v2 mild      # the milder successor (150 steps at lr 2.5e-4)
    .venv/bin/python bench/transfer.py --v2 positions # broadened in positions, not palettes
    .venv/bin/python bench/transfer.py --quick        # 1 seed, 40 steps, no sweeps: a smoke test
    .venv/bin/python bench/transfer.py --summarize    # the README's table, from the three runs' JSON

Writes bench/out/transfer_<v2>{,_quick}.{md,json,png,log} and transfer_<v2>{,_quick}_gallery.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.timing import environment  # noqa: E402
from experiments.console_log import stdout_copied_to  # noqa: E402
from experiments.toy_harness import World, build_world, generate, heldout, host, per_style_mean, pinned  # noqa: E402

KINDS = {"ortho": "Ortho-Hydra (E=4, ortho_init + label guidance, 4 styles)",
         "ortho_frozen": "Ortho-Hydra, frozen bases (E=4, ortho + label guidance, 4 styles)",
         "lora": "plain LoRA (E=1, one style: cool stripes)"}
ROUTED = ("ortho", "ortho_frozen")
# per kind: trainer init and lr, as bench/style_separation.py chose them (ortho_lg 1e-2, ortho_init_lg and the
# single LoRA 3e-3)
RECIPES = {"ortho": ("ortho_init", 3e-3), "ortho_frozen": ("ortho", 1e-2), "lora": ("hydra_zero", 3e-3)}
ARMS = ("none", "copy", "subspace", "subspace+null", "oracle")
LORA_STYLE = 1
PIN_SAMPLES, PIN_SEED = 16, 4242
# v2 variants: the recipe's own (600 steps at lr 1e-3, neutral plus two house palettes), a milder continuation of
# it, and a successor broadened in positions (every shape also shifted by up to 1 px) in the neutral palette only,
# so that v2 changes what the base draws where, not the colours the styles live in
V2 = {"broad": {}, "mild": {"steps": 150, "lr": 2.5e-4, "warmup": 10},
      "positions": {"extra_palettes": [], "jitter": 1}}


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int = 240
    rank: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    transfer_rank: int = 32  # R: E·r = 32 holds every expert's slice
    ranks: tuple[int, ...] = (8, 16, 32, 64, 128)
    taus: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9)
    label_guidance_steps: int = 144  # as style_separation: 60 % of the steps


def train_adapter(tw, pack, base, world: World, kind: str, seed: int, s: Settings):
    train = pack.nodes.train
    init, lr = RECIPES[kind]
    if kind in ROUTED:
        idx = torch.arange(len(world.train_x))
        config = train.TrainConfig(steps=s.steps, learning_rate=lr, batch_size=4, rank=s.rank, experts=4,
                                   init=init, training_dtype="fp32", seed=seed,
                                   output_name=f"transfer_{kind}_{seed}", label_guidance=1.0,
                                   label_guidance_steps=s.label_guidance_steps, style_names=tuple(tw.STYLES))
        labels = world.train_style
    else:
        idx = (world.train_style == LORA_STYLE).nonzero().flatten()
        config = train.TrainConfig(steps=s.steps, learning_rate=lr, batch_size=4, rank=s.rank, experts=1,
                                   init=init, training_dtype="fp32", seed=seed,
                                   output_name=f"transfer_{kind}_{seed}")
        labels = None
    positive = tw.per_image_conditioning(world.train_content[idx].tolist())
    _, adapter, _, _ = train.train(base, world.train_x[idx], positive, config, labels=labels)
    return adapter


def held_loss(pack, model, world: World, kind: str, routed: bool) -> float:
    losses, _, _ = heldout(pack, model, world, routed=routed)
    if kind == "lora":
        return per_style_mean(losses, world.held_style, 4)[LORA_STYLE]
    return float(losses.mean())


def evaluate(tw, tiny_dit, pack, world: World, kind: str, adapter, probe: bool = True) -> dict:
    """Held-out loss and probe accuracy of ``adapter`` (None: the bare base) on ``world.base``."""
    base = world.base
    if adapter is None:
        model, routed = base, False
    else:
        model, routed = pack.nodes.patcher.apply_adapter(base, adapter)[0], kind in ROUTED
    out = {"loss": held_loss(pack, model, world, kind, routed)}
    if not probe:
        return out
    contents = [i % len(tw.CONTENTS) for i in range(PIN_SAMPLES)]
    experts = range(4) if kind in ROUTED else [LORA_STYLE]
    shares = []
    for e in experts:
        m = pinned(pack, base, adapter, e) if (adapter is not None and kind in ROUTED) else model
        classes = world.probe.predict(generate(tiny_dit, tw, m, contents, PIN_SEED))
        shares.append(float((classes == e).double().mean()))
    out["probe"] = statistics.fmean(shares)
    return out


def moved(pack, adapter, v1, v2, mode: str, rank: int, tau: float = 0.0, cache=None):
    from ortho_hydra.transfer import TransferOptions, transfer

    node = pack.nodes.transfer
    layers = {**adapter.layers, **adapter.plain_layers}
    return transfer(adapter, node.weight_sources(v1, layers, "source"), node.weight_sources(v2, layers, "target"),
                    TransferOptions(rank=rank, threshold=tau, mode=mode), cache=cache)


def per_layer(pack, world2: World, kind: str, adapter, result, copy_loss: float) -> list[dict]:
    """Per layer: its similarity, and the held-out loss change from transferring it alone (the rest copied)."""
    rows = []
    routed = kind in ROUTED
    for row in result.layers:
        one = dataclasses.replace(adapter, layers={**adapter.layers}, plain_layers={**adapter.plain_layers})
        target = one.layers if row.name in one.layers else one.plain_layers
        target[row.name] = (result.adapter.layers | result.adapter.plain_layers)[row.name]
        model = pack.nodes.patcher.apply_adapter(world2.base, one)[0]
        rows.append({"layer": row.name, "similarity": row.similarity, "similarity_out": row.similarity_out,
                     "similarity_in": row.similarity_in, "retained": row.retained,
                     "benefit": copy_loss - held_loss(pack, model, world2, kind, routed)})
    return rows


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


def gallery(tw, tiny_dit, pack, worlds: dict, adapters: dict, path: Path) -> None:
    """Rows: styles (Ortho-Hydra's pinned experts); columns: v1 on v1, then on v2: none, copy, LoRA-X, oracle."""
    v1, v2 = worlds["v1"].base, worlds["v2"].base
    columns = [("v1 adapter on v1", v1, adapters["v1"]), ("v2, no adapter", v2, None),
               ("v2, naive copy", v2, adapters["copy"]), ("v2, LoRA-X", v2, adapters["subspace"]),
               ("v2, LoRA-X+null", v2, adapters["subspace+null"]), ("v2, oracle", v2, adapters["oracle"])]
    cells = []
    for style in range(len(tw.STYLES)):
        for _, base, adapter in columns:
            model = base if adapter is None else pinned(pack, base, adapter, style)
            cells.append(generate(tiny_dit, tw, model, [0, 1, 2], PIN_SEED))
    grid = torch.stack(cells).reshape(len(tw.STYLES), len(columns), 3, *cells[0].shape[1:])
    grid = grid.permute(0, 2, 1, 3, 4, 5).reshape(-1, *cells[0].shape[1:])  # rows: style x content
    tw.save_grid_png(grid, path, row_labels=[f"{s} / {c}" for s in tw.STYLES for c in tw.CONTENTS[:3]],
                     col_labels=[c[0] for c in columns],
                     title="Ortho-Hydra trained on v1, expert pinned, sampled on v2 (seed 0)")


def run(args: argparse.Namespace) -> dict:
    s = Settings(steps=40, seeds=(0,)) if args.quick else Settings()
    tw, tiny_dit, pack = host()
    torch.set_num_threads(1)
    log = print
    started = time.perf_counter()
    world1 = build_world(tw, pack, log)
    world2 = dataclasses.replace(world1, base=tw.load_base_model(r=tw.recipe_v2(**V2[args.v2]), log=log))
    log(f"v1 and v2 bases ready ({time.perf_counter() - started:.0f} s)")
    from ortho_hydra.subspace import SubspaceCache

    cache = SubspaceCache()
    runs, gallery_adapters = [], {}
    for kind in (args.kinds or list(KINDS)):
        for seed in s.seeds:
            t0 = time.perf_counter()
            a1 = train_adapter(tw, pack, world1.base, world1, kind, seed, s)
            a2 = train_adapter(tw, pack, world2.base, world2, kind, seed, s)
            results = {mode: moved(pack, a1, world1.base, world2.base, mode, s.transfer_rank, cache=cache)
                       for mode in ("copy", "subspace", "subspace+null")}
            arms = {"none": evaluate(tw, tiny_dit, pack, world2, kind, None),
                    **{m: evaluate(tw, tiny_dit, pack, world2, kind, r.adapter) for m, r in results.items()},
                    "oracle": evaluate(tw, tiny_dit, pack, world2, kind, a2)}
            record = {"kind": kind, "seed": seed, "arms": arms,
                      "v1_on_v1": evaluate(tw, tiny_dit, pack, world1, kind, a1),
                      "layers": per_layer(pack, world2, kind, a1, results["subspace"], arms["copy"]["loss"])}
            if not args.quick:
                record["rank_sweep"] = {mode: {str(k): evaluate(tw, tiny_dit, pack, world2, kind, moved(
                    pack, a1, world1.base, world2.base, mode, k, cache=cache).adapter, probe=False)["loss"]
                    for k in s.ranks} for mode in ("subspace", "subspace+null")}
                record["tau_sweep"] = {}
                for tau in s.taus:
                    res = moved(pack, a1, world1.base, world2.base, "subspace", s.transfer_rank, tau, cache)
                    kept = res.counts()["kept"]
                    loss = evaluate(tw, tiny_dit, pack, world2, kind, res.adapter, probe=False)["loss"] if kept \
                        else arms["none"]["loss"]
                    record["tau_sweep"][f"{tau:g}"] = {"kept": kept, "loss": loss}
            runs.append(record)
            log(f"{kind} seed {seed}: " + ", ".join(f"{a} loss {v['loss']:.4f} probe {v['probe']:.2f}"
                                                     for a, v in arms.items()) + f" ({time.perf_counter() - t0:.0f} s)")
            if kind == "ortho" and seed == s.seeds[0]:
                gallery_adapters = {"v1": a1, "oracle": a2, **{m: r.adapter for m, r in results.items()}}
    data = {"title": f"LoRA-X transfer, toy v1 → v2 ({args.v2})" + (" (quick)" if args.quick else ""),
            "v2": args.v2, "v2_recipe_overrides": V2[args.v2],
            "settings": dataclasses.asdict(s), "runs": runs, "svds": cache.computed,
            "setup": (f"v1: the toy-world base; v2 ({args.v2}): v1 pretrained further on a broader mix "
                      f"(toy_world.recipe_v2, overrides {V2[args.v2] or 'none'}: 600 steps at lr 1e-3 unless "
                      f"overridden). Each adapter: the pack's trainer, rank {s.rank}, {s.steps} steps, "
                      f"batch 4, fp32, init and lr per kind as style_separation chose them "
                      f"({', '.join(f'{k}: {i} {lr:g}' for k, (i, lr) in RECIPES.items())}); oracle = the same "
                      f"recipe trained on v2. Transfer R = "
                      f"{s.transfer_rank}, τ = 0 (node defaults otherwise). Held-out loss: x0 MSE, 5 σ, fixed "
                      f"noise (LoRA: its style only). Probe accuracy: {PIN_SAMPLES} samples per pinned expert, "
                      f"expert i judged as style i. Seeds {', '.join(map(str, s.seeds))}.")}
    data["verdict"] = verdict(data)
    data["footer"] = (f"{cache.computed} randomised/exact SVDs for every transfer in the run; "
                      f"{time.perf_counter() - started:.0f} s in all; {environment()}")
    stem = args.out / (f"transfer_{args.v2}" + ("_quick" if args.quick else ""))
    (stem.with_suffix(".json")).write_text(json.dumps(data, indent=1))
    (stem.with_suffix(".md")).write_text(report(data))
    plot(data, stem.with_suffix(".png"))
    if gallery_adapters:
        gallery(tw, tiny_dit, pack, {"v1": world1, "v2": world2}, gallery_adapters,
                stem.parent / f"{stem.name}_gallery.png")
    print(report(data))
    return data


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


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=None)
    parser.add_argument("--v2", choices=list(V2), default="broad", help="which successor base to transfer to")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--summarize", action="store_true",
                        help="print the README's summary table from the finished runs' JSON files and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        datas = [json.loads(p.read_text()) for v in V2 if (p := args.out / f"transfer_{v}.json").is_file()]
        print(summary_table(datas))
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    with stdout_copied_to(args.out / f"transfer_{args.v2}{'_quick' if args.quick else ''}.log"):
        return run(args)


if __name__ == "__main__":
    main()
