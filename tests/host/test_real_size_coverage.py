"""Real-size DiTs built by the installed ComfyUI on the meta device (no weights): every adapter layer named the way
trainers name them plans onto the right Linear, with full coverage.  Each model is what this host's own detection
(``comfy/model_detection.py``) makes of the released checkpoint's weight shapes (``devkit/real_size.py``), so the
tests follow whichever ComfyUI is installed; a test checks the build is a fixed point of that detection.

Diffusers (``transformer.…``) names are checked where the host's key map names them (ComfyUI 0.3.75 names none for
Lumina2 / Z-Image or Wan; 0.33 maps Lumina2's, with a q/k/v layout that ignores grouped-query attention), and a
diffusers-named adapter is refused by name where it does not.
"""

import itertools
from types import SimpleNamespace

import comfy.lora
import comfy.model_detection
import pytest
import torch

from devkit import real_size
from devkit.host import import_pack
from ortho_hydra import ExpertLayer, OrthoHydraError, RouterSpec

SHAPES = real_size.checkpoint_shapes()


@pytest.fixture(scope="module", params=list(SHAPES))
def family(request):
    """(name, meta model as this host builds it from the checkpoint's shapes), once per family."""
    return request.param, real_size.build(SHAPES[request.param])


def _layer(name: str, out_features: int, in_features: int) -> ExpertLayer:
    return ExpertLayer(name=name, down=torch.zeros(1, in_features), ups=torch.zeros(2, out_features, 1),
                       router_weight=torch.zeros(2, 1), router_bias=torch.zeros(2), alpha=1.0,
                       router=RouterSpec(source="input"))


def test_the_host_detects_every_checkpoint_and_builds_each_of_its_linears(family):
    name, built = family
    rebuilt = {k: tuple(v.shape) for k, v in built.model.diffusion_model.state_dict().items()}
    config, model_config = real_size.detect(SHAPES[name])
    assert real_size.detect(rebuilt)[0] == config  # a fixed point of the host's detection
    assert type(built.model.model_config) is type(model_config)
    # the Linears adapters patch keep their checkpoint names and shapes (a host may rename norms: 0.33 loads Flux's
    # ``….scale`` RMSNorm weights as ``….weight``, and keeps no ``norm_final`` for Lumina2)
    linears = {k: shape for k, shape in SHAPES[name].items() if k.endswith(".weight") and len(shape) == 2}
    assert len(linears) > 50 and {k: rebuilt.get(k) for k in linears} == linears


def test_every_linear_of_a_real_size_dit_is_planned_from_trainer_names(family):
    patched = family[1]
    space = import_pack().nodes.key_space.key_space(patched)
    shapes, key_map = space.shapes, space.key_map
    linears = {k for k, shape in shapes.items() if k.startswith("diffusion_model.") and len(shape) == 2}
    # kohya names (the reference trainer's for Anima): one routed layer per Linear, full size
    kohya = {name: key for name, key in key_map.items() if name.startswith("lora_unet_") and isinstance(key, str)
             and key in linears}
    layers = {name: _layer(name, *shapes[key]) for name, key in kohya.items()}
    result = space.plan(layers)
    assert not result.unmatched and len(result.matched) == len(layers)
    assert {f"{t.module}.weight" for t in result.targets.values()} == set(kohya.values())
    assert len(result.targets) >= 0.95 * len(linears), (len(result.targets), len(linears))
    for target in result.targets.values():
        assert target.out_features == shapes[f"{target.module}.weight"][0]
    # ComfyUI-style names (``diffusion_model.<path>``) plan onto the same Linears
    native = {key[: -len(".weight")]: key for key in kohya.values()}
    assert all(key_map.get(name) == key for name, key in native.items())
    result = space.plan({name: _layer(name, *shapes[key]) for name, key in native.items()})
    assert not result.unmatched and set(result.targets) == set(native)
    # diffusers / PEFT names where ComfyUI knows them: split q/k/v land in their slices of fused weights
    diffusers = {}  # one diffusers name per weight slice: a host may know aliases (0.33: ff.net.0.proj, ff.linear_in)
    for name, key in sorted(key_map.items()):
        weight_key = key if isinstance(key, str) else key[0]
        if name.startswith("transformer.") and weight_key in linears:  # the map also names norms, SD3.5 M's attn2
            part = None if isinstance(key, str) or key[1] is None else tuple(key[1])
            diffusers.setdefault((weight_key, part), (name, key))
    sliced = {weight_key for weight_key, part in diffusers if part is not None}  # a file names a fused weight one
    diffusers = dict(v for (weight_key, part), v in diffusers.items() if part is not None or weight_key not in sliced)
    if diffusers:  # way: split (to_q, …) or whole (0.33 also knows Flux's to_qkv_mlp_proj); the split way is checked
        unet_config, _ = real_size.detect(SHAPES[family[0]])
        layers, expected = {}, {}
        for name, key in diffusers.items():
            weight_key, part = (key, None) if isinstance(key, str) else (key[0], key[1])
            out_features, in_features = shapes[weight_key]
            expected[name] = _qkv_rows(unet_config, name) or ((part[1], part[2]) if part is not None else None)
            layers[name] = _layer(name, expected[name][1] if expected[name] else out_features, in_features)
        result = space.plan(layers)
        assert not result.unmatched, result.coverage()
        placed = {leg.layer.name: (leg.offset, leg.size) for t in result.targets.values() for leg in t.legs
                  if leg.size is not None}
        assert placed == {name: rows for name, rows in expected.items() if rows is not None}
        for target in result.targets.values():
            rows = sorted((leg.offset, leg.offset + (leg.size or target.out_features)) for leg in target.legs)
            assert rows[0][0] == 0 and rows[-1][1] <= target.out_features
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(rows))  # slices do not overlap


