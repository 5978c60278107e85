"""Adapters for the tiny test models, built with the core library from the model's own weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .host import import_pack
from .randomize import randomize_layer_


def library():
    """The core library as the pack sees it (its classes are the ones the nodes check against)."""
    return import_pack().ortho_hydra


def lora_weights(model, prefixes: list[str] | None = None, pattern: str | None = None) -> dict[str, torch.Tensor]:
    """``{lora_unet_* prefix: W0}`` for the model's Linears, through the pack's one Linear selection."""
    linears = import_pack().nodes.model_linears.adaptable_linears
    chosen = linears(model, "regex" if pattern else "all_linear", pattern or "", names=prefixes)
    return {name: weight.detach().float().clone() for name, (_, weight) in chosen.items()}


def randomized_adapter(weights: dict[str, torch.Tensor], rank: int = 4, experts: int = 3, seed: int = 0,
                       lam_scale: float = 0.5, router_scale: float = 0.3, **kwargs):
    """An Ortho-Hydra adapter with random rotations, λ and routers, so rows route differently."""
    net = library().network.OrthoHydraNetwork(weights, rank, experts, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 1000)
    for _, layer in net.items():
        randomize_layer_(layer, g, lam_scale=lam_scale, router_scale=router_scale, bias_scale=0.1)
    return net.to_adapter(provenance={"kind": "randomized test adapter", "seed": seed})


def chimera_file(folder: Path, model, content_router: bool) -> tuple[dict[str, torch.Tensor], Path]:
    """A dual-A ChimeraHydra file (reference layout) on two Linears of a tiny Cosmos DiT, with a learned frequency
    router and either per-Linear content routers or the cross-attention one."""
    kc, kf, r, hid, sig = 3, 2, 4, 8, 4
    sd = model.model.diffusion_model.state_dict()
    g = torch.Generator().manual_seed(0)
    t = {}
    for prefix, module in (("lora_unet_blocks_0_mlp_layer1", "blocks.0.mlp.layer1"),
                           ("lora_unet_blocks_1_self_attn_q_proj", "blocks.1.self_attn.q_proj")):
        out, inn = sd[f"{module}.weight"].shape
        for d in ("lora_down_c", "lora_down_f"):
            t[f"{prefix}.{d}.weight"] = torch.randn(r, inn, generator=g) / inn ** 0.5
        for stem, k in (("lora_ups_c", kc), ("lora_ups_f", kf)):
            for e in range(k):
                t[f"{prefix}.{stem}.{e}.weight"] = 0.3 * torch.randn(out, r, generator=g)
        if not content_router:
            t[f"{prefix}.router.weight"] = torch.randn(kc, r, generator=g)
            t[f"{prefix}.router.bias"] = torch.zeros(kc)
        t[f"{prefix}.alpha"] = torch.tensor(2.0)
    for stem, shapes in (("freq_router", ((hid, 2 + sig), (kf, hid))),
                         ("content_router", ((hid, 1024), (kc, hid)) if content_router else ())):
        for index, shape in zip((0, 2), shapes, strict=False):
            t[f"{stem}.net.{index}.weight"] = torch.randn(*shape, generator=g)
            t[f"{stem}.net.{index}.bias"] = torch.randn(shape[0], generator=g)
    meta = {"ss_network_spec": "chimera_hydra", "ss_use_chimera_hydra": "true", "ss_num_experts_content": str(kc),
            "ss_num_experts_freq": str(kf), "ss_chimera_fei_feature_dim": "2",
            "ss_chimera_sigma_feature_dim": str(sig), "ss_chimera_fei_sigma_low_div": "4",
            "ss_chimera_freq_router_mode": "learned"}
    if content_router:
        meta["ss_chimera_content_router_source"] = "crossattn_emb"
    save_file(t, str(folder / "c_chimera.safetensors"), metadata=meta)
    return t, folder / "c_chimera.safetensors"
