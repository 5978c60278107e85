"""Real-size DiTs for the coverage tests, described by their released checkpoints' weight shapes.

``tests/host/fixtures/real_size_shapes.json.gz`` holds, per family, the diffusion model's state-dict keys and
shapes (no values).  A test hands them to the installed ComfyUI's own detection (``detect_unet_config`` and
``model_config_from_unet_config``), so the config and the model class come from whatever host runs the tests, and
builds the model on the meta device.  The shapes were written once from the configs below, which ComfyUI 0.3.75's
detection derives from the released checkpoints:

    .venv/bin/python -m devkit.real_size --write     # on the registry host (ComfyUI 0.3.75)
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from .host import boot

SHAPES_FILE = Path(__file__).resolve().parents[1] / "tests" / "host" / "fixtures" / "real_size_shapes.json.gz"

# (ComfyUI 0.3.75 supported-model class, its detected unet config): the generator's input only.
_FLUX_BODY = {"axes_dim": [16, 56, 56], "num_heads": 24, "mlp_ratio": 4.0, "theta": 10000, "qkv_bias": True,
              "hidden_size": 3072, "context_in_dim": 4096, "patch_size": 2, "depth": 19, "depth_single_blocks": 38}
_MMDIT_BODY = {"in_channels": 16, "patch_size": 2, "out_channels": 16, "input_size": None, "adm_in_channels": 2048,
               "qk_norm": "rms", "pos_embed_scaling_factor": None}
_WAN_BODY = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "freq_dim": 256,
             "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}

FAMILIES = {
    "Flux dev (12B)": ("Flux", {
        "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
        "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
        "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
        "guidance_embed": True}),
    "SD3.5 Large (8B)": ("SD3", {
        "in_channels": 16, "patch_size": 2, "out_channels": 16, "depth": 38, "input_size": None,
        "adm_in_channels": 2048, "pos_embed_max_size": 192, "num_patches": 36864, "qk_norm": "rms",
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [],
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": 2432}}}),
    "Cosmos-Predict2 2B / Anima": ("CosmosT2IPredict2", {
        "image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
        "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 2048,
        "concat_padding_mask": True, "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d",
        "pos_emb_learnable": True, "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30,
        "use_adaln_lora": True, "adaln_lora_dim": 256, "num_blocks": 28, "num_heads": 16,
        "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0, "rope_w_extrapolation_ratio": 4.0,
        "rope_t_extrapolation_ratio": 1.0, "extra_h_extrapolation_ratio": 1.0, "extra_w_extrapolation_ratio": 1.0,
        "extra_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False}),
    "Wan 2.1 T2V 14B": ("WAN21_T2V", {
        "image_model": "wan2.1", "model_type": "t2v", "dim": 5120, "out_dim": 16, "num_heads": 40, "ffn_dim": 13824,
        "num_layers": 40, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
        "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16}),
    # Wan 2.2 A14B's two experts have Wan 2.1 14B's shapes (the same class); the 5B TI2V is its own
    "Wan 2.2 TI2V 5B": ("WAN22_T2V", {**_WAN_BODY, "dim": 3072, "out_dim": 48, "num_heads": 24, "ffn_dim": 14336,
                                       "num_layers": 30, "in_dim": 48}),
    "SD3.5 Medium (2.5B)": ("SD3", {
        **_MMDIT_BODY, "depth": 24, "num_patches": 147456, "pos_embed_max_size": 384,
        "x_block_self_attn_layers": list(range(13)),
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 4096, "out_features": 1536}}}),
    "Chroma (8.9B)": ("Chroma", {**_FLUX_BODY, "image_model": "chroma", "in_channels": 64, "out_channels": 64,
                                  "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5}),
    "Lumina Image 2.0 (2.6B)": ("Lumina2", {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 2304, "cap_feat_dim": 2304, "n_layers": 26,
        "qk_norm": True, "n_heads": 24, "n_kv_heads": 8, "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512],
        "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0}),
    "Z-Image (Lumina2 class, 6.2B)": ("ZImage", {
        "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
        "qk_norm": True, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
        "pad_tokens_multiple": 32}),
    "Qwen-Image (20B)": ("QwenImage", {"image_model": "qwen_image", "in_channels": 64, "num_layers": 60}),
    "HunyuanVideo T2V (13B)": ("HunyuanVideo", {
        "image_model": "hunyuan_video", "in_channels": 16, "patch_size": [1, 2, 2], "out_channels": 16,
        "vec_in_dim": 768, "axes_dim": [16, 56, 56], "meanflow": False, "context_in_dim": 4096, "hidden_size": 3072,
        "mlp_ratio": 4.0, "num_heads": 24, "depth": 20, "depth_single_blocks": 40, "theta": 256, "qkv_bias": True,
        "byt5": False, "guidance_embed": True, "use_cond_type_embedding": False, "vision_in_dim": None}),
    "HiDream-I1 (17B)": ("HiDream", {
        "image_model": "hidream", "attention_head_dim": 128, "axes_dims_rope": [64, 32, 32],
        "caption_channels": [4096, 4096], "max_resolution": [128, 128], "in_channels": 16,
        "llama_layers": list(range(32)) + [31] * 16, "num_attention_heads": 20, "num_routed_experts": 4,
        "num_activated_experts": 2, "num_layers": 16, "num_single_layers": 32, "out_channels": 16, "patch_size": 2,
        "text_emb_dim": 2048}),
}


def _config_model(class_name: str, unet_config: dict):
    import comfy.supported_models as sm

    model_config = getattr(sm, class_name)(dict(unet_config))
    model_config.set_inference_dtype(torch.bfloat16, None)
    return model_config


def _meta_model(model_config):
    with torch.device("meta"):
        return model_config.get_model({}, "", device="meta")


def write_shapes(path: Path = SHAPES_FILE) -> None:
    """Build every family from its 0.3.75 config and write the diffusion model's key shapes."""
    out = {}
    for family, (class_name, unet_config) in FAMILIES.items():
        model = _meta_model(_config_model(class_name, unet_config))
        out[family] = {k: list(v.shape) for k, v in model.diffusion_model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(out, f)  # in state-dict order: detection builds some lists (SD3.5 M's x_block_self_attn_layers) in it
    tmp.replace(path)


def checkpoint_shapes(path: Path = SHAPES_FILE) -> dict[str, dict[str, tuple[int, ...]]]:
    with gzip.open(path, "rt") as f:
        return {family: {k: tuple(shape) for k, shape in keys.items()} for family, keys in json.load(f).items()}


def detect(shapes: dict[str, tuple[int, ...]]):
    """(unet config, model config) as the installed ComfyUI detects them from a checkpoint of these shapes."""
    import comfy.model_detection

    state_dict = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    unet_config = comfy.model_detection.detect_unet_config(state_dict, "")
    if unet_config is None:
        return None, None
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, state_dict)
    if model_config is not None:
        model_config.set_inference_dtype(torch.bfloat16, None)
    return unet_config, model_config


def build(shapes: dict[str, tuple[int, ...]]) -> SimpleNamespace:
    """The model the installed ComfyUI builds for a checkpoint of these shapes, on the meta device, wrapped the
    way the pack's planner reads a ModelPatcher (``.model``)."""
    _, model_config = detect(shapes)
    if model_config is None:
        raise LookupError("the installed ComfyUI does not detect this checkpoint")
    return SimpleNamespace(model=_meta_model(model_config))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {SHAPES_FILE.name} from the configs")
    args = parser.parse_args(argv)
    boot(cpu=True)
    if args.write:
        write_shapes()
    for family, shapes in checkpoint_shapes().items():
        print(f"{family}: {len(shapes)} weights")


if __name__ == "__main__":
    main()
