"""Router overrides on the real host, each against a closed form computed here from the adapter's tensors."""

import dataclasses
import json

import comfy.model_management as mm
import pytest
import torch
import torch.nn.functional as F

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter

FC1 = "lora_unet_joint_blocks_0_x_block_mlp_fc1"
QKV = "lora_unet_joint_blocks_1_x_block_attn_qkv"
DEFAULTS = dict(mode="live", expert=0, weights="", renormalize=True, temperature=1.0, top_k=1, group="all",
                block_start=-1, block_end=-1, layer_regex="", start_percent=0.0, end_percent=1.0, keyframes="",
                interpolation="step", side="both", profile=None)


@pytest.fixture(scope="module")
def adapter(base):
    weights = lora_weights(base, pattern=r"x_block_(mlp_fc1|attn_qkv)$")
    return randomized_adapter(weights, rank=4, experts=3, seed=2, router_scale=0.5)  # rows route differently


def route(pack, adapter, **kw):
    out = pack.nodes.router.OrthoHydraRouter.execute(adapter, **{**DEFAULTS, **kw})
    return out.args[0], out.args[1]


def _x(in_features, seed=0):
    x = torch.randn(4, 12, in_features, generator=torch.Generator().manual_seed(seed))
    # widely different row energies: near-zero rows follow the router bias, large rows its weights
    return x * torch.tensor([1.0, 10.0, 0.01, 3.0]).reshape(4, 1, 1)


def _module(model, prefix):
    import comfy.lora

    return model.model.get_submodule(comfy.lora.model_lora_keys_unet(model.model, {})[prefix][: -len(".weight")])


def module_output(pack, base, adapter, prefix, x, fold=False):
    patched, _ = pack.nodes.patcher.apply_adapter(base, adapter, 1.0, fold=fold)
    mm.load_models_gpu([patched])
    try:
        return _module(patched, prefix)(x).double()
    finally:
        mm.unload_all_models()


def closed_form(base, layer, x, gates):
    """W0 x + b + s Σ_e g_e up_e down x, per row, in fp64 from the raw tensors."""
    module = _module(base, layer.name)
    lx = x.double() @ layer.down.double().T
    up = torch.einsum("be,eor->bor", gates.double(), layer.ups.double()) * layer.scale
    return F.linear(x.double(), module.weight.double(), module.bias.double()) + torch.einsum("blr,bor->blo", lx, up)


def live_logits(layer, x):
    lx = x.double() @ layer.down.double().T
    pooled = lx.pow(2).mean(1).sqrt()
    return pooled @ layer.router_weight.double().T + layer.router_bias.double()


def test_pin_equals_the_closed_form_with_only_that_expert(pack, base, adapter):
    layer = adapter.layers[FC1]
    x = _x(layer.in_features)
    for k in range(3):
        routed, summary = route(pack, adapter, mode="pin", expert=k)
        assert f"pin expert {k}" in summary
        got = module_output(pack, base, routed, FC1, x)
        gates = F.one_hot(torch.full((4,), k), 3)
        assert torch.allclose(got, closed_form(base, layer, x, gates), atol=1e-5)


def test_blend_equals_the_weighted_sum_of_per_expert_deltas(pack, base, adapter):
    layer = adapter.layers[FC1]
    x = _x(layer.in_features, 1)
    w0 = closed_form(base, layer, x, torch.zeros(4, 3))
    per_expert = [module_output(pack, base, route(pack, adapter, mode="pin", expert=k)[0], FC1, x) - w0
                  for k in range(3)]
    for weights, renorm in (([1.0, 3.0, 0.0], True), ([0.5, -0.25, 1.5], False)):
        routed, _ = route(pack, adapter, mode="blend", weights=",".join(map(str, weights)), renormalize=renorm)
        w = torch.tensor(weights, dtype=torch.float64)
        w = w / w.sum() if renorm else w
        expected = w0 + sum(w[k] * per_expert[k] for k in range(3))
        assert torch.allclose(module_output(pack, base, routed, FC1, x), expected, atol=1e-5)


