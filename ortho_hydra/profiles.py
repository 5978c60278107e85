"""Style profiles: one captured mean gate per layer, replayed as a static blend.

Stored as small JSON, stamped with the adapter's content hash so a profile is never replayed on the wrong
adapter (same names and shapes are not enough: a retrained file routes differently).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import weakref
from dataclasses import dataclass, field

import torch

from .adapter import Adapter
from .atomic import atomic_path
from .errors import OrthoHydraError

PROFILE_FORMAT = "ortho_hydra_style_profile"
PROFILE_VERSION = 1


_fingerprints: weakref.WeakKeyDictionary[Adapter, str] = weakref.WeakKeyDictionary()


def adapter_fingerprint(adapter: Adapter) -> str:
    """sha256 over every routed layer's name and tensors, always computed from the tensors themselves.

    Never read from the file's header: a header copied onto other tensors by another tool would otherwise let a
    profile replay on an adapter it was not captured from.  Cached per (immutable) adapter object.
    """
    cached = _fingerprints.get(adapter)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name in sorted(adapter.layers):
        layer = adapter.layers[name]
        digest.update(name.encode())
        for t in (layer.down, layer.ups, layer.router_weight, layer.router_bias):
            if t is None:  # a ChimeraHydra layer under the cross-attention content router has no per-layer router
                continue
            digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    value = digest.hexdigest()
    _fingerprints[adapter] = value
    return value


@dataclass
class StyleProfile:
    name: str
    adapter_hash: str
    num_experts: int
    layers: dict[str, list[float]]
    expert_names: list[str] = field(default_factory=list)
    sigmas: list[float] = field(default_factory=list)
    source: str = ""

    def to_json(self) -> dict:
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "name": self.name,
                "adapter_hash": self.adapter_hash, "num_experts": self.num_experts,
                "expert_names": self.expert_names, "sigmas": self.sigmas, "source": self.source,
                "layers": self.layers}

    def mean_usage(self) -> list[float]:
        rows = torch.tensor(list(self.layers.values()), dtype=torch.float64)
        return rows.mean(0).tolist() if len(rows) else []


def validate(profile: StyleProfile, path: str | None = None) -> StyleProfile:
    if profile.num_experts < 1 or not profile.layers:
        raise OrthoHydraError("profile has no layers or no experts.", path=path, key="layers",
                              fix="capture the profile again with the capture node")
    for layer, weights in profile.layers.items():
        if len(weights) != profile.num_experts:
            raise OrthoHydraError(f"{len(weights)} weights for {profile.num_experts} experts.", path=path,
                                  key=f"layers.{layer}", fix="capture the profile again")
        if not all(isinstance(w, int | float) and math.isfinite(w) for w in weights):
            raise OrthoHydraError(f"weights must be finite numbers, got {weights}.", path=path,
                                  key=f"layers.{layer}", fix="capture the profile again")
        if any(w < 0 for w in weights) or not 0.99 <= sum(weights) <= 1.01:
            raise OrthoHydraError(f"weights {weights} are not a distribution (>= 0, sum 1).", path=path,
                                  key=f"layers.{layer}", fix="capture the profile again")
    return profile


def check_matches(profile: StyleProfile, adapter: Adapter, path: str | None = None) -> None:
    actual = adapter_fingerprint(adapter)
    if profile.adapter_hash != actual:
        raise OrthoHydraError(f"profile '{profile.name}' was captured from another adapter (content hash "
                              f"{profile.adapter_hash[:12]}…, this adapter {actual[:12]}…).", path=path,
                              key="adapter_hash", fix="capture a profile from this adapter")
    unknown = sorted(set(profile.layers) - set(adapter.layers))
    if unknown:
        raise OrthoHydraError(f"profile names layers this adapter lacks (e.g. {unknown[0]}).", path=path,
                              key=f"layers.{unknown[0]}", fix="capture a profile from this adapter")


def save_profile(profile: StyleProfile, path: str | os.PathLike) -> None:
    validate(profile, os.fspath(path))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(profile.to_json(), fh, indent=1)


def load_profile(path: str | os.PathLike) -> StyleProfile:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError as exc:
        raise OrthoHydraError("profile file not found.", path=path, fix="pick an existing profile") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OrthoHydraError(f"not valid JSON ({exc.__class__.__name__}).", path=path,
                              fix="pick a profile saved by the Ortho-Hydra save-profile node") from exc
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise OrthoHydraError("not an Ortho-Hydra style profile.", path=path, key="format",
                              fix="pick a profile saved by the Ortho-Hydra save-profile node")
    if data.get("version") != PROFILE_VERSION:
        raise OrthoHydraError(f"profile version {data.get('version')} is not supported.", path=path,
                              key="version", fix="capture the profile again")
    try:
        profile = StyleProfile(name=str(data["name"]), adapter_hash=str(data["adapter_hash"]),
                               num_experts=int(data["num_experts"]),
                               layers={str(k): list(v) for k, v in dict(data["layers"]).items()},
                               expert_names=list(data.get("expert_names", [])),
                               sigmas=[float(s) for s in data.get("sigmas", [])], source=str(data.get("source", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise OrthoHydraError(f"malformed profile ({exc}).", path=path, key=str(exc).strip("'"),
                              fix="capture the profile again") from exc
    return validate(profile, path)
