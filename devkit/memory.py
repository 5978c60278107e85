"""An exact memory counter for tests: live tensor bytes, on any device.

``TensorMemory`` counts every storage a tensor op allocates while it is active (forward, backward and optimizer
alike: the autograd engine runs the CPU backward on this thread, with its modes), until that storage is freed.  The
figure is deterministic, so a shared machine's noise cannot move it, unlike a process's resident memory.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _storage(value):
    if not isinstance(value, torch.Tensor) or value.is_meta:
        return None
    try:
        return value.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or wrapper tensors without one plain storage
        return None


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory() as mem:`` ... ``mem.peak``: the most bytes of storages allocated inside the block that
    were alive at once; ``mem.live``: those alive now.  Storages that existed before (weights, inputs) and views of
    them are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def reset_peak(self) -> None:
        self.peak = self.live

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(s) for s in map(_storage, tree_leaves((args, kwargs))) if s is not None}
        for storage in map(_storage, tree_leaves(out)):
            if storage is None or id(storage) in inputs or id(storage) in self._sizes:
                continue
            key = id(storage)
            self._sizes[key] = storage.nbytes()
            weakref.finalize(storage, self._freed, key)
            self.live += self._sizes[key]
            self.peak = max(self.peak, self.live)
        return out
