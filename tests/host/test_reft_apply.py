"""ReFT block edits applied on a real ComfyUI Cosmos-Predict2 (Anima family) DiT through ModelPatcher hooks."""

import dataclasses

import comfy.model_management as mm
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter
from devkit.host import import_pack

BLOCK = "diffusion_model.blocks.0"
WIDTH = tiny_dit.COSMOS_CONFIG["model_channels"]


@pytest.fixture(scope="module")
def cosmos():
    return tiny_dit.load_cosmos(num_blocks=2)


def _edit(block: int, width: int = WIDTH, seed: int = 0, alpha: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(width, 4, generator=g))
    return library().reft.ReFTEdit(f"reft_unet_blocks_{block}", q.T.contiguous(),
                                   0.5 * torch.randn(4, width, generator=g), 0.2 * torch.randn(4, generator=g), alpha)


def _block_output(pack, model) -> torch.Tensor:
    """blocks.0's output during one sampling step, captured by a hook installed after the adapter's (so it sees
    the edited output), on a clone through ModelPatcher like the pack's own."""
    seen = []
    clone = model.clone()
    pack.comfy_glue.hooks.install_forward_hook(clone, BLOCK,
                                               lambda module, args, out: seen.append(out.detach().clone()))
    latent = torch.zeros(1, 16, 1, 8, 8)
    tiny_dit.sample(clone, latent, tiny_dit.cosmos_conditioning(seed=1), tiny_dit.cosmos_conditioning(seed=2),
                    steps=1, cfg=1.0)
    mm.unload_all_models()
    return seen[0]


def test_reft_edit_is_added_to_the_block_output_exactly_and_unpatching_restores(cosmos):
    pack = import_pack()
    adapter = randomized_adapter(lora_weights(cosmos, pattern="blocks_0_mlp"), rank=2, experts=2, seed=3)
    edit = _edit(0)
    with_reft = dataclasses.replace(adapter, reft={edit.name: edit})
    before = {k: v.clone() for k, v in cosmos.model.state_dict().items()}
    h = _block_output(pack, pack.comfy_glue.patcher.apply_adapter(cosmos, adapter, strength=0.8)[0])
    edited = _block_output(pack, pack.comfy_glue.patcher.apply_adapter(cosmos, with_reft, strength=0.8,
                                                                  strength_reft=0.5)[0])
    hd = h.double()
    r, w, b = edit.rotate.double(), edit.source_weight.double(), edit.source_bias.double()
    expected = hd + 0.5 * edit.scale * ((hd @ w.T + b) @ r)  # the same routed layers feed blocks.0 in both
    assert (edited.double() - hd).abs().max() > 1e-3  # the edit does something
    torch.testing.assert_close(edited.double(), expected, rtol=1e-5, atol=1e-5)
    block = cosmos.model.get_submodule(BLOCK)
    assert len(block._forward_hooks) == 0  # unpatched: the original (empty) hook dict is back
    after = cosmos.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reft_on_a_model_without_those_blocks_is_refused_naming_the_key(cosmos):
    pack = import_pack()
    adapter = randomized_adapter(lora_weights(cosmos, pattern="blocks_0_mlp"), rank=2, experts=2, seed=3)
    error = library().OrthoHydraError
    far = _edit(9)
    with pytest.raises(error, match=r"blocks\.9, which this") as err:
        pack.comfy_glue.patcher.apply_adapter(cosmos, dataclasses.replace(adapter, reft={far.name: far}))
    assert err.value.key == "reft_unet_blocks_9.rotate_layer.weight"
    narrow = _edit(1, width=40)
    with pytest.raises(error, match="40 wide"):
        pack.comfy_glue.patcher.apply_adapter(cosmos, dataclasses.replace(adapter, reft={narrow.name: narrow}))
