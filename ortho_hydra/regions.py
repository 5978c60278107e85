"""Regional experts: a mask turns one gate per sample into a gate per image token.

A routed Linear's Δy is linear in its mixing weights, so a per-token gate ``g_l = m_l g_in + (1 − m_l) g_out``
(``m`` the mask's coverage of token l) gives exactly ``Δy_l = m_l Δy_in,l + (1 − m_l) Δy_out,l``: two routed deltas
of the same projection, blended per token.  A centered gate's ``g − 1/E`` is affine, so the same identity holds.

Where the mask lands is the image-token grid of the Linear's input: ``frames × height × width`` image tokens in
raster order (frame, row, column), after any text rows a joint sequence puts first (Flux's single-stream blocks)
or last.  Text rows get coverage 0: they keep the gate that applies outside every region.  The grid of each model
family comes from the host's patchify code; this module only maps a pixel mask onto a given grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import OrthoHydraError


@dataclass(frozen=True)
class TokenGrid:
    """The rows of one Linear input: ``text_before`` rows, then the image tokens, then ``text_after`` rows; or the
    image tokens alone as separate axes (``(B, T, H, W, D)``: Cosmos' MLPs)."""

    frames: int
    height: int
    width: int
    text_before: int = 0
    text_after: int = 0

    @property
    def image_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def length(self) -> int:
        return self.text_before + self.image_tokens + self.text_after


def feather(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """``mask`` (…, H, W) softened by a Gaussian of σ = ``radius`` / 2 pixels (edges replicated), kept in [0, 1]."""
    if radius <= 0:
        return mask
    sigma = radius / 2
    half = max(math.ceil(3 * sigma), 1)
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(mask.dtype)
    shape = mask.shape
    flat = mask.reshape(-1, 1, *shape[-2:])
    flat = F.conv2d(F.pad(flat, (half, half, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, half, half), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(shape).clamp(0, 1)


def mask_on_grid(mask: torch.Tensor, grid: TokenGrid) -> torch.Tensor:
    """The share of each image token's area the mask covers, (frames, height, width) fp32.

    ``mask``: (H, W) for every frame, or (F, H, W) with F = 1 or the grid's frames (a video mask per latent frame).
    Area averaging: a token's coverage is the mean of the mask over the pixels it spans (a soft mask's mean), so a
    mask that is 1 (0) everywhere gives exactly 1 (0) everywhere."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise OrthoHydraError(f"a region mask is (height, width) or (frames, height, width); got {tuple(mask.shape)}",
                              key="mask", fix="connect a MASK (one picture, or one per frame)")
    if mask.shape[0] not in (1, grid.frames):
        raise OrthoHydraError(f"the region mask has {mask.shape[0]} frames; this model's latent has {grid.frames}",
                              key="mask", fix="give one mask for all frames, or one per latent frame")
    mask = mask.float().clamp(0, 1)
    if mask.shape[-2:] == (grid.height, grid.width):
        covered = mask
    else:
        covered = F.interpolate(mask.unsqueeze(1), size=(grid.height, grid.width), mode="area").squeeze(1)
    return covered.expand(grid.frames, -1, -1).contiguous()


def token_coverage(mask: torch.Tensor, grid: TokenGrid,
                   input_shape: torch.Size | tuple[int, ...]) -> torch.Tensor | None:
    """Coverage per row of a Linear input of ``input_shape``, shaped to broadcast against its output: (L, 1) for a
    sequence (B, L, D) of the grid's length (text rows 0), (T, H, W, 1) for the bare grid as axes (B, T, H, W, D);
    None for an input whose rows are not this grid's (text-only or per-sample inputs keep the outside gate)."""
    shape = tuple(input_shape)
    if len(shape) == 5 and shape[1:4] == (grid.frames, grid.height, grid.width):
        return mask_on_grid(mask, grid).unsqueeze(-1)
    if len(shape) != 3 or shape[1] != grid.length:
        return None
    covered = mask_on_grid(mask, grid).reshape(-1)
    rows = torch.cat([covered.new_zeros(grid.text_before), covered, covered.new_zeros(grid.text_after)])
    return rows.unsqueeze(-1)


def blend_regions(inside: torch.Tensor, outside: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """``coverage · inside + (1 − coverage) · outside`` per token (the two routed Δy of one Linear input); exactly
    ``inside`` where the coverage is 1 and ``outside`` where it is 0."""
    coverage = coverage.to(device=inside.device, dtype=inside.dtype)
    return inside * coverage + outside * (1 - coverage)


def regional_delta(layer, x: torch.Tensor, coverage: torch.Tensor, inside: dict, outside: dict) -> torch.Tensor:
    """Δy of a routed ``layer`` on ``x`` with the routing keywords ``inside`` (e.g. a pin's override) where the region
    covers a token and ``outside`` elsewhere, blended per token (see the module docstring for why it is exact)."""
    return blend_regions(layer.delta(x, **inside), layer.delta(x, **outside), coverage)
