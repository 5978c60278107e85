"""The de-uniformisation study's machinery: the model, its pretrained base, adapters as hooks, training, evaluation.

One arm (:func:`train_run`) attaches fresh adapters to the routed Linears of a frozen, briefly pretrained MMDiT and
trains them with the settings of :class:`~experiments.deuniformization.config.Config`, logging the router's entropy,
KL to uniform and gradient norms.  ``run.py`` drives the study; ``experiments/deuniformization_map`` reuses it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from devkit import tiny_dit
from devkit.host import COMFY_DIR, boot
from ortho_hydra import OrthoHydraLinear, metrics
from ortho_hydra.atomic import atomic_path
from ortho_hydra.network import OrthoHydraNetwork
from ortho_hydra.training import (
    StepGates,
    balance_starts_at,
    draw_noise_levels,
    mean_balance_loss,
    optimizer_groups,
)

from .config import Config
from .data import StyledSet, smooth_fields
from .report import RunResult

BASE_VERSION = 1  # part of the cached base's key: bump it when the pretraining data or loop change
PRETRAIN_KEYS = ("depth", "latent", "channels", "ctx_tokens", "ctx_dim", "batch", "pretrain_steps", "pretrain_lr",
                 "base_seed")


# ---------------------------------------------------------------------------------------------- model


def build_model(cfg: Config) -> nn.Module:
    """devkit's tiny ComfyUI MMDiT (hidden 64·depth, seeded random W0) as a bare diffusion module on the CPU."""
    boot(cpu=True)
    return tiny_dit.load_mmdit(depth=cfg.depth, seed=cfg.base_seed).model.diffusion_model


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                       sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SD3 rectified flow: x_t = (1-σ)x0 + σε, predict v = ε - x0, timesteps = 1000σ."""
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = model(xt, sigma * 1000, context=context, y=pooled)
    return F.mse_loss(pred, noise - x0)


def base_path(cfg: Config, models_dir: Path | None = None) -> Path:
    """Where the pretrained W0 is cached: the host's ``models/diffusion_models``, keyed by what pretraining reads, as
    the toy world's base is (so every run, test and second host reuses one file)."""
    key = {"version": BASE_VERSION, **{k: v for k, v in asdict(cfg).items() if k in PRETRAIN_KEYS}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    models_dir = models_dir if models_dir is not None else COMFY_DIR / "models"
    return models_dir / "diffusion_models" / f"ortho_hydra_deuniformization_{digest}.safetensors"


def pretrain_base(model: nn.Module, cfg: Config, models_dir: Path | None = None) -> None:
    """Pretrain every base weight on smooth random fields once; cached so all arms share W0 exactly."""
    path = base_path(cfg, models_dir)
    if path.is_file():  # safetensors: the project never unpickles
        print(f"base: cached pretrained W0 {path}")
        model.load_state_dict(load_file(str(path)))
        return
    # ComfyUI builds every diffusion model frozen since 0.33 (BaseModel calls requires_grad_(False)); this is the one
    # place the base itself trains, so it asks for gradients explicitly, whatever grad mode the caller is in.
    model.requires_grad_(True)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            _pretrain(model, cfg)
    finally:
        model.requires_grad_(False)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only


def _pretrain(model: nn.Module, cfg: Config) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.base_seed + 1)
    start, losses = time.perf_counter(), []
    for step in range(cfg.pretrain_steps):
        x0 = smooth_fields(gen, cfg.batch, cfg.channels, cfg.latent)
        context = torch.randn(cfg.batch, cfg.ctx_tokens, cfg.ctx_dim, generator=gen)
        pooled = torch.randn(cfg.batch, cfg.ctx_dim, generator=gen)
        loss = flow_matching_loss(model, x0, context, pooled, draw_noise_levels(cfg.batch, "logit_normal", gen),
                                  torch.randn(x0.shape, generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the random adaLN init is loud early on
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.pretrain_steps - 1:
            print(f"base pretrain step {step:4d}  loss {statistics.fmean(losses[-20:]):.4f}", flush=True)
    print(f"base pretrain: {cfg.pretrain_steps} steps in {time.perf_counter() - start:.1f}s")


def routed_targets(model: nn.Module) -> dict[str, nn.Linear]:
    """MLP fc1/fc2 of every image-stream (x_block) joint block."""
    return {f"joint_blocks.{i}.x_block.mlp.{fc}": getattr(block.x_block.mlp, fc)
            for i, block in enumerate(model.joint_blocks) for fc in ("fc1", "fc2")}


def attach(model: nn.Module, cfg: Config, init: str, seed: int, gates: StepGates) -> tuple[OrthoHydraNetwork, list]:
    """Fresh adapters on the routed Linears as forward hooks; every gate they compute lands in ``gates``."""
    targets = routed_targets(model)
    network = OrthoHydraNetwork({name: linear.weight.detach() for name, linear in targets.items()}, cfg.rank,
                                cfg.experts, init=init, seed=1000 * seed, jitter_std=cfg.jitter_std,
                                router_std=cfg.router_std)

    def hook_for(layer: OrthoHydraLinear) -> Callable:
        return lambda module, args, output: output + layer.delta(args[0], sink=gates)

    return network, [targets[name].register_forward_hook(hook_for(layer)) for name, layer in network.items()]


# -------------------------------------------------------------------------------------------- metrics


def grad_norm(grads) -> float:
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads if g is not None))


