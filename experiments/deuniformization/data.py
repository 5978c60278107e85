"""The de-uniformisation study's data: styled synthetic latents, and style-neutral pretraining fields.

Four styles (per-channel gain and offset plus an oriented texture) render the same contents; the conditioning
names only the content, so a router that separates styles must read them from the activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import Config

NUM_STYLES = 4


@dataclass
class StyledSet:
    """Images x0 (N, C, S, S) with style and content labels; conditioning is looked up by content only."""

    x0: torch.Tensor
    style: torch.Tensor
    content: torch.Tensor
    context: torch.Tensor  # (num_contents, T, D)
    pooled: torch.Tensor  # (num_contents, D)

    def cond(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.content[idx]
        return self.context[c], self.pooled[c]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="ij")


def _content(gen: torch.Generator, channels: int, size: int, shapes: int = 3) -> torch.Tensor:
    """A few coloured Gaussian blobs: the style-independent 'what'."""
    yy, xx = _grid(size)
    img = torch.zeros(channels, size, size)
    for _ in range(shapes):
        cy, cx = (torch.rand(2, generator=gen) * (size - 3) + 1).tolist()
        width = 1.0 + 1.2 * torch.rand((), generator=gen).item()
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        img += torch.randn(channels, 1, 1, generator=gen) * blob
    return img / img.std()


@dataclass(frozen=True)
class Style:
    """A latent signature: per-channel gain/offset plus an oriented texture along one channel direction."""

    gain: torch.Tensor  # (C,)
    offset: torch.Tensor  # (C,)
    direction: torch.Tensor  # (C,) unit
    freq: tuple[int, int]  # cycles per latent side along (y, x)


def _styles(gen: torch.Generator, channels: int) -> list[Style]:
    freqs = [(1, 0), (0, 2), (2, 2), (3, -1)]  # distinct frequency and orientation, all below Nyquist at 8
    out = []
    for freq in freqs[:NUM_STYLES]:
        direction = torch.randn(channels, generator=gen)
        out.append(Style(gain=torch.exp(0.4 * torch.randn(channels, generator=gen)),
                         offset=0.4 * torch.randn(channels, generator=gen),
                         direction=direction / direction.norm() * math.sqrt(channels), freq=freq))
    return out


def _render(content: torch.Tensor, style: Style, phase: float, amplitude: float = 0.6) -> torch.Tensor:
    size = content.shape[-1]
    yy, xx = _grid(size)
    texture = torch.cos(2 * math.pi * (style.freq[0] * yy + style.freq[1] * xx) / size + phase)
    styled = style.gain[:, None, None] * content + style.offset[:, None, None]
    return styled + amplitude * texture * style.direction[:, None, None]


def make_data(cfg: Config) -> tuple[StyledSet, StyledSet]:
    """Train / held-out splits over disjoint content ids, every content rendered in every style."""
    gen = torch.Generator().manual_seed(cfg.data_seed)
    styles = _styles(gen, cfg.channels)
    num_contents = cfg.train_contents + cfg.heldout_contents
    contents = [_content(gen, cfg.channels, cfg.latent) for _ in range(num_contents)]
    context = torch.randn(num_contents, cfg.ctx_tokens, cfg.ctx_dim, generator=gen)
    pooled = torch.randn(num_contents, cfg.ctx_dim, generator=gen)
    images, style_ids, content_ids = [], [], []
    for c, content in enumerate(contents):
        for s, style in enumerate(styles):
            for _ in range(cfg.phases):
                phase = 2 * math.pi * torch.rand((), generator=gen).item()
                images.append(_render(content, style, phase))
                style_ids.append(s)
                content_ids.append(c)
    x0 = torch.stack(images)
    x0 = (x0 - x0.mean()) / x0.std()
    style_t, content_t = torch.tensor(style_ids), torch.tensor(content_ids)
    train = content_t < cfg.train_contents

    def subset(mask: torch.Tensor) -> StyledSet:
        return StyledSet(x0[mask], style_t[mask], content_t[mask], context, pooled)

    return subset(train), subset(~train)


def smooth_fields(gen: torch.Generator, batch: int, channels: int, size: int, width: float = 1.5) -> torch.Tensor:
    """Style-neutral pretraining data: white noise blurred by a circular Gaussian, unit variance."""
    radius = size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel_1d = torch.exp(-(offsets**2) / (2 * width**2))
    kernel = torch.outer(kernel_1d, kernel_1d)
    kernel = (kernel / kernel.sum()).expand(channels, 1, -1, -1)
    noise = torch.randn(batch, channels, size, size, generator=gen)
    field = F.conv2d(F.pad(noise, (radius,) * 4, mode="circular"), kernel, groups=channels)
    return field / field.std(dim=(1, 2, 3), keepdim=True)
