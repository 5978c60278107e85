"""The expert gallery: one seed sampled with each expert pinned, and with live routing, as a labelled grid."""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.utils
import torch

from ortho_hydra import Adapter
from ortho_hydra.overrides import GateRule, Keyframe, Override

from .images import labelled_row, latent_to_rgb
from .patcher import apply_adapter


def pinned(adapter: Adapter, expert: int) -> Adapter:
    return adapter.with_override(Override((Keyframe(0.0, GateRule("pin", expert)),)))


def expert_gallery(model, adapter: Adapter, positive: list, negative: list, latent: dict, seed: int, steps: int,
                   cfg: float, sampler_name: str, scheduler: str, strength: float, names: list[str],
                   vae=None) -> tuple[torch.Tensor, dict]:
    """(grid IMAGE, LATENT of every tile): a row per conditioning entry, a column per pinned expert plus live; each
    row from its own latent and seed + row.  ``names`` label the experts (the adapter's own when they do not fit)."""
    if len(names) != adapter.num_experts:
        names = adapter.display_expert_names()
    # one row per conditioning entry (e.g. one per content), each from its own latent and seed
    rows = [[entry] for entry in positive] if len(positive) > 1 else [positive]
    batch = latent["samples"]
    variants = [(pinned(adapter, e), f"{e}: {names[e]}") for e in range(adapter.num_experts)]
    variants.append((adapter, "live"))
    pbar = comfy.utils.ProgressBar(len(variants) * len(rows))
    fmt = model.model.latent_format
    tiles: dict[tuple[int, int], torch.Tensor] = {}
    for column, (variant, _) in enumerate(variants):
        patched, _ = apply_adapter(model, variant, strength)
        for row, row_positive in enumerate(rows):
            comfy.model_management.throw_exception_if_processing_interrupted()
            start = batch[min(row, batch.shape[0] - 1)][None]
            noise = comfy.sample.prepare_noise(start, seed + row)
            tiles[row, column] = comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler,
                                                     row_positive, negative, start, disable_pbar=True,
                                                     seed=seed + row)
            pbar.update(1)
    labels = [label for _, label in variants]
    grid_rows = []
    for row in range(len(rows)):
        outs = [tiles[row, column] for column in range(len(variants))]
        images = [vae.decode(out)[0] if vae is not None else
                  latent_to_rgb(out, fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)[0] for out in outs]
        grid_rows.append(labelled_row(images, labels))
    gap = torch.ones(1, 4, grid_rows[0].shape[2], 3)
    grid = torch.cat([t for r in grid_rows for t in (r, gap)][:-1], dim=1)
    samples = torch.cat([tiles[row, column] for row in range(len(rows)) for column in range(len(variants))])
    return grid, {"samples": samples}
