"""Host tests run against the real ComfyUI installed by `make setup`, booted on the CPU
before any test module imports ``comfy``."""

from devkit.host import boot

COMFY_DIR = boot(cpu=True)


import pytest  # noqa: E402  (after the host is booted)

from devkit import tiny_dit  # noqa: E402
from devkit.host import import_pack, loras_folder  # noqa: E402


def pytest_collection_modifyitems(items):
    """The browser tests are one slow tier; marked here rather than in test_browser.py, which follows the front end's
    releases on its own schedule."""
    for item in items:
        if item.path.name == "test_browser.py":
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def pack():
    """The pack as ComfyUI imports it."""
    return import_pack()


@pytest.fixture(scope="session")
def patcher(pack):
    return pack.nodes.patcher


@pytest.fixture(scope="session")
def base():
    """The tiny SD3-style MMDiT every node test patches (tests only ever patch clones of it)."""
    return tiny_dit.load_mmdit(depth=2, seed=0)


@pytest.fixture()
def loras(tmp_path):
    """``tmp_path`` as ComfyUI's default "loras" folder for one test; folder_paths is restored afterwards."""
    with loras_folder(tmp_path) as path:
        yield path
