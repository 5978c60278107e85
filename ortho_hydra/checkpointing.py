"""Activation checkpointing that tells a forward from its re-run.

Non-reentrant checkpointing (``torch.utils.checkpoint``) runs a block once in the forward pass, keeping only its
inputs, and again in the backward pass to rebuild what the gradients need.  Forward hooks inside the block fire both
times.  A hook that stores something per forward (the trainer's gates) must ignore the re-run: a gate taken from the
re-run carries the re-run's autograd graph, which keeps the rebuilt block's activations alive until the store is
cleared, so checkpointing saves nothing.  :func:`recomputing` says whether the calling code runs inside a re-run.

The re-run must repeat the forward's operations exactly (checkpointing matches saved tensors by position), so hooks
keep computing during it and only skip their side effects.  ``replay`` restores state the block reads from outside
its arguments (the σ of the model call) for the re-run, which happens after that call has returned.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch.utils.checkpoint

_state = threading.local()  # the re-run happens on the thread running the backward pass, inside one call stack


def recomputing() -> bool:
    """True while a checkpointed block is re-run for the backward pass."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def _flagged() -> Iterator[None]:
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def checkpointed(forward: Callable, replay: Callable[[], Callable[[], contextlib.AbstractContextManager]] | None = None
                 ) -> Callable:
    """``forward`` under non-reentrant activation checkpointing, its re-runs flagged by :func:`recomputing`.

    ``replay``, when given, is called at each forward and returns a factory of the context manager the re-runs of
    that forward enter (to restore state the forward read from outside its arguments).
    """

    def run(*args, **kwargs):
        first = True
        restore = replay() if replay is not None else contextlib.nullcontext

        def body(args: tuple, kwargs: dict):
            nonlocal first
            if first:
                first = False
                return forward(*args, **kwargs)
            with _flagged(), restore():
                return forward(*args, **kwargs)

        # args and kwargs travel as two values, so no keyword of the block can collide with checkpoint()'s own
        return torch.utils.checkpoint.checkpoint(body, args, kwargs, use_reentrant=False)

    return run
