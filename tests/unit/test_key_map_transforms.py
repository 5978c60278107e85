"""Key-map entries that reorder a weight's rows (ComfyUI's ``(key, None, swap_scale_shift)`` for diffusers names)."""

import torch
from factories import trained_layer

from ortho_hydra import PlainLoRA, distill
from ortho_hydra.targets import plan


def swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """As ComfyUI's: diffusers stores [scale; shift] where the model has [shift; scale]."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def test_a_row_map_in_the_key_map_is_applied_to_every_expert_and_leg():
    routed = distill(trained_layer(out=48, inn=40, name="transformer.norm_out.linear"))
    plain = PlainLoRA("transformer.proj_out", torch.randn(3, 40), torch.randn(48, 3), alpha=3.0)
    key_map = {"transformer.norm_out.linear": ("diffusion_model.final_layer.adaLN_modulation.1.weight", None,
                                               swap_scale_shift),
               "transformer.proj_out": ("diffusion_model.final_layer.linear.weight", None, swap_scale_shift)}
    shapes = {"diffusion_model.final_layer.adaLN_modulation.1.weight": (48, 40),
              "diffusion_model.final_layer.linear.weight": (48, 40)}
    result = plan({routed.name: routed, plain.name: plain}, key_map, shapes)
    assert not result.unmatched
    legs = {t.module: t.legs[0].layer for t in result.targets.values()}
    gate = torch.tensor([0.2, 0.5, 0.3])
    moved = legs["diffusion_model.final_layer.adaLN_modulation.1"]
    assert torch.equal(moved.delta_weight(gate), swap_scale_shift(routed.delta_weight(gate)))
    assert not torch.equal(moved.delta_weight(gate), routed.delta_weight(gate))  # the map does something
    assert torch.equal(legs["diffusion_model.final_layer.linear"].delta_weight(),
                       swap_scale_shift(plain.delta_weight()))
