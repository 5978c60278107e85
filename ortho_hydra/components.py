"""What a file holds besides the LoRA / Hydra layers this pack applies, so that nothing is dropped silently.

The reference trainer writes more than LoRA and Hydra layers into one file: ReFT block edits
(``reft_unet_blocks_<i>.*``, applied: :mod:`.reft`), ChimeraHydra pools and network routers (applied:
:mod:`.chimera`) and soft tokens.  The loader applies the LoRA legs, routed layers, ReFT edits and Chimera pools;
every other key is classified here, named in the summary as *not applied*, with the reason, and refused under
``strict``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from .errors import OrthoHydraError
from .reft import is_reft_key

UNAPPLIED_KEY = "oh_unapplied"  # metadata stamp: {component: number of keys}, per loaded file
REFERENCE_NODE = "sorryhyun/ComfyUI-Anima_lora-Adapter"

_STRAY_ROUTER = ("a ChimeraHydra router the file's metadata does not declare (no ss_use_chimera_hydra=true, or a "
                 "router mode that does not use it)")
# (component, key pattern, why it is not applied)
KINDS: tuple[tuple[str, re.Pattern, str], ...] = (
    ("ChimeraHydra frequency router", re.compile(r"^freq_router\."), _STRAY_ROUTER),
    ("ChimeraHydra content router", re.compile(r"^content_router\."), _STRAY_ROUTER),
    ("soft tokens", re.compile(r"soft_token|^prompt_tokens?\."),
     f"soft tokens are not supported; the reference node ({REFERENCE_NODE}) applies them"),
)
UNKNOWN = ("unknown keys", "no component this pack or the reference node knows")


def is_other_component(key: str) -> bool:
    """A key of a component the loader must not read as a LoRA leg (a ReFT block has an ``alpha`` too)."""
    return is_reft_key(key) or any(pattern.search(key) for _, pattern, _ in KINDS)


def classify(keys: Iterable[str]) -> dict[str, list[str]]:
    """``{component: keys}`` for keys the loader did not apply; anything unrecognised is 'unknown keys'."""
    out: dict[str, list[str]] = {}
    for key in keys:
        name = next((name for name, pattern, _ in KINDS if pattern.search(key)), UNKNOWN[0])
        out.setdefault(name, []).append(key)
    return out


def stamp(unapplied: Mapping[str, list[str]]) -> str:
    return json.dumps({name: len(keys) for name, keys in sorted(unapplied.items())}, sort_keys=True)


def unapplied_counts(metadata: Mapping[str, str]) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(metadata.get(UNAPPLIED_KEY, "{}")).items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def reason(component: str) -> str:
    return next((why for name, _, why in KINDS if name == component), UNKNOWN[1])


def summary_lines(metadata: Mapping[str, str]) -> list[str]:
    """One line per component found but not applied."""
    return [f"NOT APPLIED: {name} ({count} keys): {reason(name)}"
            for name, count in unapplied_counts(metadata).items()]


def require_all_applied(metadata: Mapping[str, str], path: str | None) -> None:
    """Strict loading: refuse a file with components this pack would leave out."""
    counts = unapplied_counts(metadata)
    if counts:
        found = ", ".join(f"{name} ({count} keys)" for name, count in counts.items())
        raise OrthoHydraError(f"the file holds components this pack does not apply: {found}.", path=path,
                              key=next(iter(counts)),
                              fix=f"load it with the reference node ({REFERENCE_NODE}) to get all of it, or turn "
                                  "'strict' off to apply the LoRA / Hydra layers alone")
