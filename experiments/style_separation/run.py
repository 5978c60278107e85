"""Do trained experts carry styles?  Eight adapter arms trained on the toy world, judged with the style probe.

The world (``devkit/toy_world.py``): 6 contents x 4 visible styles as SD3 16-channel 16 x 16 latents, a tiny
pretrained MMDiT that only knows the neutral palette, conditioning that names the content and never the style.
Every arm is trained by the pack's own in-graph trainer (``nodes/train.py``) on the same styled data, with the
same rank, steps, optimiser (AdamW, trainer defaults) and learning-rate grid; each arm keeps the lr with the
lowest held-out denoising loss (seed 0), then runs 3 seeds there.

Arms (``ARMS``): a single LoRA (E=1, zero-init up), HydraLoRA zero, HydraLoRA jitter, Ortho-Hydra (frozen bases)
and Ortho-Hydra ``ortho_init`` (E=4), and Ortho-Hydra, ``ortho_init`` and HydraLoRA zero with label guidance
(style i -> expert i for the first 60 % of the steps, then decayed).

Metrics (per arm, mean ± std over seeds): pin accuracy (pin each expert, sample 16 fixed contents/seeds, probe,
Hungarian match experts to styles), routing purity (NMI of style and argmax expert on held-out noisy latents),
style bleed (per-style held-out x0 MSE against the single LoRA), collapse (layers where one expert takes
>= 90 % of samples), live routing (router-live img2img at denoise 0.6 keeps the input's style) and the probe's
own held-out accuracy.  Arms and settings: ``config.py``; tables, verdict and plot: ``report.py``; the world,
sampling and the held-out loss: ``experiments/toy_harness.py``.

Writes results/style_separation.{md,json,csv,png,log} and style_separation_{gallery,matrix}.png
(``--quick``: results/quick/style_separation_quick.*, 2 arms, 1 seed, 1 lr, 40 steps).

Settings (see ``Settings``): rank 8 (E·r = 32 fits Ortho-Hydra's disjoint slices in every 128-wide Linear),
240 steps, lr grid {3e-3, 1e-2, 3e-2}, batch 4, 24 training latents, 1 intra-op thread (1 thread beat 2 by 1.5-6x
on the shared cores for these tiny steps).  ``--arms``, ``--lrs`` and ``--seeds`` narrow a run, e.g. to the paired
comparison of target 2 (README).

    .venv/bin/python -m experiments.style_separation.run          # full run: 8 arms, 3 lrs, 3 seeds; ~10 min
    .venv/bin/python -m experiments.style_separation.run --quick  # smoke test, ~30 s

Both need the toy world's cached base model; when its recipe changed, the first run trains it once (1-15 min
depending on the machine's load; reported separately in the footer).
Re-render a report with extra notes: ``python -m experiments.style_separation.report OUT.json --notes NOTES.md``.

Past 350 lines because one experiment's driver is kept in one place: the base reference, training an arm,
evaluating it on five instruments, galleries and the outputs; the metrics and the report are in their own module.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from devkit.environment import environment
from devkit.host import loras_folder
from experiments.console_log import stdout_copied_to
from experiments.gate_measures import collapse_share, routing_purity
from experiments.toy_harness import (
    CFG,
    LOSS_SIGMAS,
    PURITY_SIGMAS,
    SAMPLE_STEPS,
    World,
    build_world,
    generate,
    heldout,
    host,
    per_style_mean,
    pinned,
    sigma_style_means,
)

from .config import (
    ARMS,
    IMG2IMG_DENOISE,
    IMG2IMG_SEED,
    PIN_SAMPLES,
    PIN_SEED,
    REFERENCE,
    SUBJECT,
    SUBJECT_INIT,
    Settings,
)
from .report import RunRecord, chosen, pin_accuracy, plot, reachable_share, report, summary

RESULTS = Path(__file__).resolve().parent / "results"


def img2img(tw, model, latents: torch.Tensor, contents: Sequence[int], seed: int,
            denoise: float = IMG2IMG_DENOISE) -> torch.Tensor:
    import comfy.sample

    noise = comfy.sample.prepare_noise(latents, seed)
    return comfy.sample.sample(model, noise, SAMPLE_STEPS, CFG, "euler", "simple", tw.conditioning(list(contents)),
                               tw.unconditional(len(contents)), latents, denoise=denoise, disable_pbar=True, seed=seed)


# --------------------------------------------------------------------------------------------- the base model


def base_reference(tw, tiny_dit, pack, world: World, log) -> dict:
    """The untouched base model on the same instruments: held-out loss per style, its samples' and its img2img
    outputs' probe classes (a model that knows no style: samples should read neutral, img2img shows how much
    of the input's style survives denoise 0.6 without any adapter)."""
    losses, _, per_sigma = heldout(pack, world.base, world, routed=False)
    style_loss = per_style_mean(losses, world.held_style, len(tw.STYLES))
    contents = [i % len(tw.CONTENTS) for i in range(PIN_SAMPLES)]
    samples = generate(tiny_dit, tw, world.base, contents, PIN_SEED)
    classes = world.probe.predict(samples).tolist()
    idx = img2img_indices(tw, world)
    out = img2img(tw, world.base, world.held_x[idx], world.held_content[idx].tolist(), IMG2IMG_SEED)
    kept = (world.probe.predict(out) == world.held_style[idx]).double().mean().item()
    ref = {"style_loss": style_loss, "heldout_loss": float(losses.mean()),
           "style_sigma_loss": sigma_style_means(per_sigma, LOSS_SIGMAS, world.held_style, len(tw.STYLES)),
           "sample_classes": classes, "sample_neutral_share": classes.count(tw.NEUTRAL) / len(classes),
           "img2img_style_kept": kept}
    log(f"base model: held-out loss {ref['heldout_loss']:.4f} (per style "
        f"{', '.join(f'{v:.4f}' for v in style_loss)}); its samples read neutral {ref['sample_neutral_share']:.2f}; "
        f"img2img at denoise {IMG2IMG_DENOISE} keeps the input style {kept:.2f}")
    return ref


