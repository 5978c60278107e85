"""Split q/k/v legs in a fused weight with grouped-query attention, and key-map slices outside their weight.

Lumina 2.0's fused qkv has 24 query heads and 8 key/value heads of 96: q is rows 0-2304, k 2304-3072, v 3072-3840.
ComfyUI 0.33 maps its diffusers names as if every part had ``dim`` rows: ``to_k`` at 2304-4608 and ``to_v`` at
4608-6912.  Here the
model is scaled down by 24 (1 kv head of 4 rows, 3 query heads) with the same ratios.
"""

import pytest
import torch

from ortho_hydra import PlainLoRA
from ortho_hydra.targets import KeyMapSliceError, layout_rows, plan

HEADS, KV_HEADS, HEAD_DIM, DIM = 3, 1, 4, 12
Q, KV = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
ROWS = Q + 2 * KV
WEIGHT = "diffusion_model.layers.0.attention.qkv.weight"
LAYOUT = {WEIGHT: {"q": (0, Q), "k": (Q, KV), "v": (Q + KV, KV)}}
SHAPES = {WEIGHT: (ROWS, DIM)}
EQUAL_HEADS_MAP = {f"transformer.layers.0.attention.to_{p}": (WEIGHT, (0, i * DIM, DIM)) for i, p in enumerate("qkv")}


def _legs(seed: int = 0) -> dict[str, PlainLoRA]:
    gen = torch.Generator().manual_seed(seed)
    return {f"transformer.layers.0.attention.to_{p}": PlainLoRA(f"transformer.layers.0.attention.to_{p}",
                                                                torch.randn(2, DIM, generator=gen),
                                                                torch.randn(rows, 2, generator=gen), alpha=2.0)
            for p, rows in (("q", Q), ("k", KV), ("v", KV))}


def test_split_legs_land_where_the_model_computes_each_head_group():
    legs = _legs()
    result = plan(legs, EQUAL_HEADS_MAP, SHAPES, LAYOUT)
    assert not result.unmatched
    (target,) = result.targets.values()
    delta = torch.zeros(ROWS, DIM, dtype=torch.float64)
    for leg in target.legs:
        delta[leg.offset:leg.offset + leg.size] += leg.layer.delta_weight().double()
    # closed form: [ΔW_q; ΔW_k; ΔW_v] stacked in the order and sizes the attention module splits qkv's output
    expected = torch.cat([legs[f"transformer.layers.0.attention.to_{p}"].delta_weight().double() for p in "qkv"])
    torch.testing.assert_close(delta, expected, rtol=0, atol=0)
    # the map had q right; it gave k the right first row but q's size, and v neither
    assert sorted(result.relocated) == ["transformer.layers.0.attention.to_k", "transformer.layers.0.attention.to_v"]
    assert "2 q/k/v slices placed from the model's head counts" in result.coverage()


def test_a_slice_outside_its_weight_is_refused_naming_the_rows_when_no_layout_is_known():
    with pytest.raises(KeyMapSliceError, match=r"to_k: the key map places it at rows 12-24 of .*qkv.weight, which has "
                                               r"20 rows"):
        plan(_legs(), EQUAL_HEADS_MAP, SHAPES)


def test_split_file_on_a_fused_model_uses_the_layout_and_refuses_unequal_thirds_without_one():
    names = {p: f"lora_unet_layers_0_attention_{p}" for p in "qkv"}
    key_map = {"lora_unet_layers_0_attention_qkv": WEIGHT}
    legs = {names[p]: PlainLoRA(names[p], torch.randn(2, DIM), torch.randn(rows, 2), alpha=2.0)
            for p, rows in (("q", Q), ("k", KV), ("v", KV))}
    result = plan(legs, key_map, SHAPES, LAYOUT)
    (target,) = result.targets.values()
    assert sorted((leg.offset, leg.size) for leg in target.legs) == [(0, Q), (Q, KV), (Q + KV, KV)]
    assert not result.relocated  # no key-map slice was overridden: the layout was the only source
    with pytest.raises(KeyMapSliceError, match="do not split into 3 equal q/k/v parts"):
        plan(legs, key_map, SHAPES)  # 20 rows, no layout


def test_layout_rows_reads_the_part_from_the_layer_name():
    layout = LAYOUT[WEIGHT]
    assert layout_rows("transformer.layers.0.attention.to_k", layout) == (Q, KV)
    assert layout_rows("lora_unet_layers_0_attention_v_proj", layout) == (Q + KV, KV)
    assert layout_rows("transformer.layers.0.attention.to_out", layout) is None
    assert layout_rows("transformer.layers.0.attention.to_q", None) is None