def gate_stats(gates: Mapping[str, torch.Tensor]) -> tuple[float, float]:
    """(H̄, KL to uniform), each averaged over routed layers; H̄ is the batch mean per layer."""
    entropy = statistics.fmean(float(metrics.normalized_entropy(g.detach()).mean()) for g in gates.values())
    kl = statistics.fmean(float(metrics.kl_to_uniform(g.detach())) for g in gates.values())
    return entropy, kl


@torch.no_grad()
def expert_spread(layers: list[OrthoHydraLinear]) -> float:
    """RMS of (scaled up_e - mean_e up_e): how different the experts are, the router's only signal."""
    spreads = []
    for layer in layers:
        _, ups = layer.factors()
        spreads.append(float((ups - ups.mean(0, keepdim=True)).square().mean().sqrt()) * layer.scale)
    return statistics.fmean(spreads)


def mean_abs_lambda(layers: list[OrthoHydraLinear]) -> float:
    if not hasattr(layers[0], "lam"):
        return float("nan")
    return statistics.fmean(float(layer.lam.detach().abs().mean()) for layer in layers)


@torch.no_grad()
def evaluate(model: nn.Module, gates: StepGates, data: StyledSet, cfg: Config) -> dict[str, float]:
    """Held-out flow-matching loss at fixed σ and noise, and style purity (NMI) averaged over routed layers."""
    gen = torch.Generator().manual_seed(12345)  # identical eval noise for every run
    losses, labels, entropies = [], [], []
    assignments: dict[str, list[torch.Tensor]] = {}
    for sigma in cfg.eval_sigmas:
        for start in range(0, len(data.x0), 32):
            idx = torch.arange(start, min(start + 32, len(data.x0)))
            context, pooled = data.cond(idx)
            noise = torch.randn(data.x0[idx].shape, generator=gen)
            gates.clear()
            loss = flow_matching_loss(model, data.x0[idx], context, pooled, torch.full((len(idx),), sigma), noise)
            losses.append((float(loss), len(idx)))
            labels.append(data.style[idx])
            for name, gate in gates.items():
                assignments.setdefault(name, []).append(gate.argmax(-1))
            if gates:
                entropies.append(gate_stats(gates)[0])
    gates.clear()
    label_t = torch.cat(labels)
    purities = [metrics.style_purity(label_t, torch.cat(a), cfg.experts) for a in assignments.values()]
    return {"loss": sum(v * n for v, n in losses) / sum(n for _, n in losses),
            "purity": statistics.fmean(purities) if purities else float("nan"),
            "one_minus_h": 1 - statistics.fmean(entropies) if entropies else float("nan")}


