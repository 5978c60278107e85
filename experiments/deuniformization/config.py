"""The de-uniformisation study's settings: one place, imported by its data, study, report and runner."""

from __future__ import annotations

from dataclasses import dataclass


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
