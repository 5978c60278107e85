"""What a benchmark or study records about the machine it ran on, beside its figures."""

from __future__ import annotations

import platform

import torch


def environment(device: str = "cpu") -> dict[str, str]:
    env = {"torch": torch.__version__, "threads": str(torch.get_num_threads()), "machine": platform.machine(),
           "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env
