"""Named groups of adapted layers, defined once for the trainer's targets and the router's scopes.

Names are kohya-style prefixes (``lora_unet_blocks_0_mlp_layer1``) or module paths; the patterns cover the DiT
families ComfyUI supports (SD3/MMDiT, Flux, Cosmos/Anima, Lumina, Qwen-Image, Wan, HunyuanVideo, HiDream).
"""

from __future__ import annotations

import re

ATTENTION = re.compile(r"attn|attention|qkv|_q(_proj)?$|_k(_proj)?$|_v(_proj)?$|to_[qkv]|to_out|output_proj")
MLP = re.compile(r"mlp|ff|feed_forward|fc\d|layer[12]|w[123]$")
# Conditioning embedders and adaLN modulations are not the blocks' attention or MLP, even where their names
# contain one of the words above (``t_embedder_mlp_0``).
_NOT_IN_BLOCKS = re.compile(r"embedder|adaln|modulation", re.IGNORECASE)

GROUPS = ("attention", "mlp", "attention+mlp")


def in_group(name: str, group: str) -> bool:
    """Whether layer ``name`` belongs to ``group`` (one of :data:`GROUPS`)."""
    if group not in GROUPS:
        raise ValueError(f"unknown layer group {group!r}; choose one of {', '.join(GROUPS)}")
    if _NOT_IN_BLOCKS.search(name):
        return False
    if group == "attention":
        return ATTENTION.search(name) is not None
    if group == "mlp":
        return MLP.search(name) is not None
    return ATTENTION.search(name) is not None or MLP.search(name) is not None
