"""Why the positive control fails: the single-style LoRA at more steps, another learning rate, image-stream Linears
only and a higher rank, judged on the held-out characters and, for contrast, on training characters.

    .venv/bin/python -m experiments.form_styles.positive_explore      # results/positive_explore.json

Run after the positive control failed and before any comparison; it is a diagnosis, not a reported arm.
Each variant trains the plan's single LoRA (seed 0) on one style alone and samples 2 per character at the plan's
sampling settings; "train" reads the first 7 training characters, which the LoRA fitted.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch

from devkit import glyph_world as gw

from .plan import PLAN
from .run import RESULTS
from .study import GlyphStudy

# (steps, lr, targets regex or "" for every attention and MLP Linear, rank, styles)
VARIANTS = [
    (400, 1e-2, "", 8, (0, 1, 2, 3)),
    (1000, 1e-2, "", 8, (0, 2)),
    (2500, 1e-2, "", 8, (0, 2)),
    (1000, 3e-2, "", 8, (2,)),
    (1000, 1e-2, "x_block", 8, (2,)),
    (1000, 1e-2, "x_block", 32, (2,)),
]


def main() -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    study = GlyphStudy(PLAN, log=lambda *_: None)
    training = study.pack.comfy_glue.training
    make_config, rows = training.TrainConfig, []
    for steps, lr, regex, rank, styles in VARIANTS:
        study.plan = replace(PLAN, steps=steps, rank=rank)
        training.TrainConfig = (lambda _r=regex, **kw: make_config(**{**kw, "targets": "regex", "target_regex": _r})) \
            if regex else make_config
        for style in styles:
            started = time.perf_counter()
            _, adapter, losses, _ = study.train("lora_r8", lr, PLAN.selection_seed, styles=[style])
            model = study.pinned(adapter, 0)
            row = {"style": gw.STYLES[style], "steps": steps, "lr": lr, "targets": regex or "attention+mlp",
                   "rank": rank, "final_train_loss": sum(losses[-20:]) / 20}
            for part in ("held_out", "train"):
                latents, contents = study.samples(model, study.splits[part].chars[:7], repeats=2)
                read = study.read(latents, contents, style)
                row[part] = {"pin": read["pin"], "content": sum(read["content_ok"]) / len(read["content_ok"]),
                             "called": read["called"]}
            row["seconds"] = time.perf_counter() - started
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("style", "steps", "lr", "targets", "rank")}),
                  f"held-out pin {row['held_out']['pin']:.2f}, training pin {row['train']['pin']:.2f}", flush=True)
            (RESULTS / "positive_explore.json").write_text(json.dumps(rows, indent=1) + "\n")
    training.TrainConfig = make_config


if __name__ == "__main__":
    main()
