"""ReFT block edits: the closed form in fp64, the reference layout's round trip, and refusals naming the key."""

import pytest
import torch
from factories import adapter as make_adapter

from ortho_hydra import OrthoHydraError, load, save
from ortho_hydra.reft import ReFTEdit, parse
from ortho_hydra.safetensors_io import read_safetensors, write_safetensors

D, R = 40, 4


def reference_tensors(block: int = 3, alpha: float | None = 2.0, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, R, generator=g))
    out = {f"reft_unet_blocks_{block}.rotate_layer.weight": q.T.contiguous(),
           f"reft_unet_blocks_{block}.learned_source.weight": 0.3 * torch.randn(R, D, generator=g),
           f"reft_unet_blocks_{block}.learned_source.bias": 0.1 * torch.randn(R, generator=g)}
    if alpha is not None:
        out[f"reft_unet_blocks_{block}.alpha"] = torch.tensor(alpha)
    return out


@pytest.mark.parametrize(("alpha", "scale"), [(2.0, 0.5), (0.0, 1.0), (None, 1.0)])
def test_edit_matches_the_closed_form_in_fp64(alpha, scale):
    tensors = reference_tensors(alpha=alpha)
    edit = parse(tensors)["reft_unet_blocks_3"]
    assert edit.block == 3 and edit.scale == scale
    h = torch.randn(2, 3, 5, D, dtype=torch.float64)  # any leading shape: (B, T, H, W, D) in Cosmos blocks
    r = tensors["reft_unet_blocks_3.rotate_layer.weight"].double()
    w = tensors["reft_unet_blocks_3.learned_source.weight"].double()
    b = tensors["reft_unet_blocks_3.learned_source.bias"].double()
    expected = h + scale * 0.7 * torch.einsum("...r,rd->...d", torch.einsum("rd,...d->...r", w, h) + b, r)
    torch.testing.assert_close(edit.edit(h, strength=0.7), expected, rtol=1e-12, atol=1e-12)
    # the paper's form h + Rᵀ(W'h + b − Rh) with W' = W + R gives the same edit
    paper = h + scale * torch.einsum("...r,rd->...d", torch.einsum("rd,...d->...r", w + r, h) + b
                                     - torch.einsum("rd,...d->...r", r, h), r)
    torch.testing.assert_close(edit.edit(h), paper, rtol=1e-10, atol=1e-10)


def test_a_file_with_reft_round_trips_exactly(tmp_path):
    path = tmp_path / "with_reft_moe.safetensors"
    save(make_adapter(num_layers=2, experts=3, rank=4), path)
    tensors, metadata = read_safetensors(path)
    extra = {**reference_tensors(block=0), **reference_tensors(block=7, seed=1)}
    write_safetensors(path, {**tensors, **extra}, metadata)
    adapter = load(path)
    assert sorted(adapter.reft) == ["reft_unet_blocks_0", "reft_unet_blocks_7"]
    again = tmp_path / "again_moe.safetensors"
    save(adapter, again)
    written, _ = read_safetensors(again)
    for key, value in extra.items():
        assert torch.equal(written[key], value.float()), key
    assert isinstance(load(again).reft["reft_unet_blocks_7"], ReFTEdit)


def test_incomplete_or_misshapen_edits_are_refused_naming_the_key():
    tensors = reference_tensors()
    del tensors["reft_unet_blocks_3.learned_source.bias"]
    with pytest.raises(OrthoHydraError) as err:
        parse(tensors, "f.safetensors")
    assert err.value.key == "reft_unet_blocks_3.learned_source.bias" and "f.safetensors" in str(err.value)
    bad = reference_tensors()
    bad["reft_unet_blocks_3.learned_source.weight"] = torch.randn(R, D + 1)
    with pytest.raises(OrthoHydraError, match="do not fit one"):
        parse(bad)
    with pytest.raises(OrthoHydraError, match="not a ReFT key"):
        parse({"reft_unet_blocks_3.mystery": torch.zeros(1)})
