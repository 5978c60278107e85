"""ChimeraHydra: two expert pools on one Linear, read from the reference trainer's ``*_chimera.safetensors``.

A **content** pool (K_c experts) is routed per sample by the layer's own router on the RMS-pooled content
projection (or, in the cross-attention mode, by one network-level router on the text context); a **frequency**
pool (K_f experts) by one network-level router on the latent's FEI and σ.  The pools' outputs are summed::

    Δy = s · [ lx_c (Σ_c π_c up_c)ᵀ + lx_f (Σ_f π_f up_f)ᵀ ],   lx_p = (x ⊙ inv_scale) down_pᵀ

Two layouts, per prefix:

* single-A: one ``lora_down`` shared by both pools (lx_f = lx_c), ``lora_ups.<e>`` over E = K_c + K_f experts,
  content first; s = alpha / r.
* dual-A: ``lora_down_c`` / ``lora_down_f`` and ``lora_ups_c.<i>`` / ``lora_ups_f.<j>``; s = 1 (the trainer
  folds its scale into the saved factors), and ``ss_chimera_centered_gate`` subtracts 1/K per pool.

Network-level routers (two-layer MLPs ``Linear → SiLU → Linear``, fp32):

* frequency, learned: ``softmax(net([FEI[:fei_dim], sinusoidal(σ, σ_dim)]) / τ)``;
* frequency, hardwired (``ss_chimera_freq_router_mode=fei``): ``π_f = normalize(FEI^(1/τ_fei))`` (FEI itself at
  τ_fei = 1), so K_f = FEI width;
* content, cross-attention: RMS over the ``llm_adapter`` output zero-padded to 512 tokens, optional
  parameterless LayerNorm, ``softmax(net(·) / τ)``.

Overrides see one combined axis of E = K_c + K_f experts (0..K_c-1 content, K_c.. frequency).  The routing
distribution shown to them is ``[π_c, π_f] / 2``; the weights each pool applies are its part of the overridden
distribution renormalised to sum 1, and a pool whose part is all zero is switched off.  So live routing is
exactly the trained gates, pinning expert i runs that expert alone in its pool and turns the other pool off, and
a blend with weight on both pools sets each pool's mixture separately.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import OrthoHydraError
from .kind import Capability, FileKeys, Refusal, alpha_or_rank, stamped_expert_names, stored_alpha, truthy
from .layer import GateSink, RoutedLayer
from .routing import (
    GateContext,
    GateOverride,
    RouterSpec,
    finish_gate,
    mix_and_project_up,
    project_down,
    rms_pool,
    sigma_features,
)

CONTENT_GATE_KEY = "chimera_content_gate"  # SamplingState.extra: π_c from the cross-attention content router
CONTENT_PAD_TOKENS = 512  # the trainer pools a text context zero-padded to T5's max length
CONTENT_ROUTER_MODULE = "diffusion_model.llm_adapter"
NETWORK_KEY = re.compile(r"^(freq_router|content_router)\.net\.(0|2)\.(weight|bias)$")
_DUAL = re.compile(r"^(?P<prefix>.+?)\.(?P<suffix>lora_down_[cf]\.weight|lora_ups_[cf]\.(?P<e>\d+)\.weight"
                   r"|router\.weight|router\.bias|alpha|inv_scale)$")
_SINGLE = re.compile(r"^(?P<prefix>.+?)\.(?P<suffix>lora_down\.weight|lora_ups\.(?P<e>\d+)\.weight"
                     r"|router\.weight|router\.bias|alpha|inv_scale)$")
_FIX = "the file is inconsistent or damaged; re-export it with the reference trainer"


def is_chimera(tensors: Mapping[str, object], metadata: Mapping[str, str]) -> bool:
    return truthy(metadata.get("ss_use_chimera_hydra")) or any(".lora_down_c." in k for k in tensors)


@dataclass(frozen=True)
class MLPRouter:
    """``softmax(W2 silu(W1 h + b1) + b2) / τ)`` in fp32: the trainer's network-level router nets."""

    w0: torch.Tensor
    b0: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    tau: float = 1.0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"w0": self.w0, "b0": self.b0, "w2": self.w2, "b2": self.b2}

    def with_tensors(self, **tensors: torch.Tensor) -> MLPRouter:
        return replace(self, **tensors)

    @property
    def in_features(self) -> int:
        return int(self.w0.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.w2.shape[0])

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        dev = h.device
        hidden = F.silu(F.linear(h.float(), self.w0.to(dev, torch.float32), self.b0.to(dev, torch.float32)))
        logits = F.linear(hidden, self.w2.to(dev, torch.float32), self.b2.to(dev, torch.float32))
        return torch.softmax(logits / self.tau, dim=-1)


