"""Real-size DiTs built by ComfyUI on the meta device (no weights): every adapter layer named the way trainers name
them plans onto the right Linear, with full coverage.  The configs are the ones ComfyUI's own detection derives
from the released checkpoints' shapes (``comfy/model_detection.py``)."""

import itertools
from types import SimpleNamespace

import comfy.lora
import comfy.supported_models as sm
import pytest
import torch

from devkit.host import import_pack
from ortho_hydra import ExpertLayer, RouterSpec
from ortho_hydra.targets import plan

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
        "rope_t_extrapolation_ratio": 1.0}),
    "Wan 2.1 T2V 14B": (sm.WAN21_T2V, {
        "image_model": "wan2.1", "model_type": "t2v", "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824,
        "num_layers": 40, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16}),
}


def _meta_model(config_class, unet_config):
    model_config = config_class(dict(unet_config))
    model_config.set_inference_dtype(torch.bfloat16, None)
    with torch.device("meta"):
        model = model_config.get_model({}, "", device="meta")
    return SimpleNamespace(model=model)  # what the pack's planner reads from a ModelPatcher


def _layer(name: str, out_features: int, in_features: int) -> ExpertLayer:
    return ExpertLayer(name=name, down=torch.zeros(1, in_features), ups=torch.zeros(2, out_features, 1),
                       router_weight=torch.zeros(2, 1), router_bias=torch.zeros(2), alpha=1.0,
                       router=RouterSpec(source="input"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_linear_of_a_real_size_dit_is_planned_from_trainer_names(family):
    config_class, unet_config = FAMILIES[family]
    patched = _meta_model(config_class, unet_config)
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
