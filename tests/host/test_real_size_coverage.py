"""Real-size DiTs built by ComfyUI on the meta device (no weights): every adapter layer named the way trainers name
them plans onto the right Linear, with full coverage.  The configs are the ones ComfyUI's own detection derives
from the released checkpoints' shapes (``comfy/model_detection.py``); a test checks each is a fixed point of that
detection (the model's own state dict detects back to the same config and model class).

ComfyUI 0.3.75's key map names no diffusers (``transformer.…``) layers for Lumina2 / Z-Image, Wan or Cosmos, so
only kohya and ``diffusion_model.`` names are checked there, and a diffusers-named adapter is refused by name.
"""

import itertools
from types import SimpleNamespace

import comfy.lora
import comfy.model_detection
import comfy.supported_models as sm
import pytest
import torch

from devkit.host import import_pack
from ortho_hydra import ExpertLayer, OrthoHydraError, RouterSpec
from ortho_hydra.targets import plan

_FLUX_BODY = {"axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000, "qkv_bias": True,
              "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 2, "depth": 19, "depth_single_blocks": 38}
_MMDIT_BODY = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "input_size": None, "adm_in_channels": 2048,
               "qk_norm": "rms", "pos_embed_scaling_factor": None}
_WAN_BODY = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "freq_dim": 256,
             "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}

