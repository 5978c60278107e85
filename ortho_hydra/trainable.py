"""The trainable layer: Ortho-Hydra and the two HydraLoRA baselines behind one forward."""

from __future__ import annotations

import math

import torch
from torch import nn

from .basis import BasisCache, disjoint_basis
from .cayley import cayley
from .layer import GateSink
from .routing import GateOverride, RouterSpec
from .runtime import ExpertLayer

INIT_MODES = ("ortho", "ortho_out", "ortho_init", "zero", "jitter", "jitter_zero_sum")
ORTHO_MODES = ("ortho", "ortho_out", "ortho_init")  # experts start on disjoint singular slices of W0
BASIS_SEED = 0  # slot bases must be the same for everyone who has W0, whatever their training seed


class OrthoHydraLinear(nn.Module):
    """Routed experts beside a frozen weight W0 (out, in).

    ``init="ortho"``: frozen disjoint SVD bases rotated by Cayley factors, λ zero-init.
    ``init="ortho_out"``: the out-bases stay frozen (rotated only within their slice, so each expert's output
    subspace is fixed), while the shared down trains freely from the in-slice start: Orthogonal Adaptation's
    frozen output side, with the capacity of a plain LoRA's input side.
    ``init="ortho_init"``: the same disjoint slices as the *starting point* of free bases: the shared down and
    every expert's up basis are trained in full, with the same zero-init λ (ΔW = 0 at step 0, experts distinct).
    It trades the fixed-subspace guarantee for the capacity of a plain LoRA.
    ``init="zero"``: HydraLoRA with a random shared down and zero ups.
    ``init="jitter"``: HydraLoRA as published, ups drawn i.i.d. from N(0, jitter_std²) (ΔW ≠ 0 at step 0).
    ``init="jitter_zero_sum"``: the same draw made zero-sum over experts, so ΔW at the uniform gate is exactly 0
    while the experts still differ.
    """

    def __init__(self, weight: torch.Tensor, rank: int, num_experts: int, *, alpha: float | None = None,
                 init: str = "ortho", jitter_std: float = 0.1, centered_gate: bool = False,
                 centered_lambda_init: float = 1e-2, sigma_feature_dim: int = 0, seed: int = 0,
                 name: str = "", slot: int = 0, slots: int = 0, router_std: float = 0.01,
                 basis_cache: BasisCache | None = None) -> None:
        super().__init__()
        if init not in INIT_MODES:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INIT_MODES)}")
        out_features, in_features = weight.shape
        if rank > min(out_features, in_features):
            raise ValueError(f"{name or 'layer'}: rank {rank} exceeds min(out, in) = "
                             f"{min(out_features, in_features)}; lower the rank")
        self.name = name
        self.init_mode = init
        self.rank = rank
        self.num_experts = num_experts
        self.alpha = float(alpha if alpha else rank)
        self.router_spec = RouterSpec(source="sigma" if sigma_feature_dim else "input",
                                      sigma_dim=sigma_feature_dim, centered=centered_gate)
        self.basis_replicated = False
        gen = torch.Generator().manual_seed(seed)

        if slots and (init not in ("ortho", "ortho_out") or num_experts != 1 or not 0 <= slot < slots):
            raise ValueError(f"{name or 'layer'}: slot training needs one expert, init ortho or ortho_out and "
                             f"0 <= slot < slots (got {num_experts} experts, init {init}, slot {slot} of {slots})")
        if init in ORTHO_MODES:
            bases = basis_cache.get if basis_cache is not None else disjoint_basis
            basis = bases(weight, slots or num_experts, rank, seed=BASIS_SEED if slots else seed)
            if slots and basis.replicated:
                raise ValueError(f"{name or 'layer'}: {slots} slots x rank {rank} exceed min(out, in) = "
                                 f"{min(out_features, in_features)}; no disjoint slots fit")
            self.basis_replicated = basis.replicated
            out_bases = basis.out_bases[slot:slot + 1] if slots else basis.out_bases
            if init == "ortho":
                self.register_buffer("in_basis", basis.in_basis)
                self.register_buffer("out_bases", out_bases)
                self.cayley_seeds = nn.Parameter(torch.zeros(1 + num_experts, rank, rank))
            elif init == "ortho_out":
                self.register_buffer("out_bases", out_bases)
                self.cayley_seeds = nn.Parameter(torch.zeros(num_experts, rank, rank))
                self.down = nn.Parameter(basis.in_basis.clone())
            else:
                self.down = nn.Parameter(basis.in_basis.clone())
                self.ups = nn.Parameter(out_bases.clone())
            lam0 = centered_lambda_init if centered_gate else 0.0
            self.lam = nn.Parameter(torch.full((rank,), lam0))
        else:
            down = torch.empty(rank, in_features)
            bound = 1.0 / math.sqrt(in_features)  # kaiming-uniform(a=√5), as plain LoRA does
            down.uniform_(-bound, bound, generator=gen)
            self.down = nn.Parameter(down)
            ups = torch.zeros(num_experts, out_features, rank)
            if init == "jitter":
                ups = torch.randn(num_experts, out_features, rank, generator=gen) * jitter_std
            elif init == "jitter_zero_sum" and num_experts > 1:
                noise = torch.randn(num_experts, out_features, rank, generator=gen)
                noise = (noise - noise.mean(0, keepdim=True)) * math.sqrt(num_experts / (num_experts - 1))
                ups = noise * jitter_std
            self.ups = nn.Parameter(ups)

        # Router-input standardisation, fixed by calibrate_router(); identity until then.  Folded into the router
        # weight and bias by as_runtime(), so saved files keep the plain Hydra router.
        self.register_buffer("router_shift", torch.zeros(rank))
        self.register_buffer("router_scale", torch.ones(rank))
        self.router = nn.Linear(rank + sigma_feature_dim, num_experts)
        with torch.no_grad():
            self.router.weight.zero_()
            self.router.bias.zero_()
            if not centered_gate and router_std > 0:  # 0: exactly uniform gates, exactly symmetric experts
                self.router.weight[:, :rank].normal_(0.0, router_std, generator=gen)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(down (r, in), ups (E, out, r)) with λ folded into ups, in fp32."""
        if self.init_mode == "ortho_init":
            return self.down.float(), self.ups.float() * self.lam.float()
        if self.init_mode == "ortho_out":
            ups = torch.matmul(self.out_bases.float(), cayley(self.cayley_seeds)) * self.lam.float()
            return self.down.float(), ups
        if self.init_mode != "ortho":
            return self.down.float(), self.ups.float()
        rotations = cayley(self.cayley_seeds)  # one batched solve: [R_q, R_p[0..E-1]]
        down = rotations[0] @ self.in_basis.float()
        ups = torch.matmul(self.out_bases.float(), rotations[1:]) * self.lam.float()
        return down, ups

    @torch.no_grad()
    def router_input(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled rank-r projection (B, r) the router reads, before any standardisation."""
        return self.as_runtime().router_input(x)

    @torch.no_grad()
    def calibrate_router(self, pooled: torch.Tensor) -> None:
        """Standardise the router's input with the per-feature mean and std of ``pooled`` (N, r), then freeze them.

        Why: DiT activations give RMS-pooled features with a large common mode and a few per-cent of variation
        between samples (measured on the tiny MMDiT: coefficient of variation 0-4%).  A router on raw features
        then learns what amounts to a bias shared by every sample, and Adam's normalised steps push one expert to
        take every sample.  Standardised features make per-sample differences O(1) and remove the common mode.
        Features with no spread across samples (a text-only stream) become 0: those layers route by bias alone.
        """
        pooled = pooled.detach().double().reshape(-1, self.rank)
        mean = pooled.mean(0)
        std = pooled.std(0) if pooled.shape[0] > 1 else torch.zeros_like(mean)
        floor = 1e-3 * mean.abs().clamp_min(1e-6)
        self.router_shift.copy_(mean.to(self.router_shift.dtype))
        self.router_scale.copy_(torch.maximum(std, floor).to(self.router_scale.dtype))

    def router_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Router weight and bias on the raw pooled input: the standardisation folded in, exactly.

        ``W ((p − μ) / s) + b = (W / s) p + (b − (W / s) μ)`` on the first r columns; σ/FEI columns untouched.
        """
        weight, bias = self.router.weight, self.router.bias
        scaled = weight[:, :self.rank] / self.router_scale.to(weight.dtype)
        bias = bias - scaled @ self.router_shift.to(weight.dtype)
        return torch.cat([scaled, weight[:, self.rank:]], dim=1), bias

    def guidance_gate(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """The live routing distribution (B, E) for x, with the layer's input x detached.

        Its value is the forward's gate; its gradient reaches this layer's router and the down projection the router
        reads through, never x (hence no adapter upstream).  Label guidance trains on it: with the gradient through
        x, every layer's gate/label cross-entropy also reshaped all earlier adapters into style classifiers, which
        cost ortho_init + guidance 14-50 % of the single LoRA's held-out loss at σ 0.1-0.25
        (experiments/style_separation).
        """
        return self.as_runtime().gate(x.detach(), sigma)

    def as_runtime(self) -> ExpertLayer:
        """The current factors as a runtime layer, still attached to the autograd graph.

        Training and inference thus share one routed-delta implementation; :func:`distill` detaches it.
        """
        down, ups = self.factors()
        router_weight, router_bias = self.router_parameters()
        return ExpertLayer(name=self.name, down=down, ups=ups, router_weight=router_weight,
                           router_bias=router_bias, alpha=self.alpha, router=self.router_spec)

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              fei: torch.Tensor | None = None, sink: GateSink | None = None) -> torch.Tensor:
        """Δy for x (B, ..., in); ``sink`` receives the routing distribution (for losses and telemetry)."""
        return self.as_runtime().delta(x, sigma, override, fei=fei, sink=sink)
