"""A toy world with real, visible styles, for style experiments on a real ComfyUI DiT.

**Pictures.**  Every image is a 16 x 16 latent (SD3's 16 channels) made from an RGB picture.  The picture
is one *content* (a shape: disc, ring, square, cross, triangle, bar) drawn at the centre as a binary mask
(rasterised with 4 x 4 supersampling, coverage >= 1/2), in a *style*: a background colour, a foreground
colour and a texture.  Textures are fixed patterns (stripes and dots do not move), so a generator can learn
them.  Renders of one (content, style) pair vary with the seed only through a global tone (every styled
picture is brighter or darker by up to 0.04) and the grain; neutral renders do not vary at all.  Position
jitter (``JITTER``) is supported but off: with it the tiny model has to decide a position from noise and
its samples come out ragged (mean IoU 0.77 against 1.0 without, same training budget), and the probe's
features do not depend on position anyway.

==============  ====================================================================================
neutral         grey shape on a dark grey ground, no texture (the base model's pretraining data)
0 warm          orange shape on a dark red-brown ground, flat
1 cool stripes  light-blue shape on navy, horizontal stripes (2 rows light, 2 rows dark)
2 dots          lime shape on dark green, a lattice of light dots every 4 pixels
3 grain         white shape on near-black, monochrome per-pixel film grain (sigma 0.1)
==============  ====================================================================================

The content mask is the same in every style (it depends on the content only), and every style keeps
foreground and background luminance apart by more than its texture, so :func:`shape_mask` (two-means
threshold of the preview luminance) recovers the content from any render, and from samples.

**Latents.**  The picture P (3, H, W) in [0, 1] is mapped into the latent with the minimum-norm
pseudo-inverse of SD3's ``latent_rgb_factors`` F (16 x 3) and bias b: ``latent = F (FᵀF)⁻¹ (2P - 1 - b)``.
The latent preview (``comfy_glue/images.py``: ``(latent · F + b + 1) / 2``) then shows exactly P:
:func:`to_rgb` is that preview.  The other 13 latent directions (the null space of Fᵀ) hold zero, so
everything in the world is visible and nothing is hidden from a person looking at the preview.  Latents
are in LATENT space (what a ComfyUI ``LATENT`` holds and what ``comfy.sample.sample`` returns); the
model sees them through ``SD3.process_in`` (``(x - 0.0609) · 1.5305``), as in ComfyUI.

**Conditioning** names the content only: a fixed pseudo-random context (1, 4, 64) and pooled vector
(1, 64) per content (``torch.Generator`` seeded with ``7919 + content``), in ComfyUI's list format.  It
never carries style, so a style can only come from the model (for instance an adapter's experts).  The
negative / unconditional conditioning is all zeros.

**The base model** is ComfyUI's own MMDiT (``depth=2``, hidden 128, patch 2, 64-wide context embedder,
``adm_in_channels=64``, ``qk_norm="rms"``, sin-cos positions; detected as SD3 by
``comfy.sd.load_diffusion_model_state_dict``), trained from scratch on the *neutral* renders only
(the six pictures) with rectified flow as ComfyUI's SD3 ``CONST`` sampling expects:
``x_σ = (1 - σ)·x0 + σ·noise``, the model gets ``timestep = 1000·σ`` and predicts ``v = noise - x0``
(``denoised = x_σ - σ·v``, ``CONST.calculate_denoised``).  σ is drawn half uniform, half through the
SD3 shift of 3 applied to a uniform t; the conditioning is dropped (zeros) 10 % of the time so CFG works;
1000 AdamW steps of batch 32 at lr 2e-3 with 50 warm-up steps and cosine decay; an EMA (0.99) of the
weights is what is saved.  adaLN modulations and the final layer start at zero (adaLN-zero), RMSNorm scales
at one.  Everything is seeded, runs on 2 CPU threads with deterministic algorithms, and takes about a
minute on an idle 2-core machine (60 ms a step).  The result is cached as
``models/diffusion_models/ortho_hydra_toy_<hash>.safetensors`` keyed by a hash of :func:`recipe` (written
atomically), with the recipe and the final loss in its metadata.  Sampled with ComfyUI's own sampler
(:func:`sample_base`: euler, 8 steps, cfg 2, zero negative), it draws the conditioned shape in the
neutral palette (:func:`shape_scores`).

**The "v2" base** (:func:`recipe_v2`, for base-model transfer experiments) continues v1's saved weights for
600 more steps at half the peak lr on a broader mix: the neutral pictures plus the same shapes in two house
palettes (inverted grey, lilac on plum), each picture's palette drawn uniformly, the conditioning unchanged.  A
recipe with a ``parent`` builds (or reuses) the parent's cached file in the same models folder first.

**The style probe** (``ortho_hydra.style_probe``) reads the preview RGB of a latent: palette moments and
quantiles, FFT band, axis and diagonal energies of the luminance.  :func:`fit_probe` fits it on renders
(clean and degraded: blurred, noised, contrast-shifted, so it tolerates a generator's imperfections) and
validates it on held-out renders with other seeds; it must reach 0.95 or it raises.

**API.**  ``CONTENTS``, ``STYLES`` (names; style i has label i), ``NEUTRAL`` (the label of neutral renders);
``recipe(**overrides)``, ``recipe_hash(r)``, ``model_path(models_dir, r)``, ``build_base_model(models_dir, r)``
-> cached path, ``load_base_model(models_dir, r)`` -> ComfyUI ModelPatcher, ``sample_base(model, content_ids)``;
``render_rgb(content, style, seed)``, ``render_latent(content, style, seed)`` -> (16, H, W),
``dataset(n_per_pair, seed, styles, contents)`` -> (latents, content ids, style labels), ``degrade(latents)``,
``conditioning(content_ids)``, ``per_image_conditioning(content_ids)`` (one entry per image, as the trainer
takes it), ``unconditional(batch)``, ``to_rgb(latents)``, ``content_mask(content)``, ``shape_mask(latents)``,
``shape_scores(latents, content_ids)``, ``fit_probe()`` -> (validated StyleProbe, report),
``save_grid_png(latents, path, row_labels, col_labels)``.

Run ``python -m devkit.toy_world --out DIR`` for the two pictures (dataset grid, base-model samples) and a
``summary.json``.

One module on purpose, past 350 lines: the world's definition (renders, conditioning, the base model's recipe,
its cache key and the probe's training data) must change together, and splitting it would scatter what the
recipe hash covers.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from .flow_pretraining import LossLog, flow_step, warmup_cosine
from .host import COMFY_DIR, ROOT, boot

WORLD_VERSION = 1  # part of the recipe: bump it whenever the neutral pictures or the conditioning change
SIZE = 16
JITTER = 0  # position jitter in latent pixels; 0: every content sits at the centre (see the docstring)
TONE_JITTER = 0.04  # styled renders: the whole picture is brighter or darker by up to this much
CONTENTS = ("disc", "ring", "square", "cross", "triangle", "bar")
STYLES = ("warm", "cool stripes", "dots", "grain")
NEUTRAL = len(STYLES)  # the label of neutral renders, when a data set includes them
NEUTRAL_NAME = "neutral"
COND_TOKENS = 4
CONTEXT_DIM = 64
ADM_DIM = 64

# SD3 latent format (comfy/latent_formats.py), used to feed the raw MMDiT during training
_SD3_SHIFT, _SD3_SCALE = 0.0609, 1.5305

#                      background            foreground
PALETTES = {
    NEUTRAL: ((0.22, 0.22, 0.22), (0.70, 0.70, 0.70)),
    0: ((0.40, 0.12, 0.04), (1.00, 0.62, 0.16)),
    1: ((0.05, 0.12, 0.38), (0.48, 0.76, 1.00)),
    2: ((0.05, 0.26, 0.09), (0.56, 0.90, 0.34)),
    3: ((0.06, 0.06, 0.06), (0.94, 0.94, 0.94)),
}
STRIPE_AMPLITUDE = 0.10
DOT_COLOUR_SHIFT = (0.22, 0.22, 0.12)
GRAIN_SIGMA = 0.10

TRAIN_THREADS = 2
BUILD_COUNT = 0  # how many times this process trained a base model (tests check the cache with it)


# --------------------------------------------------------------------------------------------------------------
# recipe and cache
# --------------------------------------------------------------------------------------------------------------

_OPTIONAL_KEYS = ("parent", "extra_palettes")  # only in a recipe that sets them, so v1's hash never changed
# the "v2" base's broader mix: the neutral palette plus two house palettes far from every style
V2_PALETTES = (((0.75, 0.75, 0.75), (0.25, 0.25, 0.25)),  # inverted grey: light ground, dark shape
               ((0.26, 0.12, 0.30), (0.78, 0.56, 0.86)))  # lilac on plum


def recipe(**overrides) -> dict:
    """Everything that determines the base model; its hash names the cached file.

    ``parent`` (a recipe) continues pretraining from that model's saved weights instead of from scratch;
    ``extra_palettes`` adds (background, foreground) palettes to the neutral one, each picture drawn in one of
    them uniformly (the conditioning still names only the content).
    """
    r = {
        "world_version": WORLD_VERSION, "size": SIZE, "jitter": JITTER, "contents": list(CONTENTS),
        "neutral_palette": [list(c) for c in PALETTES[NEUTRAL]], "cond_tokens": COND_TOKENS,
        "context_dim": CONTEXT_DIM, "adm_dim": ADM_DIM, "depth": 2, "steps": 1000, "batch": 32, "lr": 2e-3,
        "weight_decay": 0.0, "warmup": 50, "ema": 0.99, "cfg_dropout": 0.1, "sigma_shift": 3.0,
        "sigma_uniform": 0.5, "adaln_zero": True, "seed": 0,
    }
    unknown = set(overrides) - set(r) - set(_OPTIONAL_KEYS)
    if unknown:
        raise KeyError(f"unknown recipe keys {sorted(unknown)}")
    r.update(overrides)
    return r


def recipe_v2(**overrides) -> dict:
    """The toy "v2" base: v1 (:func:`recipe`) pretrained 600 more steps, at half v1's peak lr, on a broader mix
    (neutral plus :data:`V2_PALETTES`).  A new version of the same architecture, as Flux dev is to a fine-tune."""
    base = {"parent": recipe(), "extra_palettes": [[list(bg), list(fg)] for bg, fg in V2_PALETTES],
            "steps": 600, "lr": 1e-3, "warmup": 20, "seed": 1}
    return recipe(**{**base, **overrides})


def recipe_hash(r: dict | None = None) -> str:
    text = json.dumps(r if r is not None else recipe(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_models_dir() -> Path:
    return COMFY_DIR / "models"


def model_path(models_dir: str | os.PathLike | None = None, r: dict | None = None) -> Path:
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    return models_dir / "diffusion_models" / f"ortho_hydra_toy_{recipe_hash(r)}.safetensors"


# --------------------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------------------

def _inside(name: str, dy: torch.Tensor, dx: torch.Tensor, s: float) -> torch.Tensor:
    r = (dx ** 2 + dy ** 2).sqrt()
    if name == "disc":
        return r <= 4.75 * s
    if name == "ring":
        return (r >= 2.75 * s) & (r <= 5.75 * s)
    if name == "square":
        return torch.maximum(dx.abs(), dy.abs()) <= 4.25 * s
    if name == "cross":
        return (((dx.abs() <= 1.5 * s) & (dy.abs() <= 5.75 * s))
                | ((dy.abs() <= 1.5 * s) & (dx.abs() <= 5.75 * s)))
    if name == "triangle":  # upward, apex at the top
        top, bottom, half = -5.5 * s, 4.5 * s, 5.75 * s
        return (dy >= top) & (dy <= bottom) & (dx.abs() <= half * (dy - top) / (bottom - top))
    if name == "bar":
        return (dx.abs() <= 6.25 * s) & (dy.abs() <= 1.75 * s)
    raise KeyError(name)


def content_mask(content: int, dy: int = 0, dx: int = 0, size: int = SIZE) -> torch.Tensor:
    """(size, size) bool mask of a content shifted by (dy, dx) latent pixels."""
    return _content_mask(int(content), int(dy), int(dx), int(size)).clone()


@functools.lru_cache(maxsize=4096)
def _content_mask(content: int, dy: int, dx: int, size: int) -> torch.Tensor:
    sub = 4
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    coords = (torch.arange(size, dtype=torch.float64).view(-1, 1) + offsets.view(1, -1)).reshape(-1)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centre = (size - 1) / 2
    inside = _inside(CONTENTS[content], yy - centre - dy, xx - centre - dx, size / 16)
    coverage = inside.double().reshape(size, sub, size, sub).mean(dim=(1, 3))
    return coverage >= 0.5


def _generator(content: int, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1009 + int(content) * 7 + 12345)


def _variation(content: int, seed: int, size: int) -> tuple[int, int, float, torch.Tensor]:
    """(dy, dx, tone, grain) of render ``seed``: a function of content and seed, never of the style."""
    g = _generator(content, seed)
    dy, dx = torch.randint(-JITTER, JITTER + 1, (2,), generator=g).tolist()
    tone = (2 * torch.rand((), generator=g, dtype=torch.float64).item() - 1) * TONE_JITTER
    grain = torch.randn(size, size, generator=g, dtype=torch.float64)
    return dy, dx, tone, grain


def jitter(content: int, seed: int) -> tuple[int, int]:
    """The (dy, dx) shift of a render (always (0, 0) while ``JITTER`` is 0)."""
    return _variation(content, seed, SIZE)[:2]


def render_rgb(content: int, style: int | None, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    """(3, size, size) picture in [0, 1]; ``style=None`` (or ``NEUTRAL``) is the neutral palette."""
    style = NEUTRAL if style is None else int(style)
    dy, dx, tone, grain = _variation(content, seed, size)
    mask = content_mask(content, dy, dx, size).double()
    bg, fg = (torch.tensor(c, dtype=torch.float64).view(3, 1, 1) for c in PALETTES[style])
    rgb = bg + (fg - bg) * mask
    if style == NEUTRAL:
        return rgb.float()  # the pretraining data: one fixed picture per content
    rgb = rgb + tone
    yy = torch.arange(size).view(-1, 1).expand(size, size)
    xx = torch.arange(size).view(1, -1).expand(size, size)
    if style == 1:    # horizontal stripes, two rows light, two rows dark
        sign = torch.where((yy // 2) % 2 == 0, 1.0, -1.0).double()
        rgb = rgb + STRIPE_AMPLITUDE * sign
    elif style == 2:  # dot lattice
        dots = ((yy % 4 == 1) & (xx % 4 == 1)).double()
        rgb = rgb + torch.tensor(DOT_COLOUR_SHIFT, dtype=torch.float64).view(3, 1, 1) * dots
    elif style == 3:  # monochrome film grain
        rgb = rgb + GRAIN_SIGMA * grain
    return rgb.clamp(0.0, 1.0).float()


def latent_format():
    boot()
    from comfy.latent_formats import SD3

    return SD3()


def rgb_factors() -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's ``latent_rgb_factors`` (16, 3) and bias (3,), as the latent preview uses them."""
    f, b = _factors()
    return f.clone(), b.clone()


