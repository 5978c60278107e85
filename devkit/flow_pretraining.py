"""One step of the rectified-flow pretraining that the toy and glyph worlds' base models share, with its EMA and its
smoothed loss log (the worlds differ in data and conditioning, not in the step)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


def warmup_cosine(opt, warmup: int, steps: int):
    """The worlds' learning-rate schedule: linear warm-up over ``warmup`` steps, then a cosine to 0 at ``steps``."""

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def flow_step(model, opt, sched, ema: dict[str, torch.Tensor], ema_rate: float, x0: torch.Tensor,
              noise: torch.Tensor, sigma: torch.Tensor, pooled: torch.Tensor, context: torch.Tensor) -> float:
    """Predict the velocity ``noise − x0`` at ``x_σ = (1 − σ) x0 + σ noise``, step, fold the weights into ``ema``."""
    s = sigma.view(-1, 1, 1, 1)
    v = model((1 - s) * x0 + s * noise, sigma * 1000, y=pooled, context=context)
    loss = (v - (noise - x0)).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    with torch.no_grad():
        for k, p in model.state_dict().items():
            ema[k].lerp_(p, 1 - ema_rate)
    return loss.item()


class LossLog:
    """A smoothed loss, logged ``times`` times over a run; ``stats`` is what a saved model records."""

    def __init__(self, steps: int, times: int, log: Callable[[str], None]) -> None:
        self.steps, self.every, self.log = steps, max(1, steps // times), log
        self.start, self.running = time.time(), None

    def add(self, step: int, loss: float) -> None:
        self.running = loss if self.running is None else 0.98 * self.running + 0.02 * loss
        if (step + 1) % self.every == 0:
            self.log(f"  step {step + 1}/{self.steps}: loss {self.running:.4f} ({time.time() - self.start:.0f} s)")

    def stats(self) -> dict:
        return {"final_loss": self.running if self.running is not None else float("nan"),
                "train_seconds": time.time() - self.start}
