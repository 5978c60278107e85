"""The routed-delta math shared by the trainable layer and the runtime form.

Both forms reduce to ``down`` (r, in), ``ups`` (E, out, r) and a router on the RMS-pooled
rank-r projection; λ always lives on the up side, so the router sees exactly what it
saw in training.  Gates are computed in fp32, the two GEMMs in the activation dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

ROUTER_SOURCES = ("input", "sigma", "fei")


@dataclass(frozen=True)
class RouterSpec:
    """How a layer's router input and gate are formed (derived from the file, never guessed).

    Router input = [RMS-pooled rank-r projection, σ features (sigma_dim), FEI (fei_dim)].
    """

    source: str = "input"
    sigma_dim: int = 0  # width of the sinusoidal σ features
    fei_dim: int = 0  # 2 when the router also sees the latent's (low, high) frequency energy
    fei_sigma_low_div: float = 4.0
    centered: bool = False  # gate used as g - 1/E
    sigma_bands: tuple[float, ...] = ()  # B+1 ascending edges; expert e belongs to band e mod B

    def __post_init__(self) -> None:
        if self.source not in ROUTER_SOURCES:
            raise ValueError(f"unknown router source {self.source!r}; supported: {', '.join(ROUTER_SOURCES)}")
        if self.sigma_dim < 0 or self.sigma_dim % 2:
            raise ValueError(f"σ feature width must be even and >= 0, got {self.sigma_dim}")
        if self.fei_dim not in (0, 2):
            raise ValueError(f"FEI width must be 0 or 2, got {self.fei_dim}")

    @property
    def needs_sigma(self) -> bool:
        return self.sigma_dim > 0 or bool(self.sigma_bands)

    def mixing_weights(self, gate: torch.Tensor) -> torch.Tensor:
        """Routing distribution (…, E) -> the weights applied to the experts: ``g − 1/E`` for a centered gate.

        The one home of the centering rule; recorders, overrides and metrics always see the distribution.
        """
        return gate - 1.0 / gate.shape[-1] if self.centered else gate


@dataclass
class GateContext:
    """What an override sees besides the logits: enough to scope and schedule it."""

    layer: str
    sigma: torch.Tensor | None  # (B,) σ in [0, 1] units, or None outside sampling
    extra: dict = field(default_factory=dict)  # host-side facts, e.g. which rows are cond/uncond


# An override maps (masked fp32 logits (B, E), context) to a gate (B, E); None means live softmax.
GateOverride = Callable[[torch.Tensor, GateContext], torch.Tensor]


def rms_pool(lx: torch.Tensor) -> torch.Tensor:
    """(B, ..., r) -> (B, r) fp32 RMS over every token axis: bounded despite DiT outlier channels."""
    flat = lx.reshape(lx.shape[0], -1, lx.shape[-1]).float()
    return flat.square().mean(1).sqrt()


def sigma_features(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of flow σ in [0, 1]: ``[cos(σ ω_k), sin(σ ω_k)]``, ω_k = 10000^(-k/h), h = dim/2."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=sigma.device)
    omega = torch.exp(-math.log(10000.0) * k / max(half, 1))
    angles = sigma.float().reshape(-1, 1) * omega
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def band_mask(sigma: torch.Tensor, edges: Sequence[float], num_experts: int) -> torch.Tensor:
    """Boolean (B, E): experts of each sample's σ band; expert e serves band e mod B.

    A σ exactly on an interior edge belongs to the lower band; σ beyond the last edge to the last band.
    """
    num_bands = len(edges) - 1
    inner = torch.tensor(list(edges[1:-1]), dtype=torch.float32, device=sigma.device)
    band = torch.bucketize(sigma.float().reshape(-1), inner, right=False).clamp(0, num_bands - 1)
    expert_band = torch.arange(num_experts, device=sigma.device) % num_bands
    return expert_band.unsqueeze(0) == band.unsqueeze(1)


def router_logits(pooled: torch.Tensor, router_weight: torch.Tensor, router_bias: torch.Tensor,
                  spec: RouterSpec, sigma: torch.Tensor | None, fei: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 logits (B, E) from pooled (B, r) plus, when the router wants them, σ features and FEI."""
    batch = pooled.shape[0]
    parts = [pooled]
    if spec.sigma_dim:
        if sigma is None:
            raise ValueError("this router is conditioned on σ, but no σ was given")
        parts.append(sigma_features(_per_sample(sigma, batch), spec.sigma_dim).to(pooled.device))
    if spec.fei_dim:
        if fei is None:
            raise ValueError("this router is conditioned on the latent's FEI, but none was given")
        fei = fei.to(device=pooled.device, dtype=torch.float32).reshape(-1, spec.fei_dim)
        parts.append(fei.expand(batch, -1) if fei.shape[0] == 1 else fei)
    features = torch.cat(parts, dim=-1) if len(parts) > 1 else pooled
    w = router_weight.to(device=pooled.device, dtype=torch.float32)
    b = router_bias.to(device=pooled.device, dtype=torch.float32)
    logits = torch.addmm(b, features, w.T)
    if spec.sigma_bands:
        if sigma is None:
            raise ValueError("this router partitions experts by σ band, but no σ was given")
        mask = band_mask(_per_sample(sigma, batch), spec.sigma_bands, logits.shape[-1])
        logits = logits.masked_fill(~mask.to(logits.device), float("-inf"))
    return logits


