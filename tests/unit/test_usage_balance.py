"""The balance term with expert usage averaged over micro-batches (``UsageBalance``), against direct computation."""

import pytest
import torch

from ortho_hydra import metrics
from ortho_hydra.training import UsageBalance


def _gates(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=True)


def test_memory_one_is_the_per_batch_switch_term():
    gates = _gates([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1], [0.6, 0.2, 0.1, 0.1]])
    got = UsageBalance(memory=1).loss({"a": gates})
    torch.testing.assert_close(got, metrics.balance_loss(gates), rtol=0, atol=1e-15)


def test_usage_is_an_exponential_average_starting_uniform():
    balance = UsageBalance(memory=4)  # decay 0.75
    batches = [[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]]]  # batch 1: argmax 0, 0, 1
    f = torch.tensor([0.5, 0.5], dtype=torch.float64)
    for rows in batches:
        gates = _gates(rows)
        loss = balance.loss({"a": gates})
        onehot = torch.zeros(2, dtype=torch.float64)
        onehot[int(torch.tensor(rows).argmax())] = 1
        f = 0.75 * f + 0.25 * onehot
        torch.testing.assert_close(balance.usage["a"], f, rtol=0, atol=1e-15)
        torch.testing.assert_close(loss, 2 * (f * gates.detach()[0]).sum(), rtol=0, atol=1e-15)


def test_at_batch_one_it_pushes_against_the_expert_that_takes_every_sample():
    # One expert has been the argmax for many micro-batches; now a sample mildly prefers expert 1.  The per-batch
    # term only sees this sample (usage one-hot on expert 1) and pushes expert 1 down; the averaged term pushes the
    # run's overused expert 0 down harder.
    balance = UsageBalance(memory=32)
    for _ in range(64):
        balance.loss({"a": torch.tensor([[0.7, 0.1, 0.1, 0.1]], dtype=torch.float64)})
    logits = torch.tensor([[0.0, 0.1, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    balance.loss({"a": torch.softmax(logits, -1)}).backward()
    assert logits.grad[0, 0] > 0 > logits.grad[0, 2]  # descent lowers expert 0, raises the unused ones
    per_batch = torch.tensor([[0.0, 0.1, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    UsageBalance(memory=1).loss({"a": torch.softmax(per_batch, -1)}).backward()
    assert per_batch.grad[0, 1] > 0 and per_batch.grad[0, 0] < 0  # it would raise expert 0 instead


def test_state_round_trips_and_memory_is_validated():
    balance = UsageBalance(memory=8)
    balance.loss({"a": _gates([[0.1, 0.9]]), "b": _gates([[0.6, 0.4]])})
    restored = UsageBalance(memory=8)
    restored.load_state(balance.state())
    for name in ("a", "b"):
        torch.testing.assert_close(restored.usage[name], balance.usage[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="memory"):
        UsageBalance(memory=0)