def test_temperature_to_zero_equals_argmax_pinning(pack, base, adapter):
    layer = adapter.layers[FC1]
    x = _x(layer.in_features, 2)
    argmax = live_logits(layer, x).argmax(-1)
    assert len(set(argmax.tolist())) > 1  # rows pick different experts: not a vacuous check
    routed, _ = route(pack, adapter, mode="temperature", temperature=0.0 + 1e-6)
    expected = closed_form(base, layer, x, F.one_hot(argmax, 3))
    assert torch.allclose(module_output(pack, base, routed, FC1, x), expected, atol=1e-5)
    warm, _ = route(pack, adapter, mode="temperature", temperature=2.0)
    expected = closed_form(base, layer, x, torch.softmax(live_logits(layer, x) / 2.0, -1))
    assert torch.allclose(module_output(pack, base, warm, FC1, x), expected, atol=1e-5)


def test_top_k_renormalises_over_the_largest_gates(pack, base, adapter):
    layer = adapter.layers[FC1]
    x = _x(layer.in_features, 3)
    g = torch.softmax(live_logits(layer, x), -1)
    keep = g.topk(2, -1).indices
    masked = torch.zeros_like(g).scatter(-1, keep, g.gather(-1, keep))
    expected = closed_form(base, layer, x, masked / masked.sum(-1, keepdim=True))
    routed, _ = route(pack, adapter, mode="top_k", top_k=2)
    assert torch.allclose(module_output(pack, base, routed, FC1, x), expected, atol=1e-5)


def test_bias_shifts_the_logits(pack, base, adapter):
    layer = adapter.layers[FC1]
    x = _x(layer.in_features, 4)
    bias = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    routed, _ = route(pack, adapter, mode="bias", weights="0, 2, -1")
    expected = closed_form(base, layer, x, torch.softmax(live_logits(layer, x) + bias, -1))
    assert torch.allclose(module_output(pack, base, routed, FC1, x), expected, atol=1e-5)


def test_scoped_override_touches_only_the_selected_layers(pack, base, adapter):
    fc1, qkv = adapter.layers[FC1], adapter.layers[QKV]
    x1, x2 = _x(fc1.in_features, 5), _x(qkv.in_features, 6)
    for scope in ({"layer_regex": "mlp_fc1"}, {"group": "mlp"}, {"group": "early"}, {"block_end": 0}):
        routed, _ = route(pack, adapter, mode="pin", expert=2, **scope)
        assert torch.allclose(module_output(pack, base, routed, FC1, x1),
                              closed_form(base, fc1, x1, F.one_hot(torch.full((4,), 2), 3)), atol=1e-5), scope
        assert torch.allclose(module_output(pack, base, routed, QKV, x2),
                              closed_form(base, qkv, x2, torch.softmax(live_logits(qkv, x2), -1)), atol=1e-5), scope
    routed, _ = route(pack, adapter, mode="pin", expert=2, group="attention")
    assert torch.allclose(module_output(pack, base, routed, FC1, x1),
                          closed_form(base, fc1, x1, torch.softmax(live_logits(fc1, x1), -1)), atol=1e-5)


def _record(pack, base, routed, steps=6, cfg=3.0, fold=False):
    patched, _ = pack.nodes.patcher.apply_adapter(base, routed, 1.0, fold=fold)
    latent = torch.zeros(1, 16, 16, 16)
    with pack.nodes.gate_recording.recording(patched) as gates:
        tiny_dit.sample(patched, latent, tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2),
                        steps=steps, cfg=cfg)
    mm.unload_all_models()
    return patched, gates.records()


def test_schedule_switches_at_the_sigma_of_its_percent(pack, base, adapter):
    routed, summary = route(pack, adapter, keyframes="0.0 live\n0.4 pin 2")
    assert "40%: pin expert 2" in summary
    patched, records = _record(pack, base, routed)
    threshold = float(patched.get_model_object("model_sampling").percent_to_sigma(0.4))
    entries = records[FC1]
    assert len(entries) == 6
    before = [e for e in entries if e["sampler_sigma"] > threshold + 1e-6]
    after = [e for e in entries if e["sampler_sigma"] <= threshold + 1e-6]
    assert before and after
    for e in before:
        assert e["gate"].max() < 0.999  # learned, soft gates
    for e in after:
        assert torch.equal(e["gate"], F.one_hot(torch.full((e["gate"].shape[0],), 2), 3).float())
    linear, _ = route(pack, adapter, keyframes="0.0 pin 0\n1.0 pin 1", interpolation="linear")
    patched, records = _record(pack, base, linear, steps=4)
    sampling = patched.get_model_object("model_sampling")
    hi, lo = float(sampling.percent_to_sigma(0.0)), float(sampling.percent_to_sigma(1.0))
    for e in records[FC1]:
        a = (hi - e["sampler_sigma"]) / (hi - lo)
        assert torch.allclose(e["gate"][0], torch.tensor([1 - a, a, 0.0]), atol=1e-6)


