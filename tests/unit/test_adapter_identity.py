"""Adapters are never mutated, their fingerprint comes from their tensors, and the core has one identity."""

import dataclasses
import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import adapter
from safetensors import safe_open

import ortho_hydra
from ortho_hydra.profiles import adapter_fingerprint

ROOT = Path(__file__).resolve().parents[2]


def _sha(a) -> str:
    digest = hashlib.sha256()
    for name in sorted(a.layers):
        layer = a.layers[name]
        digest.update(name.encode())
        for t in (layer.down, layer.ups, layer.router_weight, layer.router_bias):
            digest.update(t.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_adapter_is_frozen_and_copies_share_nothing_mutable():
    a = adapter(names=["ink", "oil", "pixel"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.expert_names = ["x", "y", "z"]
    renamed = a.with_expert_names(["x", "y", "z"])
    assert a.expert_names == ("ink", "oil", "pixel") and renamed.expert_names == ("x", "y", "z")
    assert a.override.overrides == () and a.override.num_blocks == 2


def test_fingerprint_is_computed_from_tensors_never_read_from_the_header(tmp_path):
    a = adapter()
    assert adapter_fingerprint(a) == _sha(a)
    forged = dataclasses.replace(a, metadata={**a.metadata, "oh_content_sha256": "ab" * 32})
    assert adapter_fingerprint(forged) == _sha(a)  # a copied stamp is ignored
    path = tmp_path / "a_moe.safetensors"
    ortho_hydra.save(forged, path)
    with safe_open(str(path), "pt") as fh:
        assert "oh_content_sha256" not in fh.metadata()  # never written, so never copied along
    other = adapter(num_layers=2, experts=3)
    with torch.no_grad():
        next(iter(other.layers.values())).ups.add_(1.0)
    stamped = dataclasses.replace(other, metadata={**other.metadata, "oh_content_sha256": adapter_fingerprint(a)})
    assert adapter_fingerprint(stamped) != adapter_fingerprint(a)


def test_core_has_one_import_identity():
    """Loading the pack the way ComfyUI does registers the same module objects as a plain import."""
    code = f"""
import importlib, importlib.util, sys
sys.path.insert(0, {str(ROOT)!r})
import ortho_hydra, ortho_hydra.runtime
spec = importlib.util.spec_from_file_location("comfyui-ortho-hydra", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
assert pack.ortho_hydra is ortho_hydra
assert importlib.import_module("comfyui-ortho-hydra.ortho_hydra") is ortho_hydra
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_core_refuses_a_second_name():
    spec = importlib.util.spec_from_file_location("pack_copy.ortho_hydra", ROOT / "ortho_hydra" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "ortho_hydra")])
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match="must be imported as 'ortho_hydra'"):
        spec.loader.exec_module(module)


def test_pack_loaded_first_then_plain_import_is_the_same_object():
    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("some_pack_dir", {str(ROOT / '__init__.py')!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
import ortho_hydra.runtime
from ortho_hydra import ExpertLayer
assert ortho_hydra.runtime.ExpertLayer is ExpertLayer is pack.ortho_hydra.ExpertLayer
assert ortho_hydra.__file__.startswith({str(ROOT)!r})
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "ok", out.stderr
