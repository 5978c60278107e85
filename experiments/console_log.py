"""Where a study run writes, and everything it prints also going to its ``.log`` beside its other outputs."""

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


def study_stem(results: Path, name: str, quick: bool, out: Path | None = None, threads: int = 1) -> Path:
    """The path stem a run writes under (``results/``, ``results/quick/`` for a quick run, or ``out``), its folder
    made, with torch set up as every study runs: ``threads`` threads, and denormals flushed (Adam moments of
    near-zero gradients must not take the slow subnormal path)."""
    import torch

    folder = out or (results / "quick" if quick else results)
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return folder / (f"{name}_quick" if quick else name)
