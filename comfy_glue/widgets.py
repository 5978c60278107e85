"""Parsing of the free-text widgets users type lists into, and matplotlib figures as ComfyUI IMAGEs."""

from __future__ import annotations

import io as _io
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from ortho_hydra import OrthoHydraError

T = TypeVar("T")


def split_list(text: str) -> list[str]:
    """``"a, b; c"`` -> ``["a", "b", "c"]``: commas or semicolons, blanks dropped."""
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def parse_list(text: str, convert: Callable[[str], T], *, key: str, example: str) -> list[T]:
    """Each item of :func:`split_list` converted, or an error naming the widget and an example."""
    try:
        return [convert(part) for part in split_list(text)]
    except ValueError as exc:
        kind = {int: "integers", float: "numbers"}.get(convert, "values")
        raise OrthoHydraError(f"{key} must be comma-separated {kind}, got {text!r}.", key=key,
                              fix=f"e.g. {example}") from exc


def figure_to_image(fig) -> torch.Tensor:
    """A matplotlib figure as a ComfyUI IMAGE (1, H, W, 3) in [0, 1]; the figure is closed."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    image = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(image).unsqueeze(0)


def pyplot():
    """matplotlib's pyplot on the non-interactive backend (nodes run in a server thread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
