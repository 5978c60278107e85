"""The attention / MLP groups: one definition for the trainer's targets and the router's scopes."""

import pytest

from ortho_hydra.layer_groups import in_group
from ortho_hydra.overrides import Scope

NAMES = {  # kohya names from the DiT families ComfyUI maps
    "joint_blocks_0_x_block_mlp_fc1": "mlp", "joint_blocks_0_x_block_attn_qkv": "attention",
    "blocks_3_mlp_layer1": "mlp", "blocks_3_self_attn_q_proj": "attention", "blocks_3_self_attn_output_proj":
        "attention", "layers_2_feed_forward_w1": "mlp", "layers_2_feed_forward_w3": "mlp",
    "double_blocks_0_img_mlp_0": "mlp", "transformer_blocks_1_ff_net_0_proj": "mlp",
    "transformer_blocks_1_attn_to_q": "attention", "blocks_0_ffn_0": "mlp",
    "t_embedder_mlp_0": None, "blocks_3_adaln_modulation_self_attn_1": None, "final_layer_linear": None,
}


@pytest.mark.parametrize("group", ["attention", "mlp"])
def test_router_scope_and_trainer_targets_select_the_same_layers(group):
    scope = Scope(group=group)
    for name, expected in NAMES.items():
        assert in_group(name, group) == (expected == group), name
        assert scope.matches(name, num_blocks=4) == in_group(name, group), name


def test_attention_plus_mlp_is_the_union():
    for name, expected in NAMES.items():
        assert in_group(name, "attention+mlp") == (expected is not None), name
    with pytest.raises(ValueError, match="unknown layer group"):
        in_group("x", "convs")


def test_an_empty_block_range_is_refused_not_silently_empty():
    with pytest.raises(ValueError, match="block_start 5 is after block_end 1"):
        Scope(block_start=5, block_end=1)
    assert Scope(block_start=1, block_end=1).matches("lora_unet_blocks_1_mlp_layer1", 4)
