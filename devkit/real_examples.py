"""The example graphs for real models (example_workflows/0*.json), generated here so their widget lists, sizes and
layout come from one place.  ``python -m devkit.real_examples`` rewrites them; a host test checks the committed files
equal what this writes.

Each graph uses ComfyUI's stock loaders, ``CLIPTextEncode``, ``KSampler`` and ``VAEDecode`` with the model files a
user downloads (names as ComfyUI's own SD3.5 and Cosmos examples use them), and a Note saying what to pick.
"""

from __future__ import annotations

import re
from pathlib import Path

from .workflow import WorkflowGraph, write_json

FOLDER = Path(__file__).resolve().parents[1] / "example_workflows"

# SD3.5 Medium as Stability AI ships it (diffusion model + VAE in one file) and the text encoders ComfyUI's SD3.5
# example loads beside it.
SD35_CHECKPOINT = "sd3.5_medium.safetensors"
SD35_TEXT_ENCODERS = ["clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"]
BANK_LORAS = ["my_style_a_sd35.safetensors", "my_style_b_sd35.safetensors"]
COSMOS_MODEL = "cosmos_predict2_2B_t2i.safetensors"
COSMOS_TEXT_ENCODER = "oldt5_xxl_fp8_e4m3fn_scaled.safetensors"
COSMOS_VAE = "wan_2.1_vae.safetensors"
MOE_FILE = "my_anima_styles_moe.safetensors"
STYLES_DATASET = "my_styles"

# Node sizes (width, height below the title) the canvas front end computes for each node's widgets and slots
# (LGraphNode.computeSize, front end 1.3x; the router with a two-expert mixer), rounded up; the browser test checks
# every node is at least this big.
SIZES = {
    "CheckpointLoaderSimple": (320, 100), "TripleCLIPLoader": (320, 106), "UNETLoader": (320, 82),
    "CLIPLoader": (320, 106), "VAELoader": (320, 58), "CLIPTextEncode": (400, 140), "EmptySD3LatentImage": (320, 106),
    "KSampler": (320, 262), "VAEDecode": (210, 46), "VAEEncode": (210, 46), "SaveImage": (400, 420),
    "PreviewImage": (400, 420), "OrthoHydraLoraBank": (360, 324), "OrthoHydraRouter": (360, 380),
    "OrthoHydraApply": (320, 102), "OrthoHydraLoader": (360, 126), "OrthoHydraLoadStyleFolders": (340, 240),
    "OrthoHydraTrain": (360, 1000), "OrthoHydraExpertGallery": (340, 334), "OrthoHydraPlotTraining": (300, 90),
}
# Nodes 2.0 (Vue nodes) draws each node 1.2x as wide as its saved size and as tall as its DOM needs, from the same
# position: these are those heights, title included, at the sizes above (measured on front end 1.3x; CLIPLoader
# drew 205 with the Cosmos encoder in one run, so it gets 215); the layout leaves room for whichever UI draws a node
# bigger, so neither overlaps (the browser test checks both).
VUE_SCALE = 1.2
# ... measured against the graph's own spacing, Nodes 2.0 (front end 1.3x and 1.49) lays positions out at 0.8 of the
# canvas's: a gap of 100 graph units shows as 80 px beside nodes drawn 1.2x, so the layout divides by this
VUE_SPACING = 0.8
VUE_HEIGHTS = {
    "CheckpointLoaderSimple": 161, "TripleCLIPLoader": 181, "UNETLoader": 147, "CLIPLoader": 215, "VAELoader": 112,
    "CLIPTextEncode": 205, "EmptySD3LatentImage": 181, "KSampler": 354, "VAEDecode": 103, "VAEEncode": 103,
    "SaveImage": 541, "PreviewImage": 541, "OrthoHydraLoraBank": 470, "OrthoHydraRouter": 544, "OrthoHydraApply": 171,
    "OrthoHydraLoader": 205, "OrthoHydraLoadStyleFolders": 344, "OrthoHydraTrain": 1333,
    "OrthoHydraExpertGallery": 437, "OrthoHydraPlotTraining": 151,
}
TITLE = 30
GAP = 50  # between nodes in a column: room for the next node's title bar and some air
COLUMN_GAP = 60
NOTE_WIDTH = 420

ROUTER_PIN = ["pin", 0, "", True, 1.0, 1, "all", -1, -1, "", 0.0, 1.0, "", "step", "both", "", 0, False]
ROUTER_BLEND = ["blend", 0, "0.6,0.4", True, 1.0, 1, "all", -1, -1, "", 0.0, 1.0, "", "step", "both", "", 0, False]


