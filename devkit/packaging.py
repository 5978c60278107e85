"""What the pack declares for installers, shared by the unit test (the pack's files) and the host test (a host's
own requirements)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Distributions every tested ComfyUI's requirements.txt installs, so the pack's requirements.txt leaves them out.
COMFYUI_PROVIDES = frozenset({"torch", "safetensors", "numpy", "pillow"})


def declared(lines: Iterable[str]) -> set[str]:
    """Distribution names of requirement lines (comments and blanks skipped), lower case."""
    return {re.split(r"[<>=!~ \[]", line.strip(), maxsplit=1)[0].lower() for line in lines
            if line.strip() and not line.strip().startswith("#")}
