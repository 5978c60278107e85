"""Parity with the reference trainer's own ComfyUI node on a per-step expert turbo student, run locally.

The peer node's code is never committed here: point ``ORTHO_HYDRA_PEER_NODE`` at a checkout of
``sorryhyun/ComfyUI-Anima_lora-Adapter`` (default ``/tmp/ComfyUI-Anima_lora-Adapter``); without one this module
skips.  The peer picks head ``i % K`` for the i-th model call, which is exact when each step is one call (cfg 1, or
CFG with cond and uncond batched into one call); ours keys the head on σ, so both must agree there.
"""

import importlib
import os
import sys
import types
from pathlib import Path

import comfy.model_management as mm
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from devkit import tiny_dit
from devkit.host import import_pack
from devkit.step_expert_files import step_expert_metadata, step_expert_tensors, write_step_expert_file

PEER = Path(os.environ.get("ORTHO_HYDRA_PEER_NODE", "/tmp/ComfyUI-Anima_lora-Adapter"))
K, RANK, ALPHA = 4, 8, 4.0
PREFIXES = {"lora_unet_blocks_0_self_attn_qkv_proj": (768, 256), "lora_unet_blocks_0_cross_attn_kv_proj": (512, 1024),
            "lora_unet_blocks_1_mlp_layer1": (1024, 256), "lora_unet_blocks_1_mlp_layer2": (256, 1024)}

pytestmark = pytest.mark.skipif(not (PEER / "step_expert.py").is_file(),
                                reason=f"no peer node checkout at {PEER} (set ORTHO_HYDRA_PEER_NODE)")


def _peer_step_expert():
    """The peer's ``step_expert`` module, imported as part of a package without running its ``__init__``."""
    name = "_peer_anima_adapter"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(PEER)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.step_expert")


@pytest.fixture(scope="module")
def cosmos():
    return tiny_dit.load_cosmos(num_blocks=2)


def _sample(model, cfg, negative_tokens=6):
    out = tiny_dit.sample(model, torch.zeros(1, 16, 1, 8, 8), tiny_dit.cosmos_conditioning(seed=1),
                          tiny_dit.cosmos_conditioning(tokens=negative_tokens, seed=2), steps=K, cfg=cfg, seed=7)
    mm.unload_all_models()
    return out


def _both(cosmos, tmp_path):
    """(the peer's patched model, ours) for one student file."""
    peer = _peer_step_expert()
    pack = import_pack()
    path = tmp_path / "turbo_student.safetensors"
    write_step_expert_file(path, step_expert_tensors(PREFIXES, K, RANK, ALPHA, seed=5, up_scale=0.2),
                           step_expert_metadata(K, RANK, ALPHA))
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    theirs = cosmos.clone()
    data = peer.parse_step_expert(load_file(str(path)), metadata)
    assert peer.apply_step_expert(theirs, data, 1.0) == 7  # q/k/v and k/v split out of the fused prefixes, and 2 MLPs
    ours, _ = pack.comfy_glue.patcher.apply_adapter(cosmos, pack.ortho_hydra.load(path), strength=1.0)
    return theirs, ours


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_sampled_latent_matches_the_peer_node_when_each_step_is_one_call(cosmos, tmp_path, cfg):
    theirs, ours = _both(cosmos, tmp_path)
    base, peer_out, our_out = _sample(cosmos.clone(), cfg), _sample(theirs, cfg), _sample(ours, cfg)
    effect = (our_out - base).abs().max()
    assert effect > 1e-2  # the heads move the sample
    torch.testing.assert_close(our_out, peer_out, rtol=1e-5, atol=1e-5 * float(base.abs().max()))


def test_the_peer_desyncs_when_cfg_takes_two_calls_per_step(cosmos, tmp_path):
    """Cond and uncond that ComfyUI cannot batch (7 negative tokens against 6) make two calls per step: the peer's
    call counter then serves steps 0..K-1 with heads 0, 2, 0, 2 (cond) and 1, 3, 1, 3 (uncond).  Ours is checked call
    by call against the closed form in test_step_experts_apply; here the two samples must differ."""
    theirs, ours = _both(cosmos, tmp_path)
    base, peer_out, our_out = (_sample(m, 3.5, negative_tokens=7) for m in (cosmos.clone(), theirs, ours))
    assert (our_out - peer_out).abs().max() > 0.05 * (our_out - base).abs().max()
