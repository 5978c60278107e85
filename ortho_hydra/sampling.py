"""Epoch-based data order shared by the node (one process) and the torchrun command (N ranks).

``torch.utils.data.DistributedSampler`` gives rank r the indices ``perm[r::W]`` of one epoch permutation that does
not depend on the world size W (seeded ``seed + epoch``).  Rank r's j-th sample of a local batch of b is therefore
position ``j·W + r`` of the global batch ``perm[k·W·b:(k+1)·W·b]``: the same set, in the same positions, that one
process at batch W·b draws.  Noise is keyed to that position, so N ranks compute what one process computes.

Epoch tail: drop_last on the *global* batch.  An epoch is ``dataset // global_batch`` global batches; the last
``dataset % global_batch`` images of that epoch's permutation sit out that epoch (a different set each epoch).  The
sampler's own padding (when the dataset is not a multiple of W) lies past ``dataset`` in the padded permutation,
so it is never reached.  Epoch and position are derived from the number of global batches drawn so far, so a
resume at the same global batch continues the same order on any world size.
"""

from __future__ import annotations

from torch.utils.data import DistributedSampler


class EpochBatches:
    """This process's index batches, global batch by global batch, from a ``DistributedSampler``."""

    def __init__(self, dataset: int, per_rank: int, *, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        if per_rank < 1 or per_rank * world > dataset:
            raise ValueError(f"{dataset} images cannot fill a global batch of {per_rank} x {world} processes")
        self.dataset, self.per_rank, self.world, self.rank = dataset, per_rank, world, rank
        self.sampler = DistributedSampler(range(dataset), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                          drop_last=False)
        self._epoch: int | None = None
        self._order: list[int] = []

    @property
    def global_batch(self) -> int:
        return self.per_rank * self.world

    @property
    def per_epoch(self) -> int:
        """Global batches per epoch (the incomplete last one is dropped)."""
        return self.dataset // self.global_batch

    @property
    def rows(self) -> slice:
        """Positions of this process's samples in the global batch (the sampler interleaves ranks)."""
        return slice(self.rank, self.global_batch, self.world)

    def position(self, batch: int) -> tuple[int, int]:
        """Global batch number ``batch`` (0-based, counted over the run) -> (epoch, batch within the epoch)."""
        return divmod(batch, self.per_epoch)

    def batch(self, batch: int) -> list[int]:
        """This process's dataset indices for global batch number ``batch``."""
        epoch, k = self.position(batch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order, self._epoch = list(self.sampler), epoch
        return self._order[k * self.per_rank:(k + 1) * self.per_rank]

    def state(self, batch: int) -> dict:
        """What the resume file records about the data order (informational: it is re-derived from the step)."""
        epoch, k = self.position(batch)
        return {"sampler": "DistributedSampler", "dataset": self.dataset, "global_batch": self.global_batch,
                "epoch": epoch, "batch_in_epoch": k}
