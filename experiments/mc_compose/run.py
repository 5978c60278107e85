"""Does Orthogonal MC Dropout compose two styles better than a direct blend?  (Zhang et al., arXiv 2510.03262)

The paper proves OMCD's per-element masks make the merged adapters' contributions exactly orthogonal and unbiased,
and reports that this orthogonality does not improve semantic composition.  We test that on the toy world
(``devkit/toy_world.py``): one label-guided 4-expert adapter (``ortho_init``, the style-separation study's
winning arm, trained by the pack's trainer), then the "warm" expert (a palette) composed with the "dots" expert (a
texture) by

* direct blend: weights 1 and 1 (not renormalised), every other expert 0;
* MC dropout: independent masks, keep 0.5 each, rescaled by w/q;
* OMCD: exclusive masks, keep 0.5 each (every element to one of the two), rescaled by w/q.

64 samples per method (fixed contents and seeds, 8 Euler steps).  Each part is judged by its own half of the style
probe: a nearest-centroid probe on the palette features only ("is the palette warm?") and one on the texture
features only ("is the texture dots?"), both fitted on clean renders.  Reported: each part's success and both at
once, with 95 % bootstrap intervals (2,000 resamples).

    .venv/bin/python -m experiments.mc_compose.run           # writes results/mc_compose.{md,json,log}
    .venv/bin/python -m experiments.mc_compose.run --quick   # 8 samples, 40 training steps (a test runs it)

The interval, verdict and table: ``report.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from devkit.environment import environment
from devkit.host import loras_folder
from experiments.console_log import stdout_copied_to
from experiments.toy_harness import CFG, SAMPLE_STEPS, host

from .report import bootstrap, report

RESULTS = Path(__file__).resolve().parent / "results"

PALETTE, TEXTURE = 0, 2  # warm (a palette), dots (a texture)
METHODS = {"direct blend": "blend", "MC dropout": "mc_dropout", "OMCD": "omcd"}


def part_probes(tw):
    """Two nearest-centroid probes on the clean renders: palette features only, frequency features only."""
    from ortho_hydra.style_probe import SPECTRAL_FEATURE_NAMES, StyleProbe, feature_names

    x, _, labels = tw.dataset(4, seed=5)
    x = torch.cat([x, tw.degrade(x, seed=5)])  # as the full probe: clean and degraded renders
    labels = torch.cat([labels, labels])
    factors = tw.rgb_factors()
    features = StyleProbe(*factors).features(x)
    names = feature_names(3)
    texture = [i for i, n in enumerate(names) if n in SPECTRAL_FEATURE_NAMES]
    palette = [i for i in range(len(names)) if i not in texture]
    fitted = {}
    for part, columns in (("palette", palette), ("texture", texture)):
        fitted[part] = (StyleProbe(*factors).fit_features(features[:, columns], labels), columns)
    return fitted


def judge(probes, tw, samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sample: palette says warm, texture says dots, both."""
    base = next(iter(probes.values()))[0]
    features = base.features(samples)
    palette_p, palette_cols = probes["palette"]
    texture_p, texture_cols = probes["texture"]
    palette = palette_p.predict_features(features[:, palette_cols]) == PALETTE
    texture = texture_p.predict_features(features[:, texture_cols]) == TEXTURE
    return {"palette": palette, "texture": texture, "both": palette & texture}


def composed(pack, base, adapter, method: str, seed: int):
    from ortho_hydra.overrides import GateRule, Keyframe, Override

    weights = tuple(1.0 if e in (PALETTE, TEXTURE) else 0.0 for e in range(adapter.num_experts))
    if method == "blend":
        rule = GateRule("blend", weights=weights, renormalize=False)
    else:
        keep = tuple(0.5 if w else 0.0 for w in weights)
        rule = GateRule(method, weights=weights, keep=keep, seed=seed)
    return pack.nodes.patcher.apply_adapter(base, adapter.with_override(Override((Keyframe(0.0, rule),))))[0]


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="default: results/ (--quick: results/quick/)")
    args = parser.parse_args(argv)
    samples = 8 if args.quick else args.samples
    steps = 40 if args.quick else 240
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    stem = out / ("mc_compose_quick" if args.quick else "mc_compose")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    with stdout_copied_to(Path(f"{stem}.log")):
        return run(samples, steps, stem)


def run(samples: int, steps: int, stem: Path) -> dict:
    wall = time.perf_counter()
    tw, tiny_dit, pack = host()

    base = tw.load_base_model(log=print)
    x, contents, styles = tw.dataset(1, seed=0)
    train = pack.nodes.train
    config = train.TrainConfig(steps=steps, learning_rate=3e-3, batch_size=4, rank=8, experts=4, init="ortho_init",
                               training_dtype="fp32", gradient_checkpointing=False, seed=1, output_name="mc_compose",
                               label_guidance=1.0, label_guidance_steps=round(0.6 * steps),
                               style_names=tuple(tw.STYLES))
    with tempfile.TemporaryDirectory(prefix="mc_compose_") as loras, loras_folder(loras):
        _, adapter, _, _ = train.train(base, x, tw.per_image_conditioning(contents.tolist()), config,
                                       labels=styles)
    probes = part_probes(tw)
    ids = [i % len(tw.CONTENTS) for i in range(samples)]
    results = {}
    for name, method in METHODS.items():
        outs = []
        for start in range(0, samples, 16):
            batch = ids[start:start + 16]
            model = composed(pack, base, adapter, method, seed=start)
            latent = torch.zeros(len(batch), 16, tw.SIZE, tw.SIZE)
            outs.append(tiny_dit.sample(model, latent, tw.conditioning(batch), tw.unconditional(len(batch)),
                                        steps=SAMPLE_STEPS, cfg=CFG, seed=1000 + start))
        hits = judge(probes, tw, torch.cat(outs))
        results[name] = {part: bootstrap(h) for part, h in hits.items()}
        print(f"{name}: " + ", ".join(f"{p} {v[0]:.2f} [{v[1]:.2f}, {v[2]:.2f}]" for p, v in results[name].items()),
              flush=True)
    minutes = (time.perf_counter() - wall) / 60
    text = report(results, samples, steps, minutes, environment())
    Path(f"{stem}.md").write_text(text)
    out = {"results": results, "samples": samples, "steps": steps, "minutes": minutes}
    Path(f"{stem}.json").write_text(json.dumps(out, indent=2))
    print(text)
    return out


if __name__ == "__main__":
    main()