@functools.lru_cache(maxsize=1)
def _factors() -> tuple[torch.Tensor, torch.Tensor]:
    fmt = latent_format()
    return (torch.tensor(fmt.latent_rgb_factors, dtype=torch.float64),
            torch.tensor(fmt.latent_rgb_factors_bias, dtype=torch.float64))


def rgb_to_latent(rgb: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) picture in [0, 1] -> (…, 16, H, W) minimum-norm latent whose preview is that picture."""
    target = (2.0 * rgb.float() - 1.0 - _lift()[1].view(3, 1, 1)).movedim(-3, -1)
    return (target @ _lift()[0].T).movedim(-1, -3).contiguous()


@functools.lru_cache(maxsize=1)
def _lift() -> tuple[torch.Tensor, torch.Tensor]:
    """(F (FᵀF)⁻¹ (16, 3), b (3,)) in float32."""
    f, b = _factors()
    return (f @ torch.linalg.inv(f.T @ f)).float(), b.float()


def render_latent(content: int, style: int | None, seed: int = 0) -> torch.Tensor:
    """(16, H, W) latent of ``content`` in ``style`` (None: neutral)."""
    return rgb_to_latent(render_rgb(content, style, seed))


def to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, H, W) latents -> (B, 3, H, W) latent preview in [0, 1] (``comfy_glue/images.py``'s map)."""
    from ortho_hydra.style_probe import preview_rgb

    f, b = rgb_factors()
    if latents.ndim == 3:
        latents = latents.unsqueeze(0)
    return preview_rgb(latents, f, b)


