"""The glyph demo: train a 4-style adapter on the glyph world in a ComfyUI graph, pin each named expert on
characters it never saw, and judge the gallery with the form and content probes.

Assets go into a ComfyUI folder tree: the glyph world's pretrained base under a stable name in
``models/diffusion_models`` and the training set (training characters x 4 styles) as a ``.latent`` in ``input/``.
The graph (``example_workflows/demo/09_train_glyph_styles_and_pin.json``) is generated here from the same definitions,
so its labels and per-image conditioning seeds cannot drift from the data (a test compares the committed file with
:func:`workflow`).  The gallery's rows are the held-out characters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import glyph_world as gw
from .workflow import WorkflowGraph

MODEL_NAME = "ortho_hydra_glyph_world.safetensors"
LATENT_NAME = "ortho_hydra_glyph_styles.latent"
OUTPUT_NAME = "ortho_hydra_glyph_styles"
WORKFLOW = Path(__file__).resolve().parents[1] / "example_workflows" / "demo" / "09_train_glyph_styles_and_pin.json"
# the study's recommended arm (ortho_init + label guidance) at its revised settings (experiments/form_styles/plan.py);
# lr: the positive control's, fixed in the plan (the study's lr selection for this arm has not run yet)
TRAIN = {"steps": 150, "learning_rate": 1e-2, "batch_size": 8, "rank": 8, "experts": 4, "init": "ortho_init",
         "label_guidance": 1.0, "label_guidance_steps": 90}
GALLERY_SEED = 5
SAMPLE_STEPS = 10


def training_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, content ids, style labels): every training character in every style, content-major."""
    return gw.dataset(gw.split_ids("train"), range(len(gw.STYLES)))


def build(models_dir: Path, input_dir: Path, log=print, recipe: dict | None = None) -> dict:
    """The base model under its stable name (built once into the host's models/, cached by recipe) and the
    training latents.  ``recipe`` (tests: a two-step one) is built into ``models_dir`` itself."""
    cached = gw.build_base_model(models_dir if recipe is not None else None, recipe, log=log)
    stable = Path(models_dir) / "diffusion_models" / MODEL_NAME
    stable.parent.mkdir(parents=True, exist_ok=True)
    if not stable.is_file() or stable.stat().st_size != cached.stat().st_size or \
            stable.stat().st_mtime < cached.stat().st_mtime:
        shutil.copyfile(cached, stable)
    latents, _, _ = training_set()
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / LATENT_NAME
    save_file({"latent_tensor": latents.contiguous(), "latent_format_version_0": torch.tensor([])}, str(path))
    return {"model": stable, "latents": path}


def _csv(values) -> str:
    return ",".join(str(int(v)) for v in values)


