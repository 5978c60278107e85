"""Router telemetry and the front-end's server side: trace node, expert route, help pages."""

import json
from pathlib import Path

import comfy.model_management as mm
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter
from devkit.host import ROOT


def test_trace_records_both_sides_per_step_and_draws_them(pack):
    base = tiny_dit.load_mmdit(depth=2, seed=0)
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_(mlp_fc1|attn_qkv)$"), rank=4, experts=3,
                                 seed=2, router_scale=0.5)
    patched, _ = pack.nodes.patcher.apply_adapter(base, adapter)
    node = pack.nodes.router_trace.OrthoHydraRouterTrace
    out = node.execute(patched, tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2),
                       {"samples": torch.zeros(1, 16, 16, 16)}, 3, 5, 3.0, "euler", "simple", "positive")
    mm.unload_all_models()
    latent, heat, bars, raw = out.args
    plain = tiny_dit.sample(patched, torch.zeros(1, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1),
                            tiny_dit.mmdit_conditioning(seed=2), steps=5, cfg=3.0, seed=3)
    mm.unload_all_models()
    assert torch.equal(latent["samples"], plain)  # tracing does not change the sample
    data = json.loads(raw)
    for side in ("positive", "negative"):
        assert set(data["sides"][side]) == set(adapter.layers)
        for entries in data["sides"][side].values():
            assert len(entries) == 5 and all(abs(sum(e["gate"]) - 1) < 1e-6 for e in entries)
    assert data["sides"]["positive"] != data["sides"]["negative"]  # the two sides route differently
    assert heat.shape == (1, 5 * 12, len(adapter.layers) * 12, 3) and heat.std() > 0.01
    assert bars.shape[0] == 1 and bars.shape[-1] == 3
    pinned = pack.nodes.router.OrthoHydraRouter.execute(adapter, mode="pin", expert=0, weights="", renormalize=True,
                                                        temperature=1.0, top_k=1, group="all", block_start=-1,
                                                        block_end=-1, layer_regex="", start_percent=0.0,
                                                        end_percent=1.0, keyframes="", interpolation="step",
                                                        side="both").args[0]
    folded, _ = pack.nodes.patcher.apply_adapter(base, pinned)
    with pytest.raises(library().OrthoHydraError, match="no router-live"):
        node.execute(folded, tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2),
                     {"samples": torch.zeros(1, 16, 16, 16)}, 3, 2, 3.0, "euler", "simple", "positive")


def test_expert_route_reads_listed_headers_only(pack, loras):
    adapter = randomized_adapter({"lora_unet_blocks_0_mlp_layer1": torch.randn(32, 24)}, rank=2, experts=3)
    adapter = adapter.with_expert_names(["ink", "oil", "pixel"])
    library().save(adapter, loras / "named_moe.safetensors")
    (loras / "plain.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    respond = pack.nodes.web_routes.experts_response
    status, body = respond("named_moe.safetensors")
    assert status == 200 and body["num_experts"] == 3 and body["expert_names"] == ["ink", "oil", "pixel"]
    for bad in ("../../../etc/passwd", "/etc/passwd", "named_moe.safetensors/..", "", None, "missing.safetensors"):
        status, body = respond(bad)
        assert status == 400 and "error" in body, bad
    status, body = respond("plain.safetensors")
    assert status == 400 and "no routed layers" in body["error"]


def test_every_node_has_a_help_page_covering_its_inputs(pack):
    import asyncio

    nodes = asyncio.run(asyncio.run(pack.comfy_entrypoint()).get_node_list())
    for node in nodes:
        schema = node.GET_SCHEMA()
        page = Path(ROOT / "web" / "docs" / f"{schema.node_id}.md")
        assert page.is_file(), schema.node_id
        text = page.read_text()
        for item in schema.inputs:
            assert f"**{item.id}**" in text, (schema.node_id, item.id)