@dataclass(frozen=True)
class FreqRouter:
    """The network-level frequency router: a learned MLP on [FEI, σ features], or the FEI itself."""

    num_experts: int
    fei_dim: int
    sigma_dim: int
    sigma_low_div: float = 4.0
    net: MLPRouter | None = None  # None: hardwired FEI
    fei_tau: float = 1.0

    @property
    def mode(self) -> str:
        return "fei" if self.net is None else "learned"

    def gate(self, sigma: torch.Tensor | None, fei: torch.Tensor | None, batch: int,
             device: torch.device) -> torch.Tensor:
        """π_f (B, K_f) fp32; uniform when σ or the FEI it needs is not known (outside sampling), as the trainer's
        placeholder is."""
        need_fei = self.fei_dim > 0 or self.net is None
        if (need_fei and fei is None) or (self.net is not None and self.sigma_dim and sigma is None):
            return torch.full((batch, self.num_experts), 1.0 / max(self.num_experts, 1), device=device)
        parts = []
        if need_fei:
            fei = fei.to(device=device, dtype=torch.float32).reshape(-1, 2)
            fei = fei.expand(batch, -1) if fei.shape[0] == 1 else fei
        if self.net is None:
            p = fei[:, : self.num_experts]
            if abs(self.fei_tau - 1.0) < 1e-8:
                return p
            p = p.clamp_min(0).pow(1.0 / max(self.fei_tau, 1e-6))
            return p / p.sum(-1, keepdim=True).clamp_min(1e-12)
        if self.fei_dim:
            parts.append(fei[:, : self.fei_dim])
        if self.sigma_dim:
            sig = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).to(device)
            parts.append(sigma_features(sig.expand(batch) if sig.numel() == 1 else sig, self.sigma_dim))
        return self.net(torch.cat(parts, dim=-1))

    def describe(self) -> str:
        if self.net is None:
            return f"hardwired FEI (τ {self.fei_tau:g})"
        return f"learned MLP on FEI ({self.fei_dim}) + σ features ({self.sigma_dim}), τ {self.net.tau:g}"


@dataclass(frozen=True)
class ContentRouter:
    """The cross-attention content router: one π_c per sample from the ``llm_adapter`` output (B, L, D), computed
    once per model call by a hook on that module (a layer's ``module_routers``)."""

    net: MLPRouter
    layer_norm: bool = False
    module: ClassVar[str] = CONTENT_ROUTER_MODULE  # whose output it reads
    state_key: ClassVar[str] = CONTENT_GATE_KEY  # where its gate waits for the layers of the same call

    def with_net(self, net: MLPRouter) -> ContentRouter:
        return replace(self, net=net)

    def missing_module(self, architecture: str, path: str | None) -> OrthoHydraError:
        """The error for a model without :attr:`module`."""
        return OrthoHydraError(f"this ChimeraHydra adapter routes its content pool on the text context of "
                               f"{self.module}, which this {architecture} model does not have.", path=path,
                               key="content_router.net.0.weight", fix="load the Anima model it was trained on")

    def gate(self, context: torch.Tensor) -> torch.Tensor:
        if context.ndim != 3 or context.shape[-1] != self.net.in_features:
            raise OrthoHydraError(f"the cross-attention content router takes (B, L, {self.net.in_features}) text "
                                  f"features; {CONTENT_ROUTER_MODULE} gave {tuple(context.shape)}.",
                                  key="content_router.net.0.weight",
                                  fix="load the base model this adapter was trained on (Anima)")
        # RMS over exactly CONTENT_PAD_TOKENS rows (cut or zero-padded): padding only changes the denominator
        pooled = (context[:, :CONTENT_PAD_TOKENS].float().square().sum(1) / CONTENT_PAD_TOKENS).sqrt()
        if self.layer_norm:
            pooled = F.layer_norm(pooled, pooled.shape[-1:], eps=1e-5)
        return self.net(pooled)


