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


def read_header(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Return (tensor entries, metadata) after checking the file is whole safetensors."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OrthoHydraError("file not found.", path=path,
                              fix="pick a file that exists in models/loras, or refresh the node's list")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise OrthoHydraError(f"file is {size} bytes, too short to be safetensors (truncated or empty).",
                                  path=path, fix="re-download or re-save the file")
        if prefix[:1] == b"\x80" or prefix[:4] == b"PK\x03\x04":
            raise OrthoHydraError("file is a Python pickle / PyTorch checkpoint, which is never loaded.",
                                  path=path, fix=_CONVERT_FIX)
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(size - 8, _MAX_HEADER):
            raise OrthoHydraError(f"header claims {header_len} bytes but the file has {size}: not safetensors, "
                                  "or truncated.", path=path, fix=_CONVERT_FIX)
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OrthoHydraError(f"header is not valid safetensors JSON ({exc.__class__.__name__}).", path=path,
                              fix=_CONVERT_FIX) from exc
    if not isinstance(header, dict):
        raise OrthoHydraError("header is not a JSON object.", path=path, fix=_CONVERT_FIX)
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((int(v["data_offsets"][1]) for v in header.values()
                    if isinstance(v, dict) and "data_offsets" in v), default=0)
    if 8 + header_len + data_end > size:
        raise OrthoHydraError(f"file is truncated: tensors need {8 + header_len + data_end} bytes, "
                              f"the file has {size}.", path=path, fix="re-download or re-save the file")
    return header, {str(k): str(v) for k, v in metadata.items()}


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
