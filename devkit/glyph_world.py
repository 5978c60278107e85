"""A style world where style is form: characters drawn in real typefaces, for style experiments on a real DiT.

**Pictures.**  Every image is a 32 x 32 SD3 latent (16 channels) made from a picture of one character: dark ink
on light paper, the same two colours in every style.  Glyph outlines come from fonts that ship with matplotlib
(``matplotlib.font_manager.FontProperties`` + ``TextPath``), rasterised by matplotlib's Agg renderer at 4 x 4
supersampling and box-averaged, so edges carry coverage (anti-aliasing).  Every face is scaled so that its
capital height (the height of "H") is ``CAP`` = 20 px, the capital band is centred vertically and the glyph's ink
box horizontally: the glyph box is the same in every style.

==============  ================================================================================================
neutral         DejaVu Sans (the base model's pretraining data)
0 serif         DejaVu Serif: the same design family with serifs and stroke contrast
1 typewriter    Computer Modern Typewriter (cmtt10): monospaced, thin monoline strokes, slab serifs
2 oblique       DejaVu Sans Oblique: the neutral face slanted about 11 degrees
3 condensed     DejaVu Sans Bold compressed to 0.58 of its width: a narrow, heavy face (a width change)
==============  ================================================================================================

**Ink mass is matched.**  At the common capital height the mean ink coverage of every style is within 2 % of
the neutral face's (``ink_report``); the condensed face is bold compressed by exactly the factor that brings its
ink to the neutral's (plain bold carries 1.7x the ink, which alone would give it away).  The palette is the
same two colours by construction, so neither palette nor ink amount can tell the styles apart
(``devkit.form_probe.ink_only_check`` measures it).

**Contents** are the 26 capitals and 10 digits, split once (``SPLIT``) into characters adapters train on, a
validation set for choosing learning rates, and held-out characters that no adapter sees in any style.  The base
model is pretrained on every character, in the neutral face only.

**Latents** are made as in ``devkit.toy_world``: the picture P is lifted with the minimum-norm pseudo-inverse of
SD3's ``latent_rgb_factors``, so the latent preview shows exactly P.  :func:`ink` reads the ink coverage back
from any latent (sample or render) through that preview.

**Conditioning** names the content: a fixed pseudo-random context (1, 4, 64) and pooled vector (1, 64) per
character, drawn by ``torch.Generator`` seeded ``COND_SEED + content`` (the draws of the pack's
``OrthoHydraDemoConditioning`` node with that seed and 4 tokens, so a graph can make it).  :func:`conditioning`
with ``style=k`` appends a fifth token, the style's name (``style_token``): the conditioning of a supervised
baseline that is told the style.  The base model never sees a style name; it is pretrained with an extra
"filler word" token on half of its steps (16 fixed random tokens), so a fifth token is nothing new to it.

**The base model** is ComfyUI's own MMDiT (``depth=2``, hidden 128, patch 2: 256 tokens cover the 32 x 32
latent; patch 4 would put 256 latent values per token through a 128-wide embedding, and a model that cannot see
all of its input's noise cannot remove it: such a model stalled at 10x the loss, its samples grainy), 64-wide
context embedder, ``adm_in_channels=64``, ``qk_norm="rms"``, sin-cos positions, adaLN-zero),
detected as SD3 by ``comfy.sd.load_diffusion_model_state_dict``, trained from scratch on the 36 neutral glyphs
with rectified flow as ComfyUI's SD3 sampling expects (the recipe of ``devkit.toy_world``: σ half uniform,
half SD3-shifted; 10 % conditioning dropout; AdamW, warm-up, cosine decay, EMA weights saved).  It is cached as
``models/diffusion_models/ortho_hydra_glyph_<hash>.safetensors`` keyed by a hash of :func:`recipe`, written
atomically, trained in a subprocess (see ``toy_world._train_in_subprocess`` for why).

Run ``python -m devkit.glyph_world --out DIR`` for the pictures (every character in every style, the base
model's samples) and a ``summary.json`` with the build time and the ink report.

Past 350 lines on purpose, like ``toy_world``: what the recipe hash covers (faces, renders, conditioning, the
base model's training) must change together.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import toy_world
from .flow_pretraining import LossLog, flow_step, warmup_cosine
from .host import COMFY_DIR, ROOT, boot

WORLD_VERSION = 1  # part of the recipe: bump it whenever the faces, the layout or the conditioning change
SIZE = 32
PATCH = 2
CAP = 20.0  # capital height in pixels, the same in every face
SUPERSAMPLE = 4
CONTENTS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
STYLES = ("serif", "typewriter", "oblique", "condensed")
NEUTRAL = len(STYLES)
NEUTRAL_NAME = "neutral"
CLASS_NAMES = (*STYLES, NEUTRAL_NAME)
# label -> (font file shipped with matplotlib, horizontal scale)
FACES = {
    NEUTRAL: ("DejaVuSans.ttf", 1.0),
    0: ("DejaVuSerif.ttf", 1.0),
    1: ("cmtt10.ttf", 1.0),
    2: ("DejaVuSans-Oblique.ttf", 1.0),
    3: ("DejaVuSans-Bold.ttf", 0.58),
}
FACE_NAMES = {NEUTRAL: "DejaVu Sans", 0: "DejaVu Serif", 1: "Computer Modern Typewriter (cmtt10)",
              2: "DejaVu Sans Oblique", 3: "DejaVu Sans Bold at 0.58 width"}
PAPER = (0.93, 0.91, 0.86)
INK = (0.10, 0.10, 0.12)

# Fixed by hand before any adapter was trained: train / validation / held out.  Each split holds straight-stroke
# characters (A E F H I K L M N T V W X Y Z 1 4 7) and round ones (B C D G J O P Q R S U 0 2 3 5 6 8 9) in about
# equal numbers, so no split is judged on shapes the others lack; validation and held-out characters are ones
# where every style shows (some digits, 0 1 2 3 5 6 7 8 9, and I are almost the same in the neutral, serif and
# typewriter faces, or in the condensed one: they stay in training).  Held-out characters are never shown to an
# adapter in any style.
SPLIT = {
    "train": tuple("AFHILMTVWYZ17BJORS0235689"),
    "validation": tuple("XEDQ"),
    "held_out": tuple("KN4CGPU"),
}

COND_SEED = 15485863  # content c's conditioning: torch.Generator seeded COND_SEED + c
STYLE_TOKEN_SEED = 32452843
FILLER_SEED = 49979687
FILLERS = 16
COND_TOKENS = 4
CONTEXT_DIM = 64
ADM_DIM = 64

_SD3_SHIFT, _SD3_SCALE = 0.0609, 1.5305  # SD3.process_in, to feed the raw MMDiT during pretraining
TRAIN_THREADS = 2
BUILD_COUNT = 0
_STATS_PREFIX = "ortho_hydra_glyph_stats="


def ids(chars: Sequence[str]) -> list[int]:
    """Content ids of characters."""
    return [CONTENTS.index(c) for c in chars]


def split_ids(part: str) -> list[int]:
    return ids(SPLIT[part])


# --------------------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------------------

def _font(file: str):
    import matplotlib
    from matplotlib.font_manager import FontProperties

    return FontProperties(fname=os.path.join(matplotlib.get_data_path(), "fonts", "ttf", file))


@functools.lru_cache(maxsize=16)
def _cap_height(file: str) -> float:
    from matplotlib.textpath import TextPath

    return TextPath((0, 0), "H", size=1.0, prop=_font(file)).get_extents().y1


def _rasterise(char: str, file: str, x_scale: float, size: int, supersample: int) -> torch.Tensor:
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    n = size * supersample
    cap = CAP * size / SIZE * supersample
    path = TextPath((0, 0), char, size=cap / _cap_height(file), prop=_font(file))
    box = path.get_extents()
    place = Affine2D().translate(-(box.x0 + box.x1) / 2, -cap / 2).scale(x_scale, 1.0).translate(n / 2, n / 2)
    renderer = RendererAgg(n, n, 72)
    gc = renderer.new_gc()
    gc.set_antialiased(True)
    gc.set_linewidth(0)
    renderer.draw_path(gc, path, place, (0.0, 0.0, 0.0))
    import numpy as np

    alpha = np.asarray(renderer.buffer_rgba())[..., 3].astype(np.float64) / 255.0
    return torch.from_numpy(alpha.reshape(size, supersample, size, supersample).mean(axis=(1, 3)).copy())


@functools.lru_cache(maxsize=2048)
def _glyph(char: str, style: int, size: int) -> torch.Tensor:
    file, x_scale = FACES[style]
    return _rasterise(char, file, x_scale, size, SUPERSAMPLE).float()


def glyph_coverage(char: str, style: int | None, size: int = SIZE) -> torch.Tensor:
    """(size, size) ink coverage of any character (also ones that are not contents) in a face."""
    return _glyph(char, NEUTRAL if style is None else int(style), int(size)).clone()


def coverage(content: int, style: int | None, size: int = SIZE) -> torch.Tensor:
    """(size, size) ink coverage in [0, 1] of ``content`` in ``style`` (None: neutral)."""
    return glyph_coverage(CONTENTS[int(content)], style, size)


def paint(cover: torch.Tensor) -> torch.Tensor:
    """(…, H, W) ink coverage -> (…, 3, H, W) picture: paper where there is no ink, ink where it is full."""
    paper = torch.tensor(PAPER).view(3, 1, 1)
    ink_rgb = torch.tensor(INK).view(3, 1, 1)
    return paper + (ink_rgb - paper) * cover.float().unsqueeze(-3)


def render_rgb(content: int, style: int | None) -> torch.Tensor:
    return paint(coverage(content, style))


def render_latent(content: int, style: int | None) -> torch.Tensor:
    """(16, SIZE, SIZE) latent of a character in a style."""
    return toy_world.rgb_to_latent(render_rgb(content, style))


def from_coverage(cover: torch.Tensor) -> torch.Tensor:
    """(B, H, W) coverage maps -> (B, 16, H, W) latents (for impostors and augmented renders)."""
    return toy_world.rgb_to_latent(paint(cover))


def latent_format():
    """ComfyUI's SD3 latent format (``process_in`` is what the model sees)."""
    return toy_world.latent_format()


