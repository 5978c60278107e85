"""Router de-uniformisation: Ortho-Hydra against the two HydraLoRA baselines on a tiny real MMDiT.

Claim under test: with identical optimisation, data and a 1,000-step budget, HydraLoRA (``zero``, and
``jitter`` with σ=0.1) leaves the router at its uniform prior while Ortho-Hydra (``ortho``) moves it off
within a few hundred steps.  Every arm gets the same frozen, briefly pretrained W0, the same routed layers,
rank, experts, optimiser, batches, balance-loss weight and router-lr multiplier, at two learning rates
(a base and 10x), 3 seeds each.  The table, verdict and plot are in ``bench/deuniformization_report.py``.

Writes bench/out/deuniformization.{csv,md,png,log} (``--quick``: ``deuniformization_quick.*``).

    .venv/bin/python bench/deuniformization.py            # full run, ~15 min on 2 CPU cores
    .venv/bin/python bench/deuniformization.py --quick    # 60-step smoke test
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import load_file, save_file

from bench.deuniformization_data import NUM_STYLES, StyledSet, make_data, smooth_fields
from bench.deuniformization_report import INITS, RunResult, describe, plot, report
from devkit import tiny_dit
from devkit.host import boot
from experiments.console_log import stdout_copied_to
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

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    depth: int = 4  # hidden = 64 * depth
    latent: int = 8  # latent side; patch 2 -> (latent/2)^2 image tokens
    channels: int = 16  # fixed by devkit.tiny_dit
    ctx_tokens: int = 4
    ctx_dim: int = 64  # context and pooled (adm) width, fixed by devkit.tiny_dit
    batch: int = 16
    rank: int = 4
    experts: int = 4
    jitter_std: float = 0.1
    balance: float = 1e-5  # Switch-style balance-loss weight, every arm
    balance_start: float = 0.0  # the step it switches on, or a fraction of the run when < 1 (the paper: 0.4)
    router_lr_mult: float = 10.0
    weight_decay: float = 0.0
    steps: int = 1000
    log_every: int = 10
    threshold: float = 0.005  # 1 - H̄ above this counts as "off the uniform prior"
    pretrain_steps: int = 400
    pretrain_lr: float = 5e-4
    train_contents: int = 24
    heldout_contents: int = 8
    phases: int = 4  # texture phases drawn per (content, style) pair
    eval_sigmas: tuple[float, ...] = (0.25, 0.5, 0.75)
    data_seed: int = 0
    base_seed: int = 0
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9): under SGD a tiny symmetric gradient stays tiny
    router_std: float = 0.01  # router weight init; 0 gives exactly uniform gates
    dense_log_until: int = 0  # log every step before this one (router-gradient evidence)
    threads: int = 2


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


def pretrain_base(model: nn.Module, cfg: Config, out_dir: Path) -> None:
    """Pretrain every base weight on smooth random fields once; cached so all arms share W0 exactly."""
    path = out_dir / f"deuniformization_base_d{cfg.depth}_s{cfg.latent}_p{cfg.pretrain_steps}.safetensors"
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


# ----------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 steps, 1 seed, base lr only")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    parser.add_argument("--lr", type=float, default=1e-3, help="base learning rate; 10x is also run")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="explicit lr list (overrides --lr)")
    parser.add_argument("--balance", type=float, default=Config.balance, help="balance-loss weight, every arm")
    parser.add_argument("--balance-start", type=float, default=Config.balance_start,
                        help="step the balance term switches on, or a fraction of the run when < 1 (paper: 0.4)")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--tag", default="", help="suffix for the output files (supplementary runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()



def run(args: argparse.Namespace, cfg: Config, stem: Path) -> None:
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    lrs = args.lrs or ([args.lr] if args.quick else [args.lr, 10 * args.lr])
    wall = time.perf_counter()
    train, heldout = make_data(cfg)
    print(f"data: {len(train.x0)} train / {len(heldout.x0)} held-out latents ({NUM_STYLES} styles, "
          f"{cfg.train_contents}+{cfg.heldout_contents} contents), {cfg.channels}x{cfg.latent}x{cfg.latent}")
    model = build_model(cfg)
    pretrain_base(model, cfg, stem.parent)
    model.requires_grad_(False).eval()
    base_loss = evaluate(model, StepGates(), heldout, cfg)["loss"]
    for name, linear in routed_targets(model).items():
        out_f, in_f = linear.weight.shape
        fits = cfg.experts * cfg.rank <= min(out_f, in_f)
        print(f"routed {name}: {in_f}->{out_f}, E·r = {cfg.experts * cfg.rank} "
              f"{'<=' if fits else '>'} {min(out_f, in_f)}{'' if fits else '  (ortho falls back!)'}")

    runs = [(lr, seed, init) for lr in lrs for seed in seeds for init in args.inits]
    total_steps, stamps = len(runs) * (cfg.steps + 1), []

    def progress() -> None:  # one estimate of the whole run's time, from steps 5..25
        stamps.append(time.perf_counter())
        if len(stamps) == 25:
            per_step = (stamps[-1] - stamps[4]) / 20
            print(f"time per training step: {per_step * 1000:.1f} ms -> ~{per_step * total_steps / 60:.1f} min "
                  f"for {total_steps} steps", flush=True)

    results: list[RunResult] = []
    with open(f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for k, (lr, seed, init) in enumerate(runs):
            result = train_run(model, train, heldout, cfg, init, lr, seed, writer, progress)
            handle.flush()
            results.append(result)
            print(f"[{k + 1}/{len(runs)}] {init:6s} lr {lr:g} seed {seed}: 1−H̄ final {result.one_minus_h[-1]:.2e}, "
                  f"first >{cfg.threshold}: {result.first_cross(cfg.threshold)}, held-out loss "
                  f"{result.final_eval['loss']:.4f}, purity {result.final_eval['purity']:.2f}, "
                  f"{result.seconds:.1f}s ({time.perf_counter() - wall:.0f}s elapsed)", flush=True)

    per_step = statistics.fmean(r.seconds / (cfg.steps + 1) for r in results)
    footer = (f"Time per training step {per_step * 1000:.1f} ms (2 threads); total wall time "
              f"{(time.perf_counter() - wall) / 60:.1f} min.")
    text = report(results, cfg, lrs, describe(cfg, seeds, len(routed_targets(model)), len(heldout.x0), base_loss),
                  f"Router de-uniformisation ({'quick' if args.quick else 'full'} run)", footer)
    print("\n" + text)
    Path(f"{stem}.md").write_text(text)
    plot(results, cfg, lrs, Path(f"{stem}.png"))
    print(f"wrote {stem}.csv, .md, .png, .log")


def main() -> None:
    args = parse_args()
    torch.set_flush_denormal(True)  # Adam moments of near-zero gradients must not hit the slow subnormal path
    torch.set_num_threads(Config.threads)
    cfg = Config(steps=args.steps or (60 if args.quick else 1000), balance=args.balance,
                 balance_start=args.balance_start)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / ("deuniformization" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else ""))
    with stdout_copied_to(f"{stem}.log"):
        run(args, cfg, stem)


if __name__ == "__main__":
    main()
