"""A real ComfyUI text encoder for tests: CLIP-L's architecture and tokenizer with seeded random weights."""

from __future__ import annotations

import json
import os

import torch

from .host import boot


def random_clip_l_state_dict(seed: int = 0) -> dict:
    """CLIP-L's text model (ComfyUI's class and config) with seeded small random weights, as a file would hold it."""
    boot()
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as fh:
        config = json.load(fh)
    model = comfy.clip_model.CLIPTextModel(config, dtype=torch.float32, device="cpu", operations=comfy.ops.manual_cast)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # ComfyUI allocates with torch.empty
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    return model.state_dict()


def random_clip_l(seed: int = 0):
    """A ComfyUI ``CLIP`` (SD1 type, 77 tokens x 768, pooled output) loaded through ComfyUI's own loader."""
    boot()
    import comfy.sd

    return comfy.sd.load_text_encoder_state_dicts([random_clip_l_state_dict(seed)],
                                                  clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
