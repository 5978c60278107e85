"""The images nodes show (ComfyUI IMAGEs, (1, H, W, 3) in [0, 1]): matplotlib figures, the latent preview, labelled
tile rows, the router trace's heatmap and usage bars, and the training plot."""

from __future__ import annotations

import colorsys
import io as _io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ortho_hydra.training import RouterTrace


def figure_to_image(fig) -> torch.Tensor:
    """A matplotlib figure as a ComfyUI IMAGE (1, H, W, 3) in [0, 1]; the figure is closed."""
    import matplotlib.pyplot as plt

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


def latent_to_rgb(samples: torch.Tensor, factors, bias=None, upscale: int = 8) -> torch.Tensor:
    """(B, C, H, W) or (B, C, T, H, W) latent -> (B, H·upscale, W·upscale, 3) image in [0, 1]."""
    if samples.ndim == 5:
        samples = samples[:, :, 0]
    weight = torch.tensor(factors, dtype=torch.float32)  # (C, 3)
    rgb = samples.float().movedim(1, -1) @ weight
    if bias is not None:
        rgb = rgb + torch.tensor(bias, dtype=torch.float32)
    image = ((rgb + 1.0) / 2.0).clamp(0, 1)
    if upscale > 1:
        image = F.interpolate(image.movedim(-1, 1), scale_factor=upscale, mode="nearest").movedim(1, -1)
    return image


def labelled_row(images: list[torch.Tensor], labels: list[str], strip: int = 18) -> torch.Tensor:
    """(H, W, 3) tiles side by side, each with its label drawn on a strip above it."""
    tiles = []
    for image, label in zip(images, labels, strict=True):
        array = (image.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        canvas = Image.new("RGB", (array.shape[1], array.shape[0] + strip), (24, 24, 24))
        canvas.paste(Image.fromarray(array), (0, strip))
        ImageDraw.Draw(canvas).text((3, 3), label[: max(4, array.shape[1] // 7)], fill=(235, 235, 235))
        tiles.append(np.asarray(canvas))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    return torch.from_numpy(row.astype(np.float32) / 255.0).unsqueeze(0)


def heatmap(side: dict[str, list], num_experts: int, cell: int = 12) -> torch.Tensor:
    """Steps x layers; hue = dominant expert, saturation = 1 - normalised entropy."""
    layers = sorted(side)
    steps = max((len(v) for v in side.values()), default=0)
    image = np.ones((max(steps, 1) * cell, max(len(layers), 1) * cell, 3), dtype=np.float32)
    for j, layer in enumerate(layers):
        for i, entry in enumerate(side[layer]):
            expert = int(np.argmax(entry["gate"]))
            rgb = colorsys.hsv_to_rgb(expert / max(num_experts, 1), max(0.0, 1.0 - entry["entropy"]), 0.95)
            image[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = rgb
    return torch.from_numpy(image).unsqueeze(0)


def usage_bars(side: dict[str, list], num_experts: int, names: list[str]) -> torch.Tensor:
    totals = np.zeros(num_experts)
    for entries in side.values():
        for entry in entries:
            totals[int(np.argmax(entry["gate"]))] += 1
    share = totals / max(totals.sum(), 1)
    fig, ax = pyplot().subplots(figsize=(max(3, num_experts * 0.8), 2.6), dpi=100)
    colors = [colorsys.hsv_to_rgb(e / num_experts, 0.85, 0.9) for e in range(num_experts)]
    ax.bar(range(num_experts), share, color=colors)
    ax.set_xticks(range(num_experts), names, fontsize=7, rotation=20)
    ax.set(ylim=(0, 1), ylabel="dominant share", title="expert usage (layers x steps)")
    fig.tight_layout()
    return figure_to_image(fig)


def plot_training(loss: list[float], traces: list[RouterTrace]) -> torch.Tensor:
    """Loss curve, mean normalised gate entropy per run, and a layers x experts usage heatmap, as an IMAGE."""
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 4.2), dpi=100)
    ax = axes[0]
    if loss:
        ax.plot(range(1, len(loss) + 1), loss, lw=0.6, alpha=0.4, label="step loss")
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(range(window, len(loss) + 1), smooth, lw=1.8, label=f"{window}-step mean")
        ax.legend()
    ax.set(title="training loss (x0 space)", xlabel="step", ylabel="MSE")
    ax = axes[1]
    for trace in traces:
        ax.plot(trace.steps, trace.mean_entropy, marker=".", label=trace.init or "run")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(title="mean normalised gate entropy H/ln E", xlabel="step", ylim=(0, 1.05))
    if traces:
        ax.legend()
    ax = axes[2]
    names, usage = traces[-1].usage_matrix() if traces else ([], torch.zeros(0, 1))
    if len(names):
        im = ax.imshow(usage.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_yticks(range(len(names)), [n.replace("lora_unet_", "")[-28:] for n in names], fontsize=6)
        ax.set_xticks(range(usage.shape[1]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(title="expert usage (argmax share), last run", xlabel="expert")
    fig.tight_layout()
    return figure_to_image(fig)