def img2img_indices(tw, world: World) -> torch.Tensor:
    """The first render of every (content, style) pair in the held-out set."""
    return torch.arange(len(tw.CONTENTS) * len(tw.STYLES))


# --------------------------------------------------------------------------------------------------- one arm


def train_arm(tw, pack, world: World, settings: Settings, arm: str, lr: float, seed: int, stamps: list):
    _, experts, init, guided = ARMS[arm]
    train = pack.nodes.train
    config = train.TrainConfig(
        steps=settings.steps, learning_rate=lr, batch_size=settings.batch_size,
        grad_accumulation=settings.grad_accumulation, rank=settings.rank, experts=experts, init=init,
        training_dtype="fp32", gradient_checkpointing=False, seed=seed,
        output_name=f"style_separation_{arm}_{lr:g}_{seed}",
        label_guidance=settings.label_guidance if guided else 0.0,
        label_guidance_steps=settings.guidance_steps if guided else 0,
        style_names=tuple(tw.STYLES) if experts > 1 else ())
    positive = tw.per_image_conditioning(world.train_content.tolist())
    labels = world.train_style if experts > 1 else None
    stamps.clear()
    started = time.perf_counter()
    live, adapter, loss_map, _ = train.train(world.base, world.train_x, positive, config, labels=labels)
    return live, adapter, loss_map["loss"], time.perf_counter() - started


