"""Does a LoRA-X transfer carry a style adapter from the toy base v1 to its successor v2, without data?

The world is the style-separation toy world (``devkit/toy_world.py``); v2 is v1 pretrained 600 more steps on a
broader mix (``toy_world.recipe_v2``).  Three adapter kinds, each trained by the pack's own trainer with the settings
``experiments/style_separation`` chose for them (rank 8, 240 steps, AdamW, fp32, attention+mlp; ``RECIPES``):

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

    .venv/bin/python -m experiments.transfer.run                # v2 "broad"; ~6 min on 2 shared cores, bases cached
    .venv/bin/python -m experiments.transfer.run --v2 mild      # the milder successor (150 steps at lr 2.5e-4)
    .venv/bin/python -m experiments.transfer.run --v2 positions # broadened in positions, not palettes
    .venv/bin/python -m experiments.transfer.run --quick        # 1 seed, 40 steps, no sweeps: a smoke test
    .venv/bin/python -m experiments.transfer.run --summarize    # the README's table, from the three runs' JSON

Writes results/transfer_<v2>.{md,json,png,log} and transfer_<v2>_gallery.png (``--quick``: results/quick/
transfer_<v2>_quick.*).  Kinds, recipes and settings: ``config.py``; tables, verdict and plot: ``report.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from devkit.environment import environment
from experiments.console_log import stdout_copied_to
from experiments.toy_harness import World, build_world, generate, heldout, host, per_style_mean, pinned

from .config import KINDS, LORA_STYLE, PIN_SAMPLES, PIN_SEED, RECIPES, ROUTED, V2, Settings
from .report import plot, report, summary_table, verdict

RESULTS = Path(__file__).resolve().parent / "results"


def train_adapter(tw, pack, base, world: World, kind: str, seed: int, s: Settings):
    train = pack.nodes.train
    init, lr = RECIPES[kind]
    if kind in ROUTED:
        idx = torch.arange(len(world.train_x))
        config = train.TrainConfig(steps=s.steps, learning_rate=lr, batch_size=4, rank=s.rank, experts=4,
                                   init=init, training_dtype="fp32", gradient_checkpointing=False, seed=seed,
                                   output_name=f"transfer_{kind}_{seed}", label_guidance=1.0,
                                   label_guidance_steps=s.label_guidance_steps, style_names=tuple(tw.STYLES))
        labels = world.train_style
    else:
        idx = (world.train_style == LORA_STYLE).nonzero().flatten()
        config = train.TrainConfig(steps=s.steps, learning_rate=lr, batch_size=4, rank=s.rank, experts=1,
                                   init=init, training_dtype="fp32", gradient_checkpointing=False, seed=seed,
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


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=None)
    parser.add_argument("--v2", choices=list(V2), default="broad", help="which successor base to transfer to")
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    parser.add_argument("--summarize", action="store_true",
                        help="print the README's summary table from the finished runs' JSON files and exit")
    args = parser.parse_args(argv)
    args.out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    if args.summarize:
        datas = [json.loads(p.read_text()) for v in V2 if (p := args.out / f"transfer_{v}.json").is_file()]
        print(summary_table(datas))
        return {}
    args.out.mkdir(parents=True, exist_ok=True)
    with stdout_copied_to(args.out / f"transfer_{args.v2}{'_quick' if args.quick else ''}.log"):
        return run(args)


if __name__ == "__main__":
    main()