def _per_sample(sigma: torch.Tensor, batch: int) -> torch.Tensor:
    sig = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    if sig.numel() == 1:
        return sig.expand(batch)
    if sig.numel() != batch:
        raise ValueError(f"σ has {sig.numel()} entries for a batch of {batch}")
    return sig


def finish_gate(logits: torch.Tensor, context: GateContext | None, override: GateOverride | None) -> torch.Tensor:
    """Logits -> the routing distribution (B, E) fp32: the override's gate, else softmax."""
    if override is None:
        return torch.softmax(logits, dim=-1)
    gate = override(logits, context if context is not None else GateContext(layer="", sigma=None))
    return gate.to(dtype=torch.float32, device=logits.device)


def project_down(x: torch.Tensor, down: torch.Tensor, inv_scale: torch.Tensor | None) -> torch.Tensor:
    """``lx = (x ⊙ inv_scale) downᵀ`` in the activation dtype."""
    if inv_scale is not None:
        x = x * inv_scale.to(device=x.device, dtype=x.dtype)
    return x @ down.to(device=x.device, dtype=x.dtype).T


def _mixed_ups(lx: torch.Tensor, gate: torch.Tensor, ups: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-sample ``s · Σ_e g_e up_eᵀ`` of shape (B, r, out): E·out·r work, tiny next to the GEMMs."""
    ups = ups.to(device=lx.device, dtype=lx.dtype)
    weights = (gate * scale).to(lx.dtype)
    if weights.shape[0] == 1 and lx.shape[0] > 1:
        weights = weights.expand(lx.shape[0], -1)
    return torch.einsum("be,eor->bro", weights, ups)


def mix_and_project_up(lx: torch.Tensor, gate: torch.Tensor, ups: torch.Tensor, scale: float) -> torch.Tensor:
    """``Δy = s · lx (Σ_e g_e up_e)ᵀ``: mix the E heads per sample first, then one GEMM."""
    mixed = _mixed_ups(lx, gate, ups, scale)
    out = torch.bmm(lx.reshape(lx.shape[0], -1, lx.shape[-1]), mixed)
    return out.reshape(*lx.shape[:-1], ups.shape[1])


def add_routed_delta(output: torch.Tensor, lx: torch.Tensor, gate: torch.Tensor, ups: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """``output + Δy`` in one fused ``baddbmm`` (no separate Δy tensor): the hot path of a hook."""
    mixed = _mixed_ups(lx, gate, ups, scale).to(output.dtype)
    tokens = lx.reshape(lx.shape[0], -1, lx.shape[-1]).to(output.dtype)
    summed = torch.baddbmm(output.reshape(output.shape[0], -1, output.shape[-1]), tokens, mixed)
    return summed.reshape(output.shape)
