"""The embedded default: a tiny SD3-style DiT and a small Ortho-Hydra adapter fitted for it.

The adapter is trained, not drawn: every adapted Linear starts from its own weights (disjoint SVD bases)
and takes a few deterministic Adam steps on a synthetic two-style task.  Style A and style B inputs
differ in their channel statistics, and each style wants its own low-rank residual on the output, so
the router has to tell the styles apart from the input alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapters import library, lora_weights
from .host import COMFY_DIR
from .tiny_dit import load_mmdit, mmdit_state_dict

DIT_NAME = "ortho_hydra_demo_mmdit.safetensors"
DIT_V2_NAME = "ortho_hydra_demo_mmdit_v2.safetensors"  # a stand-in "next version": every Linear moved ~15 %
ADAPTER_NAME = "ortho_hydra_demo_moe.safetensors"
TARGETS = r"x_block_(attn_qkv|attn_proj|mlp_fc1|mlp_fc2)$"
STYLE_NAMES = ["style A (dense)", "style B (sparse)"]


def _style_batch(in_features: int, style: int, gen: torch.Generator, batch: int = 8, tokens: int = 32):
    """Style 0: calm activations weighted to the first half of the channels; style 1: 2.5x stronger and
    spiky, weighted to the second half.  The router sees the difference through the RMS-pooled projection."""
    x = torch.randn(batch, tokens, in_features, generator=gen)
    half = in_features // 2
    scale = torch.ones(in_features)
    if style == 0:
        scale[:half] = 1.5
    else:
        scale[half:] = 1.5
        scale *= 2.5
        x = x * (torch.rand(batch, tokens, in_features, generator=gen) < 0.5) * 1.4
    return x * scale


def fit_demo_adapter(weights: dict[str, torch.Tensor], steps: int = 150, rank: int = 4, seed: int = 0,
                     log=print) -> tuple[object, dict]:
    lib = library()
    from ortho_hydra.training import StepGates
    net = lib.network.OrthoHydraNetwork(weights, rank=rank, num_experts=2, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    purities = {}
    for prefix, layer in net.items():
        in_f = weights[prefix].shape[1]
        # each style's wanted change lives in its own expert's output subspace (a random r x r map between
        # the shared in-basis and that expert's out-slice), at ~30% of the weight's scale
        wanted = []
        for style in range(2):
            core = torch.randn(rank, rank, generator=gen)
            delta = layer.out_bases[style] @ core @ layer.in_basis
            wanted.append(0.3 * delta * weights[prefix].norm() / delta.norm())
        opt = torch.optim.Adam([{"params": [layer.cayley_seeds, layer.lam], "lr": 2e-2},
                                {"params": layer.router.parameters(), "lr": 5e-2}])
        start_loss = None
        for _ in range(steps):
            opt.zero_grad()
            loss = 0.0
            for style in (0, 1):
                x = _style_batch(in_f, style, gen)
                loss = loss + (layer.delta(x) - x @ wanted[style].T).pow(2).mean()
            if start_loss is None:
                start_loss = loss.item()
            loss.backward()
            opt.step()
        with torch.no_grad():
            gates = []
            for style in (0, 1):
                seen = StepGates()
                layer.delta(_style_batch(in_f, style, gen), sink=seen)
                gates.append(seen[layer.name])
            labels = torch.tensor([0] * 8 + [1] * 8)
            purities[prefix] = lib.metrics.style_purity(labels, torch.cat(gates).argmax(-1), 2)
        log(f"  {prefix}: loss {loss.item():.4f} (from {start_loss:.4f}), style purity {purities[prefix]:.2f}")
    adapter = net.to_adapter(expert_names=STYLE_NAMES, provenance={
        "trainer": "comfyui-ortho-hydra devkit/demo_assets.py", "task": "synthetic two-style residual fit",
        "steps": steps, "rank": rank, "experts": 2, "seed": seed})
    return adapter, purities


def next_version(state: dict[str, torch.Tensor], change: float = 0.15, seed: int = 5) -> dict[str, torch.Tensor]:
    """The demo DiT's stand-in successor: each 2-D weight plus seeded noise at ``change`` of its own scale."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + change * v.std() * torch.randn(v.shape, generator=g)).contiguous() if v.ndim == 2 else v
            for k, v in state.items()}