def test_positive_only_leaves_uncond_rows_untouched(pack, base, adapter):
    routed, _ = route(pack, adapter, mode="pin", expert=1, side="positive")
    _, records = _record(pack, base, routed, steps=2)
    _, live_records = _record(pack, base, adapter, steps=2)
    saw_both = False
    for entry, live in zip(records[FC1], live_records[FC1], strict=True):
        uncond = entry["uncond_rows"]
        assert uncond is not None
        saw_both |= bool(uncond.any() and (~uncond).any())
        assert torch.equal(entry["gate"][~uncond], F.one_hot(torch.ones(int((~uncond).sum()), dtype=torch.long),
                                                             3).float())
        # the first step sees the same inputs with and without the override: uncond rows must match live
        if entry is records[FC1][0]:
            assert torch.allclose(entry["gate"][uncond], live["gate"][uncond], atol=1e-6)
        assert entry["gate"][uncond].max() < 0.999
    assert saw_both


def _sample(pack, base, routed, fold):
    patched, _ = pack.nodes.patcher.apply_adapter(base, routed, 1.0, fold=fold)
    out = tiny_dit.sample(patched, torch.zeros(1, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1),
                          tiny_dit.mmdit_conditioning(seed=2), steps=3)
    mm.unload_all_models()
    return out, patched


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_fold_equals_hook_and_fully_folded_adapters_install_no_hooks(pack, base, adapter):
    for kw in ({"mode": "pin", "expert": 1}, {"mode": "blend", "weights": "0.2,0.3,0.5"}):
        routed, _ = route(pack, adapter, **kw)
        folded, patched = _sample(pack, base, routed, fold=True)
        hooked, _ = _sample(pack, base, routed, fold=False)
        assert _rel(folded, hooked) < 1e-5, kw
        applied = pack.nodes.patcher.applied_adapters(patched)[-1]
        assert applied.hooked == 0 and applied.folded == len(adapter.layers)
        assert not any(k.endswith("_forward_hooks") for k in patched.object_patches)
    mixed, _ = route(pack, adapter, mode="pin", expert=0, layer_regex="mlp_fc1")
    folded, patched = _sample(pack, base, mixed, fold=True)
    hooked, _ = _sample(pack, base, mixed, fold=False)
    applied = pack.nodes.patcher.applied_adapters(patched)[-1]
    assert (applied.folded, applied.hooked) == (2, 2) and _rel(folded, hooked) < 1e-5


def test_baked_lora_through_the_stock_loader_equals_the_fold(pack, base, adapter, loras):
    import nodes as comfy_nodes

    routed, _ = route(pack, adapter, mode="blend", weights="0.6,0.1,0.3")
    path = pack.nodes.bake.OrthoHydraBakeLoRA.execute(base, routed, "baked_blend").args[0]
    assert path.startswith(str(loras))
    stock = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "baked_blend.safetensors", 1.0)[0]
    baked = tiny_dit.sample(stock, torch.zeros(1, 16, 16, 16), tiny_dit.mmdit_conditioning(seed=1),
                            tiny_dit.mmdit_conditioning(seed=2), steps=3)
    mm.unload_all_models()
    folded, _ = _sample(pack, base, routed, fold=True)
    assert _rel(baked, folded) < 1e-4
    with pytest.raises(library().OrthoHydraError, match="no constant gate"):
        pack.nodes.bake.OrthoHydraBakeLoRA.execute(base, adapter, "live_is_refused")
    scheduled, _ = route(pack, adapter, mode="pin", start_percent=0.5)
    with pytest.raises(library().OrthoHydraError, match="no constant gate"):
        pack.nodes.bake.OrthoHydraBakeLoRA.execute(base, scheduled, "scheduled_is_refused")
    assert sorted(p.name for p in loras.iterdir()) == ["baked_blend.safetensors"]  # atomic: no leftovers