class Layout:
    """Columns of nodes, each placed under the previous one in its column; a column is as wide as its widest node
    in either UI, and the x positions are set once every node is in (``done``)."""

    def __init__(self, graph: WorkflowGraph) -> None:
        self.graph = graph
        self.columns: list[list[int]] = []  # node ids per column
        self.bottoms: list[int] = []  # the next free y per column

    def column(self) -> int:
        self.columns.append([])
        self.bottoms.append(0)
        return len(self.columns) - 1

    def add(self, column: int, node_type: str, widgets: list, inputs: dict | None = None,
            outputs: list | None = None, size: tuple[int, int] | None = None) -> int:
        y = self.bottoms[column]
        node_id = self.graph.node(node_type, widgets, inputs, outputs, pos=(0, y))
        size = size or SIZES[node_type]
        self.graph.nodes[node_id - 1]["size"] = list(size)
        vue = round(VUE_HEIGHTS.get(node_type, round(VUE_SCALE * size[1]) + TITLE + 1) / VUE_SPACING) - TITLE
        self.bottoms[column] = y + max(size[1], vue) + GAP
        self.columns[column].append(node_id)
        return node_id

    def note(self, column: int, text: str) -> int:
        lines = sum(1 + len(line) // 64 for line in text.split("\n"))
        node_id = self.add(column, "Note", [text], size=(NOTE_WIDTH, 30 + 15 * lines))
        node = self.graph.nodes[node_id - 1]
        node["properties"] = {"text": ""}
        node["color"], node["bgcolor"] = "#432", "#653"
        return node_id

    def done(self) -> dict:
        x = 0
        for ids in self.columns:
            nodes = [self.graph.nodes[i - 1] for i in ids]
            for node in nodes:
                node["pos"][0] = x
            x += round(VUE_SCALE / VUE_SPACING * max(node["size"][0] for node in nodes)) + COLUMN_GAP
        return self.graph.to_json()


def _unwrap(text: str) -> str:
    """Note text kept under the line limit here: a line indented by two spaces continues the one before."""
    return re.sub(r"\n  ", " ", text)


def _sd35_loaders(lay: Layout, col: int) -> tuple[int, int]:
    ckpt = lay.add(col, "CheckpointLoaderSimple", [SD35_CHECKPOINT],
                   outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    clip = lay.add(col, "TripleCLIPLoader", list(SD35_TEXT_ENCODERS), outputs=[("CLIP", "CLIP")])
    return ckpt, clip


def _prompt(lay: Layout, col: int, clip: int, text: str) -> int:
    return lay.add(col, "CLIPTextEncode", [text], {"clip": ("CLIP", (clip, 0))}, [("CONDITIONING", "CONDITIONING")])


def _sample_decode_save(lay: Layout, col: int, model: tuple[int, int], positive: int, negative: int, latent: int,
                        vae: tuple[int, int], prefix: str, steps: int, cfg: float, scheduler: str) -> None:
    sampled = lay.add(col, "KSampler", [42, "fixed", steps, cfg, "euler", scheduler, 1.0],
                      {"model": ("MODEL", model), "positive": ("CONDITIONING", (positive, 0)),
                       "negative": ("CONDITIONING", (negative, 0)), "latent_image": ("LATENT", (latent, 0))},
                      [("LATENT", "LATENT")])
    out = lay.column()
    decoded = lay.add(out, "VAEDecode", [], {"samples": ("LATENT", (sampled, 0)), "vae": ("VAE", vae)},
                      [("IMAGE", "IMAGE")])
    lay.add(out, "SaveImage", [prefix], {"images": ("IMAGE", (decoded, 0))})


BANK_NOTE = _unwrap("""LoRA bank -> mixer (SD3.5 Medium; any model works the same way)

Pick:
- Load Checkpoint: sd3.5_medium.safetensors (models/checkpoints); Triple CLIP Loader: clip_l, clip_g, t5xxl
  (models/text_encoders).
- LoRA bank: two to eight LoRAs trained for this same base (models/loras). Expert i is LoRA i; 'names'
  labels them.
- Router: blend 0.6,0.4 mixes the two LoRAs 60/40. mode pin + expert 0 gives the first alone; keyframes such
  as '0.0 pin 0' / '0.5 pin 1' switch LoRA halfway through the denoise.

Expect: one 1024x1024 picture in both LoRAs' styles, seed fixed at 42. With renormalize off, a blend equals
  stacked LoraLoaderModelOnly nodes at those strengths.""")

MOE_NOTE = _unwrap("""Reference-trainer _moe file -> load -> pin (Cosmos-Predict2 2B / Anima)

Pick:
- Load Diffusion Model: cosmos_predict2_2B_t2i.safetensors, or another model of this family such as Anima,
  with the text encoder and VAE its own ComfyUI workflow uses (here the Cosmos T5 and the Wan 2.1 VAE).
- Ortho-Hydra Load Adapter: your *_moe.safetensors from anima_lora (models/loras) for that model. Keep
  router_correction at 'training'.
- Router: pin + expert 0 uses expert 0 alone; the mixer under the widgets shows one slider and pin button
  per expert, named from the file. Try blend, or keyframes for a schedule.

Expect: one picture with the pinned expert's style. A file for another model fails, naming both sides.""")

TRAIN_NOTE = _unwrap("""Train styles from folders -> expert gallery (SD3.5 Medium)

Pick:
- Put your images in ComfyUI/input/my_styles/<style>/, one sub-folder per style (three here: experts = 3).
  Load Style Folders reads them; label i is the i-th folder in sorted order.
- Load Checkpoint: sd3.5_medium.safetensors; Triple CLIP Loader: clip_l, clip_g, t5xxl.
- The trainer: the pack's recipe (init ortho_init, learning rate 2e-3, label guidance 1.0) with the seed
  fixed, so queueing again does not retrain under a new seed. It needs a GPU with room for SD3.5 Medium in
  bf16 plus gradients of the adapter.

Expect: a live loss chart on the trainer, then models/loras/ortho_hydra_my_styles.safetensors (and a resume
  file), one gallery image with the same seed rendered once per style expert plus live routing, and the
  training plot.""")


def lora_bank() -> dict:
    g = WorkflowGraph()
    lay = Layout(g)
    c0 = lay.column()
    ckpt, clip = _sd35_loaders(lay, c0)
    c1 = lay.column()
    bank = lay.add(c1, "OrthoHydraLoraBank", [*BANK_LORAS, "style a, style b", *["none"] * 6, ""],
                   {"model": ("MODEL", (ckpt, 0))}, [("ORTHO_HYDRA", "adapter"), ("STRING", "summary")])
    positive = _prompt(lay, c1, clip, "a lighthouse on a rocky coast at dusk, waves, seagulls")
    negative = _prompt(lay, c1, clip, "blurry, low quality")
    c2 = lay.column()
    router = lay.add(c2, "OrthoHydraRouter", list(ROUTER_BLEND), {"adapter": ("ORTHO_HYDRA", (bank, 0)),
                                                                 "profile": ("STYLE_PROFILE", None)},
                     [("ORTHO_HYDRA", "adapter"), ("STRING", "summary")])
    c3 = lay.column()
    applied = lay.add(c3, "OrthoHydraApply", [1.0, 1.0], {"model": ("MODEL", (ckpt, 0)),
                                                         "adapter": ("ORTHO_HYDRA", (router, 0))},
                      [("MODEL", "model")])
    latent = lay.add(c3, "EmptySD3LatentImage", [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    _sample_decode_save(lay, c3, (applied, 0), positive, negative, latent, (ckpt, 2), "ortho_hydra_bank_blend",
                        28, 4.5, "sgm_uniform")
    lay.note(c0, BANK_NOTE)
    return lay.done()


def moe_pin() -> dict:
    g = WorkflowGraph()
    lay = Layout(g)
    c0 = lay.column()
    unet = lay.add(c0, "UNETLoader", [COSMOS_MODEL, "default"], outputs=[("MODEL", "MODEL")])
    clip = lay.add(c0, "CLIPLoader", [COSMOS_TEXT_ENCODER, "cosmos", "default"], outputs=[("CLIP", "CLIP")])
    vae = lay.add(c0, "VAELoader", [COSMOS_VAE], outputs=[("VAE", "VAE")])
    c1 = lay.column()
    loader = lay.add(c1, "OrthoHydraLoader", [MOE_FILE, "training", True], outputs=[("ORTHO_HYDRA", "adapter"),
                                                                                  ("STRING", "summary")])
    positive = _prompt(lay, c1, clip, "a quiet harbour town in the morning, boats, soft light")
    negative = _prompt(lay, c1, clip, "blurry, low quality")
    c2 = lay.column()
    router = lay.add(c2, "OrthoHydraRouter", list(ROUTER_PIN), {"adapter": ("ORTHO_HYDRA", (loader, 0)),
                                                               "profile": ("STYLE_PROFILE", None)},
                     [("ORTHO_HYDRA", "adapter"), ("STRING", "summary")])
    c3 = lay.column()
    applied = lay.add(c3, "OrthoHydraApply", [1.0, 1.0], {"model": ("MODEL", (unet, 0)),
                                                         "adapter": ("ORTHO_HYDRA", (router, 0))},
                      [("MODEL", "model")])
    latent = lay.add(c3, "EmptySD3LatentImage", [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    _sample_decode_save(lay, c3, (applied, 0), positive, negative, latent, (vae, 0), "ortho_hydra_moe_pin_0",
                        35, 4.0, "simple")
    lay.note(c0, MOE_NOTE)
    return lay.done()


TRAIN_WIDGETS = [1000, 0.002, 4, 1, 8, 3, 0.0, "ortho_init", 0.1, 0.01, 1.0, "attention+mlp", "", "logit_normal",
                 3.0, True, "bf16", 0, "fixed", 250, "ortho_hydra_my_styles", False, "", "none", "", 1.0, 0, 0.0, 1,
                 0, 0, "cosine"]


def train_styles() -> dict:
    g = WorkflowGraph()
    lay = Layout(g)
    c0 = lay.column()
    ckpt, clip = _sd35_loaders(lay, c0)
    folders = lay.add(c0, "OrthoHydraLoadStyleFolders", [STYLES_DATASET, 512, 512, "crop", 0],
                      outputs=[("IMAGE", "images"), ("ORTHO_HYDRA_STYLES", "styles"), ("STRING", "labels"),
                               ("STRING", "style_names"), ("INT", "count")])
    c1 = lay.column()
    encoded = lay.add(c1, "VAEEncode", [], {"pixels": ("IMAGE", (folders, 0)), "vae": ("VAE", (ckpt, 2))},
                      [("LATENT", "LATENT")])
    caption = _prompt(lay, c1, clip, "an illustration")
    positive = _prompt(lay, c1, clip, "a lighthouse on a rocky coast at dusk, waves, seagulls")
    negative = _prompt(lay, c1, clip, "blurry, low quality")
    c2 = lay.column()
    trained = lay.add(c2, "OrthoHydraTrain", list(TRAIN_WIDGETS),
                      {"model": ("MODEL", (ckpt, 0)), "latents": ("LATENT", (encoded, 0)),
                       "positive": ("CONDITIONING", (caption, 0)), "styles": ("ORTHO_HYDRA_STYLES", (folders, 1))},
                      [("MODEL", "model"), ("ORTHO_HYDRA", "adapter"), ("LOSS_MAP", "loss_map"),
                       ("ROUTER_TRACE", "router_trace")])
    c3 = lay.column()
    latent = lay.add(c3, "EmptySD3LatentImage", [1024, 1024, 1], outputs=[("LATENT", "LATENT")])
    gallery = lay.add(c3, "OrthoHydraExpertGallery", [42, "fixed", 28, 4.5, "euler", "sgm_uniform", 1.0, ""],
                      {"model": ("MODEL", (ckpt, 0)), "adapter": ("ORTHO_HYDRA", (trained, 1)),
                       "positive": ("CONDITIONING", (positive, 0)), "negative": ("CONDITIONING", (negative, 0)),
                       "latent": ("LATENT", (latent, 0)), "vae": ("VAE", (ckpt, 2))},
                      [("IMAGE", "grid"), ("LATENT", "tiles")])
    plot = lay.add(c3, "OrthoHydraPlotTraining", [], {"loss_map": ("LOSS_MAP", (trained, 2)),
                                                      "router_trace": ("ROUTER_TRACE", (trained, 3)),
                                                      "compare_trace": ("ROUTER_TRACE", None),
                                                      "compare_trace_2": ("ROUTER_TRACE", None)},
                   [("IMAGE", "image")])
    c4 = lay.column()
    lay.add(c4, "SaveImage", ["ortho_hydra_my_styles_gallery"], {"images": ("IMAGE", (gallery, 0))})
    lay.add(c4, "PreviewImage", [], {"images": ("IMAGE", (plot, 0))})
    lay.note(c1, TRAIN_NOTE)
    return lay.done()


EXAMPLES = {"01_lora_bank_mixer_sd35.json": lora_bank, "02_moe_load_and_pin_cosmos_anima.json": moe_pin,
            "03_train_styles_from_folders_sd35.json": train_styles}


def write_all(folder: Path = FOLDER) -> list[Path]:
    return [write_json(folder / name, build()) for name, build in EXAMPLES.items()]


if __name__ == "__main__":
    for path in write_all():
        print(f"wrote {path}")