def workflow() -> dict:
    """Train with label guidance; gallery of every pinned expert (and live) on each held-out character; plot."""
    _, contents, labels = training_set()
    held = gw.split_ids("held_out")
    g = WorkflowGraph()
    model = g.node("UNETLoader", [MODEL_NAME, "default"], outputs=[("MODEL", "MODEL")], pos=(0, 0))
    data = g.node("LoadLatent", [LATENT_NAME], outputs=[("LATENT", "LATENT")], pos=(0, 160))
    per_image = g.node("OrthoHydraDemoConditioning", [0, "fixed", gw.COND_TOKENS,
                                                      _csv(gw.COND_SEED + c for c in contents.tolist())],
                       {"model": ("MODEL", (model, 0))}, [("conditioning", "CONDITIONING")], pos=(0, 300))
    t = TRAIN
    train = g.node("OrthoHydraTrain", [
        t["steps"], t["learning_rate"], t["batch_size"], 1, t["rank"], t["experts"], 0.0, t["init"], 0.1, 1e-2, 1.0,
        "attention+mlp", "", "logit_normal", 3.0, False, "fp32", 0, "fixed", 0, OUTPUT_NAME, False,
        _csv(labels.tolist()), "none", ", ".join(gw.STYLES), t["label_guidance"], t["label_guidance_steps"],
        0.0, 1],
        {"model": ("MODEL", (model, 0)), "latents": ("LATENT", (data, 0)),
         "positive": ("CONDITIONING", (per_image, 0)), "styles": ("ORTHO_HYDRA_STYLES", None)},
        [("model", "MODEL"), ("adapter", "ORTHO_HYDRA"), ("loss_map", "LOSS_MAP"), ("router_trace", "ROUTER_TRACE")],
        pos=(360, 0))
    per_char = g.node("OrthoHydraDemoConditioning", [0, "fixed", gw.COND_TOKENS, _csv(gw.COND_SEED + c for c in held)],
                      {"model": ("MODEL", (model, 0))}, [("conditioning", "CONDITIONING")], pos=(360, 520))
    negative = g.node("ConditioningZeroOut", [], {"conditioning": ("CONDITIONING", (per_char, 0))},
                      [("CONDITIONING", "CONDITIONING")], pos=(360, 660))
    empty = g.node("EmptySD3LatentImage", [gw.SIZE * 8, gw.SIZE * 8, 1], outputs=[("LATENT", "LATENT")],
                   pos=(360, 760))
    gallery = g.node("OrthoHydraExpertGallery", [GALLERY_SEED, "fixed", SAMPLE_STEPS, 2.0, "euler", "simple", 1.0, ""],
                     {"model": ("MODEL", (model, 0)), "adapter": ("ORTHO_HYDRA", (train, 1)),
                      "positive": ("CONDITIONING", (per_char, 0)), "negative": ("CONDITIONING", (negative, 0)),
                      "latent": ("LATENT", (empty, 0)), "vae": ("VAE", None)},
                     [("grid", "IMAGE"), ("tiles", "LATENT")], pos=(720, 0))
    g.node("SaveImage", ["ortho_hydra_glyph_gallery"], {"images": ("IMAGE", (gallery, 0))}, pos=(1080, 0))
    g.node("SaveLatent", ["latents/ortho_hydra_glyph_tiles"], {"samples": ("LATENT", (gallery, 1))}, pos=(1080, 300))
    plot = g.node("OrthoHydraPlotTraining", [], {"loss_map": ("LOSS_MAP", (train, 2)),
                                                 "router_trace": ("ROUTER_TRACE", (train, 3)),
                                                 "compare_trace": ("ROUTER_TRACE", None),
                                                 "compare_trace_2": ("ROUTER_TRACE", None)},
                  [("image", "IMAGE")], pos=(720, 520))
    g.node("SaveImage", ["ortho_hydra_glyph_training_plot"], {"images": ("IMAGE", (plot, 0))}, pos=(1080, 520))
    return g.to_json()


def write_workflow(path: Path = WORKFLOW) -> Path:
    path.write_text(json.dumps(workflow(), indent=1) + "\n")
    return path


def verdicts(tiles: torch.Tensor, form, content) -> dict:
    """Per gallery column (each named expert pinned, then live): what the probes read on the held-out rows."""
    held = gw.split_ids("held_out")
    columns = len(gw.STYLES) + 1
    maps = gw.ink(tiles)
    refs = torch.stack([gw.coverage(c, None) for c in held for _ in range(columns)])
    called = form.predict_ink(maps, refs).reshape(len(held), columns)
    read = content.predict_ink(maps).reshape(len(held), columns)
    out = {}
    for column, name in enumerate([*gw.STYLES, "live"]):
        styles = [gw.CLASS_NAMES[int(c)] if int(c) < len(gw.STYLES) else "not a style" for c in called[:, column]]
        entry = {"form_probe": styles, "majority": max(set(styles), key=styles.count),
                 "content_kept": (read[:, column] == torch.tensor(held)).double().mean().item()}
        if name in gw.STYLES:
            entry["pin_accuracy"] = sum(s == name for s in styles) / len(styles)
        out[name] = entry
    return out


def judge_png(tiles: torch.Tensor, path: Path, title: str) -> Path:
    """Rows: held-out characters.  Columns: the neutral face, then per style its true render beside the sample
    with that style's expert pinned, then live routing: a person can judge every pin at a glance."""
    held = gw.split_ids("held_out")
    columns = len(gw.STYLES) + 1
    tiles = tiles.reshape(len(held), columns, *tiles.shape[1:])
    cells, labels = [], ["neutral"]
    for style in gw.STYLES:
        labels += [f"{style[:8]} true", f"{style[:8]} pin"]
    labels.append("live")
    for row, c in enumerate(held):
        cells.append(gw.render_latent(c, None))
        for k in range(len(gw.STYLES)):
            cells += [gw.render_latent(c, k), tiles[row, k]]
        cells.append(tiles[row, len(gw.STYLES)])
    return gw.save_grid_png(torch.stack(cells), path, row_labels=[gw.CONTENTS[c] for c in held], col_labels=labels,
                            title=title, upscale=3)
