"""The style-folders loader: ``input/<dataset>/<style>/*.png`` -> one IMAGE batch plus per-image style labels.

Label i is the i-th style folder in sorted order; the names are the folder names.  Pixels only: encoding
stays ComfyUI's own VAE node.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.v0_0_2 import io
from PIL import Image, ImageOps

from ortho_hydra import OrthoHydraError

from .types import StyleSet, StyleSetType

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
RESIZE_MODES = ("crop", "stretch", "pad")
MAX_SIDE = 8192

try:  # ComfyUI's helper that retries truncated files the way LoadImage does
    from node_helpers import pillow as _pillow
except ImportError:  # pragma: no cover - older hosts
    def _pillow(fn, arg):
        return fn(arg)


def _visible_subdirs(path: str) -> list[str]:
    try:
        entries = os.listdir(path)
    except OSError:
        return []
    return sorted(e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(path, e)))


def dataset_choices() -> list[str]:
    """Sub-folders of ComfyUI's input directory that hold at least one sub-folder (a style)."""
    root = folder_paths.get_input_directory()
    return [name for name in _visible_subdirs(root) if _visible_subdirs(os.path.join(root, name))]


def dataset_dir(dataset: str) -> str:
    """The dataset folder inside input/, or an error for a name that is missing or would leave input/."""
    root = os.path.realpath(folder_paths.get_input_directory())
    fix_name = "pick a folder name from the list: a direct sub-folder of ComfyUI/input"
    if (not dataset or dataset in (".", "..") or "/" in dataset or "\\" in dataset or os.path.isabs(dataset)
            or os.path.splitdrive(dataset)[0]):
        raise OrthoHydraError(f"'{dataset}' is not a folder name inside the input directory.", key="dataset",
                              fix=fix_name)
    path = os.path.realpath(os.path.join(root, dataset))
    if path == root or os.path.commonpath([root, path]) != root:
        raise OrthoHydraError(f"'{dataset}' resolves outside the input directory ({root}).", path=path,
                              key="dataset", fix=fix_name)
    if not os.path.isdir(path):
        raise OrthoHydraError(f"dataset folder '{dataset}' does not exist.", path=path, key="dataset",
                              fix="create ComfyUI/input/<dataset>/<style>/ folders of images, then refresh (press R)")
    return path


def _images_in(folder: str) -> list[str]:
    names = [n for n in os.listdir(folder) if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
             and os.path.isfile(os.path.join(folder, n))]
    return [os.path.join(folder, n) for n in sorted(names)]


def scan_dataset(dataset: str, max_per_style: int = 0) -> tuple[list[str], list[list[str]]]:
    """(style names, image paths per style), checked: two or more styles, none empty."""
    path = dataset_dir(dataset)
    styles = _visible_subdirs(path)
    layout_fix = "lay the images out as input/<dataset>/<style>/*.png, one sub-folder per style"
    if not styles:
        raise OrthoHydraError("the dataset has no style sub-folders.", path=path, key="dataset", fix=layout_fix)
    if len(styles) == 1:
        raise OrthoHydraError(f"the dataset holds a single style ('{styles[0]}'); routing needs at least two.",
                              path=path, key="dataset",
                              fix="add a second style folder next to it, e.g. "
                                  f"{os.path.join(path, 'other_style')}")
    for style in styles:
        if "," in style or ";" in style:
            raise OrthoHydraError(f"style folder '{style}' has a ',' or ';' in its name; the style_names output "
                                  "is a comma-separated list.", path=os.path.join(path, style), key="dataset",
                                  fix="rename the folder without commas or semicolons")
    files = [_images_in(os.path.join(path, style)) for style in styles]
    if not any(files):
        raise OrthoHydraError(f"no images at all in the {len(styles)} style folders.", path=path, key="dataset",
                              fix=f"put {', '.join(IMAGE_EXTENSIONS)} files into each style folder")
    for style, found in zip(styles, files, strict=True):
        if not found:
            raise OrthoHydraError(f"style folder '{style}' has no images.", path=os.path.join(path, style),
                                  key="dataset", fix=f"add {', '.join(IMAGE_EXTENSIONS)} files to it, or remove "
                                                     "the folder")
    if max_per_style > 0:
        files = [found[:max_per_style] for found in files]
    return styles, files


def _read_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode == "I":  # 16/32-bit greyscale, scaled the way LoadImage does
            img = img.point(lambda v: v * (1 / 255))
        return img.convert("RGB")


def read_image(path: str) -> Image.Image:
    """The file as an upright RGB image, or an error naming the file."""
    try:
        return _pillow(_read_rgb, path)
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, struct.error... for bad files
        raise OrthoHydraError(f"cannot read this image ({type(exc).__name__}: {exc}).", path=path, key="dataset",
                              fix="remove this file or re-export it as PNG/JPEG/WebP") from exc