# ------------------------------------------------------------------------------------------- training

CSV_FIELDS = ("init", "lr", "seed", "step", "loss", "mean_norm_entropy", "one_minus_h", "kl_to_uniform",
              "router_grad_norm", "router_grad_norm_balance", "mean_abs_lambda", "expert_spread", "fallback")


def train_run(model: nn.Module, train: StyledSet, heldout: StyledSet, cfg: Config, init: str, lr: float,
              seed: int, writer: csv.DictWriter, progress: Callable[[], None]) -> RunResult:
    """One arm: attach fresh adapters to the shared frozen model, train ``cfg.steps`` AdamW steps, evaluate."""
    torch.manual_seed(seed)
    gates = StepGates()
    network, handles = attach(model, cfg, init, seed, gates)
    layers = [layer for _, layer in network.items()]
    result = RunResult(init=init, lr=lr, seed=seed, fallback=bool(network.replicated))
    groups = optimizer_groups(network, lr, cfg.router_lr_mult)
    routers = groups[1]["params"]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw" else \
        torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    result.init_eval = evaluate(model, gates, heldout, cfg)
    gen = torch.Generator().manual_seed(seed)  # same batches, σ and noise for every init at this seed
    balance_from = balance_starts_at(cfg.balance_start, cfg.steps)
    start = time.perf_counter()
    try:
        for step in range(cfg.steps + 1):  # the last pass only measures the router after `steps` updates
            idx = torch.randint(len(train.x0), (cfg.batch,), generator=gen)
            x0 = train.x0[idx]
            context, pooled = train.cond(idx)
            gates.clear()
            fm = flow_matching_loss(model, x0, context, pooled, draw_noise_levels(cfg.batch, "logit_normal", gen),
                                    torch.randn(x0.shape, generator=gen))
            balance = mean_balance_loss(gates) * (1.0 if step >= balance_from else 0.0)
            log = step % cfg.log_every == 0 or step == cfg.steps or step < cfg.dense_log_until
            if log:  # the balance term's own router gradient is cheap: it never touches the base model
                balance_grad = grad_norm(torch.autograd.grad(cfg.balance * balance, routers, retain_graph=True))
            opt.zero_grad(set_to_none=True)
            (fm + cfg.balance * balance).backward()
            if log:
                entropy, kl = gate_stats(gates)
                row = {"init": init, "lr": lr, "seed": seed, "step": step, "loss": fm.item(),
                       "mean_norm_entropy": entropy, "one_minus_h": 1 - entropy, "kl_to_uniform": kl,
                       "router_grad_norm": grad_norm(p.grad for p in routers),
                       "router_grad_norm_balance": balance_grad, "mean_abs_lambda": mean_abs_lambda(layers),
                       "expert_spread": expert_spread(layers), "fallback": int(result.fallback)}
                writer.writerow(row)
                result.steps.append(step)
                result.one_minus_h.append(1 - entropy)
                result.kl.append(kl)
                result.loss.append(row["loss"])
                result.router_grad.append(row["router_grad_norm"])
                result.spread.append(row["expert_spread"])
                result.lam.append(row["mean_abs_lambda"])
                if step == 0:
                    result.router_grad0, result.router_grad0_balance = row["router_grad_norm"], balance_grad
            if step < cfg.steps:
                opt.step()
            progress()
        result.seconds = time.perf_counter() - start
        result.lam_final = mean_abs_lambda(layers)
        result.spread_final = expert_spread(layers)
        result.final_eval = evaluate(model, gates, heldout, cfg)
    finally:
        for handle in handles:
            handle.remove()
    return result


