"""The epoch sampler: N ranks draw, position by position, the global batch one process draws at N times the batch."""

import pytest
import torch

from ortho_hydra.sampling import EpochBatches


def _interleaved(dataset: int, per_rank: int, world: int, seed: int, batch: int) -> list[int]:
    """The global batch rebuilt from every rank's share, each sample at its rank's rows."""
    out = [None] * (per_rank * world)
    for rank in range(world):
        sampler = EpochBatches(dataset, per_rank, world=world, rank=rank, seed=seed)
        out[sampler.rows] = sampler.batch(batch)
    return out


@pytest.mark.parametrize(("dataset", "per_rank", "world"), [(8, 2, 2), (9, 2, 2), (7, 1, 2), (10, 1, 3), (11, 3, 3)])
def test_ranks_together_draw_the_single_process_batch_at_the_same_positions(dataset, per_rank, world):
    one = EpochBatches(dataset, per_rank * world, seed=5)
    for batch in range(3 * one.per_epoch + 1):  # across epoch boundaries
        assert _interleaved(dataset, per_rank, world, 5, batch) == one.batch(batch)


@pytest.mark.parametrize(("dataset", "global_batch"), [(8, 4), (9, 4), (7, 2), (10, 3)])
def test_each_epoch_sees_distinct_images_and_drops_only_the_tail(dataset, global_batch):
    one = EpochBatches(dataset, global_batch, seed=1)
    assert one.per_epoch == dataset // global_batch
    for epoch in range(3):
        seen = [i for k in range(one.per_epoch) for i in one.batch(epoch * one.per_epoch + k)]
        assert len(seen) == len(set(seen)) == one.per_epoch * global_batch  # no image twice, no padding reached
        assert all(0 <= i < dataset for i in seen)
        # independently: the seeded epoch permutation, cut at the last whole global batch
        expected = torch.randperm(dataset, generator=torch.Generator().manual_seed(1 + epoch)).tolist()
        assert seen == expected[:one.per_epoch * global_batch]


def test_deterministic_per_seed_and_epoch_and_derived_from_the_batch_count():
    a, b = EpochBatches(9, 4, seed=3), EpochBatches(9, 4, seed=3)
    order = [a.batch(k) for k in range(8)]
    assert [b.batch(k) for k in reversed(range(8))] == order[::-1]  # random access: resume anywhere
    assert order[0:2] != order[2:4]  # a new permutation each epoch
    assert [EpochBatches(9, 4, seed=4).batch(k) for k in range(2)] != order[0:2]
    assert a.position(5) == (2, 1) and a.state(5)["epoch"] == 2


def test_a_global_batch_larger_than_the_dataset_is_refused():
    with pytest.raises(ValueError, match="cannot fill"):
        EpochBatches(3, 2, world=2)
