"""The style-folders loader node: ``input/<dataset>/<style>/*.png`` -> IMAGE batch and style labels
(:mod:`comfy_glue.style_folders`)."""

from __future__ import annotations

import os

from comfy_api.v0_0_2 import io

from ortho_hydra import OrthoHydraError

from ..comfy_glue import menus
from ..comfy_glue.style_folders import MAX_SIDE, RESIZE_MODES, dataset_choices, load_style_folders, scan_dataset
from ..comfy_glue.types import StyleSetType, reported


class OrthoHydraLoadStyleFolders(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OrthoHydraLoadStyleFolders",
            display_name="Ortho-Hydra Load Style Folders",
            category=menus.STYLE,
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
        counts = ", ".join(f"{name} {styles.labels.count(i)}" for i, name in enumerate(styles.names))
        return reported(images, styles, ",".join(str(label) for label in styles.labels), ",".join(styles.names),
                        len(styles.labels), text=f"{len(styles.labels)} images in {len(styles.names)} styles: {counts}")
