"""The free-text lists users type into widgets and keyframe lines: ``"1, 0.5; 0"`` -> items, or an error naming the
widget and an example."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import OrthoHydraError

T = TypeVar("T")


def split_list(text: str) -> list[str]:
    """``"a, b; c"`` -> ``["a", "b", "c"]``: commas or semicolons, blanks dropped."""
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]


def parse_list(text: str, convert: Callable[[str], T], *, key: str, example: str) -> list[T]:
    """Each item of :func:`split_list` converted, or an error naming the widget and an example."""
    try:
        return [convert(part) for part in split_list(text)]
    except ValueError as exc:
        kind = {int: "integers", float: "numbers"}.get(convert, "values")
        raise OrthoHydraError(f"{key} must be comma-separated {kind}, got {text!r}.", key=key,
                              fix=f"e.g. {example}") from exc


def adapter_names_from(defaults: list[str], typed: str) -> list[str]:
    """Typed names (comma-separated), else ``defaults``; one per adapter and no duplicates (they become expert
    names)."""
    names = split_list(typed) or list(defaults)
    if len(names) != len(defaults):
        raise OrthoHydraError(f"{len(names)} names for {len(defaults)} adapters.", key="names",
                              fix="give one name per connected adapter, or leave names empty")
    if len(set(names)) != len(names):
        raise OrthoHydraError(f"duplicate names: {', '.join(names)}.", key="names",
                              fix="give every adapter its own name")
    return names
