"""Small real DiTs built from ComfyUI's own classes, with seeded random weights."""

from __future__ import annotations

import functools

import torch

from .host import boot, import_pack


def mmdit_state_dict(depth: int = 2, seed: int = 0, context_dim: int = 64,
                     adm_dim: int = 64) -> dict[str, torch.Tensor]:
    """SD3-style MMDiT (hidden = 64·depth) that ``load_diffusion_model_state_dict`` detects as SD3."""
    boot()
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT

    hidden = 64 * depth
    torch.manual_seed(seed)
    model = MMDiT(depth=depth, patch_size=2, in_channels=16,
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": context_dim, "out_features": hidden}},
                  adm_in_channels=adm_dim, pos_embed_max_size=32, qk_norm="rms",
                  dtype=torch.float32, device="cpu", operations=torch.nn)
    with torch.no_grad():
        # ComfyUI zero-inits the final layer and modulations (sensible for training from scratch, but then
        # a random model predicts ~0 and samples are just the initial noise); give them ordinary Linear
        # scale so the model, and any patch on it, shapes the sample.
        for name, p in model.named_parameters():
            if ".ln_" in name and p.ndim == 1:  # RMSNorm scales are allocated with torch.empty
                p.fill_(1.0)
            elif p.ndim == 2 and torch.count_nonzero(p) == 0:
                p.normal_(0, p.shape[1] ** -0.5)
        for name, p in model.named_parameters():
            # random adaLN gates come out ~0.08, so blocks barely touch the residual stream; trained DiTs
            # have gates of order 1
            if "adaLN_modulation" in name and name.endswith("weight"):
                p.mul_(10.0)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def load_mmdit(depth: int = 2, seed: int = 0):
    """A ComfyUI ModelPatcher around the tiny MMDiT."""
    boot()
    import comfy.sd

    return comfy.sd.load_diffusion_model_state_dict(mmdit_state_dict(depth, seed))


def mmdit_conditioning(batch: int = 1, tokens: int = 8, seed: int = 0, context_dim: int = 64, adm_dim: int = 64):
    """Positive conditioning in ComfyUI's list format for the tiny MMDiT."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, tokens, context_dim, generator=g)
    pooled = torch.randn(batch, adm_dim, generator=g)
    return [[cond, {"pooled_output": pooled}]]


def sample(model, latent: torch.Tensor, positive, negative, steps: int = 4, cfg: float = 2.0, seed: int = 0,
           sampler: str = "euler", scheduler: str = "simple") -> torch.Tensor:
    """Run ComfyUI's own sampler exactly as KSampler does."""
    boot()
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               denoise=1.0, disable_pbar=True, seed=seed)


COSMOS_CONFIG = {
    "image_model": "cosmos_predict2", "max_img_h": 240, "max_img_w": 240, "max_frames": 128, "in_channels": 16,
    "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1, "model_channels": 256, "concat_padding_mask": True,
    "crossattn_emb_channels": 1024, "pos_emb_cls": "rope3d", "pos_emb_learnable": True,
    "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30, "use_adaln_lora": True, "adaln_lora_dim": 256,
    "num_blocks": 2, "num_heads": 16, "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
    "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0,
}


def load_cosmos(num_blocks: int = 2, seed: int = 0, channels: int = 256, dtype: torch.dtype = torch.float32):
    """A Cosmos-Predict2 MiniTrainDIT (the Anima family) as a ComfyUI ModelPatcher: tiny by default; the 2B model's
    real size is ``num_blocks=28, channels=2048`` (random weights, ``dtype``).

    Built from ComfyUI's own model config: detection only knows the 2B/14B block counts.
    """
    boot()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from comfy.ldm.cosmos.predict2 import MiniTrainDIT

    config = {**COSMOS_CONFIG, "num_blocks": num_blocks, "model_channels": channels}
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in config.items() if k not in ("image_model", "min_fps", "max_fps")}
    raw = MiniTrainDIT(**kwargs, dtype=dtype, device="cpu", operations=torch.nn)
    model_config = comfy.supported_models.CosmosT2IPredict2(dict(config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=None)
    state = raw.state_dict()
    del raw  # at 2B a third copy would not fit comfortably
    model.load_model_weights({k: v.clone() for k, v in state.items()} if channels <= 256 else state, "")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    # how ComfyUI 0.33's core loaders let a patcher rebuild its model (deep clones: its TrainLoraNode, multi-GPU)
    patcher.cached_patcher_init = (_fresh_cosmos, (num_blocks, seed, channels, dtype))
    return patcher


def _fresh_cosmos(num_blocks: int, seed: int, channels: int, dtype: torch.dtype, disable_dynamic: bool = False):
    """The same Cosmos stand-in again (the same seed gives the same weights), as a core loader would reload it."""
    return load_cosmos(num_blocks, seed, channels, dtype)


def load_anima(num_blocks: int = 2, seed: int = 0, channels: int = 256):
    """ComfyUI's native Anima (a Cosmos-Predict2 DiT with its ``llm_adapter``; ComfyUI 0.33 and later) as a
    ModelPatcher, tiny blocks and the real 6-layer text adapter, random weights; None on a host without it."""
    boot()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    if not hasattr(comfy.supported_models, "Anima"):
        return None
    from comfy.ldm.anima.model import Anima

    config = {**COSMOS_CONFIG, "image_model": "anima", "num_blocks": num_blocks, "model_channels": channels}
    torch.manual_seed(seed)
    raw = Anima(**{k: v for k, v in config.items() if k not in ("image_model", "min_fps", "max_fps")},
                device="cpu", operations=torch.nn)
    model_config = comfy.supported_models.Anima(dict(config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "", device=None)
    model.load_model_weights({k: v.clone() for k, v in raw.state_dict().items()}, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def anima_conditioning(tokens: int = 6, seed: int = 0):
    """Text-encoder features with the T5 token ids and weights Anima's text adapter reads (as ComfyUI's Anima text
    encoder returns them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 32128, (tokens,), generator=g, dtype=torch.int)
    return [[torch.randn(1, tokens, 1024, generator=g), {"t5xxl_ids": ids, "t5xxl_weights": torch.ones(tokens)}]]


def cosmos_conditioning(tokens: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 1024, generator=g), {}]]


@functools.lru_cache(maxsize=1)
def cosmos_backward_error() -> str | None:
    """None when gradients flow through this host's Cosmos-Predict2 blocks, else the host's error.  ComfyUI 0.33 runs
    Cosmos self-attention's RMS norm and RoPE as one comfy-kitchen op that has no autograd formula of its own; the
    pack's trainer registers one (``comfy_glue.kitchen_autograd``), and so does this probe, as the trainer would."""
    import_pack().comfy_glue.kitchen_autograd.enable_kitchen_backward()  # the pack's module, never a top-level one
    model = load_cosmos(num_blocks=1, seed=0)
    dm = model.model.diffusion_model
    x = torch.randn(1, 16, 1, 8, 8, requires_grad=True)
    try:
        with torch.enable_grad():
            out = dm(x, torch.full((1,), 0.5), torch.randn(1, 4, 1024))
            out.float().sum().backward()
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    return None
