"""Host tests run against the real ComfyUI installed by `make setup`, booted on the CPU
before any test module imports ``comfy``."""

from devkit.host import boot

COMFY_DIR = boot(cpu=True)