@dataclass
class ChimeraLayer(RoutedLayer):
    """One ChimeraHydra Linear (see the module docstring); ``down`` is the content (or shared) down."""

    name: str
    down: torch.Tensor  # (r, in): content A, or the shared A of a single-A file
    ups: torch.Tensor  # (K_c + K_f, out, r): content experts first
    num_content: int
    freq: FreqRouter
    alpha: float
    router_weight: torch.Tensor | None = None  # (K_c, r); None with the cross-attention content router
    router_bias: torch.Tensor | None = None
    down_f: torch.Tensor | None = None  # (r, in): dual-A frequency A
    content_router: ContentRouter | None = None
    centered: bool = False
    inv_scale: torch.Tensor | None = None
    router: RouterSpec = field(default_factory=RouterSpec)  # what the host needs: σ, FEI and its blur divisor

    refusals: ClassVar[Mapping[Capability, Refusal]] = {
        Capability.SAVE: Refusal("writing ChimeraHydra layers is not supported; keep the file they were loaded from.",
                                 "pin or blend the experts and bake them into a plain LoRA to get a new file"),
        Capability.ROUTER_FIT: Refusal("fitting routers is not available for ChimeraHydra adapters (their content "
                                       "and frequency routers are trained together).",
                                       "pin or blend the ChimeraHydra experts with the router node instead"),
        Capability.NORM_CONTROL: Refusal("norm_control does not apply to ChimeraHydra layers (each pool's blend "
                                         "weights are normalised to sum 1).",
                                         "turn norm_control off; use strength to scale the adapter"),
        Capability.TRANSFER: Refusal("{name}: a ChimeraLayer layer cannot be transferred.",
                                     "transfer LoRA or Ortho-Hydra layers only"),
    }

    @property
    def dual(self) -> bool:
        return self.down_f is not None

    @property
    def num_freq(self) -> int:
        return self.num_experts - self.num_content

    @property
    def scale(self) -> float:
        return 1.0 if self.dual else self.alpha / self.rank

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"down": self.down, "ups": self.ups}
        for name in ("down_f", "router_weight", "router_bias", "inv_scale"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def router_nets(self) -> dict[str, MLPRouter]:
        """The learned frequency router's MLP (the content router's runs once per model call, outside the layer)."""
        return {} if self.freq.net is None else {"freq": self.freq.net}

    def with_router_nets(self, freq: MLPRouter | None = None) -> ChimeraLayer:
        return self if freq is None else replace(self, freq=replace(self.freq, net=freq))

    def module_routers(self) -> dict[str, ContentRouter]:
        return {} if self.content_router is None else {"content": self.content_router}

    def default_expert_names(self) -> list[str]:
        return expert_names(self.num_content, self.num_freq)

    @classmethod
    def read(cls, file: FileKeys) -> dict[str, ChimeraLayer]:
        """A ChimeraHydra file's layers and network routers; its plain legs are left to the plain kind."""
        tensors = file.remaining()
        if not is_chimera(tensors, file.metadata):
            return {}
        layers, consumed = parse(tensors, file.metadata, file.path)
        file.take(consumed)
        return layers

    @classmethod
    def describe_header(cls, entries: Mapping[str, dict], metadata: Mapping[str, str], path: str) -> dict | None:
        if not is_chimera(entries, metadata):
            return None
        try:
            k_c, k_f = int(metadata["ss_num_experts_content"]), int(metadata["ss_num_experts_freq"])
        except (KeyError, ValueError):
            raise OrthoHydraError("ChimeraHydra file without integer ss_num_experts_content / ss_num_experts_freq.",
                                  path=path, key="ss_num_experts_content",
                                  fix="re-export it with the reference trainer") from None
        downs = [e for k, e in entries.items() if k.endswith((".lora_down.weight", ".lora_down_c.weight"))
                 and isinstance(e, dict)]
        names = stamped_expert_names(metadata)
        return {"num_experts": k_c + k_f,
                "expert_names": names if names and len(names) == k_c + k_f else expert_names(k_c, k_f),
                "rank": max((int(e["shape"][0]) for e in downs), default=0),
                "routed_layers": sum(1 for k in entries if k.endswith((".lora_down_c.weight", ".lora_ups.0.weight"))),
                "spec": metadata.get("ss_network_spec", "chimera_hydra"), "router_source": "chimera",
                "consistent": True}

    @classmethod
    def summary_lines(cls, layers: list[ChimeraLayer]) -> list[str]:
        """The pools (read from the first layer: a file has one layout)."""
        first = layers[0]
        content = "cross-attention router on the text context" if first.content_router else "per-Linear router"
        layout = "dual-A" if first.dual else "single-A"
        return [f"ChimeraHydra ({layout}, {len(layers)} layers): applied. Content pool {first.num_content} experts "
                f"({content}); frequency pool {first.num_freq} experts ({first.freq.describe()})"
                + ("; centered gates" if first.centered else ""),
                f"expert axis for pin / blend: 0..{first.num_content - 1} content, {first.num_content}.."
                f"{first.num_experts - 1} frequency; pinning one expert turns the other pool off"]

    def live_gate(self, lx_c: torch.Tensor, sigma: torch.Tensor | None, fei: torch.Tensor | None,
                  context: GateContext | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(π_c (B, K_c), π_f (B, K_f)) fp32, as the reference computes them."""
        batch, device = lx_c.shape[0], lx_c.device
        if self.content_router is not None:
            pi_c = None if context is None else context.extra.get(CONTENT_GATE_KEY)
            if pi_c is None:
                pi_c = torch.full((batch, self.num_content), 1.0 / self.num_content, device=device)
            pi_c = pi_c.to(device=device, dtype=torch.float32)
            pi_c = pi_c.expand(batch, -1) if pi_c.shape[0] == 1 else pi_c
        else:
            w = self.router_weight.to(device=device, dtype=torch.float32)
            b = self.router_bias.to(device=device, dtype=torch.float32)
            pi_c = torch.softmax(torch.addmm(b, rms_pool(lx_c), w.T), dim=-1)
        return pi_c, self.freq.gate(sigma, fei, batch, device)

    def pool_weights(self, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A combined distribution (..., E) -> each pool's mixing weights: its part renormalised (a pool with no
        mass is off), minus 1/K for a centered gate."""
        pools = []
        for part in (gate[..., : self.num_content], gate[..., self.num_content:]):
            total = part.sum(-1, keepdim=True)
            on = total > 0
            w = torch.where(on, part / torch.where(on, total, torch.ones_like(total)), torch.zeros_like(part))
            if self.centered and part.shape[-1]:
                w = torch.where(on, w - 1.0 / part.shape[-1], w)
            pools.append(w)
        return pools[0], pools[1]

    def _weights(self, lx_c: torch.Tensor, sigma, override, context, fei, sink) -> tuple[torch.Tensor, torch.Tensor]:
        pi_c, pi_f = self.live_gate(lx_c, sigma, fei, context)
        if override is None and sink is None:
            return self.pool_weights(torch.cat([pi_c, pi_f], -1))  # exact: no log / softmax round trip
        combined = torch.cat([pi_c, pi_f], -1) / 2  # one distribution over both pools
        if context is None:
            context = GateContext(layer=self.name, sigma=sigma)
        gate = combined if override is None else finish_gate(torch.log(combined), context, override)
        if sink is not None:
            sink(self.name, gate, context)
        return self.pool_weights(gate)

    def delta(self, x: torch.Tensor, sigma: torch.Tensor | None = None, override: GateOverride | None = None,
              context: GateContext | None = None, fei: torch.Tensor | None = None,
              sink: GateSink | None = None) -> torch.Tensor:
        if getattr(override, "element_mix", None) is not None and override.element_mix(
                context or GateContext(layer=self.name, sigma=sigma)) is not None:
            raise OrthoHydraError("omcd / mc_dropout blends are not available for ChimeraHydra layers.",
                                  key=self.name, fix="use pin or blend in the router node for this adapter")
        lx_c = self.project(x)
        w_c, w_f = self._weights(lx_c, sigma, override, context, fei, sink)
        ups_c, ups_f = self.ups[: self.num_content], self.ups[self.num_content:]
        if not self.dual:  # one shared projection: one mix over all E experts
            return mix_and_project_up(lx_c, torch.cat([w_c, w_f], -1), self.ups, self.scale)
        lx_f = project_down(x, self.down_f, self.inv_scale)
        out = mix_and_project_up(lx_c, w_c, ups_c, self.scale)
        if self.num_freq:
            out = out + mix_and_project_up(lx_f, w_f, ups_f, self.scale)
        return out

    def factors(self, gate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        w_c, w_f = self.pool_weights(self.constant_gate(gate))
        ups = self.ups.float()
        up_c = self.scale * torch.einsum("e,eor->or", w_c, ups[: self.num_content])
        up_f = self.scale * torch.einsum("e,eor->or", w_f, ups[self.num_content:])
        down_c = self.folded_down()
        if not self.dual:
            return up_c + up_f, down_c
        down_f = self.down_f.float() if self.inv_scale is None else self.down_f.float() * self.inv_scale.float()
        return torch.cat([up_c, up_f], dim=1), torch.cat([down_c, down_f], dim=0)


# --- reading the reference layout -------------------------------------------------------------------------------


def _int(metadata: Mapping[str, str], key: str, path: str, default: int | None = None) -> int:
    raw = metadata.get(key)
    if raw is None and default is not None:
        return default
    try:
        return int(str(raw))
    except (TypeError, ValueError):
        raise OrthoHydraError(f"ChimeraHydra metadata {key}={raw!r} is missing or not an integer.", path=path,
                              key=key, fix=_FIX) from None


def _float(metadata: Mapping[str, str], key: str, path: str, default: float) -> float:
    raw = metadata.get(key)
    try:
        return default if raw in (None, "") else float(raw)
    except (TypeError, ValueError):
        raise OrthoHydraError(f"ChimeraHydra metadata {key}={raw!r} is not a number.", path=path, key=key,
                              fix=_FIX) from None


def _net(tensors: Mapping[str, torch.Tensor], name: str, path: str, tau: float, outputs: int,
         inputs: int | None) -> MLPRouter:
    keys = [f"{name}.net.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise OrthoHydraError(f"the ChimeraHydra {name} has no {missing[0]}.", path=path, key=missing[0], fix=_FIX)
    w0, b0, w2, b2 = (tensors[k].float() for k in keys)
    if w0.ndim != 2 or b0.shape != (w0.shape[0],) or w2.shape[1:] != (w0.shape[0],) or b2.shape != (w2.shape[0],):
        raise OrthoHydraError(f"the {name} layers {tuple(w0.shape)} / {tuple(w2.shape)} do not chain.", path=path,
                              key=keys[2], fix=_FIX)
    if w2.shape[0] != outputs:
        raise OrthoHydraError(f"the {name} has {w2.shape[0]} outputs for {outputs} experts.", path=path,
                              key=keys[2], fix=_FIX)
    if inputs is not None and w0.shape[1] != inputs:
        raise OrthoHydraError(f"the {name} takes {w0.shape[1]} inputs; the metadata gives FEI + σ widths = {inputs}.",
                              path=path, key=keys[0], fix=_FIX)
    return MLPRouter(w0, b0, w2, b2, tau)


def _stack(prefix: str, group: Mapping[str, torch.Tensor], stem: str, path: str) -> list[torch.Tensor]:
    keys = sorted((k for k in group if k.startswith(stem + ".")), key=lambda k: int(k.split(".")[1]))
    indices = [int(k.split(".")[1]) for k in keys]
    if indices != list(range(len(indices))):
        raise OrthoHydraError(f"expert indices {indices} are not 0..K-1.", path=path, key=f"{prefix}.{stem}.*",
                              fix=_FIX)
    return [group[k] for k in keys]


def parse(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
          path: str | os.PathLike | None) -> tuple[dict[str, ChimeraLayer], set[str]]:
    """``({prefix: layer}, the keys consumed)`` for a ChimeraHydra file; other keys are left to the caller."""
    path = os.fspath(path) if path is not None else None
    if not truthy(metadata.get("ss_use_chimera_hydra")):
        raise OrthoHydraError("the file has ChimeraHydra dual-A keys but no ss_use_chimera_hydra=true.", path=path,
                              key="ss_use_chimera_hydra", fix=_FIX)
    k_c = _int(metadata, "ss_num_experts_content", path)
    k_f = _int(metadata, "ss_num_experts_freq", path)
    fei_dim = _int(metadata, "ss_chimera_fei_feature_dim", path, 0)
    sigma_dim = _int(metadata, "ss_chimera_sigma_feature_dim", path, 0)
    if k_c < 1 or k_f < 0 or not 0 <= fei_dim <= 2 or sigma_dim < 0 or sigma_dim % 2:
        raise OrthoHydraError(f"K_c={k_c}, K_f={k_f}, FEI width {fei_dim}, σ width {sigma_dim}: expected K_c >= 1, "
                              "FEI width 0..2 and an even σ width.", path=path, key="ss_num_experts_content", fix=_FIX)
    tau = _float(metadata, "ss_router_tau", path, 1.0)
    mode = (str(metadata.get("ss_chimera_freq_router_mode") or "learned")).strip().lower()
    consumed: set[str] = set()
    if mode == "fei":
        if fei_dim != k_f:
            raise OrthoHydraError(f"the hardwired FEI frequency router needs K_f = FEI width, got K_f={k_f} and FEI "
                                  f"width {fei_dim}.", path=path, key="ss_chimera_freq_router_mode", fix=_FIX)
        net = None
    elif mode == "learned":
        if fei_dim + sigma_dim <= 0:
            raise OrthoHydraError("the learned frequency router has no input (FEI and σ widths are both 0).",
                                  path=path, key="ss_chimera_fei_feature_dim", fix=_FIX)
        net = _net(tensors, "freq_router", path, tau, k_f, fei_dim + sigma_dim)
        consumed |= {k for k in tensors if k.startswith("freq_router.")}
    else:
        raise OrthoHydraError(f"frequency router mode {mode!r} is unknown (learned, fei).", path=path,
                              key="ss_chimera_freq_router_mode", fix=_FIX)
    div = _float(metadata, "ss_chimera_fei_sigma_low_div", path, 4.0)
    freq = FreqRouter(k_f, fei_dim, sigma_dim, div, net, _float(metadata, "ss_chimera_freq_router_tau", path, 1.0))
    source = str(metadata.get("ss_chimera_content_router_source") or "input").strip().lower()
    content = None
    if source in ("crossattn", "crossattn_emb"):
        content = ContentRouter(_net(tensors, "content_router", path, tau, k_c, None),
                                truthy(metadata.get("ss_chimera_content_router_layer_norm")))
        consumed |= {k for k in tensors if k.startswith("content_router.")}
    elif source != "input":
        raise OrthoHydraError(f"content router source {source!r} is unknown (input, crossattn_emb).", path=path,
                              key="ss_chimera_content_router_source", fix=_FIX)
    uses_fei = net is None or fei_dim > 0
    spec = RouterSpec(source="fei" if uses_fei else "sigma", sigma_dim=sigma_dim, fei_dim=2 if uses_fei else 0,
                      fei_sigma_low_div=div)
    dual = any(".lora_down_c." in k for k in tensors)
    pattern = _DUAL if dual else _SINGLE
    marker = ".lora_down_c." if dual else ".lora_ups."
    prefixes = {k.split(".", 1)[0] for k in tensors if marker in k}
    groups: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    for key, tensor in tensors.items():
        match = pattern.match(key)
        if match is not None and match["prefix"] in groups:
            groups[match["prefix"]][match["suffix"]] = tensor
            consumed.add(key)
    centered = dual and truthy(metadata.get("ss_chimera_centered_gate"))
    layers = {p: _layer(p, g, path, dual, k_c, k_f, freq, content, centered, spec) for p, g in sorted(groups.items())}
    return layers, consumed


def _layer(prefix: str, group: dict[str, torch.Tensor], path: str | None, dual: bool, k_c: int, k_f: int,
           freq: FreqRouter, content: ContentRouter | None, centered: bool, spec: RouterSpec) -> ChimeraLayer:
    downs = ("lora_down_c.weight", "lora_down_f.weight") if dual else ("lora_down.weight",)
    needed = [*downs, *(() if content is not None else ("router.weight", "router.bias"))]
    for key in needed:
        if key not in group:
            raise OrthoHydraError(f"the ChimeraHydra layer has no {key}.", path=path, key=f"{prefix}.{key}", fix=_FIX)
    down = group[downs[0]].float()
    down_f = group[downs[1]].float() if dual else None
    if down.ndim != 2 or (down_f is not None and down_f.shape != down.shape):
        raise OrthoHydraError(f"downs {tuple(down.shape)}"
                              + (f" and {tuple(down_f.shape)}" if down_f is not None else "")
                              + " are not matching (r, in) matrices.", path=path, key=f"{prefix}.{downs[-1]}",
                              fix=_FIX)
    rank, in_features = down.shape
    if dual:
        ups_c, ups_f = _stack(prefix, group, "lora_ups_c", path), _stack(prefix, group, "lora_ups_f", path)
        if (len(ups_c), len(ups_f)) != (k_c, k_f):
            raise OrthoHydraError(f"{len(ups_c)} content and {len(ups_f)} frequency ups; the metadata says K_c={k_c}, "
                                  f"K_f={k_f}.", path=path, key=f"{prefix}.lora_ups_c.*", fix=_FIX)
        ups = ups_c + ups_f
    else:
        ups = _stack(prefix, group, "lora_ups", path)
        if len(ups) != k_c + k_f:
            raise OrthoHydraError(f"{len(ups)} expert ups; the metadata says K_c={k_c} + K_f={k_f}.", path=path,
                                  key=f"{prefix}.lora_ups.*", fix=_FIX)
    out_features = ups[0].shape[0]
    for e, up in enumerate(ups):
        if up.shape != (out_features, rank):
            raise OrthoHydraError(f"expert {e}'s up is {tuple(up.shape)}, expected ({out_features}, {rank}).",
                                  path=path, key=f"{prefix}.lora_ups", fix=_FIX)
    router_w = router_b = None
    if content is None:
        router_w, router_b = group["router.weight"].float(), group["router.bias"].float()
        if router_w.shape != (k_c, rank) or router_b.shape != (k_c,):
            raise OrthoHydraError(f"the content router is {tuple(router_w.shape)} / {tuple(router_b.shape)}, expected "
                                  f"({k_c}, {rank}) / ({k_c},).", path=path, key=f"{prefix}.router.weight", fix=_FIX)
    inv = group.get("inv_scale")
    if inv is not None and inv.numel() != in_features:
        raise OrthoHydraError(f"inv_scale has {inv.numel()} entries for {in_features} inputs.", path=path,
                              key=f"{prefix}.inv_scale", fix=_FIX)
    return ChimeraLayer(name=prefix, down=down, ups=torch.stack(ups).float(), num_content=k_c, freq=freq,
                        alpha=alpha_or_rank(stored_alpha(group.get("alpha")), rank), router_weight=router_w,
                        router_bias=router_b, down_f=down_f, content_router=content, centered=centered,
                        inv_scale=None if inv is None else inv.reshape(-1).float(), router=spec)


def expert_names(num_content: int, num_freq: int) -> list[str]:
    return [f"content {i}" for i in range(num_content)] + [f"freq {j}" for j in range(num_freq)]