def fit(img: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Resize to exactly width x height: crop (cover, centre crop), stretch, or pad (letterbox on black)."""
    w, h = img.size
    resample = Image.Resampling.LANCZOS
    if mode == "stretch":
        return img.resize((width, height), resample)
    if mode == "crop":
        scale = max(width / w, height / h)
        sw, sh = max(width, round(w * scale)), max(height, round(h * scale))
        left, top = (sw - width) // 2, (sh - height) // 2
        return img.resize((sw, sh), resample).crop((left, top, left + width, top + height))
    if mode == "pad":
        scale = min(width / w, height / h)
        sw, sh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
        canvas = Image.new("RGB", (width, height), (0, 0, 0))
        canvas.paste(img.resize((sw, sh), resample), ((width - sw) // 2, (height - sh) // 2))
        return canvas
    raise OrthoHydraError(f"unknown resize mode '{mode}'.", key="resize", fix=f"use one of {', '.join(RESIZE_MODES)}")


def load_style_folders(dataset: str, width: int, height: int, resize: str = "crop",
                       max_per_style: int = 0) -> tuple[torch.Tensor, StyleSet]:
    """(B, H, W, 3) float images in [0, 1] and their StyleSet, styles in sorted folder order."""
    for key, value in (("width", width), ("height", height)):
        if value % 8 or not 8 <= value <= MAX_SIDE:
            raise OrthoHydraError(f"{key} is {value}; it must be a multiple of 8 from 8 to {MAX_SIDE}.", key=key,
                                  fix=f"use e.g. {max(8, min(MAX_SIDE, round(value / 8) * 8))}")
    if resize not in RESIZE_MODES:
        raise OrthoHydraError(f"unknown resize mode '{resize}'.", key="resize",
                              fix=f"use one of {', '.join(RESIZE_MODES)}")
    styles, files = scan_dataset(dataset, max_per_style)
    jobs = [(label, path) for label, found in enumerate(files) for path in found]
    pbar = comfy.utils.ProgressBar(len(jobs))
    images = torch.empty((len(jobs), height, width, 3), dtype=torch.float32)
    for i, (_, path) in enumerate(jobs):
        comfy.model_management.throw_exception_if_processing_interrupted()
        pixels = np.asarray(fit(read_image(path), width, height, resize), dtype=np.float32) / 255.0
        images[i] = torch.from_numpy(pixels)
        pbar.update_absolute(i + 1)
    return images, StyleSet(labels=tuple(label for label, _ in jobs), names=tuple(styles))


class OrthoHydraLoadStyleFolders(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraLoadStyleFolders",
            display_name="Load Style Folders (Ortho-Hydra)",
            category="training/ortho_hydra",
            description="Loads input/<dataset>/<style>/*.png|jpg|webp as one image batch with one style label per "
                        "image (label i = the i-th style folder, sorted). Encode it with a VAE Encode node.",
            inputs=[
                io.Combo.Input("dataset", options=dataset_choices(),
                               tooltip="A folder in ComfyUI/input holding one sub-folder of images per style. "
                                       "Refresh (press R) after adding one."),
                io.Int.Input("width", default=512, min=8, max=MAX_SIDE, step=8,
                             tooltip="Width every image is resized to (a multiple of 8)."),
                io.Int.Input("height", default=512, min=8, max=MAX_SIDE, step=8,
                             tooltip="Height every image is resized to (a multiple of 8)."),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default="crop",
                               tooltip="crop: scale the short side to fit, then centre-crop. stretch: ignore the "
                                       "aspect ratio. pad: fit inside and letterbox with black."),
                io.Int.Input("max_per_style", default=0, min=0, max=1_000_000,
                             tooltip="Take at most this many images per style, the first in file-name order "
                                     "(0 = all)."),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                StyleSetType.Output(display_name="styles"),
                io.String.Output(display_name="labels"),
                io.String.Output(display_name="style_names"),
                io.Int.Output(display_name="count"),
            ],
        )

    @classmethod
    def validate_inputs(cls, dataset: str) -> bool | str:
        """The folder layout is checked at queue time; the images themselves are decoded when the node runs."""
        if dataset is None:  # driven by a link: checked when the node runs
            return True
        try:
            scan_dataset(dataset)
        except OrthoHydraError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, dataset: str, **_settings) -> tuple | float:
        """Re-run when any image is added, removed or rewritten."""
        try:
            _, files = scan_dataset(dataset)
        except (OrthoHydraError, OSError):
            return float("nan")
        return tuple((p, st.st_size, st.st_mtime_ns) for found in files for p in found for st in [os.stat(p)])

    @classmethod
    def execute(cls, dataset: str, width: int, height: int, resize: str, max_per_style: int) -> io.NodeOutput:
        images, styles = load_style_folders(dataset, width, height, resize, max_per_style)
        return io.NodeOutput(images, styles, ",".join(str(label) for label in styles.labels),
                             ",".join(styles.names), len(styles.labels))
