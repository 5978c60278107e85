"""`make demo`: experts that mean styles, end to end through a real headless ComfyUI.

1. builds the toy world's pretrained base model (cached by recipe) and its 4-style training set (ComfyUI .latent);
2. starts ComfyUI on loopback with this pack;
3. submits example_workflows/demo/06_train_styles_and_pin.json: trains a 4-expert adapter in the graph with label
   guidance (style i -> expert i, names stamped), then renders every content with each named expert pinned and
   with live routing (the gallery), and plots the training;
4. classifies every gallery tile with the toy world's style probe and writes, under demo_out/, the gallery, the
   training plot, the training set's picture and summary.json with the probe's verdict per column.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devkit import styles_demo, toy_world, workflow  # noqa: E402
from devkit.host import COMFY_DIR  # noqa: E402
from devkit.server import ComfyServer, execution_error, output_images  # noqa: E402

OUT = ROOT / "demo_out"


def saved_latents(entry: dict, output_dir: Path) -> list[Path]:
    return [output_dir / item.get("subfolder", "") / item["filename"]
            for node_output in entry.get("outputs", {}).values() for item in node_output.get("latents", [])]


def main() -> int:
    started = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    comfy_out = OUT / "comfy_output"
    comfy_out.mkdir(parents=True)
    print("[demo] building the toy world (base model cached by recipe) and its 4-style training set")
    styles_demo.build(COMFY_DIR / "models", COMFY_DIR / "input", log=lambda m: print(f"[demo] {m}"))
    latents, _, _ = styles_demo.training_set()
    first = latents[: len(toy_world.CONTENTS) * len(toy_world.STYLES)]
    toy_world.save_grid_png(first, OUT / "training_set.png", row_labels=list(toy_world.CONTENTS),
                            col_labels=list(toy_world.STYLES), title="training set: contents x styles")
    print("[demo] starting ComfyUI headless on loopback")
    with ComfyServer(output_dir=comfy_out, log_path=OUT / "comfyui.log") as server:
        info = server.get("/object_info")
        print("[demo] training a 4-style adapter in the graph, then pinning each named expert")
        train_started = time.time()
        entry = server.run(workflow.to_api(workflow.load(styles_demo.WORKFLOW), info), timeout=1200)
        error = execution_error(entry)
        if error:
            print(f"[demo] styles graph failed: {error.get('exception_message')}")
            return 1
        graph_seconds = round(time.time() - train_started, 1)
    images = {p.name.rsplit("_", 2)[0]: p for p in output_images(entry, comfy_out)}
    shutil.copyfile(images["ortho_hydra_styles_gallery"], OUT / "gallery.png")
    shutil.copyfile(images["ortho_hydra_styles_training_plot"], OUT / "training_plot.png")
    from safetensors.torch import load_file

    tiles = load_file(str(saved_latents(entry, comfy_out)[0]))["latent_tensor"]
    probe, report = toy_world.fit_probe()
    verdicts = styles_demo.pin_verdicts(tiles, list(toy_world.STYLES), probe)
    pinned = [v["accuracy_vs_name"] for v in verdicts.values() if "accuracy_vs_name" in v]
    summary = {"probe_held_out_accuracy": report["held_out_accuracy"],
               "pin_accuracy_vs_expert_name": sum(pinned) / len(pinned), "columns": verdicts,
               "gallery": "gallery.png (rows: contents; columns: each named expert pinned, then live routing)",
               "training": styles_demo.TRAIN, "graph_seconds": graph_seconds,
               "seconds": round(time.time() - started, 1)}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    for name, verdict in verdicts.items():
        extra = f", {verdict['accuracy_vs_name']:.0%} match the name" if "accuracy_vs_name" in verdict else ""
        print(f"[demo] pinned '{name}': probe says {verdict['majority']}{extra}")
    print(f"[demo] wrote {OUT / 'gallery.png'} and {OUT / 'summary.json'}; probe held-out accuracy "
          f"{report['held_out_accuracy']:.2f}; {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