def test_profile_capture_is_deterministic_replays_as_a_static_blend_and_round_trips(pack, base, adapter, tmp_path):
    patched, _ = pack.nodes.patcher.apply_adapter(base, adapter, 1.0)
    latent = {"samples": torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(9))}
    cond = tiny_dit.mmdit_conditioning(seed=3)
    capture = pack.nodes.style_profiles.OrthoHydraCaptureStyle
    first = capture.execute(patched, latent, cond, "0.2, 0.6", 5, "ink").args[0]
    second = capture.execute(patched, latent, cond, "0.2, 0.6", 5, "ink").args[0]
    mm.unload_all_models()
    assert first.layers == second.layers and set(first.layers) == set(adapter.layers)
    assert all(abs(sum(w) - 1) < 1e-6 for w in first.layers.values())
    routed, summary = route(pack, adapter, mode="profile", profile=first)
    assert f"{len(adapter.layers)} of {len(adapter.layers)} routed layers have a constant gate" in summary
    layer = adapter.layers[FC1]
    x = _x(layer.in_features, 7)
    gate = torch.tensor(first.layers[FC1]).expand(4, -1)
    assert torch.allclose(module_output(pack, base, routed, FC1, x, fold=True), closed_form(base, layer, x, gate),
                          atol=1e-5)
    lib = library()
    path = tmp_path / "ink.json"
    lib.profiles.save_profile(first, path)
    again = lib.profiles.load_profile(path)
    assert again.layers == first.layers and again.adapter_hash == first.adapter_hash
    other = randomized_adapter(lora_weights(base, pattern=r"x_block_(mlp_fc1|attn_qkv)$"), rank=4, experts=3, seed=6)
    with pytest.raises(lib.OrthoHydraError, match="captured from another adapter") as err:
        route(pack, other, mode="profile", profile=again)
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["layers"].update({FC1: [0.5, 0.5]}), "2 weights for 3 experts"),
    (lambda d: d["layers"].update({FC1: [float("nan"), 0.5, 0.5]}), "finite numbers"),
    (lambda d: d["layers"].update({FC1: [0.9, 0.9, -0.8]}), "not a distribution"),
    (lambda d: d.update({"format": "something_else"}), "not an Ortho-Hydra style profile"),
    (lambda d: d.pop("adapter_hash"), "malformed profile"),
])
def test_bad_profiles_are_refused_with_clear_errors(tmp_path, mutate, fragment):
    lib = library()
    good = {"format": "ortho_hydra_style_profile", "version": 1, "name": "p", "adapter_hash": "ab" * 32,
            "num_experts": 3, "layers": {FC1: [0.2, 0.3, 0.5]}}
    mutate(good)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(good))
    with pytest.raises(lib.OrthoHydraError) as err:
        lib.profiles.load_profile(path)
    assert fragment in str(err.value) and str(path) in str(err.value) and "Fix:" in str(err.value)
    path.write_text("{not json")
    with pytest.raises(lib.OrthoHydraError, match="not valid JSON"):
        lib.profiles.load_profile(path)


@pytest.mark.parametrize("kw, fragment", [
    ({"mode": "blend", "weights": "0.5,0.5"}, "needs 3 weights"),
    ({"mode": "blend", "weights": "1,-2,0.5"}, "renormalising needs a positive sum"),
    ({"mode": "blend", "weights": "nan,1,1"}, "NaN"),
    ({"mode": "bias", "weights": "1,x,2"}, "comma-separated numbers"),
    ({"mode": "pin", "expert": 7}, "expert 7 does not exist"),
    ({"mode": "top_k", "top_k": 5}, "top_k 5 exceeds"),
    ({"mode": "pin", "start_percent": 0.6, "end_percent": 0.3}, "start_percent < end_percent"),
    ({"keyframes": "0.5 pin 1\n0.2 live"}, "ascending"),
    ({"keyframes": "0.0 sparkle"}, "mode must be one of"),
    ({"mode": "pin", "layer_regex": "(unclosed"}, "invalid layer regex"),
    ({"mode": "profile"}, "needs a STYLE_PROFILE"),
])
def test_bad_router_settings_are_refused_with_clear_errors(pack, adapter, kw, fragment):
    with pytest.raises(library().OrthoHydraError) as err:
        route(pack, adapter, **kw)
    assert fragment in str(err.value) and "Fix:" in str(err.value), str(err.value)


