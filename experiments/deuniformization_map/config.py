"""The map's grid: inits, optimisers, router init stds, learning rates and batches, and the shrunk model's settings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from experiments.deuniformization.config import Config

INITS = ("ortho", "zero", "jitter", "jitter_zero_sum")
OPTIMIZERS = ("adamw", "sgd")
ROUTER_STDS = (0.0, 0.01)
LRS = (2e-5, 2e-4, 2e-3)
BATCHES = (1, 16)
EVIDENCE_STEPS = 50
CLAIM_ORTHO_BY = 300  # "Ortho-Hydra leaves within a few hundred steps"

MAP_CONFIG = Config(depth=1, latent=4, batch=1, rank=4, experts=4, balance=0.0, steps=1000, log_every=10,
                    pretrain_steps=200, train_contents=24, heldout_contents=8, dense_log_until=EVIDENCE_STEPS,
                    threads=1)


@dataclass(frozen=True)
class Cell:
    init: str
    optimizer: str
    router_std: float
    lr: float
    batch: int

    def label(self) -> str:
        return f"{self.optimizer}, std {self.router_std:g}, lr {self.lr:g}, batch {self.batch}"


def cells(quick: bool) -> list[Cell]:
    if quick:
        return [Cell("ortho", "adamw", 0.01, 2e-3, 1), Cell("zero", "adamw", 0.0, 2e-3, 1)]
    out = []
    for init, opt, std, lr, batch in itertools.product(INITS, OPTIMIZERS, ROUTER_STDS, LRS, BATCHES):
        if batch != 1 and (opt != "adamw" or std != 0.01):
            continue  # pruned: see the module docstring
        out.append(Cell(init, opt, std, lr, batch))
    return out
