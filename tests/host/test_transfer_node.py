"""The transfer node on the real host: two versions of a tiny MMDiT, an Ortho-Hydra adapter and a LoRA file."""

import dataclasses

import comfy.lora
import comfy.model_management as mm
import comfy.sd
import pytest
import torch

from devkit import demo_assets, tiny_dit
from devkit.adapters import library, lora_weights, randomized_adapter
from devkit.host import import_pack
from nodes import LoraLoaderModelOnly

R = 24
PATTERN = "x_block_(attn_qkv|mlp_fc1)"


@pytest.fixture(scope="module")
def versions():
    """v1 and a v2 whose every Linear moved by a random 15 % (a fine-tune of the same architecture)."""
    sd = tiny_dit.mmdit_state_dict(depth=2, seed=0)
    sd2 = demo_assets.next_version({k: v.clone() for k, v in sd.items()})
    return comfy.sd.load_diffusion_model_state_dict(sd), comfy.sd.load_diffusion_model_state_dict(sd2)


def _node():
    return import_pack().nodes.transfer.OrthoHydraTransfer


def _weights(model) -> dict[str, torch.Tensor]:
    sd = model.model.state_dict()
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    return {name: sd[key].double() for name, key in key_map.items() if isinstance(key, str) and key in sd}


def _projector(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, _, vh = torch.linalg.svd(weight.double())
    return u[:, :rank] @ u[:, :rank].T, vh[:rank].T @ vh[:rank]


def test_ortho_hydra_transfer_matches_the_fp64_projection_and_round_trips(versions, loras):
    v1, v2 = versions
    adapter = randomized_adapter(lora_weights(v1, pattern=PATTERN), rank=4, experts=3, seed=2)
    latent = {"samples": torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))}
    out = _node().execute(v1, v2, rank=R, energy=0.9, threshold=0.0, mode="subspace", output_name="moved",
                          seed=0, adapter=adapter, latent=latent, conditioning=tiny_dit.mmdit_conditioning(seed=3))
    moved, report, path = out.args
    target = _weights(v2)
    assert set(moved.layers) == set(adapter.layers)
    assert moved.expert_names == adapter.expert_names and moved.path == path
    for name, layer in adapter.layers.items():
        p_u, p_v = _projector(target[name], R)
        for e in range(3):
            gate = torch.nn.functional.one_hot(torch.tensor(e), 3).float()
            expected = p_u @ layer.static_delta_weight(gate).double() @ p_v
            got = moved.layers[name].static_delta_weight(gate).double()
            assert (got - expected).norm() / expected.norm() < 1e-4, name
    reloaded = library().load(path)
    for name, layer in moved.layers.items():
        gate = torch.full((3,), 1 / 3)
        assert torch.allclose(reloaded.layers[name].static_delta_weight(gate), layer.static_delta_weight(gate),
                              atol=1e-6)
    assert '"mode": "subspace"' in reloaded.metadata["oh_transfer"]
    # the report: a row per layer with similarity, and a finite, positive gate drift per routed layer
    assert f"{len(adapter.layers)} kept, 0 dropped" in report and "mean gate drift KL" in report
    drift = float(report.rsplit("mean gate drift KL ", 1)[1].split()[0])
    assert 0.0 < drift < 10.0


def test_same_model_with_subspace_null_is_the_identity_and_does_not_drift(versions, loras):
    v1, _ = versions
    adapter = randomized_adapter(lora_weights(v1, pattern=PATTERN), rank=4, experts=3, seed=4)
    latent = {"samples": torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(2))}
    moved, report, _ = _node().execute(v1, v1, rank=R, energy=0.9, threshold=0.0, mode="subspace+null",
                                       output_name="same", seed=0, adapter=adapter, latent=latent,
                                       conditioning=tiny_dit.mmdit_conditioning(seed=3)).args
    gate = torch.full((3,), 1 / 3)
    for name, layer in adapter.layers.items():
        ref = layer.static_delta_weight(gate)
        assert (moved.layers[name].static_delta_weight(gate) - ref).norm() / ref.norm() < 1e-5
    assert float(report.rsplit("mean gate drift KL ", 1)[1].split()[0]) < 1e-6


