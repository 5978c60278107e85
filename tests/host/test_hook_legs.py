"""A hooked Linear's layers are built once, not on every model call, and follow its tensors when ComfyUI moves or
replaces them."""

import torch

from devkit.adapters import lora_weights, randomized_adapter
from devkit.host import import_pack


def _target_weights(patched, pack):
    (holder_patcher,) = patched.get_additional_models()
    return next(m for m in holder_patcher.model.modules() if isinstance(m, pack.nodes.patcher.TargetWeights))


def test_legs_are_built_once_and_follow_moved_or_replaced_tensors(base):
    pack = import_pack()
    adapter = randomized_adapter(lora_weights(base, pattern=r"x_block_mlp_fc1$"), experts=3, seed=5)
    weights = _target_weights(pack.nodes.patcher.apply_adapter(base, adapter)[0], pack)
    legs = weights.legs()
    assert weights.legs() is legs  # no rebuild per call
    assert legs[0][2].down is weights.leg0_down
    weights.to(torch.float64)  # a move through nn.Module, as ComfyUI's loader makes
    moved = weights.legs()[0][2]
    assert moved.down is weights.leg0_down and moved.down.dtype == torch.float64
    replacement = torch.nn.Parameter(weights.leg0_down.detach() * 2, requires_grad=False)
    weights.leg0_down = replacement  # a parameter object swapped in without a move
    layer = weights.legs()[0][2]
    assert layer.down is replacement
    x = torch.randn(2, 5, layer.in_features, dtype=torch.float64)
    expected = adapter.layers[layer.name].with_tensors(down=replacement.detach().float()).delta(x.float())
    torch.testing.assert_close(layer.delta(x).float(), expected, rtol=1e-4, atol=1e-5)
