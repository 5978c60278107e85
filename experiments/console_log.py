"""Everything a study prints also goes to its ``.log``, beside its other outputs."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def stdout_copied_to(path: str | Path) -> Iterator[None]:
    """Within the block, stdout is written both to the console and to ``path`` (truncated first)."""
    with open(path, "w") as log, contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        yield