def test_lora_file_transfers_to_a_plain_lora_that_comfyui_loads(versions, loras):
    """ComfyUI's own LoraLoaderModelOnly on v2 with the written file adds exactly P_t ΔW Q_t (fp64 SVD)."""
    v1, v2 = versions
    g = torch.Generator().manual_seed(7)
    key_map = comfy.lora.model_lora_keys_unet(v1.model, {})
    weights = _weights(v1)
    tensors, deltas = {}, {}
    for name in [n for n in weights if n.startswith("lora_unet_") and "mlp_fc2" in n]:
        o, i = weights[name].shape
        up, down = torch.randn(o, 4, generator=g) * 0.2, torch.randn(4, i, generator=g) * 0.2
        tensors.update({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                        f"{name}.alpha": torch.tensor(2.0)})
        deltas[name] = 0.5 * up.double() @ down.double()
    from safetensors.torch import save_file

    save_file(tensors, str(loras / "style.safetensors"))
    moved, report, path = _node().execute(v1, v2, rank=R, energy=0.9, threshold=0.0, mode="subspace",
                                          output_name="style_v2", seed=0, lora_name="style.safetensors").args
    assert not moved.layers and set(moved.plain_layers) == set(deltas)
    assert "gate drift" not in report  # a LoRA has no routers
    patched = LoraLoaderModelOnly().load_lora_model_only(v2, path.rsplit("/", 1)[1], 1.0)[0]
    target = {name: w.clone() for name, w in _weights(v2).items()}  # before loading: it patches v2's tensors
    mm.load_models_gpu([patched])
    try:
        live = patched.model.state_dict()
        for name, delta in deltas.items():
            p_u, p_v = _projector(target[name], R)
            got = live[key_map[name]].double() - target[name]
            expected = p_u @ delta @ p_v
            assert (got - expected).norm() / expected.norm() < 1e-4, name
    finally:
        mm.unload_all_models()


def test_refusals_name_the_key_and_the_fix(versions, loras):
    v1, v2 = versions
    error = library().OrthoHydraError
    adapter = randomized_adapter(lora_weights(v1, pattern=PATTERN), rank=4, experts=3, seed=2)
    args = {"rank": R, "energy": 0.9, "threshold": 0.0, "mode": "subspace", "output_name": "x", "seed": 0}
    cosmos = tiny_dit.load_cosmos()
    with pytest.raises(error, match="source model is SD3 and the target Cosmos") as exc:
        _node().execute(v1, cosmos, adapter=adapter, **args)
    assert exc.value.key == "target_model"
    wider = tiny_dit.load_mmdit(depth=3, seed=0)  # same class, other layer shapes
    with pytest.raises(error, match=r"in the target model: .*same layer shapes"):
        _node().execute(v1, wider, adapter=adapter, **args)
    with pytest.raises(error, match="not both and not neither"):
        _node().execute(v1, v2, **args)
    with pytest.raises(error, match="larger than"):
        _node().execute(v1, v2, adapter=adapter, **{**args, "rank": 4096})
    with pytest.raises(error, match="nothing to write"):
        _node().execute(v1, v2, adapter=adapter, **{**args, "threshold": 1.0})
    cosmos_only = {k: w for k, w in lora_weights(cosmos).items() if "final_layer" not in k}  # names SD3 lacks
    foreign = randomized_adapter(cosmos_only, rank=2, experts=2, seed=0)
    with pytest.raises(error, match="in both models"):
        _node().execute(v1, v2, adapter=foreign, **args)
    mixed = randomized_adapter(lora_weights(cosmos), rank=2, experts=2, seed=0)  # final_layer: other shapes
    with pytest.raises(error, match="adapter writes 64x256 but the model weight is"):
        _node().execute(v1, v2, adapter=mixed, **args)
    assert not list(loras.glob("x*.safetensors"))  # a refused transfer writes nothing


def test_reft_edits_are_carried_unchanged_in_the_returned_adapter_and_the_file(versions, loras):
    v1, v2 = versions
    reft = library().reft
    adapter = randomized_adapter(lora_weights(v1, pattern=PATTERN), rank=4, experts=3, seed=2)
    edit = reft.ReFTEdit("reft_unet_blocks_0", torch.eye(4, 128), torch.randn(4, 128), torch.randn(4), 2.0)
    with_reft = dataclasses.replace(adapter, reft={edit.name: edit})
    moved, report, path = _node().execute(v1, v2, rank=R, energy=0.9, threshold=0.0, mode="subspace",
                                          output_name="with_reft", seed=0, adapter=with_reft).args
    assert "1 ReFT block edits copied unchanged" in report
    for carried in (moved.reft[edit.name], library().load(path).reft[edit.name]):
        assert all(torch.equal(carried.tensors()[k], v) for k, v in edit.tensors().items())
