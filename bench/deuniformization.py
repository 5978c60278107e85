"""Router de-uniformisation: Ortho-Hydra against the two HydraLoRA baselines on a tiny real MMDiT.

Claim under test: with identical optimisation, data and a 1,000-step budget, HydraLoRA (``zero``, and
``jitter`` with σ=0.1) leaves the router at its uniform prior while Ortho-Hydra (``ortho``) moves it off
within a few hundred steps.  Every arm gets the same frozen, briefly pretrained W0, the same routed layers,
rank, experts, optimiser, batches, balance-loss weight and router-lr multiplier, at two learning rates
(a base and 10x), 3 seeds each.

Writes bench/out/deuniformization.{csv,md,png} (``--quick``: ``deuniformization_quick.*``).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import load_file, save_file

from devkit.host import boot
from devkit.tiny_dit import mmdit_state_dict
from ortho_hydra import OrthoHydraLinear, metrics
from ortho_hydra.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]

INITS = ("ortho", "zero", "jitter")
NUM_STYLES = 4


@dataclass(frozen=True)
class Config:
    depth: int = 4  # hidden = 64 * depth
    latent: int = 8  # latent side; patch 2 -> (latent/2)^2 image tokens
    channels: int = 16
    ctx_tokens: int = 4
    ctx_dim: int = 64  # also the pooled (adm) width
    batch: int = 16
    rank: int = 4
    experts: int = 4
    jitter_std: float = 0.1
    balance: float = 1e-5  # Switch-style balance-loss weight, from step 0, every arm
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


# ----------------------------------------------------------------------------------------------- data


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


# ---------------------------------------------------------------------------------------------- model


def build_mmdit(cfg: Config) -> nn.Module:
    """ComfyUI's own MMDiT as a plain nn.Module, same config as devkit.tiny_dit (hidden = 64·depth)."""
    boot(cpu=True)
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    return MMDiT(depth=cfg.depth, patch_size=2, in_channels=cfg.channels,
                 context_embedder_config={"target": "torch.nn.Linear",
                                          "params": {"in_features": cfg.ctx_dim, "out_features": 64 * cfg.depth}},
                 adm_in_channels=cfg.ctx_dim, pos_embed_max_size=32, qk_norm="rms",
                 dtype=torch.float32, device="cpu", operations=torch.nn)


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                       sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SD3 rectified flow: x_t = (1-σ)x0 + σε, predict v = ε - x0, timesteps = 1000σ."""
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = model(xt, sigma * 1000, context=context, y=pooled)
    return F.mse_loss(pred, noise - x0)


def logit_normal(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.sigmoid(torch.randn(n, generator=gen))


def pretrained_base(cfg: Config, out_dir: Path) -> dict[str, torch.Tensor]:
    """Pretrain every base weight on smooth random fields once; cached so all arms share W0 exactly."""
    path = out_dir / f"deuniformization_base_d{cfg.depth}_s{cfg.latent}_p{cfg.pretrain_steps}.safetensors"
    if path.is_file():  # safetensors: the project never unpickles
        print(f"base: cached pretrained W0 {path.relative_to(ROOT)}")
        return load_file(str(path))
    model = build_mmdit(cfg)
    model.load_state_dict(mmdit_state_dict(cfg.depth, cfg.base_seed, cfg.ctx_dim, cfg.ctx_dim))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.base_seed + 1)
    start, losses = time.perf_counter(), []
    for step in range(cfg.pretrain_steps):
        x0 = smooth_fields(gen, cfg.batch, cfg.channels, cfg.latent)
        context = torch.randn(cfg.batch, cfg.ctx_tokens, cfg.ctx_dim, generator=gen)
        pooled = torch.randn(cfg.batch, cfg.ctx_dim, generator=gen)
        loss = flow_matching_loss(model, x0, context, pooled, logit_normal(gen, cfg.batch),
                                  torch.randn(x0.shape, generator=gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the random adaLN init is loud early on
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.pretrain_steps - 1:
            print(f"base pretrain step {step:4d}  loss {statistics.fmean(losses[-20:]):.4f}")
    print(f"base pretrain: {cfg.pretrain_steps} steps in {time.perf_counter() - start:.1f}s")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp)
    return state


def routed_targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """MLP fc1/fc2 of every image-stream (x_block) joint block."""
    return [(f"joint_blocks.{i}.x_block.mlp.{fc}", getattr(block.x_block.mlp, fc))
            for i, block in enumerate(model.joint_blocks) for fc in ("fc1", "fc2")]


def _delta_hook(layer: OrthoHydraLinear) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + layer.delta(args[0])

    return hook


def attach(model: nn.Module, cfg: Config, init: str, seed: int) -> tuple[list[OrthoHydraLinear], list]:
    layers, handles = [], []
    for idx, (name, linear) in enumerate(routed_targets(model)):
        layer = OrthoHydraLinear(linear.weight.detach(), cfg.rank, cfg.experts, init=init,
                                 jitter_std=cfg.jitter_std, seed=1000 * seed + idx, name=name)
        layers.append(layer)
        handles.append(linear.register_forward_hook(_delta_hook(layer)))
    return layers, handles


# -------------------------------------------------------------------------------------------- metrics


def router_params(layers: Iterable[OrthoHydraLinear]) -> list[nn.Parameter]:
    return [p for layer in layers for p in layer.router.parameters()]


def grad_norm(grads: Iterable[torch.Tensor | None]) -> float:
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads if g is not None))


def gate_stats(layers: list[OrthoHydraLinear]) -> tuple[float, float]:
    """(H̄, KL to uniform), each averaged over routed layers; H̄ is the batch mean per layer."""
    gates = [layer.last_gate.detach() for layer in layers]
    entropy = statistics.fmean(float(metrics.normalized_entropy(g).mean()) for g in gates)
    kl = statistics.fmean(float(metrics.kl_to_uniform(g)) for g in gates)
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
    if layers[0].init_mode != "ortho":
        return float("nan")
    return statistics.fmean(float(layer.lam.detach().abs().mean()) for layer in layers)


@torch.no_grad()
def evaluate(model: nn.Module, layers: list[OrthoHydraLinear], data: StyledSet, cfg: Config) -> dict[str, float]:
    """Held-out flow-matching loss at fixed σ and noise, and style purity (NMI) averaged over layers."""
    gen = torch.Generator().manual_seed(12345)  # identical eval noise for every run
    losses, labels = [], []
    assignments: list[list[torch.Tensor]] = [[] for _ in layers]
    entropies = []
    for sigma in cfg.eval_sigmas:
        for start in range(0, len(data.x0), 32):
            idx = torch.arange(start, min(start + 32, len(data.x0)))
            x0 = data.x0[idx]
            context, pooled = data.cond(idx)
            noise = torch.randn(x0.shape, generator=gen)
            loss = flow_matching_loss(model, x0, context, pooled, torch.full((len(idx),), sigma), noise)
            losses.append((float(loss), len(idx)))
            labels.append(data.style[idx])
            for slot, layer in zip(assignments, layers, strict=True):
                slot.append(layer.last_gate.argmax(-1))
            if layers:
                entropies.append(gate_stats(layers)[0])
    label_t = torch.cat(labels)
    purities = [metrics.style_purity(label_t, torch.cat(a), cfg.experts) for a in assignments]
    total = sum(n for _, n in losses)
    return {"loss": sum(v * n for v, n in losses) / total,
            "purity": statistics.fmean(purities) if purities else float("nan"),
            "one_minus_h": 1 - statistics.fmean(entropies) if entropies else float("nan")}


# ------------------------------------------------------------------------------------------- training


@dataclass
class RunResult:
    init: str
    lr: float
    seed: int
    steps: list[int] = field(default_factory=list)
    one_minus_h: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    router_grad0: float = 0.0
    router_grad0_balance: float = 0.0
    lam_final: float = float("nan")
    spread_final: float = 0.0
    fallback: bool = False
    init_eval: dict[str, float] = field(default_factory=dict)
    final_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def at(self, step: int) -> float:
        return self.one_minus_h[self.steps.index(step)]

    def first_cross(self, threshold: float) -> int | None:
        return next((s for s, v in zip(self.steps, self.one_minus_h, strict=True) if v > threshold), None)


CSV_FIELDS = ("init", "lr", "seed", "step", "loss", "mean_norm_entropy", "one_minus_h", "kl_to_uniform",
              "router_grad_norm", "router_grad_norm_balance", "mean_abs_lambda", "expert_spread", "fallback")


def train_run(model: nn.Module, train: StyledSet, heldout: StyledSet, cfg: Config, init: str, lr: float,
              seed: int, writer: csv.DictWriter, progress: Callable[[int], None]) -> RunResult:
    """One arm: attach fresh adapters to the shared frozen model, train ``cfg.steps`` AdamW steps, evaluate."""
    torch.manual_seed(seed)
    layers, handles = attach(model, cfg, init, seed)
    result = RunResult(init=init, lr=lr, seed=seed, fallback=any(layer.basis_replicated for layer in layers))
    routers = router_params(layers)
    router_ids = {id(p) for p in routers}
    others = [p for layer in layers for p in layer.parameters() if id(p) not in router_ids]
    opt = torch.optim.AdamW([{"params": others, "lr": lr},
                             {"params": routers, "lr": lr * cfg.router_lr_mult}], weight_decay=cfg.weight_decay)
    result.init_eval = evaluate(model, layers, heldout, cfg)
    gen = torch.Generator().manual_seed(seed)  # same batches, σ and noise for every init at this seed
    start = time.perf_counter()
    try:
        for step in range(cfg.steps + 1):  # the last pass only measures the router after `steps` updates
            idx = torch.randint(len(train.x0), (cfg.batch,), generator=gen)
            x0 = train.x0[idx]
            context, pooled = train.cond(idx)
            fm = flow_matching_loss(model, x0, context, pooled, logit_normal(gen, cfg.batch),
                                    torch.randn(x0.shape, generator=gen))
            balance = torch.stack([metrics.balance_loss(layer.last_gate) for layer in layers]).mean()
            log = step % cfg.log_every == 0 or step == cfg.steps
            if log:  # the balance term's own router gradient is cheap: it never touches the base model
                balance_grad = grad_norm(torch.autograd.grad(cfg.balance * balance, routers, retain_graph=True))
            opt.zero_grad(set_to_none=True)
            (fm + cfg.balance * balance).backward()
            if log:
                entropy, kl = gate_stats(layers)
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
                if step == 0:
                    result.router_grad0, result.router_grad0_balance = row["router_grad_norm"], balance_grad
            if step < cfg.steps:
                opt.step()
            progress(step)
        result.seconds = time.perf_counter() - start
        result.lam_final = mean_abs_lambda(layers)
        result.spread_final = expert_spread(layers)
        result.final_eval = evaluate(model, layers, heldout, cfg)
    finally:
        for handle in handles:
            handle.remove()
    return result


# -------------------------------------------------------------------------------------------- report


def _mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _group(results: list[RunResult], init: str, lr: float) -> list[RunResult]:
    return [r for r in results if r.init == init and r.lr == lr]


def report_table(results: list[RunResult], cfg: Config, lrs: list[float]) -> list[str]:
    marks = [s for s in (100, 300) if s < cfg.steps] + [cfg.steps]
    head = (["init", "lr"] + [f"1−H̄ @{s}" for s in marks]
            + [f"KL @{cfg.steps}", f"first 1−H̄>{cfg.threshold} (per seed)", "held-out loss",
               "style purity init→final", "router ‖∇‖ step 0 (balance part)", "mean abs λ final",
               "expert spread final", "fallback"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lr in lrs:
        for init in INITS:
            group = _group(results, init, lr)
            if not group:
                continue
            crosses = [r.first_cross(cfg.threshold) for r in group]
            cells = [init, f"{lr:g}"]
            cells += [_mean_sd([r.at(s) for r in group], ".2e") for s in marks]
            cells.append(_mean_sd([r.kl[-1] for r in group], ".2f"))
            cells.append(", ".join("never" if c is None else str(c) for c in crosses))
            cells.append(_mean_sd([r.final_eval["loss"] for r in group], ".4f"))
            cells.append(f"{_mean_sd([r.init_eval['purity'] for r in group], '.2f')} → "
                         f"{_mean_sd([r.final_eval['purity'] for r in group], '.2f')}")
            cells.append(f"{_mean_sd([r.router_grad0 for r in group], '.1e')} "
                         f"({_mean_sd([r.router_grad0_balance for r in group], '.1e')})")
            lam = [r.lam_final for r in group]
            cells.append("—" if math.isnan(lam[0]) else _mean_sd(lam, ".3f"))
            cells.append(_mean_sd([r.spread_final for r in group], ".2e"))
            cells.append("yes" if any(r.fallback for r in group) else "no")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(results: list[RunResult], cfg: Config, lr: float, loss_tolerance: float = 0.05) -> str:
    """The claim at one lr: baselines never cross the threshold, ortho crosses by ~step 300, loss comparable."""
    ortho = _group(results, "ortho", lr)
    baselines = {init: _group(results, init, lr) for init in ("zero", "jitter")}
    if not ortho or not all(baselines.values()):
        return f"lr {lr:g}: no verdict (needs all three inits)"
    failures = []
    for init, group in baselines.items():
        crossed = [(r.seed, r.first_cross(cfg.threshold)) for r in group if r.first_cross(cfg.threshold) is not None]
        if crossed:
            where = ", ".join(f"seed {s} at step {c}" for s, c in crossed)
            failures.append(f"`{init}` leaves the uniform prior ({where}; 1−H̄ at {cfg.steps} = "
                            f"{_mean_sd([r.at(cfg.steps) for r in group], '.2e')}, step-0 router ‖∇‖ "
                            f"{_mean_sd([r.router_grad0 for r in group], '.1e')}, expert spread "
                            f"{_mean_sd([r.spread_final for r in group], '.1e')})")
    deadline = min(350, cfg.steps)  # "about step 300"
    late = [(r.seed, r.first_cross(cfg.threshold)) for r in ortho
            if r.first_cross(cfg.threshold) is None or r.first_cross(cfg.threshold) > deadline]
    if late:
        where = ", ".join(f"seed {s}: {'never' if c is None else f'step {c}'}" for s, c in late)
        failures.append(f"`ortho` does not cross by step {deadline} ({where}; mean |λ| final "
                        f"{_mean_sd([r.lam_final for r in ortho], '.3f')}, fallback "
                        f"{'yes' if any(r.fallback for r in ortho) else 'no'})")
    ortho_loss = statistics.fmean(r.final_eval["loss"] for r in ortho)
    best = min(statistics.fmean(r.final_eval["loss"] for r in g) for g in baselines.values())
    if ortho_loss > best * (1 + loss_tolerance):
        failures.append(f"`ortho` held-out loss {ortho_loss:.4f} is more than {loss_tolerance:.0%} above the best "
                        f"baseline's {best:.4f}")
    if not failures:
        return (f"**claim holds at lr {lr:g}**: both baselines keep 1−H̄ < {cfg.threshold} through {cfg.steps} steps "
                f"(all seeds) while ortho crosses by step {deadline}, at held-out loss {ortho_loss:.4f} vs "
                f"best baseline {best:.4f}.")
    return f"**claim fails at lr {lr:g}**: " + "; ".join(failures) + "."


def describe(cfg: Config, seeds: list[int], num_layers: int, num_heldout: int, base_loss: float) -> str:
    """The setup paragraph of the report: everything that is held identical across arms."""
    return (f"Tiny ComfyUI MMDiT depth {cfg.depth} (hidden {64 * cfg.depth}), latent {cfg.channels}x{cfg.latent}"
            f"x{cfg.latent}, base pretrained {cfg.pretrain_steps} steps on smooth random fields (shared W0). "
            f"Routed: MLP fc1/fc2 of every x_block ({num_layers} layers), r={cfg.rank}, E={cfg.experts}, AdamW "
            f"(wd {cfg.weight_decay:g}), batch {cfg.batch}, {cfg.steps} steps, balance weight {cfg.balance:g} from "
            f"step 0, router lr ×{cfg.router_lr_mult:g}, jitter σ={cfg.jitter_std:g}, seeds {seeds}. "
            f"1−H̄ is measured on each training batch and averaged over routed layers; ± is the std over seeds. "
            f"KL is KL(batch-mean gate ‖ uniform), averaged over layers; its maximum ln E = "
            f"{math.log(cfg.experts):.3f} means every sample goes to one expert. Held-out: {num_heldout} latents of "
            f"unseen contents at σ ∈ {list(cfg.eval_sigmas)}; held-out loss of the base model alone: {base_loss:.4f}. "
            f"Style purity = NMI(style, argmax expert) on held-out, averaged over layers.")


def plot(results: list[RunResult], cfg: Config, lrs: list[float], path: Path) -> None:
    """1−H̄ (top) and KL to uniform (bottom) vs step, mean line and min–max band over seeds, one column per lr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(lrs), figsize=(6 * len(lrs), 7), squeeze=False, sharex=True)
    colors = {"ortho": "tab:red", "zero": "tab:blue", "jitter": "tab:green"}
    floor = 1e-8  # log axes need positive values; exact zeros sit on the floor
    for col, lr in enumerate(lrs):
        for row, (key, label) in enumerate((("one_minus_h", "1 − H̄ (normalised entropy)"),
                                            ("kl", "KL(mean gate ‖ uniform) [nats]"))):
            ax = axes[row][col]
            for init in INITS:
                group = _group(results, init, lr)
                if not group:
                    continue
                series = torch.tensor([getattr(r, key) for r in group], dtype=torch.float64).clamp_min(floor)
                steps = group[0].steps
                ax.plot(steps, series.mean(0), color=colors[init], label=f"{init} ({len(group)} seeds)")
                ax.fill_between(steps, series.min(0).values, series.max(0).values, color=colors[init], alpha=0.2)
            if key == "one_minus_h":
                ax.axhline(cfg.threshold, color="k", ls="--", lw=0.8, label=f"threshold {cfg.threshold}")
                ax.set_title(f"lr {lr:g} (router ×{cfg.router_lr_mult:g})")
            ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("step")
            ax.legend(fontsize=8)
    fig.suptitle(f"Router de-uniformisation, tiny MMDiT depth {cfg.depth}, r={cfg.rank}, E={cfg.experts}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 60 steps, 1 seed, base lr only")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1000)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    parser.add_argument("--lr", type=float, default=1e-3, help="base learning rate; 10x is also run")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="explicit lr list (overrides --lr)")
    parser.add_argument("--balance", type=float, default=Config.balance, help="balance-loss weight, every arm")
    parser.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    parser.add_argument("--tag", default="", help="suffix for the output files (supplementary runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)  # Adam moments of near-zero gradients must not hit the slow subnormal path
    cfg = Config(steps=args.steps or (60 if args.quick else 1000), balance=args.balance)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    lrs = args.lrs or ([args.lr] if args.quick else [args.lr, 10 * args.lr])
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / ("deuniformization" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else ""))
    wall = time.perf_counter()

    train, heldout = make_data(cfg)
    print(f"data: {len(train.x0)} train / {len(heldout.x0)} held-out latents ({NUM_STYLES} styles, "
          f"{cfg.train_contents}+{cfg.heldout_contents} contents), {cfg.channels}x{cfg.latent}x{cfg.latent}")
    model = build_mmdit(cfg)
    model.load_state_dict(pretrained_base(cfg, out_dir))
    model.requires_grad_(False).eval()
    base_loss = evaluate(model, [], heldout, cfg)["loss"]
    for name, linear in routed_targets(model):
        out_f, in_f = linear.weight.shape
        fits = cfg.experts * cfg.rank <= min(out_f, in_f)
        print(f"routed {name}: {in_f}->{out_f}, E·r = {cfg.experts * cfg.rank} "
              f"{'<=' if fits else '>'} {min(out_f, in_f)}{'' if fits else '  (ortho falls back!)'}")

    runs = [(lr, seed, init) for lr in lrs for seed in seeds for init in args.inits]
    total_steps = len(runs) * (cfg.steps + 1)
    results: list[RunResult] = []
    done = 0
    timing: dict[str, float] = {}

    def progress(step: int) -> None:
        nonlocal done
        done += 1
        if done == 5:
            timing["t5"] = time.perf_counter()
        elif done == 25:
            per_step = (time.perf_counter() - timing["t5"]) / 20
            timing["per_step"] = per_step
            print(f"time per training step: {per_step * 1000:.1f} ms -> ~{per_step * total_steps / 60:.1f} min "
                  f"for {total_steps} steps", flush=True)

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

    elapsed = time.perf_counter() - wall
    per_step = statistics.fmean(r.seconds / (cfg.steps + 1) for r in results)
    lines = [f"# Router de-uniformisation ({'quick' if args.quick else 'full'} run)", "",
             describe(cfg, seeds, len(routed_targets(model)), len(heldout.x0), base_loss), "",
             *report_table(results, cfg, lrs), "",
             *[f"- {verdict(results, cfg, lr)}" for lr in lrs], "",
             f"Time per training step {per_step * 1000:.1f} ms (2 threads); total wall time {elapsed / 60:.1f} min.",
             ""]
    text = "\n".join(lines)
    print("\n" + text)
    Path(f"{stem}.md").write_text(text)
    plot(results, cfg, lrs, Path(f"{stem}.png"))
    print(f"wrote {stem}.csv, .md, .png")


if __name__ == "__main__":
    main()
