"""One error type for every bad input, so callers (and ComfyUI) show one clear line."""

from __future__ import annotations

import os


class OrthoHydraError(ValueError):
    """Bad input: names the file, the key, what is wrong and how to fix it."""

    def __init__(self, problem: str, *, path: str | os.PathLike | None = None,
                 key: str | None = None, fix: str | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        self.problem = problem
        self.fix = fix
        where = ""
        if self.path is not None:
            where += f"{self.path}: "
        if key is not None:
            where += f"key '{key}': "
        message = where + problem
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)