BANK_LORAS = tuple(f"ortho_hydra_demo_lora_{i}.safetensors" for i in range(1, 5))


def bank_lora(state: dict[str, torch.Tensor], seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A stand-in style LoRA for the demo DiT in kohya naming: seeded rank-``rank`` patches of the x-block MLPs."""
    g = torch.Generator().manual_seed(1000 + seed)
    out = {}
    for key, w in sorted(state.items()):
        if re.search(r"x_block\.mlp\.fc[12]\.weight$", key):
            name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
            out[f"{name}.lora_up.weight"] = (0.5 * torch.randn(w.shape[0], rank, generator=g)).contiguous()
            out[f"{name}.lora_down.weight"] = (torch.randn(rank, w.shape[1], generator=g) / w.shape[1] ** 0.5)
            out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out


def build(models_dir: Path | None = None, log=print) -> tuple[Path, Path]:
    """Write the tiny DiT to models/diffusion_models and the fitted adapter to models/loras (idempotent)."""
    models_dir = Path(models_dir or COMFY_DIR / "models")
    dit_path = models_dir / "diffusion_models" / DIT_NAME
    adapter_path = models_dir / "loras" / ADAPTER_NAME
    dit_path.parent.mkdir(parents=True, exist_ok=True)
    adapter_path.parent.mkdir(parents=True, exist_ok=True)
    if not dit_path.exists():
        save_file(mmdit_state_dict(depth=2, seed=0), str(dit_path))
        log(f"wrote {dit_path}")
    v2_path = dit_path.parent / DIT_V2_NAME
    if not v2_path.exists():
        save_file(next_version(mmdit_state_dict(depth=2, seed=0)), str(v2_path))
        log(f"wrote {v2_path}")
    missing = [(i, name) for i, name in enumerate(BANK_LORAS) if not (adapter_path.parent / name).exists()]
    state = mmdit_state_dict(depth=2, seed=0) if missing else {}
    for i, name in missing:
        save_file(bank_lora(state, i), str(adapter_path.parent / name))
    if not adapter_path.exists():
        model = load_mmdit(depth=2, seed=0)
        adapter, _ = fit_demo_adapter(lora_weights(model, pattern=TARGETS), log=log)
        library().save(adapter, adapter_path)
        log(f"wrote {adapter_path}")
    return dit_path, adapter_path


TRAIN_LATENT_NAME = "ortho_hydra_demo_styles.latent"
TRAIN_LABELS = "0,0,0,0,1,1,1,1"


def two_style_latents(per_style: int = 4, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The same contents rendered in two latent signatures.

    Content: smooth random blobs (one per content id).  Style 0 adds a slow colour drift on channels 0-7;
    style 1 adds a fine checker texture on channels 8-15.  The conditioning will name only the content.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(per_style, 16, size // 4, size // 4, generator=gen)
    content = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    drift = torch.sin(xx / size * 3.14159)[None, None]
    checker = (((xx + yy) % 2) * 2.0 - 1.0)[None, None]
    style_a, style_b = content.clone(), content.clone()
    style_a[:, :8] += 1.2 * drift
    style_b[:, 8:] += 1.2 * checker
    latents = torch.cat([style_a, style_b])
    labels = torch.tensor([0] * per_style + [1] * per_style)
    return latents, labels


def write_training_latents(input_dir: Path) -> Path:
    """ComfyUI's .latent format (LoadLatent), so the training graph reads the data like a user's."""
    latents, _ = two_style_latents()
    input_dir.mkdir(parents=True, exist_ok=True)
    path = input_dir / TRAIN_LATENT_NAME
    save_file({"latent_tensor": latents.contiguous(), "latent_format_version_0": torch.tensor([])}, str(path))
    return path


def prepare_base_directory(base: Path) -> Path:
    """A ComfyUI --base-directory holding this pack, the demo model, adapter and training latents."""
    from .server import link_pack

    link_pack(base / "custom_nodes")
    build(base / "models", log=lambda *_: None)
    write_training_latents(base / "input")
    return base
