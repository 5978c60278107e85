"""Does training on orthogonal slots let independently trained style adapters merge without crosstalk?

Orthogonal Adaptation (Po et al., CVPR 2024) claims that adapters whose frozen bases are mutually orthogonal can be
trained separately and summed.  Its setting is concept adapters triggered by their own token; we reproduce that on
the toy world (``devkit/toy_world.py``): each training image's conditioning is its content's tokens plus one
**style token** (a fixed random embedding per style, never seen by the base model), and one adapter per style is
trained on that style's images alone, by the pack's trainer, as

* a plain LoRA (one expert, zero-init up, free down and up: the paper's "merge LoRAs by sum" baseline), or
* an orthogonal slot (``init=ortho_out``, ``slots=4``, ``slot=style``: frozen output basis from W0's singular
  vectors, free down: the paper's method with W0's basis instead of a random shared one).

Both arms: rank 8, the same steps, data, optimiser and lr grid (each arm takes its best lr by the held-out loss of
its adapters alone, seed 0), 3 seeds.  The four adapters of a seed are then merged by plain sum (strength 1 each).
Reported per arm: crosstalk (each style's held-out loss with its style token, merged minus alone, and the share of
the adapter's own gain over the base model that the merge loses), probe accuracy of 16 samples per style token
(alone and merged), and the mean pairwise output-subspace overlap ‖P_iᵀP_j‖_F / √r.

    .venv/bin/python -m experiments.orthogonal_slots.run          # writes results/orthogonal_slots.{md,json,log}
    .venv/bin/python -m experiments.orthogonal_slots.run --quick  # 1 seed, 1 lr, 30 steps (a test runs it)

Arms and constants: ``config.py``; tables and verdict: ``report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from devkit.environment import environment
from devkit.host import loras_folder
from experiments.console_log import stdout_copied_to
from experiments.toy_harness import CFG, LOSS_SIGMAS, NOISE_SEED, SAMPLE_STEPS, host

from .config import ARMS, RANK, SAMPLE_SEED, SAMPLES, SLOTS
from .report import mean, report

RESULTS = Path(__file__).resolve().parent / "results"


def style_token(style: int, dim: int) -> torch.Tensor:
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(31337 + style))


def tagged(tw, contents: Sequence[int], styles: Sequence[int]) -> list:
    """One conditioning entry, batched: content tokens plus the style's token (pooled: the content's)."""
    context, pooled = [], []
    for c, s in zip(contents, styles, strict=True):
        tokens, vector = tw.content_embedding(int(c))
        context.append(torch.cat([tokens, style_token(int(s), tokens.shape[1])]))
        pooled.append(vector)
    return [[torch.stack(context), {"pooled_output": torch.stack(pooled)}]]


def per_image(tw, contents, styles) -> list:
    return tw.per_image(tagged(tw, contents, styles))


def train_one(pack, base, tw, data, arm: str, style: int, lr: float, steps: int, seed: int):
    x, contents, styles = data
    keep = styles == style
    train = pack.nodes.train
    init = ARMS[arm][1]
    extra = {"slot": style, "slots": SLOTS} if arm == "slots" else {}
    config = train.TrainConfig(steps=steps, learning_rate=lr, batch_size=min(4, int(keep.sum())), rank=RANK,
                               experts=1, init=init, training_dtype="fp32", gradient_checkpointing=False, seed=seed,
                               output_name=f"orthogonal_slots_{arm}_{style}_{seed}", **extra)
    _, adapter, _, _ = train.train(base, x[keep], per_image(tw, contents[keep].tolist(), styles[keep].tolist()),
                                   config)
    return adapter


@torch.no_grad()
def heldout_loss(pack, model, tw, held) -> torch.Tensor:
    """Per-sample x0 MSE with the style-tagged conditioning, averaged over fixed noise levels and draws."""
    import comfy.model_management as mm

    x, contents, styles = held
    mm.load_models_gpu([model])
    x0 = tw.latent_format().process_in(x.clone())
    cond = tagged(tw, contents.tolist(), styles.tolist())[0]
    options = model.model_options.get("transformer_options", {})
    gen = torch.Generator().manual_seed(NOISE_SEED)
    losses = torch.zeros(x0.shape[0], dtype=torch.float64)
    for sigma in LOSS_SIGMAS:
        xs = (1 - sigma) * x0 + sigma * torch.randn(x0.shape, generator=gen)
        out = model.model.apply_model(xs, torch.full((x0.shape[0],), sigma), c_crossattn=cond[0],
                                      y=cond[1]["pooled_output"], transformer_options=options)
        losses += (out.float() - x0).pow(2).mean((1, 2, 3)).double()
    return losses / len(LOSS_SIGMAS)


def probe_accuracy(tiny_dit, tw, probe, model, style: int) -> float:
    contents = [i % len(tw.CONTENTS) for i in range(SAMPLES)]
    latent = torch.zeros(SAMPLES, 16, tw.SIZE, tw.SIZE)
    samples = tiny_dit.sample(model, latent, tagged(tw, contents, [style] * SAMPLES), tw.unconditional(SAMPLES),
                              steps=SAMPLE_STEPS, cfg=CFG, seed=SAMPLE_SEED)
    return float((probe.predict(samples) == style).double().mean())


def evaluate(pack, tiny_dit, tw, probe, base, adapters, held, base_loss) -> dict:
    from ortho_hydra.slots import pairwise_overlap

    apply = pack.nodes.patcher.apply_adapter
    merged = base
    for adapter in adapters:
        merged, _ = apply(merged, adapter)
    merged_loss = heldout_loss(pack, merged, tw, held)
    rows = []
    for style, adapter in enumerate(adapters):
        mask = held[2] == style
        alone_model, _ = apply(base, adapter)
        alone = float(heldout_loss(pack, alone_model, tw, held)[mask].mean())
        together = float(merged_loss[mask].mean())
        gain = base_loss[style] - alone
        rows.append({"style": style, "alone": alone, "merged": together, "rise": together - alone,
                     "gain_lost": (together - alone) / gain if gain > 0 else float("nan"),
                     "probe_alone": probe_accuracy(tiny_dit, tw, probe, alone_model, style),
                     "probe_merged": probe_accuracy(tiny_dit, tw, probe, merged, style)})
    table = pairwise_overlap(adapters)
    pairs = [table[i][j] for i in range(len(adapters)) for j in range(i + 1, len(adapters))]
    return {"styles": rows, "overlap": statistics.fmean(pairs)}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-3, 1e-2])
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.quick else 240)
    seeds = range(1 if args.quick else args.seeds)
    lrs = [args.lrs[0]] if args.quick else args.lrs
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    stem = out / ("orthogonal_slots_quick" if args.quick else "orthogonal_slots")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    with stdout_copied_to(Path(f"{stem}.log")):
        return run(steps, seeds, lrs, stem)


def run(steps: int, seeds, lrs, stem: Path) -> dict:
    wall = time.perf_counter()
    tw, tiny_dit, pack = host()

    base = tw.load_base_model(log=print)
    probe, probe_report = tw.fit_probe(include_neutral=True)
    data = tw.dataset(1, seed=0)
    held = tw.dataset(2, seed=101)
    styles = list(tw.STYLES)
    base_losses = heldout_loss(pack, base, tw, held)
    base_loss = [float(base_losses[held[2] == s].mean()) for s in range(len(styles))]
    results = {}
    with tempfile.TemporaryDirectory(prefix="orthogonal_slots_") as loras, loras_folder(loras):
        for arm in ARMS:
            def adapters_for(lr: float, seed: int, arm: str = arm) -> list:
                return [train_one(pack, base, tw, data, arm, s, lr, steps, seed) for s in range(len(styles))]

            def alone_loss(adapters) -> float:
                losses = []
                for style, adapter in enumerate(adapters):
                    model, _ = pack.nodes.patcher.apply_adapter(base, adapter)
                    losses.append(float(heldout_loss(pack, model, tw, held)[held[2] == style].mean()))
                return mean(losses)

            grid = {lr: adapters_for(lr, seeds[0]) for lr in lrs}
            scores = {lr: alone_loss(a) for lr, a in grid.items()}
            best = min(scores, key=scores.get)
            print(f"{arm}: lr grid (held-out loss alone) {scores}; chosen {best:g}", flush=True)
            runs = []
            for seed in seeds:
                adapters = grid[best] if seed == seeds[0] else adapters_for(best, seed)
                runs.append({"seed": seed, **evaluate(pack, tiny_dit, tw, probe, base, adapters, held, base_loss)})
                row = runs[-1]
                print(f"{arm} seed {seed}: rise {mean(r['rise'] for r in row['styles']):.4f}, probe merged "
                      f"{mean(r['probe_merged'] for r in row['styles']):.2f}, overlap {row['overlap']:.2e}",
                      flush=True)
            results[arm] = {"lr": best, "grid": scores, "runs": runs}
    minutes = (time.perf_counter() - wall) / 60
    setup = (f"Toy world, one adapter per style trained on that style's {int((data[2] == 0).sum())} images with its "
             f"style token; rank {RANK}, {steps} steps, batch 4, AdamW (trainer defaults), fp32; lr grid "
             f"{', '.join(f'{x:g}' for x in lrs)}; seeds {list(seeds)}; {len(held[0])} held-out latents; probe "
             f"held-out accuracy {probe_report['held_out_accuracy']:.3f}.")
    footer = f"Wall time {minutes:.1f} min on {os.cpu_count()} cores; {environment()}."
    text = report(results, styles, base_loss, setup, footer)
    Path(f"{stem}.md").write_text(text)
    out = {"results": results, "base_loss": base_loss, "styles": styles, "minutes": minutes, "steps": steps}
    Path(f"{stem}.json").write_text(json.dumps(out, indent=2))
    print(text)
    return out


if __name__ == "__main__":
    main()
