"""ComfyUI 0.33's dynamic VRAM (``ModelPatcherDynamic`` with comfy-aimdo), booted as main.py boots it.

Run in a process of its own: comfy-aimdo must be initialised before ``comfy.model_management`` is first imported
(``comfy_aimdo.host_buffer`` binds the library when it is imported), which the host tests' conftest has long done.
"""

from __future__ import annotations

import sys

import torch

from .host import COMFY_DIR, boot


def boot_dynamic(cpu: bool) -> bool:
    """Boot the host with comfy-aimdo up; on a GPU, also make dynamic VRAM the loaders' default as main.py does
    (main.py:300-331).  Returns whether ComfyUI's loaders now build ``ModelPatcherDynamic``.

    On the CPU only aimdo's host side comes up (``init`` loads a library that links libc alone; ``init_devices``
    finds no device), so ComfyUI never builds a dynamic patcher by itself: :func:`dynamic_on_cpu` does."""
    if str(COMFY_DIR) not in sys.path:
        sys.path.insert(0, str(COMFY_DIR))
    import comfy_aimdo.control

    comfy_aimdo.control.init()
    boot(cpu=cpu)
    import comfy.cli_args
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher

    comfy.memory_management.aimdo_enabled = True
    if cpu:
        return False
    devices = mm.get_all_torch_devices()
    headroom = int(comfy.cli_args.args.vram_headroom * 1024 ** 3)
    try:
        ready = comfy_aimdo.control.init_devices((d.index, headroom) for d in devices)
    except TypeError:  # comfy-aimdo 0.4.9 takes bare indices
        ready = comfy_aimdo.control.init_devices(d.index for d in devices)
    if ready:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
    else:
        comfy.memory_management.aimdo_enabled = False
    return bool(ready)


def dynamic_on_cpu(cls: type, model: torch.nn.Module):
    """A ``cls`` (ModelPatcherDynamic or a subclass) with a CPU load device.  ``ModelPatcherDynamic.__new__`` hands
    a CPU load device a stock ModelPatcher (model_patcher.py:1751-1755), so this skips ``__new__``, which no ComfyUI
    path does: a CPU stand-in for a CUDA dynamic patcher, for what its loader does there to modules without casting
    ops and to object patches (no vbar, so streamed weights and their weight patches are not exercised)."""
    patcher = object.__new__(cls)
    patcher.__init__(model, torch.device("cpu"), torch.device("cpu"))
    return patcher