def _qkv_rows(unet_config: dict, name: str) -> tuple[int, int] | None:
    """Closed form for grouped-query attention (Lumina2 / Z-Image configs): q has n_heads heads of dim / n_heads
    rows, k and v n_kv_heads each, stacked q, k, v."""
    if "n_kv_heads" not in unet_config or not name.endswith(("to_q", "to_k", "to_v")):
        return None
    head_dim = unet_config["dim"] // unet_config["n_heads"]
    q, kv = unet_config["n_heads"] * head_dim, unet_config["n_kv_heads"] * head_dim
    return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[name[-1]]


def test_lumina2_diffusers_v_lands_where_grouped_query_attention_reads_it(pack):
    """Lumina 2.0: 24 query heads, 8 key/value heads of 96 in a 3840-row qkv.  Wherever the host maps diffusers
    names (0.33 does, giving every part 2304 rows), to_k and to_v land at 2304-3072 and 3072-3840."""
    patched = real_size.build(SHAPES["Lumina Image 2.0 (2.6B)"])
    space = pack.nodes.key_space.key_space(patched)
    weight = "diffusion_model.layers.0.attention.qkv.weight"
    assert space.fused_layouts[weight] == {"q": (0, 2304), "k": (2304, 768), "v": (3072, 768)}
    names = {p: f"transformer.layers.0.attention.to_{p}" for p in "qkv"}
    if names["v"] not in space.key_map:
        pytest.skip("this host's key map names no diffusers layers for Lumina2 (checked in the refusal test)")
    layers = {names[p]: _layer(names[p], rows, 2304) for p, rows in (("q", 2304), ("k", 768), ("v", 768))}
    result = space.plan(layers)
    legs = {leg.layer.name: (leg.offset, leg.size) for leg in result.targets[weight[:-len(".weight")]].legs}
    assert legs == {names["q"]: (0, 2304), names["k"]: (2304, 768), names["v"]: (3072, 768)}
    assert set(result.relocated) == {names["k"], names["v"]}  # the host's map had them elsewhere
    assert "placed from the model's head counts" in result.coverage()


@pytest.mark.parametrize("family", ["Lumina Image 2.0 (2.6B)", "Wan 2.2 TI2V 5B"])
def test_diffusers_names_are_planned_where_the_host_maps_them_and_refused_by_name_where_not(family, pack):
    """A key-map gap in a host is not ours to paper over: the planner names both sides instead of a no-op."""
    patched = real_size.build(SHAPES[family])
    width = patched.model.diffusion_model.state_dict()["x_embedder.weight" if "Lumina" in family
                                                       else "patch_embedding.weight"].shape[0]
    names = [f"transformer.layers.{i}.attention.to_out.0" if "Lumina" in family
             else f"transformer.blocks.{i}.attn1.to_out.0" for i in range(4)]
    adapter = SimpleNamespace(layers={n: _layer(n, width, width) for n in names}, plain_layers={},
                              path="diffusers_named.safetensors")
    key_map = comfy.lora.model_lora_keys_unet(patched.model, {})
    if all(name in key_map for name in names):
        result = pack.nodes.patcher.make_plan(patched, adapter)
        assert set(result.matched) == set(names) and len(result.targets) == 4
        return
    assert not any(name in key_map for name in names)
    with pytest.raises(OrthoHydraError) as info:
        pack.nodes.patcher.make_plan(patched, adapter)
    message = str(info.value)
    assert f"adapter targets {'layers' if 'Lumina' in family else 'blocks'}.N.* (4)" in message, message
    assert type(patched.model).__name__ in message and "diffusers_named.safetensors" in message
