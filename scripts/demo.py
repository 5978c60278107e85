"""`make demo`: experts that mean styles, end to end through a real headless ComfyUI, in two worlds.

**Glyph world** (styles are typefaces: form, not palette; ``devkit/glyph_world.py``):

1. once the form-style study's positive control passes (or with ``make demo GLYPH=1``) and the form probe is
   certified (else the glyph part is skipped, saying why), builds the glyph base (cached by recipe; tens
   of minutes the first time on 2 cores) and its training set (the training characters in 4 typefaces) as a .latent;
2. submits example_workflows/demo/09_train_glyph_styles_and_pin.json: trains a 4-expert adapter in the graph with
   label guidance (style i -> expert i, names stamped), renders every held-out character (never trained on, in any
   style) with each named expert pinned and with live routing, and plots the training;
3. reads every tile with the certified form probe and the content probe (``devkit/form_probe.py``) and writes
   ``demo_out/glyph_judge.png`` (each pinned sample beside the true render of that character in that style),
   the node's own gallery, the training plot and ``summary.json``.

**Palette world** (the earlier toy world: styles are palettes and textures; ``devkit/toy_world.py``): the same
graph on six shapes (example_workflows/demo/06), judged by the palette probe.  Kept, and labelled as palette: it
shows colours, not form.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from devkit import form_probe, glyph_demo, glyph_world, styles_demo, toy_world, workflow
from devkit.host import COMFY_DIR, ROOT
from devkit.server import ComfyServer, execution_error, output_images

OUT = ROOT / "demo_out"


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def saved_latents(entry: dict, output_dir: Path) -> list[Path]:
    return [output_dir / item.get("subfolder", "") / item["filename"]
            for node_output in entry.get("outputs", {}).values() for item in node_output.get("latents", [])]


def run_graph(server, path: Path) -> tuple[dict | None, float]:
    info = server.get("/object_info")
    started = time.time()
    entry = server.run(workflow.to_api(workflow.load(path), info), timeout=3600)
    error = execution_error(entry)
    if error:
        log(f"{path.name} failed: {error.get('exception_message')}")
        return None, 0.0
    return entry, round(time.time() - started, 1)


def glyph_part(server, comfy_out: Path) -> dict | None:
    from safetensors.torch import load_file

    entry, seconds = run_graph(server, glyph_demo.WORKFLOW)
    if entry is None:
        return None
    images = {p.name.rsplit("_", 2)[0]: p for p in output_images(entry, comfy_out)}
    shutil.copyfile(images["ortho_hydra_glyph_gallery"], OUT / "glyph_gallery.png")
    shutil.copyfile(images["ortho_hydra_glyph_training_plot"], OUT / "glyph_training_plot.png")
    tiles = load_file(str(saved_latents(entry, comfy_out)[0]))["latent_tensor"]
    form, content = form_probe.certified_probes()
    verdicts = glyph_demo.verdicts(tiles, form, content)
    glyph_demo.judge_png(tiles, OUT / "glyph_judge.png",
                         "held-out characters: the true render of each style beside that style's expert pinned")
    pins = [v["pin_accuracy"] for v in verdicts.values() if "pin_accuracy" in v]
    held = "".join(glyph_world.SPLIT["held_out"])
    for name, verdict in verdicts.items():
        extra = f", {verdict['pin_accuracy']:.0%} match the name" if "pin_accuracy" in verdict else ""
        log(f"glyph world, pinned '{name}' on {held}: form probe says {verdict['majority']}{extra}; "
            f"content kept {verdict['content_kept']:.0%}")
    return {"world": "glyph (styles are typefaces: form)", "held_out_characters": held,
            "form_probe": {k: form.report[k] for k in ("held_out_accuracy_clean", "held_out_accuracy_augmented",
                                                       "impostor_acceptance")},
            "pin_accuracy_vs_expert_name": sum(pins) / len(pins), "columns": verdicts,
            "gallery": "glyph_judge.png (rows: held-out characters; per style: true render | expert pinned; then "
                       "live routing); glyph_gallery.png is the node's own grid",
            "training": glyph_demo.TRAIN, "graph_seconds": seconds}


def palette_part(server, comfy_out: Path) -> dict | None:
    from safetensors.torch import load_file

    entry, seconds = run_graph(server, styles_demo.WORKFLOW)
    if entry is None:
        return None
    images = {p.name.rsplit("_", 2)[0]: p for p in output_images(entry, comfy_out)}
    shutil.copyfile(images["ortho_hydra_styles_gallery"], OUT / "palette_gallery.png")
    shutil.copyfile(images["ortho_hydra_styles_training_plot"], OUT / "palette_training_plot.png")
    tiles = load_file(str(saved_latents(entry, comfy_out)[0]))["latent_tensor"]
    probe, report = toy_world.fit_probe()
    verdicts = styles_demo.pin_verdicts(tiles, list(toy_world.STYLES), probe)
    pinned = [v["accuracy_vs_name"] for v in verdicts.values() if "accuracy_vs_name" in v]
    for name, verdict in verdicts.items():
        extra = f", {verdict['accuracy_vs_name']:.0%} match the name" if "accuracy_vs_name" in verdict else ""
        log(f"palette world, pinned '{name}': palette probe says {verdict['majority']}{extra}")
    return {"world": "palette (styles are colours and textures; the palette probe cannot see form)",
            "probe_held_out_accuracy": report["held_out_accuracy"],
            "pin_accuracy_vs_expert_name": sum(pinned) / len(pinned), "columns": verdicts,
            "gallery": "palette_gallery.png (rows: contents; columns: each named expert pinned, then live routing)",
            "training": styles_demo.TRAIN, "graph_seconds": seconds}


STUDY_RESULTS = ROOT / "experiments" / "form_styles" / "results" / "form_styles.json"


def glyph_skip_reason() -> str | None:
    """Why the glyph half is not run, or None.  It runs when asked (``make demo GLYPH=1``), or once the form-style
    study's positive control has passed: before that, a single-style LoRA does not carry a typeface to characters
    it never saw, so the gallery could only show that."""
    if os.environ.get("OH_DEMO_GLYPH") == "1":
        return None
    control = json.loads(STUDY_RESULTS.read_text())["positive_control"] if STUDY_RESULTS.is_file() else {}
    if control.get("passes"):
        return None
    return ("the form-style study's positive control fails: even a single-style LoRA does not carry a typeface to "
            "characters it never saw (experiments/form_styles/README.md, Status). `make demo GLYPH=1` runs it "
            "anyway (the first build of its base model takes about an hour on 2 cores)")


def main() -> int:
    started = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    comfy_out = OUT / "comfy_output"
    comfy_out.mkdir(parents=True)
    # the glyph world is built (tens of minutes the first time on 2 cores) only when its study says there is
    # something to see, or when asked for; and only with a certified probe to judge it
    refused = glyph_skip_reason()
    if refused is None:
        try:
            form_probe.certified_probes()  # fitted once (minutes) and cached, before the server takes the cores
        except form_probe.ProbeRefused as exc:
            refused = str(exc)
    if refused is not None:
        log(f"glyph world skipped: {refused}")
    if refused is None:
        log("building the glyph world (base model cached by recipe; the first build takes tens of minutes)")
        glyph_demo.build(COMFY_DIR / "models", COMFY_DIR / "input", log=log)
        glyph_world.save_grid_png(glyph_demo.training_set()[0], OUT / "glyph_training_set.png", ncols=4 * 5,
                                  title="glyph training set: training characters x 4 styles")
    log("building the palette world and its training set")
    styles_demo.build(COMFY_DIR / "models", COMFY_DIR / "input", log=log)
    log("starting ComfyUI headless on loopback")
    with ComfyServer(output_dir=comfy_out, log_path=OUT / "comfyui.log") as server:
        glyph = {"skipped": refused}
        if refused is None:
            log("glyph world: training a 4-style adapter in the graph, then pinning each named expert on held-out "
                "characters")
            glyph = glyph_part(server, comfy_out)
        log("palette world: the same graph on the toy world's palette styles")
        palette = palette_part(server, comfy_out)
    summary = {"glyph_world": glyph, "palette_world": palette, "seconds": round(time.time() - started, 1)}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"wrote {'' if refused else str(OUT / 'glyph_judge.png') + ', '}{OUT / 'palette_gallery.png'} and "
        f"{OUT / 'summary.json'}; "
        f"{summary['seconds']} s")
    return 0 if glyph is not None and palette is not None else 1


if __name__ == "__main__":
    sys.exit(main())