def ink(latents: torch.Tensor) -> torch.Tensor:
    """(B, 16, H, W) latents -> (B, H, W) ink coverage read from the latent preview (clamped to [0, 1])."""
    lum = toy_world.to_rgb(latents).mean(1)
    paper, ink_lum = sum(PAPER) / 3, sum(INK) / 3
    return ((paper - lum) / (paper - ink_lum)).clamp(0.0, 1.0)


def dataset(contents: Sequence[int], styles: Sequence[int | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (content, style) pair once: (latents (N, 16, H, W), content ids, style labels), content-major."""
    pairs = [(int(c), NEUTRAL if s is None else int(s)) for c in contents for s in styles]
    latents = torch.stack([render_latent(c, s) for c, s in pairs])
    return latents, torch.tensor([c for c, _ in pairs]), torch.tensor([s for _, s in pairs])


def ink_report(contents: Sequence[int] | None = None) -> dict:
    """Mean ink coverage (pixels of full ink) per class over ``contents`` (default: all), and its ratio to neutral."""
    contents = list(range(len(CONTENTS))) if contents is None else list(contents)
    masses = {name: [float(coverage(c, label).sum()) for c in contents]
              for label, name in zip((*range(len(STYLES)), NEUTRAL), CLASS_NAMES, strict=True)}
    neutral = sum(masses[NEUTRAL_NAME]) / len(contents)
    return {name: {"mean": sum(v) / len(v), "sd": float(torch.tensor(v).std()), "ratio": sum(v) / len(v) / neutral}
            for name, v in masses.items()}


# --------------------------------------------------------------------------------------------------------------
# conditioning
# --------------------------------------------------------------------------------------------------------------

def content_embedding(content: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (4, 64) context and (64,) pooled vector that name ``content``."""
    g = torch.Generator().manual_seed(COND_SEED + int(content))
    return torch.randn(COND_TOKENS, CONTEXT_DIM, generator=g), torch.randn(ADM_DIM, generator=g)


def style_token(style: int) -> torch.Tensor:
    """(64,) the token of a style's name (never seen by the base model)."""
    return torch.randn(CONTEXT_DIM, generator=torch.Generator().manual_seed(STYLE_TOKEN_SEED + int(style)))


def filler_tokens() -> torch.Tensor:
    """(FILLERS, 64) the "other words" the base model is pretrained with, so a fifth token is not new to it."""
    return torch.randn(FILLERS, CONTEXT_DIM, generator=torch.Generator().manual_seed(FILLER_SEED))


def conditioning(content_ids: int | Sequence[int], style: int | Sequence[int] | None = None) -> list:
    """ComfyUI conditioning ``[[context (N, T, 64), {"pooled_output": (N, 64)}]]``; with ``style`` (one label or
    one per content) a fifth token names the style."""
    content_ids = [int(content_ids)] if isinstance(content_ids, int) else [int(c) for c in content_ids]
    pairs = [content_embedding(c) for c in content_ids]
    context = torch.stack([p[0] for p in pairs])
    if style is not None:
        styles = [int(style)] * len(content_ids) if isinstance(style, int) else [int(s) for s in style]
        context = torch.cat([context, torch.stack([style_token(s) for s in styles]).unsqueeze(1)], 1)
    return [[context, {"pooled_output": torch.stack([p[1] for p in pairs])}]]


def per_image_conditioning(content_ids: Sequence[int], style: Sequence[int] | None = None) -> list:
    """One conditioning entry per image (what the pack's trainer takes for a batch of different contents)."""
    c = conditioning(list(content_ids), style)
    return [[c[0][0][i:i + 1], {"pooled_output": c[0][1]["pooled_output"][i:i + 1]}] for i in range(len(content_ids))]


def unconditional(batch: int = 1, tokens: int = COND_TOKENS) -> list:
    return [[torch.zeros(batch, tokens, CONTEXT_DIM), {"pooled_output": torch.zeros(batch, ADM_DIM)}]]


# --------------------------------------------------------------------------------------------------------------
# the base model: recipe, cache, training
# --------------------------------------------------------------------------------------------------------------

def recipe(**overrides) -> dict:
    """Everything that determines the base model; its hash names the cached file."""
    r = {
        "world_version": WORLD_VERSION, "size": SIZE, "patch": PATCH, "cap": CAP, "contents": "".join(CONTENTS),
        "neutral_face": FACES[NEUTRAL][0], "paper": list(PAPER), "ink": list(INK), "cond_seed": COND_SEED,
        "cond_tokens": COND_TOKENS, "context_dim": CONTEXT_DIM, "adm_dim": ADM_DIM, "filler_seed": FILLER_SEED,
        "filler_share": 0.5, "depth": 2, "steps": 2500, "batch": 32, "lr": 2e-3, "warmup": 100, "ema": 0.995,
        "cfg_dropout": 0.1, "sigma_shift": 3.0, "sigma_uniform": 0.5, "seed": 0,
    }
    unknown = set(overrides) - set(r)
    if unknown:
        raise KeyError(f"unknown recipe keys {sorted(unknown)}")
    r.update(overrides)
    return r


def recipe_hash(r: dict | None = None) -> str:
    text = json.dumps(r if r is not None else recipe(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def model_path(models_dir: str | os.PathLike | None = None, r: dict | None = None) -> Path:
    models_dir = Path(models_dir) if models_dir is not None else COMFY_DIR / "models"
    return models_dir / "diffusion_models" / f"ortho_hydra_glyph_{recipe_hash(r)}.safetensors"


def new_mmdit(r: dict):
    """ComfyUI's MMDiT at the recipe's depth with patch ``r["patch"]``, adaLN-zero, RMSNorm scales at one."""
    boot()
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    hidden = 64 * r["depth"]
    model = MMDiT(depth=r["depth"], patch_size=r["patch"], in_channels=16,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": r["context_dim"], "out_features": hidden}},
                  adm_in_channels=r["adm_dim"], qk_norm="rms", dtype=torch.float32, device="cpu",
                  operations=torch.nn)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and p.ndim == 1:  # RMSNorm scales are allocated with torch.empty
                p.fill_(1.0)
            elif "adaLN_modulation" in name or name.startswith("final_layer.linear"):
                p.zero_()
    return model


def _shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * t / (1 + (shift - 1) * t)


def train_base_model(r: dict | None = None, log=print, threads: int = TRAIN_THREADS) -> tuple[dict, dict]:
    """Pretrain the MMDiT on every character in the neutral face; returns (EMA state dict, stats)."""
    r = r or recipe()
    if r["contents"] != "".join(CONTENTS) or r["size"] != SIZE or r["neutral_face"] != FACES[NEUTRAL][0]:
        raise ValueError("this module renders one world; a recipe for another world needs its own module version")
    old_threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(r["seed"])
        model = new_mmdit(r)
        ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
        count = len(CONTENTS)
        x0_all = (dataset(range(count), [NEUTRAL])[0] - _SD3_SHIFT) * _SD3_SCALE  # SD3.process_in
        ctx_all = torch.stack([content_embedding(c)[0] for c in range(count)])
        pooled_all = torch.stack([content_embedding(c)[1] for c in range(count)])
        fillers = filler_tokens()
        g = torch.Generator().manual_seed(r["seed"] + 1)
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.0)
        steps, batch = r["steps"], r["batch"]
        sched = warmup_cosine(opt, r["warmup"], steps)
        losses = LossLog(steps, 10, log)
        for step in range(steps):
            pick = torch.randint(0, count, (batch,), generator=g)
            x0 = x0_all[pick]
            t = torch.rand(batch, generator=g)
            sigma = torch.where(torch.rand(batch, generator=g) < r["sigma_uniform"], t, _shifted(t, r["sigma_shift"]))
            noise = torch.randn(x0.shape, generator=g)
            keep = (torch.rand(batch, generator=g) >= r["cfg_dropout"]).float()
            context = ctx_all[pick]
            if torch.rand((), generator=g) < r["filler_share"]:  # a fifth "word" that changes nothing
                extra = fillers[torch.randint(0, len(fillers), (batch,), generator=g)]
                context = torch.cat([context, extra.unsqueeze(1)], 1)
            context = context * keep.view(-1, 1, 1)
            pooled = pooled_all[pick] * keep.view(-1, 1)
            losses.add(step, flow_step(model, opt, sched, ema, r["ema"], x0, noise, sigma, pooled, context))
        stats = losses.stats()
        return {k: v.contiguous() for k, v in ema.items()}, stats
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(deterministic)


def _save_model(state: dict, stats: dict, r: dict, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"ortho_hydra_glyph_recipe": json.dumps(r, sort_keys=True),
                                          "ortho_hydra_glyph_stats": json.dumps(stats), "torch": torch.__version__})


def _train_in_subprocess(r: dict, tmp: str, log, threads: int = TRAIN_THREADS) -> dict:
    """Train in a fresh interpreter with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning while
    they wait: on shared cores, spinning made toy-world steps 25x slower)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "-m", "devkit.glyph_world", "--train-recipe", json.dumps(r), "--train-to", tmp,
           "--threads", str(threads)]
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
        raise RuntimeError(f"training the glyph-world base model failed (exit {proc.returncode}):\n"
                           + "\n".join(lines[-20:]))
    return stats


def build_base_model(models_dir: str | os.PathLike | None = None, r: dict | None = None, log=print,
                     force: bool = False, in_process: bool = False, threads: int = TRAIN_THREADS) -> Path:
    """The cached base model file for ``r`` (default :func:`recipe`), trained only when it is missing."""
    global BUILD_COUNT
    from ortho_hydra.atomic import atomic_path

    r = r or recipe()
    path = model_path(models_dir, r)
    if path.is_file() and not force:
        return path
    log(f"training the glyph-world base model {path.name} (recipe {recipe_hash(r)}; ~{r['steps']} steps)")
    started = time.time()
    with atomic_path(path) as tmp:
        if in_process:
            state, stats = train_base_model(r, log=log, threads=threads)
            _save_model(state, stats, r, tmp)
        else:
            stats = _train_in_subprocess(r, tmp, log, threads)
        os.chmod(tmp, 0o644)
    BUILD_COUNT += 1
    log(f"wrote {path} (loss {stats['final_loss']:.4f}, {stats['train_seconds']:.0f} s training, "
        f"{time.time() - started:.0f} s in all)")
    return path


def build_seconds(path: str | os.PathLike) -> float:
    """The training time stamped in a cached base model's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return float(json.loads(f.metadata()["ortho_hydra_glyph_stats"])["train_seconds"])


def load_base_model(models_dir: str | os.PathLike | None = None, r: dict | None = None, log=print):
    """A ComfyUI ModelPatcher (detected as SD3) around the cached base model; builds it when missing."""
    boot()
    import comfy.sd
    import comfy.utils

    path = build_base_model(models_dir, r, log=log)
    return comfy.sd.load_diffusion_model_state_dict(comfy.utils.load_torch_file(str(path)))


def sample(model, content_ids: Sequence[int], seed: int = 0, style: int | None = None, steps: int = 8,
           cfg: float = 2.0, denoise_from: torch.Tensor | None = None, denoise: float = 1.0) -> torch.Tensor:
    """One batched ComfyUI sampler call (euler, simple, zero negative): one sample per content id.

    ``style`` adds the style-name token (the conditioned baseline); ``denoise_from`` / ``denoise`` run img2img.
    """
    from .tiny_dit import sample as comfy_sample

    positive = conditioning(list(content_ids), style)
    negative = unconditional(len(content_ids), positive[0][0].shape[1])
    latent = denoise_from if denoise_from is not None else torch.zeros(len(content_ids), 16, SIZE, SIZE)
    if denoise >= 1.0:
        return comfy_sample(model, latent, positive, negative, steps=steps, cfg=cfg, seed=seed)
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               denoise=denoise, disable_pbar=True, seed=seed)


def save_grid_png(latents: torch.Tensor, path: str | os.PathLike, row_labels=None, col_labels=None,
                  ncols: int | None = None, title: str | None = None, upscale: int = 3) -> Path:
    return toy_world.save_grid_png(latents, path, row_labels=row_labels, col_labels=col_labels, ncols=ncols,
                                   upscale=upscale, title=title)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="glyph_world_out", help="folder for the PNGs and summary.json")
    parser.add_argument("--models-dir", default=None, help="ComfyUI models folder (default: the host's)")
    parser.add_argument("--threads", type=int, default=TRAIN_THREADS,
                        help="torch threads for training the base model (1 when the other core is busy)")
    parser.add_argument("--train-recipe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_recipe:
        r = json.loads(args.train_recipe)
        state, stats = train_base_model(r, log=print, threads=args.threads)
        _save_model(state, stats, r, args.train_to)
        print(_STATS_PREFIX + json.dumps(stats), flush=True)
        return stats
    out = Path(args.out)
    path = build_base_model(args.models_dir, threads=args.threads)
    classes = [NEUTRAL, *range(len(STYLES))]
    lat, _, _ = dataset(range(len(CONTENTS)), classes)
    grid = save_grid_png(lat, out / "glyph_world_dataset.png", ncols=len(classes) * 6,
                         col_labels=[n[:6] for n in [NEUTRAL_NAME, *STYLES]] * 6,
                         title="glyph world: every character (6 per row) in neutral, then the 4 styles")
    model = load_base_model(args.models_dir)
    contents = list(range(len(CONTENTS)))
    samples = sample(model, contents, seed=1)
    samples_png = save_grid_png(samples, out / "glyph_world_base_samples.png", ncols=12,
                                title="base model samples (euler 8 steps, cfg 2), every character")
    summary = {"model": str(path), "recipe_hash": recipe_hash(), "build_seconds": build_seconds(path),
               "ink": ink_report(), "split": {k: "".join(v) for k, v in SPLIT.items()},
               "pngs": [str(grid), str(samples_png)]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