def dataset(n_per_pair: int = 1, seed: int = 0, styles: Iterable[int | None] = range(len(STYLES)),
            contents: Iterable[int] = range(len(CONTENTS))) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (content, style) pair ``n_per_pair`` times: (latents (N, 16, H, W), content ids, style labels).

    A style of ``None`` or ``NEUTRAL`` gives neutral renders, labelled ``NEUTRAL``.  Render ``k`` of a pair
    uses seed ``seed · 10007 + k`` for every style, so the same content sits at the same place in every style.
    """
    styles = [NEUTRAL if s is None else int(s) for s in styles]
    contents = [int(c) for c in contents]
    pictures, content_ids, labels = [], [], []
    for k in range(n_per_pair):
        for content in contents:
            for style in styles:
                pictures.append(render_rgb(content, style, seed * 10007 + k))
                content_ids.append(content)
                labels.append(style)
    return rgb_to_latent(torch.stack(pictures)), torch.tensor(content_ids), torch.tensor(labels)


def degrade(latents: torch.Tensor, seed: int = 0, blur: float = 0.7, noise: float = 0.15,
            contrast: float = 0.15) -> torch.Tensor:
    """Imitate a generator's imperfections: Gaussian blur (σ = ``blur`` latent pixels), a random contrast
    change of up to ±``contrast`` about the image mean, and Gaussian noise of ``noise`` per latent channel."""
    g = torch.Generator().manual_seed(seed)
    x = latents.float()
    if blur > 0:
        radius = max(1, math.ceil(2.5 * blur))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / blur) ** 2)
        k = k / k.sum()
        c = x.shape[1]
        x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if contrast > 0:
        factor = 1.0 + contrast * (2 * torch.rand(x.shape[0], 1, 1, 1, generator=g) - 1)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x = mean + (x - mean) * factor
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    return x


# --------------------------------------------------------------------------------------------------------------
# shapes in latents
# --------------------------------------------------------------------------------------------------------------

def shape_mask(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, H, W) -> (B, H, W) bool: preview luminance above its two-means threshold (the content)."""
    lum = to_rgb(latents).mean(1)
    flat = lum.flatten(1)
    t = flat.mean(-1, keepdim=True)
    for _ in range(20):
        hi = torch.where(flat > t, flat, torch.nan).nanmean(-1, keepdim=True)
        lo = torch.where(flat <= t, flat, torch.nan).nanmean(-1, keepdim=True)
        t = torch.nan_to_num((hi + lo) / 2, nan=0.0)
    return (flat > t).view_as(lum)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def best_iou(mask: torch.Tensor, content: int, reach: int = JITTER + 1) -> float:
    """IoU of a (H, W) mask with the content's template, best over shifts up to ``reach`` pixels."""
    size = mask.shape[-1]
    return max(_iou(mask, content_mask(content, dy, dx, size))
               for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1))


