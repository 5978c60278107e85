"""Activation checkpointing that flags its re-runs: a hook storing per forward sees each forward once, the re-run
repeats the forward's numbers, and the activations kept are a fraction of those without it (counted exactly)."""

import contextlib

import torch
from torch import nn

from devkit.memory import TensorMemory
from ortho_hydra.checkpointing import checkpointed, recomputing

WIDTH, BLOCKS, TOKENS = 64, 8, 1024


def stack(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*(nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH),
                                         nn.LayerNorm(WIDTH)) for _ in range(BLOCKS)))


class Store:
    """A forward hook on each block's second Linear that computes a gate from the Linear's input, as the trainer's
    hooks do, and keeps it for a loss term (the balance term), unless the call is a re-run.  (A norm follows the
    Linear, so a re-run runs on past the hook: it stops once it has rebuilt the block's last saved tensor.)"""

    def __init__(self) -> None:
        self.kept, self.reruns = [], 0
        self.probe = torch.randn(4 * WIDTH, 4, generator=torch.Generator().manual_seed(1))

    def __call__(self, module, args, output):
        rerun = recomputing()
        self.reruns += rerun  # counted first: a re-run stops as soon as it has rebuilt the last saved tensor
        gate = torch.softmax((args[0] @ self.probe).square().mean(0), -1)  # the re-run computes it too
        if not rerun:
            self.kept.append(gate)


def train_step(model: nn.Sequential, x: torch.Tensor, checkpoint: bool, store: Store | None = None
               ) -> tuple[Store, int, torch.Tensor]:
    """One forward and backward, each block checkpointed or not, with a loss term on the kept gates.  Returns the
    store, the exact peak of the storages allocated and the loss."""
    store = store or Store()
    handles = [block[2].register_forward_hook(store) for block in model]
    for block in model:
        if checkpoint:
            block.forward = checkpointed(block.forward)
    try:
        with TensorMemory() as memory:
            out = model(x)
            loss = out.square().mean() + 1e-3 * sum(k.square().sum() for k in store.kept)
            loss.backward()
        return store, memory.peak, loss.detach()
    finally:
        for handle in handles:
            handle.remove()
        for block in model:
            block.__dict__.pop("forward", None)


def test_each_forward_is_stored_once_and_the_numbers_do_not_change():
    x = torch.randn(TOKENS, WIDTH)
    plain, ckpt = stack(), stack()
    s_plain, _, loss_plain = train_step(plain, x, checkpoint=False)
    s_ckpt, _, loss_ckpt = train_step(ckpt, x, checkpoint=True)
    assert len(s_plain.kept) == len(s_ckpt.kept) == BLOCKS and s_plain.reruns == 0
    assert s_ckpt.reruns == BLOCKS  # every block was re-run for the backward, flagged
    assert torch.equal(loss_plain, loss_ckpt)
    for a, b in zip(s_plain.kept, s_ckpt.kept, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain.parameters(), ckpt.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
    assert not recomputing()


def test_checkpointing_keeps_a_fraction_of_the_activations():
    x = torch.randn(TOKENS, WIDTH)
    _, plain, _ = train_step(stack(), x, checkpoint=False)
    _, ckpt, _ = train_step(stack(), x, checkpoint=True)
    # without: 8 blocks' hidden activations (TOKENS x 4·WIDTH, twice) stay alive to the backward; with: the blocks'
    # inputs, one re-run block and the weights' gradients
    assert ckpt < plain / 3, (ckpt, plain)


def test_a_store_that_keeps_re_run_gates_defeats_checkpointing():
    """The positive control for the test above: what the trainer did before it asked ``recomputing()``."""

    class KeepsReRuns(Store):
        def __call__(self, module, args, output):
            gate = torch.softmax((args[0] @ self.probe).square().mean(0), -1)
            self.kept.append(gate)  # a re-run's gate: its graph holds the re-run block's activations

    x = torch.randn(TOKENS, WIDTH)
    _, plain, _ = train_step(stack(), x, checkpoint=False)
    store, peak, _ = train_step(stack(), x, checkpoint=True, store=KeepsReRuns())
    assert len(store.kept) == 2 * BLOCKS and peak > 0.5 * plain, (peak, plain)


def test_a_re_run_sees_the_state_its_forward_saw():
    """A block reading outside state (the σ of the model call, cleared when the call returns) gets it back."""
    state = {"scale": None}

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            return self.linear(x) * state["scale"]

    def replay():
        saved = state["scale"]

        @contextlib.contextmanager
        def restored():
            now, state["scale"] = state["scale"], saved
            try:
                yield
            finally:
                state["scale"] = now

        return restored

    torch.manual_seed(0)
    block, x = Scaled(), torch.randn(4, WIDTH, requires_grad=True)
    state["scale"] = 3.0
    block(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    block.forward = checkpointed(block.forward, replay=replay)
    state["scale"] = 3.0
    out = block(x)
    state["scale"] = None  # the model call returned
    out.sum().backward()
    assert torch.equal(x.grad, expected)
