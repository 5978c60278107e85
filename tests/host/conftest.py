import pytest

from devkit.host import boot


@pytest.fixture(scope="session", autouse=True)
def comfy_host():
    """The real ComfyUI installed by `make setup`, booted on the CPU."""
    return boot(cpu=True)
