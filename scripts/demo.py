"""`make demo`: the embedded default, end to end through a real headless ComfyUI.

1. writes the tiny SD3-style DiT, a fitted two-style Ortho-Hydra adapter and a two-style training set
   (ComfyUI .latent) into the host;
2. starts ComfyUI on loopback with this pack;
3. submits example_workflows/01_load_and_apply.json through /prompt, and the same graph at strength 0;
4. submits example_workflows/04_train_then_apply.json: trains a two-expert adapter in the graph, samples
   router-live, renders each expert pinned (the gallery) and plots the training;
5. writes the images, a base-vs-adapter comparison, the gallery, the plot and a summary under demo_out/.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devkit import demo_assets, workflow  # noqa: E402
from devkit.host import COMFY_DIR  # noqa: E402
from devkit.server import ComfyServer, execution_error, output_images  # noqa: E402

OUT = ROOT / "demo_out"


def main() -> int:
    started = time.time()
    print("[demo] building the embedded default model and adapter")
    demo_assets.build(COMFY_DIR / "models")
    demo_assets.write_training_latents(COMFY_DIR / "input")
    shutil.rmtree(OUT, ignore_errors=True)
    comfy_out = OUT / "comfy_output"
    comfy_out.mkdir(parents=True)
    print("[demo] starting ComfyUI headless on loopback")
    with ComfyServer(output_dir=comfy_out, log_path=OUT / "comfyui.log") as server:
        info = server.get("/object_info")
        graph = workflow.to_api(workflow.load(ROOT / "example_workflows" / "01_load_and_apply.json"), info)
        base_graph = copy.deepcopy(graph)
        for node in base_graph.values():
            if node["class_type"] == "OrthoHydraLoadAndApply":
                node["inputs"]["strength"] = 0.0
            if node["class_type"] == "SaveImage":
                node["inputs"]["filename_prefix"] = "ortho_hydra_demo_base"
        results = {}
        for label, prompt in (("adapter", graph), ("base", base_graph)):
            entry = server.run(prompt, timeout=600)
            error = execution_error(entry)
            if error:
                print(f"[demo] {label} graph failed: {error.get('exception_message')}")
                return 1
            results[label] = output_images(entry, comfy_out)
            print(f"[demo] {label}: {[p.name for p in results[label]]}")
        print("[demo] training a two-style adapter in the graph (example 04), then routing and pinning it")
        train_started = time.time()
        entry = server.run(workflow.to_api(workflow.load(ROOT / "example_workflows" / "04_train_then_apply.json"),
                                           info), timeout=900)
        error = execution_error(entry)
        if error:
            print(f"[demo] training graph failed: {error.get('exception_message')}")
            return 1
        trained = {p.name.rsplit("_", 2)[0]: p for p in output_images(entry, comfy_out)}
        train_seconds = round(time.time() - train_started, 1)
    named = {"ortho_hydra_trained_live": "trained_router_live.png",
             "ortho_hydra_trained_gallery": "expert_gallery_trained.png",
             "ortho_hydra_training_plot": "training_plot.png"}
    for prefix, target in named.items():
        shutil.copyfile(trained[prefix], OUT / target)
    import numpy as np
    from PIL import Image

    pairs = list(zip(results["base"], results["adapter"], strict=True))
    rows, diffs = [], []
    for base_path, adapter_path in pairs:
        a, b = np.asarray(Image.open(base_path)), np.asarray(Image.open(adapter_path))
        diffs.append(float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()))
        gap = np.full((a.shape[0], 8, 3), 255, np.uint8)
        amplified = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * 8, 0, 255).astype(np.uint8)
        rows.append(np.concatenate([a, gap, b, gap, amplified], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(OUT / "comparison_base_vs_adapter.png")
    summary = {"images": {k: [str(p.relative_to(OUT)) for p in v] for k, v in results.items()},
               "mean_abs_pixel_difference_per_sample": diffs, "seconds": round(time.time() - started, 1),
               "training_graph_seconds": train_seconds, "trained": list(named.values()),
               "comparison": "comparison_base_vs_adapter.png (base | Ortho-Hydra | 8x |difference|, one row per "
                             "sample)"}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] wrote {OUT / 'comparison_base_vs_adapter.png'}; mean |Δpixel| per sample: "
          f"{', '.join(f'{d:.1f}' for d in diffs)}; {summary['seconds']} s")
    return 0 if all(d > 0 for d in diffs) else 1


if __name__ == "__main__":
    sys.exit(main())