def shape_scores(latents: torch.Tensor, content_ids: Sequence[int]) -> dict:
    """Per latent: IoU with the conditioned content's template, and which content fits best.

    Returns ``{"iou": [...], "predicted": [...], "correct": [...], "mean_iou": float, "accuracy": float}``.
    """
    masks = shape_mask(latents)
    ious, predicted = [], []
    for mask, content in zip(masks, content_ids, strict=True):
        per_content = [best_iou(mask, c) for c in range(len(CONTENTS))]
        ious.append(per_content[int(content)])
        predicted.append(max(range(len(CONTENTS)), key=per_content.__getitem__))
    correct = [int(p) == int(c) for p, c in zip(predicted, content_ids, strict=True)]
    return {"iou": ious, "predicted": predicted, "correct": correct, "mean_iou": sum(ious) / len(ious),
            "min_iou": min(ious), "accuracy": sum(correct) / len(correct)}


# --------------------------------------------------------------------------------------------------------------
# conditioning
# --------------------------------------------------------------------------------------------------------------

def content_embedding(content: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (tokens, 64) context and (64,) pooled vector that name ``content``."""
    g = torch.Generator().manual_seed(7919 + int(content))
    return torch.randn(COND_TOKENS, CONTEXT_DIM, generator=g), torch.randn(ADM_DIM, generator=g)


def conditioning(content_ids: int | Sequence[int]) -> list:
    """ComfyUI conditioning for one content or a batch: ``[[context (N, T, 64), {"pooled_output": (N, 64)}]]``."""
    ids = [int(content_ids)] if isinstance(content_ids, int) else [int(c) for c in content_ids]
    pairs = [content_embedding(c) for c in ids]
    return [[torch.stack([p[0] for p in pairs]), {"pooled_output": torch.stack([p[1] for p in pairs])}]]


def per_image(batched: list) -> list:
    """One batched conditioning entry split into one entry per image, as the trainer takes per-image prompts."""
    context, extra = batched[0]
    return [[context[i:i + 1], {"pooled_output": extra["pooled_output"][i:i + 1]}] for i in range(len(context))]


def per_image_conditioning(content_ids: Sequence[int]) -> list:
    """The trainer's positive for a batch of images: one conditioning entry per image, naming its content."""
    return per_image(conditioning(list(content_ids)))


def unconditional(batch: int = 1) -> list:
    """The negative / dropped conditioning: zeros of the same shapes."""
    return [[torch.zeros(batch, COND_TOKENS, CONTEXT_DIM), {"pooled_output": torch.zeros(batch, ADM_DIM)}]]


# --------------------------------------------------------------------------------------------------------------
# the base model
# --------------------------------------------------------------------------------------------------------------

def _new_mmdit(r: dict):
    boot()
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    hidden = 64 * r["depth"]
    model = MMDiT(depth=r["depth"], patch_size=2, in_channels=16,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": r["context_dim"], "out_features": hidden}},
                  adm_in_channels=r["adm_dim"], qk_norm="rms", dtype=torch.float32, device="cpu",
                  operations=torch.nn)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and p.ndim == 1:  # RMSNorm scales are allocated with torch.empty
                p.fill_(1.0)
            elif r["adaln_zero"] and ("adaLN_modulation" in name or name.startswith("final_layer.linear")):
                p.zero_()  # adaLN-zero: every block starts as the identity, the output at zero
    return model


def _shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def train_base_model(r: dict | None = None, log=print, threads: int = TRAIN_THREADS, parent: str | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """Train the MMDiT on neutral renders (see the module docstring); returns (EMA state dict, stats).  Gradients
    are on whatever mode the caller is in (ComfyUI runs nodes inside inference mode)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train_base_model(r or recipe(), log, threads, parent)


def _train_base_model(r: dict, log, threads: int, parent: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    old_threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(r["seed"])
        model = _new_mmdit(r)
        if r.get("parent"):
            from safetensors.torch import load_file

            if parent is None:
                raise ValueError("a recipe with a parent needs the parent's file (build_base_model finds it)")
            model.load_state_dict(load_file(parent))
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # the training set: every content at every jitter, neutral palette
        reach = range(-r["jitter"], r["jitter"] + 1)
        shifts = [(dy, dx) for dy in reach for dx in reach]
        palettes = [r["neutral_palette"], *r.get("extra_palettes", [])]
        x0_all, ids_all = [], []
        for palette in palettes:
            bg, fg = (torch.tensor(c, dtype=torch.float64).view(3, 1, 1) for c in palette)
            for content in range(len(r["contents"])):
                for dy, dx in shifts:
                    rgb = bg + (fg - bg) * content_mask(content, dy, dx, r["size"]).double()
                    x0_all.append((rgb_to_latent(rgb) - _SD3_SHIFT) * _SD3_SCALE)  # SD3.process_in
                    ids_all.append(content)
        x0_all, ids_all = torch.stack(x0_all), torch.tensor(ids_all)
        ctx_all = torch.stack([content_embedding(c)[0] for c in range(len(r["contents"]))])
        pooled_all = torch.stack([content_embedding(c)[1] for c in range(len(r["contents"]))])

        g = torch.Generator().manual_seed(r["seed"] + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
        steps, batch = r["steps"], r["batch"]
        sched = warmup_cosine(opt, r["warmup"], steps)
        losses = LossLog(steps, 5, log)
        for step in range(steps):
            pick = torch.randint(0, len(x0_all), (batch,), generator=g)
            x0, ids = x0_all[pick], ids_all[pick]
            t = torch.rand(batch, generator=g)
            sigma = torch.where(torch.rand(batch, generator=g) < r["sigma_uniform"], t, _shifted(t, r["sigma_shift"]))
            noise = torch.randn(x0.shape, generator=g)
            keep = (torch.rand(batch, generator=g) >= r["cfg_dropout"]).float()
            context = ctx_all[ids] * keep.view(-1, 1, 1)
            pooled = pooled_all[ids] * keep.view(-1, 1)
            losses.add(step, flow_step(model, opt, sched, ema, r["ema"], x0, noise, sigma, pooled, context))
        stats = losses.stats()
        return {k: v.contiguous() for k, v in ema.items()}, stats
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(deterministic)


def _save_model(state: dict[str, torch.Tensor], stats: dict, r: dict, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    metadata = {"ortho_hydra_toy_recipe": json.dumps(r, sort_keys=True),
                "ortho_hydra_toy_stats": json.dumps(stats), "torch": torch.__version__}
    save_file(state, str(path), metadata=metadata)


def _train_in_subprocess(r: dict, tmp: str, log, parent: str | None = None) -> dict:
    """Train in a fresh interpreter whose OpenMP threads sleep instead of spinning while they wait.

    ``OMP_WAIT_POLICY`` is read once, when torch's OpenMP runtime starts, so it cannot be set in this process.
    It matters on a shared machine: with other processes busy on both cores, spinning threads made a training
    step 25x slower (7.5 s instead of 0.26 s); on an idle machine it changes nothing.
    """
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "devkit.toy_world", "--train-recipe", json.dumps(r), "--train-to", tmp]
    if parent is not None:
        cmd += ["--train-parent", parent]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, stats = [], None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        if line.startswith(_STATS_PREFIX):
            stats = json.loads(line[len(_STATS_PREFIX):])
        elif line.startswith("  step "):
            log(line)
    if proc.wait() != 0 or stats is None:
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"training the toy-world base model failed (exit {proc.returncode}):\n{tail}")
    return stats


_STATS_PREFIX = "ortho_hydra_toy_stats="


def build_base_model(models_dir: str | os.PathLike | None = None, r: dict | None = None, log=print,
                     force: bool = False, in_process: bool = False) -> Path:
    """The cached base model file for ``r`` (default :func:`recipe`), training it only when it is missing.

    Training runs in a subprocess (see :func:`_train_in_subprocess`) unless ``in_process``; both give the same
    weights.  The file is written to a temp file beside its final name and renamed over it.
    """
    global BUILD_COUNT
    from ortho_hydra.atomic import atomic_path

    r = r or recipe()
    path = model_path(models_dir, r)
    if path.is_file() and not force:
        return path
    parent = str(build_base_model(models_dir, r["parent"], log=log, in_process=in_process)) if r.get("parent") \
        else None
    log(f"training the toy-world base model {path.name} (recipe {recipe_hash(r)})")
    started = time.time()
    with atomic_path(path) as tmp:
        if in_process:
            state, stats = train_base_model(r, log=log, parent=parent)
            _save_model(state, stats, r, tmp)
        else:
            stats = _train_in_subprocess(r, tmp, log, parent)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
    BUILD_COUNT += 1
    log(f"wrote {path} (loss {stats['final_loss']:.4f}, {stats['train_seconds']:.0f} s training, "
        f"{time.time() - started:.0f} s in all)")
    return path


def load_base_model(models_dir: str | os.PathLike | None = None, r: dict | None = None, log=print):
    """A ComfyUI ModelPatcher (detected as SD3) around the cached base model; builds it when missing."""
    boot()
    import comfy.sd
    import comfy.utils

    path = build_base_model(models_dir, r, log=log)
    return comfy.sd.load_diffusion_model_state_dict(comfy.utils.load_torch_file(str(path)))


def sample_base(model, content_ids: Sequence[int], seed: int = 0, steps: int = 8, cfg: float = 2.0,
                sampler: str = "euler", scheduler: str = "simple") -> torch.Tensor:
    """One sample per content id with ComfyUI's own sampler (zero negative); (N, 16, H, W) latents.

    Sample ``i`` uses seed ``seed + i``.  Runs on one CPU thread: the work is tiny, and a second thread only
    waits (spinning) when other processes share the cores.
    """
    from .tiny_dit import sample

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for i, content in enumerate(content_ids):
            latent = torch.zeros(1, 16, SIZE, SIZE)
            out.append(sample(model, latent, conditioning(int(content)), unconditional(1), steps=steps, cfg=cfg,
                              seed=seed + i, sampler=sampler, scheduler=scheduler))
        return torch.cat(out)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------------------------

def fit_probe(seed: int = 0, n_train: int = 8, n_held_out: int = 8, threshold: float = 0.95,
              include_neutral: bool = False):
    """Fit the style probe on renders and validate it on held-out renders (other seeds).

    Training uses ``n_train`` renders per (content, style) clean plus as many degraded ones; held out are
    ``n_held_out`` per pair with other seeds, clean and degraded.  Raises ``ProbeInvalidError`` when the
    clean held-out accuracy is below ``threshold``.  Returns ``(probe, report)``.
    """
    from ortho_hydra.style_probe import StyleProbe, confusion

    styles = list(range(len(STYLES))) + ([NEUTRAL] if include_neutral else [])
    lat, _, labels = dataset(n_train, seed=seed * 2 + 1, styles=styles)
    train = torch.cat([lat, degrade(lat, seed=seed * 2 + 1)])
    train_labels = torch.cat([labels, labels])
    f, b = rgb_factors()
    probe = StyleProbe(f, b).fit(train, train_labels)
    held, _, held_labels = dataset(n_held_out, seed=seed * 2 + 2, styles=styles)
    degraded = degrade(held, seed=seed * 2 + 2)
    blurrier = degrade(held, seed=seed * 2 + 3, blur=1.0, noise=0.25, contrast=0.25)
    report = {
        "classes": [STYLES[s] if s < len(STYLES) else NEUTRAL_NAME for s in styles],
        "train_latents": len(train), "held_out_latents": len(held),
        "held_out_accuracy_degraded": probe.accuracy(degraded, held_labels),
        "held_out_accuracy_strongly_degraded": probe.accuracy(blurrier, held_labels),
        "confusion_clean": confusion(probe.predict(held), held_labels, styles).tolist(),
    }
    report["held_out_accuracy"] = probe.validate(held, held_labels, threshold)
    return probe, report


# --------------------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------------------

def save_grid_png(latents: torch.Tensor, path: str | os.PathLike, row_labels: Sequence[str] | None = None,
                  col_labels: Sequence[str] | None = None, ncols: int | None = None, upscale: int = 8,
                  title: str | None = None) -> Path:
    """Write latents' previews as a grid PNG (row-major), with optional row / column labels and a title."""
    from PIL import Image, ImageDraw, ImageFont

    images = to_rgb(latents)
    n = images.shape[0]
    ncols = ncols or (len(col_labels) if col_labels else n)
    nrows = math.ceil(n / ncols)
    h, w = images.shape[-2] * upscale, images.shape[-1] * upscale
    font = ImageFont.load_default()
    pad = 4
    left = (max(len(s) for s in row_labels) * 7 + 2 * pad) if row_labels else pad
    top = (18 if col_labels else pad) + (18 if title else 0)
    canvas = Image.new("RGB", (left + ncols * (w + pad), top + nrows * (h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 2), title, fill=(0, 0, 0), font=font)
    for i in range(n):
        row, col = divmod(i, ncols)
        pixels = (images[i].permute(1, 2, 0) * 255).round().byte().numpy()
        tile = Image.fromarray(pixels).resize((w, h), Image.NEAREST)
        canvas.paste(tile, (left + col * (w + pad), top + row * (h + pad)))
    if col_labels:
        for col, label in enumerate(col_labels):
            draw.text((left + col * (w + pad) + 2, top - 15), str(label), fill=(0, 0, 0), font=font)
    if row_labels:
        for row, label in enumerate(row_labels):
            draw.text((pad, top + row * (h + pad) + h // 2 - 6), str(label), fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="toy_world_out", help="folder for the PNGs and summary.json")
    parser.add_argument("--models-dir", default=None, help="ComfyUI models folder (default: the host's)")
    parser.add_argument("--train-recipe", default=None, help=argparse.SUPPRESS)  # build_base_model's worker
    parser.add_argument("--train-to", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-parent", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_recipe:
        r = json.loads(args.train_recipe)
        state, stats = train_base_model(r, log=print, parent=args.train_parent)
        _save_model(state, stats, r, args.train_to)
        print(_STATS_PREFIX + json.dumps(stats), flush=True)
        return stats
    out = Path(args.out)
    started = time.time()
    path = build_base_model(args.models_dir)
    build_seconds = time.time() - started
    columns = [NEUTRAL, *range(len(STYLES))]
    lat, _, _ = dataset(1, seed=0, styles=columns)
    col_labels = [NEUTRAL_NAME, *STYLES]
    grid = save_grid_png(lat, out / "toy_world_dataset.png", row_labels=list(CONTENTS), col_labels=col_labels,
                         title="toy world: contents x styles (latent preview)")
    model = load_base_model(args.models_dir)
    ids = [c for c in range(len(CONTENTS)) for _ in range(4)]
    samples = torch.cat([sample_base(model, list(range(len(CONTENTS))), seed=1000 * k) for k in range(4)])
    order = torch.tensor([k * len(CONTENTS) + c for c in range(len(CONTENTS)) for k in range(4)])
    samples = samples[order]
    scores = shape_scores(samples, ids)
    samples_png = save_grid_png(samples, out / "toy_world_base_samples.png", row_labels=list(CONTENTS),
                                col_labels=[f"seed {1000 * k}" for k in range(4)],
                                title="base model samples (euler 8 steps, cfg 2)")
    _, report = fit_probe()
    with_neutral, _ = fit_probe(include_neutral=True)
    called = with_neutral.predict(samples).tolist()
    summary = {"model": str(path), "recipe": recipe(), "recipe_hash": recipe_hash(),
               "build_or_load_seconds": round(build_seconds, 1), "probe": report,
               "base_samples_called_neutral": called.count(NEUTRAL) / len(called),
               "shape_scores": {"mean_iou": scores["mean_iou"], "min_iou": scores["min_iou"],
                                "accuracy": scores["accuracy"], "iou": scores["iou"]},
               "pngs": [str(grid), str(samples_png)]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("recipe", "shape_scores")}))
    print(f"shape scores: mean IoU {scores['mean_iou']:.3f}, min {scores['min_iou']:.3f}, "
          f"content accuracy {scores['accuracy']:.2f}")
    return summary


if __name__ == "__main__":
    main()