def evaluate(tw, tiny_dit, pack, world: World, arm: str, live, adapter, record: RunRecord) -> RunRecord:
    """Everything on one trained adapter: held-out loss and gates, pins, live img2img."""
    started = time.perf_counter()
    experts = ARMS[arm][1]
    styles = len(tw.STYLES)
    losses, gates, per_sigma = heldout(pack, live, world, routed=experts > 1)
    record.heldout_loss = float(losses.mean())
    record.style_loss = per_style_mean(losses, world.held_style, styles)
    record.style_sigma_loss = sigma_style_means(per_sigma, LOSS_SIGMAS, world.held_style, styles)
    if experts > 1:
        labels = world.held_style.repeat(len(PURITY_SIGMAS))
        pooled = {layer: torch.cat([gates[s][layer] for s in PURITY_SIGMAS]) for layer in gates[PURITY_SIGMAS[0]]}
        record.purity = routing_purity(pooled, labels)
        record.purity_by_sigma = {f"{s:g}": routing_purity(gates[s], world.held_style) for s in PURITY_SIGMAS}
        record.collapse, record.uniform = collapse_share(pooled)
        record.gate_max = statistics.fmean(float(g.max(-1).values.mean()) for g in pooled.values())
    contents = [i % len(tw.CONTENTS) for i in range(PIN_SAMPLES)]
    predictions = []
    for e in range(experts):
        model = pinned(pack, world.base, adapter, e) if experts > 1 else live
        predictions.append(world.probe.predict(generate(tiny_dit, tw, model, contents, PIN_SEED)).tolist())
    pins = pin_accuracy(predictions, styles, styles + 1)
    record.pin_accuracy, record.pin_mapping, record.pin_confusion = (pins["accuracy"], pins["mapping"],
                                                                     pins["confusion"])
    idx = img2img_indices(tw, world)
    out = img2img(tw, live, world.held_x[idx], world.held_content[idx].tolist(), IMG2IMG_SEED)
    record.live_accuracy = (world.probe.predict(out) == world.held_style[idx]).double().mean().item()
    record.full = True
    record.eval_seconds = time.perf_counter() - started
    return record


@torch.no_grad()
def single_lora_reach(pack, world: World, records: list[RunRecord], adapters: dict, rank: int) -> dict | None:
    """How much of the single LoRA's trained ΔW lies where Ortho-Hydra (E=4, same rank) could put it."""
    from ortho_hydra.basis import disjoint_basis

    runs = chosen(records, REFERENCE)
    if not runs:
        return None
    experts = ARMS["ortho"][1]
    targets = pack.nodes.model_linears.adaptable_linears(world.base, "attention+mlp")
    bases: dict = {}
    shares, best_shares, chance = [], [], float("nan")
    for r in runs:
        _, adapter = adapters[(REFERENCE, r.lr, r.seed)]
        total = inside = best = weighted_chance = 0.0
        for name, layer in adapter.layers.items():
            w0 = targets[name][1].detach().float().cpu()
            if name not in bases:
                bases[name] = disjoint_basis(w0, experts, rank, seed=0)
            energy, share, one = reachable_share(layer.static_delta_weight(torch.ones(1)).cpu(),
                                                 bases[name].in_basis, bases[name].out_bases)
            out_f, in_f = w0.shape
            total, inside, best = total + energy, inside + share * energy, best + one * energy
            weighted_chance += energy * (rank / in_f) * min(1.0, experts * rank / out_f)
        shares.append(inside / total)
        best_shares.append(best / total)
        chance = weighted_chance / total
    return {"rank": rank, "experts": experts, "layers": len(bases), "all": shares, "best": best_shares,
            "chance": chance, "seeds": [r.seed for r in runs]}


# ---------------------------------------------------------------------------------------------------- gallery


def galleries(tw, tiny_dit, pack, world: World, adapter, live, stem: Path, title: str) -> list[Path]:
    """(a) contents as rows x pinned experts + live as columns (txt2img); (b) styles as rows x [input, pinned
    experts, live] as columns (img2img of one content at denoise 0.6)."""
    names = adapter.display_expert_names()
    experts = adapter.num_experts
    contents = list(range(len(tw.CONTENTS)))
    columns = [pinned(pack, world.base, adapter, e) for e in range(experts)] + [live]
    col_labels = [f"pin {n}" for n in names] + ["live"]
    samples = [generate(tiny_dit, tw, m, contents, PIN_SEED) for m in columns]
    grid = torch.stack(samples, 1).reshape(-1, *samples[0].shape[1:])  # row-major: content, then column
    paths = [tw.save_grid_png(grid, f"{stem}_gallery.png", row_labels=list(tw.CONTENTS), col_labels=col_labels,
                              title=f"{title}: contents x pinned experts (txt2img)")]
    idx = torch.tensor([int(((world.held_content == 0) & (world.held_style == s)).nonzero()[0])
                        for s in range(len(tw.STYLES))])
    inputs, ids = world.held_x[idx], world.held_content[idx].tolist()
    outs = [inputs] + [img2img(tw, m, inputs, ids, IMG2IMG_SEED) for m in columns]
    matrix = torch.stack(outs, 1).reshape(-1, *inputs.shape[1:])
    paths.append(tw.save_grid_png(matrix, f"{stem}_matrix.png", row_labels=list(tw.STYLES),
                                  col_labels=["input", *col_labels],
                                  title=f"img2img {IMG2IMG_DENOISE}: style rows x pinned experts"))
    return paths


