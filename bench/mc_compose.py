"""Does Orthogonal MC Dropout compose two styles better than a direct blend?  (Zhang et al., arXiv 2510.03262)

The paper proves OMCD's per-element masks make the merged adapters' contributions exactly orthogonal and unbiased,
and reports that this orthogonality does not improve semantic composition.  We test that on the toy world
(``devkit/toy_world.py``): one label-guided 4-expert adapter (``ortho_init``, the style-separation benchmark's
winning arm, trained by the pack's trainer), then the "warm" expert (a palette) composed with the "dots" expert (a
texture) by

* direct blend: weights 1 and 1 (not renormalised), every other expert 0;
* MC dropout: independent masks, keep 0.5 each, rescaled by w/q;
* OMCD: exclusive masks, keep 0.5 each (every element to one of the two), rescaled by w/q.

64 samples per method (fixed contents and seeds, 8 Euler steps).  Each part is judged by its own half of the style
probe: a nearest-centroid probe on the palette features only ("is the palette warm?") and one on the texture
features only ("is the texture dots?"), both fitted on clean renders.  Reported: each part's success and both at
once, with 95 % bootstrap intervals (2,000 resamples).

    .venv/bin/python bench/mc_compose.py           # writes bench/out/mc_compose.{md,json,log}
    .venv/bin/python bench/mc_compose.py --quick   # 8 samples, 40 training steps (a test runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.timing import environment  # noqa: E402
from experiments.console_log import stdout_copied_to  # noqa: E402
from experiments.toy_harness import CFG, SAMPLE_STEPS, host, lora_folder  # noqa: E402

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


def bootstrap(hits: torch.Tensor, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5 %, 97.5 %) of a success rate."""
    values = hits.double()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (resamples, len(values)), generator=gen)
    means = values[idx].mean(1)
    return float(values.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


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
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args(argv)
    samples = 8 if args.quick else args.samples
    steps = 40 if args.quick else 240
    stem = args.out / ("mc_compose_quick" if args.quick else "mc_compose")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    with stdout_copied_to(Path(f"{stem}.log")):
        return run(samples, steps, stem)


def run(samples: int, steps: int, stem: Path) -> dict:
    wall = time.perf_counter()
    tw, tiny_dit, pack = host()
    import folder_paths

    base = tw.load_base_model(log=print)
    x, contents, styles = tw.dataset(1, seed=0)
    train = pack.nodes.train
    config = train.TrainConfig(steps=steps, learning_rate=3e-3, batch_size=4, rank=8, experts=4, init="ortho_init",
                               training_dtype="fp32", seed=1, output_name="mc_compose", label_guidance=1.0,
                               label_guidance_steps=round(0.6 * steps), style_names=tuple(tw.STYLES))
    with tempfile.TemporaryDirectory(prefix="mc_compose_") as loras, lora_folder(folder_paths, loras):
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
    text = report(results, samples, steps, minutes)
    Path(f"{stem}.md").write_text(text)
    out = {"results": results, "samples": samples, "steps": steps, "minutes": minutes}
    Path(f"{stem}.json").write_text(json.dumps(out, indent=2))
    print(text)
    return out


def verdict(results: dict) -> str:
    """OMCD helps if its 'both' success interval lies above the direct blend's."""
    omcd, direct = results["OMCD"]["both"], results["direct blend"]["both"]
    if omcd[1] > direct[2]:
        return (f"**OMCD helps here**: both parts {omcd[0]:.2f} [{omcd[1]:.2f}, {omcd[2]:.2f}] against the direct "
                f"blend's {direct[0]:.2f} [{direct[1]:.2f}, {direct[2]:.2f}].")
    return (f"**OMCD does not help here**, as the paper reports: both parts {omcd[0]:.2f} [{omcd[1]:.2f}, "
            f"{omcd[2]:.2f}] against the direct blend's {direct[0]:.2f} [{direct[1]:.2f}, {direct[2]:.2f}].")


def report(results: dict, samples: int, steps: int, minutes: float) -> str:
    lines = ["# Composing two styles: direct blend, MC dropout, OMCD", "",
             f"One label-guided ortho_init adapter ({steps} steps); 'warm' (palette) + 'dots' (texture), {samples} "
             "samples per method; 95 % bootstrap intervals.", "",
             "| method | palette is warm | texture is dots | both |", "|---|---|---|---|"]
    for name, parts in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{parts[p][0]:.2f} [{parts[p][1]:.2f}, {parts[p][2]:.2f}]"
                                                   for p in ("palette", "texture", "both")) + " |")
    lines += ["", verdict(results), "", f"Wall time {minutes:.1f} min; {environment()}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
