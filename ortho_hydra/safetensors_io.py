"""Safetensors only: validate the header before any tensor is read, write atomically."""

from __future__ import annotations

import json
import os
import struct

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_path
from .errors import OrthoHydraError

_MAX_HEADER = 100 * 1024 * 1024
_CONVERT_FIX = ("only .safetensors files are loaded (pickles can run code); re-export the adapter as "
                ".safetensors from the tool that trained it")


def _foreign_kind(prefix: bytes) -> str | None:
    """Name a known non-safetensors format from its magic bytes (used only to word the error)."""
    if prefix[:4] == b"PK\x03\x04":
        return "a zip archive holding a pickle (a PyTorch .pt/.ckpt checkpoint), which is never loaded"
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a PyTorch checkpoint), which is never loaded"
    if prefix[:4] == b"GGUF":
        return "a GGUF file, which holds quantised model weights, not an adapter"
    return None


def _not_safetensors(path: str, prefix: bytes, problem: str) -> OrthoHydraError:
    kind = _foreign_kind(prefix)
    if kind is not None:
        return OrthoHydraError(f"file is {kind}.", path=path, fix=_CONVERT_FIX)
    return OrthoHydraError(problem, path=path, fix=_CONVERT_FIX)


def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return (tensor entries, metadata) after checking the file is whole safetensors.

    Decided by structure alone: an 8-byte little-endian length that fits the file, followed by a JSON object.
    Magic bytes are consulted only to word the error: a valid header length of 128 mod 256 starts with 0x80, the
    pickle protocol byte, so a first-byte test would refuse about one valid file in 32.  Nothing is unpickled.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OrthoHydraError("file not found.", path=path,
                              fix="pick a file that exists in models/loras, or refresh the node's list")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _not_safetensors(path, prefix, f"file is {size} bytes, too short to be safetensors "
                                                 "(truncated or empty).")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > min(size - 8, _MAX_HEADER):
            raise _not_safetensors(path, prefix, f"header claims {header_len} bytes but the file has {size}: "
                                                 "not safetensors, or truncated.")
        raw = fh.read(header_len)
    if not raw.lstrip(b" ").startswith(b"{"):
        raise _not_safetensors(path, prefix, "header is not a safetensors JSON object.")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _not_safetensors(path, prefix, f"header is not valid safetensors JSON "
                                             f"({exc.__class__.__name__}).") from exc
    if not isinstance(header, dict):
        raise _not_safetensors(path, prefix, "header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise OrthoHydraError("the header's __metadata__ is not a JSON object.", path=path, key="__metadata__",
                              fix="re-save the file with safetensors")
    for key, entry in header.items():
        _check_entry(path, key, entry)
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise OrthoHydraError(f"file is truncated: tensors need {8 + header_len + data_end} bytes, "
                              f"the file has {size}.", path=path, fix="re-download or re-save the file")
    return header, {str(k): str(v) for k, v in metadata.items()}


def _check_entry(path: str, key: str, entry) -> None:
    """One tensor's header entry: a dtype string, a shape of non-negative ints, offsets 0 <= start <= end."""
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if (not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str) or not isinstance(shape, list)
            or not all(is_int(d) and d >= 0 for d in shape) or not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise OrthoHydraError("its header entry is not a safetensors tensor (dtype, shape, data_offsets).",
                              path=path, key=str(key), fix="re-save the file with safetensors; it is damaged")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a validated safetensors file, on the CPU."""
    _, metadata = read_header(path)
    try:
        tensors = load_file(os.fspath(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise OrthoHydraError(f"safetensors could not read it: {exc}.", path=path,
                              fix="re-download or re-save the file") from exc
    return tensors, metadata


def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike | None, fix: str) -> None:
    """Refuse NaN or Inf anywhere, naming the first bad key."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise OrthoHydraError(f"{bad} NaN/Inf values.", path=path, key=key, fix=fix)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str]) -> None:
    """Atomic write: a temp file beside ``path`` renamed over it only once complete."""
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(payload, tmp, metadata={str(k): str(v) for k, v in metadata.items()})
