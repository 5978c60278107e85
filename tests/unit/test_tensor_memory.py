"""devkit.memory.TensorMemory, the exact counter the memory tests rely on, against allocations of known size."""

import torch

from devkit.memory import TensorMemory


def test_counts_new_storages_until_freed_and_not_views_or_what_existed():
    before = torch.zeros(1000)
    with TensorMemory() as memory:
        view = before[10:]  # a view of an older storage: nothing new
        a = torch.ones(256, 4)  # 4 KiB
        b = a * 2  # 4 KiB
        assert memory.live == memory.peak == 8192
        c = b.t().contiguous()  # 4 KiB more
        del a
        assert memory.live == 8192 and memory.peak == 12288
        del b, c
        assert memory.live == 0
        memory.reset_peak()
        d = torch.empty(1024, dtype=torch.float64)  # 8 KiB
        assert memory.peak == 8192
    assert view.numel() == 990 and d.numel() == 1024


def test_a_storage_kept_alive_by_a_view_stays_counted():
    with TensorMemory() as memory:
        base = torch.ones(1000)
        tail = base[500:]
        del base
        assert memory.live == 4000
        del tail
        assert memory.live == 0


def test_backward_allocations_are_counted():
    weight = torch.randn(128, 128)
    with TensorMemory() as memory:
        x = torch.randn(64, 128, requires_grad=True)  # 32 KiB
        y = (x @ weight).relu()  # the relu output is saved: 32 KiB
        y.sum().backward()  # x.grad: 32 KiB, with transient gradient buffers on the way
    assert memory.live >= 3 * 32768 - 4 and memory.peak >= memory.live
