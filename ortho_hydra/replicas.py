"""How one training step is shared between processes: one process, or DDP replicas over the adapter.

The training loop asks a :class:`Replicas` for three things and never branches on the kind: how to run the
step's forward (DDP must see it to all-reduce the gradients), how to skip the all-reduce on accumulation
micro-steps, and the mean of a number over processes (for the log).  With one process every method is the identity.
Which images a rank trains on, and at which positions of the global batch, is :mod:`.sampling`'s.

The base model is frozen and replicated whole on every rank; only the adapter's parameters are DDP's.  Each rank
takes its share of the global batch from the epoch sampler and draws the noise levels and noise of the whole global
batch from the same seeded generators, keeping its positions, so world size N at per-rank batch b computes what one
process computes at batch N·b (equal shards: the mean of the ranks' mean losses is the global mean loss, and DDP
averages the gradients).  The balance term is the one exception: it is nonlinear in each micro-batch's expert
usage, and each rank computes it on its own rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


class Replicas:
    """One process: every method is the identity."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def attach(self, network: nn.Module) -> None:
        """Called once the adapter's parameters exist (and sit on their device)."""

    def forward(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        return step()

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        yield

    def mean(self, value: float) -> float:
        return value


class _Step(nn.Module):
    """What DDP wraps: the adapter's parameters, and a forward that runs one step's closure."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        return step()


class DataParallelReplicas(Replicas):
    """DDP over the adapter in an initialised process group (gloo on CPU, NCCL on GPU)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; launch with torchrun")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._ddp: nn.parallel.DistributedDataParallel | None = None

    def attach(self, network: nn.Module) -> None:
        device = next(network.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: a router or expert can get no gradient in a step (e.g. label guidance off and
        # a gate that is exactly uniform), and DDP must not wait for it
        self._ddp = nn.parallel.DistributedDataParallel(_Step(network), device_ids=ids,
                                                        find_unused_parameters=True)

    def forward(self, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self._ddp(step)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        with self._ddp.no_sync():
            yield

    def mean(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return float(t) / self.world
