"""The styles demo: train a 4-style adapter on the toy world inside a ComfyUI graph, then pin each expert.

Assets go into a ComfyUI folder tree: the toy world's pretrained base under a stable name in
``models/diffusion_models`` and the styled training set as a ``.latent`` in ``input/``.  The graph
(``example_workflows/demo/06_train_styles_and_pin.json``) is generated here from the same dataset definition, so its
style labels and per-image conditioning seeds can never drift from the data; a test compares the committed file
with :func:`workflow`.

The conditioning of content c is ``OrthoHydraDemoConditioning(seed=7919 + c, tokens=4)``: the same draws as
``toy_world.content_embedding(c)``, so the graph needs no text encoder and names the content only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import toy_world
from .workflow import WorkflowGraph

MODEL_NAME = "ortho_hydra_toy_world.safetensors"
LATENT_NAME = "ortho_hydra_toy_styles.latent"
WORKFLOW = Path(__file__).resolve().parents[1] / "example_workflows" / "demo" / "06_train_styles_and_pin.json"
PER_PAIR = 2  # renders per (content, style): 6 contents x 4 styles x 2 = 48 training images
CONTENT_SEED = 7919  # toy_world.content_embedding seeds its generator with 7919 + content
TRAIN = {"steps": 300, "learning_rate": 2e-3, "batch_size": 8, "rank": 8, "experts": 4, "init": "ortho_init",
         "label_guidance": 1.0, "label_guidance_steps": 180}
GALLERY_SEED = 5


def training_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, content ids, style labels) of the demo's training images."""
    return toy_world.dataset(PER_PAIR, seed=0)


def build(models_dir: Path, input_dir: Path, log=print) -> dict:
    """Write the base model (built once into the host's models/, cached by recipe) and the training latents."""
    cached = toy_world.build_base_model(log=log)
    stable = Path(models_dir) / "diffusion_models" / MODEL_NAME
    stable.parent.mkdir(parents=True, exist_ok=True)
    if not stable.is_file() or stable.stat().st_size != cached.stat().st_size or \
            stable.stat().st_mtime < cached.stat().st_mtime:
        shutil.copyfile(cached, stable)
    latents, _, _ = training_set()
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    latent_path = input_dir / LATENT_NAME
    save_file({"latent_tensor": latents.contiguous(), "latent_format_version_0": torch.tensor([])},
              str(latent_path))
    return {"model": stable, "latents": latent_path}


def _csv(values) -> str:
    return ",".join(str(int(v)) for v in values)


def workflow() -> dict:
    """The demo graph: train with label guidance, gallery of every pinned expert per content, plot."""
    _, contents, labels = training_set()
    g = WorkflowGraph()
    model = g.node("UNETLoader", [MODEL_NAME, "default"], outputs=[("MODEL", "MODEL")], pos=(0, 0))
    data = g.node("LoadLatent", [LATENT_NAME], outputs=[("LATENT", "LATENT")], pos=(0, 160))
    per_image = g.node("OrthoHydraDemoConditioning", [0, "fixed", toy_world.COND_TOKENS,
                                                      _csv(CONTENT_SEED + c for c in contents.tolist())],
                       {"model": ("MODEL", (model, 0))}, [("conditioning", "CONDITIONING")], pos=(0, 300))
    t = TRAIN
    train = g.node("OrthoHydraTrain", [
        t["steps"], t["learning_rate"], t["batch_size"], 1, t["rank"], t["experts"], 0.0, t["init"], 0.1, 1e-2, 1.0,
        "attention+mlp", "", "logit_normal", 3.0, False, "fp32", 0, "fixed", 0, "ortho_hydra_toy_styles", False,
        _csv(labels.tolist()), "none", ", ".join(toy_world.STYLES), t["label_guidance"], t["label_guidance_steps"],
        0.0, 1],
        {"model": ("MODEL", (model, 0)), "latents": ("LATENT", (data, 0)),
         "positive": ("CONDITIONING", (per_image, 0)), "styles": ("ORTHO_HYDRA_STYLES", None)},
        [("model", "MODEL"), ("adapter", "ORTHO_HYDRA"), ("loss_map", "LOSS_MAP"), ("router_trace", "ROUTER_TRACE")],
        pos=(360, 0))
    per_content = g.node("OrthoHydraDemoConditioning", [0, "fixed", toy_world.COND_TOKENS,
                                                        _csv(CONTENT_SEED + c for c in range(len(toy_world.CONTENTS)))],
                         {"model": ("MODEL", (model, 0))}, [("conditioning", "CONDITIONING")], pos=(360, 520))
    negative = g.node("ConditioningZeroOut", [], {"conditioning": ("CONDITIONING", (per_content, 0))},
                      [("CONDITIONING", "CONDITIONING")], pos=(360, 660))
    empty = g.node("EmptySD3LatentImage", [toy_world.SIZE * 8, toy_world.SIZE * 8, 1], outputs=[("LATENT", "LATENT")],
                   pos=(360, 760))
    gallery = g.node("OrthoHydraExpertGallery", [GALLERY_SEED, "fixed", 8, 2.0, "euler", "simple", 1.0, ""],
                     {"model": ("MODEL", (model, 0)), "adapter": ("ORTHO_HYDRA", (train, 1)),
                      "positive": ("CONDITIONING", (per_content, 0)), "negative": ("CONDITIONING", (negative, 0)),
                      "latent": ("LATENT", (empty, 0)), "vae": ("VAE", None)},
                     [("grid", "IMAGE"), ("tiles", "LATENT")], pos=(720, 0))
    g.node("SaveImage", ["ortho_hydra_styles_gallery"], {"images": ("IMAGE", (gallery, 0))}, pos=(1080, 0))
    g.node("SaveLatent", ["latents/ortho_hydra_styles_tiles"], {"samples": ("LATENT", (gallery, 1))}, pos=(1080, 300))
    plot = g.node("OrthoHydraPlotTraining", [], {"loss_map": ("LOSS_MAP", (train, 2)),
                                                 "router_trace": ("ROUTER_TRACE", (train, 3)),
                                                 "compare_trace": ("ROUTER_TRACE", None),
                                                 "compare_trace_2": ("ROUTER_TRACE", None)},
                  [("image", "IMAGE")], pos=(720, 520))
    g.node("SaveImage", ["ortho_hydra_styles_training_plot"], {"images": ("IMAGE", (plot, 0))}, pos=(1080, 520))
    return g.to_json()


def write_workflow(path: Path = WORKFLOW) -> Path:
    path.write_text(json.dumps(workflow(), indent=1) + "\n")
    return path


def pin_verdicts(tiles: torch.Tensor, names: list[str], probe) -> dict:
    """Per gallery column (each pinned expert, then live): the probe's styles and the share matching the name.

    ``tiles`` are the gallery's latents row by row (contents x columns).
    """
    columns = len(names) + 1
    predicted = probe.predict(tiles).reshape(-1, columns)
    verdicts = {}
    for column, name in enumerate([*names, "live"]):
        styles = [toy_world.STYLES[int(p)] if int(p) < len(toy_world.STYLES) else toy_world.NEUTRAL_NAME
                  for p in predicted[:, column]]
        entry = {"probe_styles": styles, "majority": max(set(styles), key=styles.count)}
        if name in toy_world.STYLES:
            entry["accuracy_vs_name"] = sum(s == name for s in styles) / len(styles)
        verdicts[name] = entry
    return verdicts