# ------------------------------------------------------------------------------------------------------ main


NO_JITTER = ("; the world has no position jitter, so for the three noiseless styles the held-out pictures are the "
             "training pictures and the held-out loss measures the fit at fresh noise draws and levels")


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def _join(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def describe(settings: Settings, world: World, tw, adapter_layers: int, ms_per_step: float) -> str:
    from devkit.host import import_pack

    defaults = import_pack().nodes.train.TrainConfig
    return (
        f"Toy world: {len(tw.CONTENTS)} contents × {len(tw.STYLES)} styles ({', '.join(tw.STYLES)}), SD3 16-channel "
        f"{tw.SIZE}×{tw.SIZE} latents; the base MMDiT (depth 2, hidden 128) was pretrained on the neutral palette "
        f"only.  Training set: {len(world.train_x)} styled latents ({settings.split.train_per_pair} per content × "
        f"style); held out: {len(world.held_x)} renders with other seeds (seed {settings.split.heldout_seed}: other "
        f"grain draws"
        f"{f', positions jittered by up to {tw.JITTER} px' if tw.JITTER else NO_JITTER}).  "
        f"Every arm: the pack's trainer (nodes/train.py), rank {settings.rank}, {settings.steps} steps, AdamW "
        f"(trainer defaults: router lr ×{defaults.router_lr_scale:g}, balance {defaults.balance_weight:g} over "
        f"{defaults.balance_memory} micro-batches, router calibration, logit-normal "
        f"σ), fp32, {adapter_layers} adapted Linears (attention+mlp), batch {settings.batch_size} × "
        f"{settings.grad_accumulation} accumulated (each image with its own conditioning); lr grid "
        f"{', '.join(f'{x:g}' for x in settings.lrs)}, best by held-out loss on "
        f"seed 0, seeds {', '.join(map(str, settings.seeds))} at that lr.  Label guidance: weight "
        f"{settings.label_guidance:g} for {settings.guidance_steps} steps, then decayed to 0 over "
        f"{settings.guidance_steps // 2}.  Probe: 5 classes (4 styles + neutral), held-out accuracy "
        f"{world.probe_report['held_out_accuracy']:.3f} (degraded "
        f"{world.probe_report['held_out_accuracy_degraded']:.3f}); "
        f"a neutral-looking sample is never in a matched style.  Pin accuracy: {PIN_SAMPLES} samples per pinned "
        f"expert (contents cycled, seed {PIN_SEED}, euler {SAMPLE_STEPS} steps, cfg {CFG:g}), experts matched to "
        f"styles by the Hungarian method (chance 0.25); for the single LoRA, the share in its most common style.  "
        f"Routing purity: NMI(style, argmax expert) on held-out latents at σ ∈ {{{_join(PURITY_SIGMAS)}}}, "
        f"mean over routed layers; collapsed: one expert is argmax for ≥ 90 % of those samples; uniform: ≥ 90 % of "
        f"samples have max gate within 1e-3 of 1/E.  Held-out loss: x0 MSE at σ ∈ {{{_join(LOSS_SIGMAS)}}} "
        f"with fixed noise.  Live img2img: router-live, denoise {IMG2IMG_DENOISE}, {len(img2img_indices(tw, world))} "
        f"held-out inputs, probe class = input style.  Base model reference: held-out loss "
        f"{world.base_ref['heldout_loss']:.4f}, its samples read neutral "
        f"{world.base_ref['sample_neutral_share']:.2f}, its own img2img keeps the input style "
        f"{world.base_ref['img2img_style_kept']:.2f}.  Median training step {ms_per_step:.0f} ms "
        f"({_threads(settings.threads)}).")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: single + ortho_lg, 1 seed, 1 lr, 40 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lrs", type=float, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm at the chosen lr (default 3)")
    parser.add_argument("--arms", nargs="+", default=None, choices=list(ARMS))
    parser.add_argument("--rank", type=int, default=Settings.rank)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    parser.add_argument("--tag", default="", help="suffix for the output files")
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        base = Settings(steps=40, lrs=(3e-3,), seeds=(0,), arms=("single", SUBJECT))
    else:
        base = Settings()
    return Settings(steps=args.steps or base.steps, lrs=tuple(args.lrs or base.lrs),
                    seeds=tuple(range(args.seeds)) if args.seeds else base.seeds,
                    arms=tuple(args.arms or base.arms), rank=args.rank, threads=args.threads)