def test_chained_overrides_compose_later_over_earlier(pack, base, adapter):
    first, _ = route(pack, adapter, mode="pin", expert=0)
    second, summary = route(pack, first, mode="pin", expert=2, layer_regex="mlp_fc1")
    assert summary.splitlines()[0].startswith("1. all layers: pin expert 0")
    assert "2. /mlp_fc1/: pin expert 2" in summary
    fc1, qkv = adapter.layers[FC1], adapter.layers[QKV]
    x1, x2 = _x(fc1.in_features, 8), _x(qkv.in_features, 9)
    assert torch.allclose(module_output(pack, base, second, FC1, x1, fold=True),
                          closed_form(base, fc1, x1, F.one_hot(torch.full((4,), 2), 3)), atol=1e-5)
    assert torch.allclose(module_output(pack, base, second, QKV, x2, fold=True),
                          closed_form(base, qkv, x2, F.one_hot(torch.full((4,), 0), 3)), atol=1e-5)
    assert first.override is not second.override and len(first.override.overrides) == 1
    assert dataclasses.replace(adapter).override.overrides == ()  # the loaded adapter is never mutated


def test_gallery_renders_a_labelled_tile_per_expert_plus_live(pack, base, adapter):
    gallery = pack.nodes.gallery.OrthoHydraExpertGallery
    grid = gallery.execute(base, adapter, tiny_dit.mmdit_conditioning(seed=1), tiny_dit.mmdit_conditioning(seed=2),
                           {"samples": torch.zeros(1, 16, 16, 16)}, 3, 2, 2.0, "euler", "simple", 1.0,
                           "ink, paint, pixel").args[0]
    mm.unload_all_models()
    tile_w = 16 * 8
    assert grid.shape == (1, 16 * 8 + 18, 4 * tile_w + 3 * 4, 3)
    tiles = [grid[0, 18:, i * (tile_w + 4): i * (tile_w + 4) + tile_w] for i in range(4)]
    for i in range(3):  # every pinned expert renders differently from the others and from live
        for j in range(i + 1, 4):
            assert (tiles[i] - tiles[j]).abs().mean() > 1e-3
    assert grid[0, :18].std() > 0.01  # a label strip with text on it


def test_gallery_gives_one_row_per_conditioning_entry_and_returns_every_tile(pack, base, adapter):
    gallery = pack.nodes.gallery
    two = [tiny_dit.mmdit_conditioning(seed=1)[0], tiny_dit.mmdit_conditioning(seed=5)[0]]
    negative = tiny_dit.mmdit_conditioning(seed=2)
    latent = {"samples": torch.zeros(2, 16, 8, 8)}
    grid, tiles = gallery.OrthoHydraExpertGallery.execute(base, adapter, two, negative, latent, 3, 2, 2.0, "euler",
                                                          "simple", 1.0, "").args
    mm.unload_all_models()
    assert grid.shape[1] == 2 * (8 * 8 + 18) + 4 and tiles["samples"].shape == (2 * 4, 16, 8, 8)
    # tile (row 1, expert 2) is exactly what sampling that pin with row 1's conditioning and seed + 1 gives
    patched, _ = pack.nodes.patcher.apply_adapter(base, gallery.pinned(adapter, 2))
    expected = tiny_dit.sample(patched, latent["samples"][1:2], [two[1]], negative, steps=2, cfg=2.0, seed=4)
    mm.unload_all_models()
    assert torch.allclose(tiles["samples"][1 * 4 + 2], expected[0], atol=1e-5)
    assert not torch.allclose(tiles["samples"][2], tiles["samples"][4 + 2], atol=1e-3)  # rows differ


def test_norm_control_scales_the_whole_blend_to_its_strongest_part(pack, base, adapter):
    """One factor over every layer in scope: the folded ΔW's global norm equals the strongest part's (fp64)."""
    routed, summary = route(pack, adapter, mode="blend", weights="1, 1, 1", renormalize=False, norm_control=True)
    factor = float(summary.rsplit("blend scaled by ", 1)[1].split()[0])
    assert factor < 1.0  # three nearly orthogonal experts at full weight: the raw sum overdrives

    def global_norm(gate_of) -> float:
        return sum(float(layer.static_delta_weight(gate_of(layer)).double().pow(2).sum())
                   for layer in adapter.layers.values()) ** 0.5

    scaled = global_norm(lambda layer: routed.override.constant_gate(layer.name, 3))
    parts = [global_norm(lambda layer, e=e: F.one_hot(torch.tensor(e), 3).float()) for e in range(3)]
    assert scaled == pytest.approx(max(parts), rel=1e-4)
    raw = global_norm(lambda layer: torch.ones(3))
    assert raw / scaled == pytest.approx(1 / factor, rel=1e-3)
    with pytest.raises(library().OrthoHydraError, match="norm_control applies to one constant blend"):
        route(pack, adapter, mode="pin", expert=1, norm_control=True)