FAMILIES = {
    "Flux dev (12B)": (sm.Flux, {
        "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
        "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
        "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
        "guidance_embed": True}),
    "SD3.5 Large (8B)": (sm.SD3, {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 38, "input_size": None,
        "adm_in_channels": 2048, "pos_embed_max_size": 192, "num_patches": 36864, "qk_norm": "rms",
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": 2432}}}),
    "Cosmos-Predict2 2B / Anima": (sm.CosmosT2IPredict2, {
        "image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
        "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 2048,
        "concat_padding_mask": True, "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d",
        "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
        "use_adaln_lora": True, "adaln_lora_dim": 256, "num_blocks": 28, "num_heads": 16,
        "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0,
        "rope_t_extrapolation_ratio": 1.0, "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
        "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False}),
    "Wan 2.1 T2V 14B": (sm.WAN21_T2V, {
        "image_model": "wan2.1", "model_type": "t2v", "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824,
        "num_layers": 40, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16}),
    # Wan 2.2 A14B's two experts have Wan 2.1 14B's shapes (the same class); the 5B TI2V is its own
    "Wan 2.2 TI2V 5B": (sm.WAN22_T2V, {**_WAN_BODY, "dim": 3072, "out_dim": 48, "num_heads": 24, "ffn_dim": 14336,
                                       "num_layers": 30, "in_dim": 48}),
    "SD3.5 Medium (2.5B)": (sm.SD3, {
        **_MMDIT_BODY, "depth": 24, "num_patches": 147456, "pos_embed_max_size": 384,
        "x_block_self_attn_layers": list(range(13)),
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": 1536}}}),
    "Chroma (8.9B)": (sm.Chroma, {**_FLUX_BODY, "image_model": "chroma", "in_channels": 64, "out_channels": 64,
                                  "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5}),
    "Lumina Image 2.0 (2.6B)": (sm.Lumina2, {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304, "n_layers": 26,
        "qk_norm": True, "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512],
        "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0}),
    "Z-Image (Lumina2 class, 6.2B)": (sm.ZImage, {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
        "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": 32}),
    "Qwen-Image (20B)": (sm.QwenImage, {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}),
    "HunyuanVideo T2V (13B)": (sm.HunyuanVideo, {
        "image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
        "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096, "hidden_size": 3072,
        "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40, "theta": 256, "qkv_bias": True,
        "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False, "vision_in_dim": None}),
    "HiDream-I1 (17B)": (sm.HiDream, {
        "image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
        "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
        "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
        "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16, "patch_size": 2,
        "text_emb_dim": 2048}),
}


def _build(family: str) -> SimpleNamespace:
    config_class, unet_config = FAMILIES[family]
    model_config = config_class(dict(unet_config))
    model_config.set_inference_dtype(torch.bfloat16, None)
    with torch.device("meta"):
        model = model_config.get_model({}, "", device="meta")
    return SimpleNamespace(model=model)  # what the pack's planner reads from a ModelPatcher


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(name, meta model), built once per family for every test that takes it."""
    return request.param, _build(request.param)


def _layer(name: str, out_features: int, in_features: int) -> ExpertLayer:
    return ExpertLayer(name=name, down=torch.zeros(1, in_features), ups=torch.zeros(2, out_features, 1),
                       router_weight=torch.zeros(2, 1), router_bias=torch.zeros(2), alpha=1.0,
                       router=RouterSpec(source="input"))


def test_config_is_what_comfyui_detects_for_that_model(family):
    config_class, unet_config = FAMILIES[family[0]]
    state_dict = family[1].model.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(state_dict, "")
    assert {k: detected.get(k) for k in unet_config} == unet_config and set(detected) <= set(unet_config)
    assert type(comfy.model_detection.model_config_from_unet_config(detected, state_dict)) is config_class


def test_every_linear_of_a_real_size_dit_is_planned_from_trainer_names(family):
    patched = family[1]
    shapes = import_pack().nodes.patcher.weight_shapes(patched)
    key_map = comfy.lora.model_lora_keys_unet(patched.model, {})
    linears = {k for k, shape in shapes.items() if k.startswith("diffusion_model.") and len(shape) == 2}
    # kohya names (the reference trainer's for Anima): one routed layer per Linear, full size
    kohya = {name: key for name, key in key_map.items() if name.startswith("lora_unet_") and isinstance(key, str)
             and key in linears}
    layers = {name: _layer(name, *shapes[key]) for name, key in kohya.items()}
    result = plan(layers, key_map, shapes)
    assert not result.unmatched and len(result.matched) == len(layers)
    assert {f"{t.module}.weight" for t in result.targets.values()} == set(kohya.values())
    assert len(result.targets) >= 0.95 * len(linears), (len(result.targets), len(linears))
    for target in result.targets.values():
        assert target.out_features == shapes[f"{target.module}.weight"][0]
    # ComfyUI-style names (``diffusion_model.<path>``) plan onto the same Linears
    native = {key[: -len(".weight")]: key for key in kohya.values()}
    assert all(key_map.get(name) == key for name, key in native.items())
    result = plan({name: _layer(name, *shapes[key]) for name, key in native.items()}, key_map, shapes)
    assert not result.unmatched and set(result.targets) == set(native)
    # diffusers / PEFT names where ComfyUI knows them: split q/k/v land in their slices of fused weights
    diffusers = {name: key for name, key in key_map.items() if name.startswith("transformer.")
                 and (key if isinstance(key, str) else key[0]) in linears}  # the map also names norms, SD3.5 M's attn2
    if diffusers:
        layers = {}
        for name, key in diffusers.items():
            weight_key, part = (key, None) if isinstance(key, str) else (key[0], key[1])
            out_features, in_features = shapes[weight_key]
            layers[name] = _layer(name, part[2] if part is not None else out_features, in_features)
        result = plan(layers, key_map, shapes)
        assert not result.unmatched, result.coverage()
        for target in result.targets.values():
            rows = sorted((leg.offset, leg.offset + (leg.size or target.out_features)) for leg in target.legs)
            assert rows[0][0] == 0 and rows[-1][1] <= target.out_features
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(rows))  # slices do not overlap


@pytest.mark.parametrize("family", ["Lumina Image 2.0 (2.6B)", "Wan 2.2 TI2V 5B"])
def test_diffusers_names_comfyui_does_not_map_are_refused_by_name(family, pack):
    """A key-map gap in ComfyUI 0.3.75, not ours to paper over: the planner names both sides instead of a no-op."""
    patched = _build(family)
    key_map = comfy.lora.model_lora_keys_unet(patched.model, {})
    assert not any(name.startswith("transformer.") for name in key_map)
    names = [f"transformer.layers.{i}.attn.to_q" if "Lumina" in family else f"transformer.blocks.{i}.attn1.to_q"
             for i in range(4)]
    width = patched.model.diffusion_model.state_dict()["x_embedder.weight" if "Lumina" in family
                                                       else "patch_embedding.weight"].shape[0]
    adapter = SimpleNamespace(layers={n: _layer(n, width, width) for n in names}, plain_layers={},
                              path="diffusers_named.safetensors")
    with pytest.raises(OrthoHydraError) as info:
        pack.nodes.patcher.make_plan(patched, adapter)
    message = str(info.value)
    assert f"adapter targets {'layers' if 'Lumina' in family else 'blocks'}.N.* (4)" in message, message
    assert type(patched.model).__name__ in message and "diffusers_named.safetensors" in message