def run(settings: Settings, stem: Path, quick: bool) -> dict:
    wall = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - wall:6.0f}s] {message}", flush=True)

    log(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min) on {os.cpu_count()} cores")
    tw, tiny_dit, pack = host()
    import comfy.utils

    world = build_world(tw, pack, log, settings.split)
    world.base_ref = base_reference(tw, tiny_dit, pack, world, log)
    stamps: list[float] = []
    original = comfy.utils.ProgressBar.update_absolute

    def stamped(self, value, total=None, preview=None):  # the trainer advances a ProgressBar once per step
        stamps.append(time.perf_counter())
        return original(self, value, total, preview)

    records: list[RunRecord] = []
    adapters: dict[tuple[str, float, int], tuple] = {}
    step_ms: list[float] = []
    plan = [(arm, lr, settings.seeds[0]) for arm in settings.arms for lr in settings.lrs]
    total_runs = len(plan) + len(settings.arms) * (len(settings.seeds) - 1)
    done, runs_started = 0, time.perf_counter()
    comfy.utils.ProgressBar.update_absolute = stamped
    try:
        with tempfile.TemporaryDirectory(prefix="style_separation_") as loras, loras_folder(loras):

            def one(arm: str, lr: float, seed: int, full: bool) -> RunRecord:
                nonlocal done
                live, adapter, losses, seconds = train_arm(tw, pack, world, settings, arm, lr, seed, stamps)
                intervals = [b - a for a, b in itertools.pairwise(stamps)][1:]
                if intervals:
                    step_ms.append(1000 * statistics.median(intervals))
                record = RunRecord(arm=arm, lr=lr, seed=seed, train_seconds=seconds,
                                   final_train_loss=statistics.fmean(losses[-20:]))
                if full:
                    evaluate(tw, tiny_dit, pack, world, arm, live, adapter, record)
                else:
                    losses_held, _, per_sigma = heldout(pack, live, world, routed=False)
                    record.heldout_loss = float(losses_held.mean())
                    record.style_loss = per_style_mean(losses_held, world.held_style, len(tw.STYLES))
                    record.style_sigma_loss = sigma_style_means(per_sigma, LOSS_SIGMAS, world.held_style,
                                                                len(tw.STYLES))
                adapters[(arm, lr, seed)] = (live, adapter)
                done += 1
                eta = (time.perf_counter() - runs_started) / done * (total_runs - done)
                ms = step_ms[-1] if step_ms else float("nan")
                log(f"[{done}/{total_runs}] {arm} lr {lr:g} seed {seed}: train {seconds:.1f}s ({ms:.0f} ms/step), "
                    f"train loss {record.final_train_loss:.4f}, held-out {record.heldout_loss:.4f}"
                    + (f", pin {record.pin_accuracy:.2f}, purity {record.purity:.2f}, live {record.live_accuracy:.2f}"
                       if full else "") + f"; ~{eta / 60:.1f} min left")
                return record

            for arm in settings.arms:
                grid = [one(arm, lr, settings.seeds[0], full=len(settings.lrs) == 1) for lr in settings.lrs]
                best = min(grid, key=lambda r: r.heldout_loss)
                if not best.full:
                    live, adapter = adapters[(arm, best.lr, best.seed)]
                    evaluate(tw, tiny_dit, pack, world, arm, live, adapter, best)
                for r in grid:  # only the chosen lr's adapters are kept
                    if r is not best:
                        adapters.pop((arm, r.lr, r.seed), None)
                records.extend(grid)
                for seed in settings.seeds[1:]:
                    records.append(one(arm, best.lr, seed, full=True))
            gallery_paths = []
            for arm, suffix in ((SUBJECT, ""), (SUBJECT_INIT, "_ortho_init")):
                runs = chosen(records, arm)
                if runs:
                    top = max(runs, key=lambda r: (r.pin_accuracy, -r.heldout_loss))
                    live, adapter = adapters[(arm, top.lr, top.seed)]
                    gallery_paths += galleries(tw, tiny_dit, pack, world, adapter, live, Path(f"{stem}{suffix}"),
                                               f"{ARMS[arm][0]}, seed {top.seed}")
            if gallery_paths:
                log(f"galleries: {', '.join(str(p) for p in gallery_paths)}")
            layers = len(next(iter(adapters.values()))[1].layers) if adapters else 0
            reach = single_lora_reach(pack, world, records, adapters, settings.rank)
            if reach:
                log(f"single LoRA's ΔW inside Ortho-Hydra's reachable set: {reach['all']} (best one expert "
                    f"{reach['best']}, random direction {reach['chance']:.4f})")
    finally:
        comfy.utils.ProgressBar.update_absolute = original

    minutes = (time.perf_counter() - wall) / 60
    per_step = statistics.median(step_ms) if step_ms else float("nan")
    styles = list(tw.STYLES)
    class_names = [*styles, tw.NEUTRAL_NAME]
    footer = (f"Median training step {per_step:.0f} ms ({_threads(settings.threads)}); {total_runs} training runs; "
              f"total wall time {minutes:.1f} min (of which {world.base_seconds / 60:.1f} min loading or building the "
              f"cached base model) on {os.cpu_count()} cores shared with other jobs (load average at "
              f"the end {os.getloadavg()[1]:.1f} over 5 min); {environment()}.")
    setup = describe(settings, world, tw, layers, per_step)
    title = f"Do trained experts carry styles? ({'quick' if quick else 'full'} run)"
    text = report(records, styles, class_names, setup, settings.lrs, world.base_ref["style_loss"], title, footer,
                  reach=reach)
    Path(f"{stem}.md").write_text(text)
    plot(records, styles, Path(f"{stem}.png"))
    result = {"title": title, "setup": setup, "footer": footer, "styles": styles, "class_names": class_names,
              "load_average_end": list(os.getloadavg()), "reach": reach,
              "settings": {**asdict(settings), "guidance_steps": settings.guidance_steps},
              "environment": environment(), "probe": world.probe_report, "base_model": world.base_ref,
              "summary": summary(records, styles), "runs": [r.to_dict() for r in records],
              "timing": {"minutes": minutes, "base_model_minutes": world.base_seconds / 60,
                         "median_step_ms": per_step, "runs": total_runs},
              "outputs": [f"{stem}.{ext}" for ext in ("md", "json", "csv", "png", "log")]
              + [str(p) for p in gallery_paths]}
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2))
    with open(f"{stem}.csv", "w", newline="") as handle:
        fields = ["arm", "lr", "seed", "full", "heldout_loss", *[f"loss_{s}" for s in styles], "pin_accuracy",
                  "pin_mapping", "purity", "collapse", "uniform", "gate_max", "live_accuracy", "final_train_loss",
                  "train_seconds", "eval_seconds"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in records:
            row = {k: getattr(r, k) for k in fields if hasattr(r, k)}
            row.update({f"loss_{s}": v for s, v in zip(styles, r.style_loss, strict=False)})
            row["pin_mapping"] = " ".join(map(str, r.pin_mapping))
            writer.writerow(row)
    print("\n" + text)
    log(f"wrote {stem}.md, .json, .csv, .png, .log")
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = settings_from(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    torch.set_flush_denormal(True)  # Adam moments of near-zero gradients must not hit the slow subnormal path
    out_dir = (args.out or (RESULTS / "quick" if args.quick else RESULTS)).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / ("style_separation" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else ""))
    try:
        with stdout_copied_to(f"{stem}.log"):
            return run(settings, stem, args.quick)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
