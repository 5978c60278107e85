import json
import os
import pickle

import pytest
import torch
from factories import adapter, trained_layer
from reference_math import training_factors64
from safetensors.torch import load_file, save_file

import ortho_hydra
from ortho_hydra import OrthoHydraError
from ortho_hydra.moe_format import adapter_tensors


def test_save_load_round_trip_is_bit_exact(tmp_path):
    original = adapter(names=["ink", "watercolor", "pixel"])
    path = tmp_path / "style_moe.safetensors"
    ortho_hydra.save(original, path, metadata={"oh_provenance": json.dumps({"steps": 10})})
    loaded = ortho_hydra.load(path)
    assert loaded.num_experts == 3 and loaded.rank == 4
    assert loaded.expert_names == ("ink", "watercolor", "pixel")
    assert set(loaded.layers) == set(original.layers) and set(loaded.plain_layers) == set(original.plain_layers)
    for name, layer in original.layers.items():
        other = loaded.layers[name]
        for attr in ("down", "ups", "router_weight", "router_bias"):
            assert torch.equal(getattr(layer, attr), getattr(other, attr)), (name, attr)
        assert other.alpha == layer.alpha and other.router == layer.router
    x = torch.randn(3, 5, 40)
    first = next(iter(original.layers))
    assert torch.equal(original.layers[first].delta(x), loaded.layers[first].delta(x))
    leg = loaded.plain_layers["lora_unet_blocks_0_attn_out"]
    assert torch.equal(leg.up, original.plain_layers["lora_unet_blocks_0_attn_out"].up)
    meta = loaded.metadata
    assert meta["ss_network_spec"] == "ortho_hydra" and meta["oh_lambda_placement"] == "up"
    assert meta["oh_num_experts"] == "3" and json.loads(meta["oh_provenance"]) == {"steps": 10}
    # a second save of the loaded adapter reproduces the same tensors
    again = tmp_path / "again.safetensors"
    ortho_hydra.save(loaded, again)
    a, b = load_file(path), load_file(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigma_router_and_inv_scale_round_trip(tmp_path):
    layer = ortho_hydra.distill(trained_layer(sigma_feature_dim=4))
    layer.inv_scale = torch.rand(40) + 0.5
    layer.router = ortho_hydra.RouterSpec(source="sigma", sigma_dim=4, sigma_bands=(0.0, 0.5, 1.0))
    layer.ups = torch.cat([layer.ups, layer.ups[:1]])  # 4 experts so 2 bands split evenly
    layer.router_weight = torch.cat([layer.router_weight, layer.router_weight[:1]])
    layer.router_bias = torch.cat([layer.router_bias, layer.router_bias[:1]])
    path = tmp_path / "sig_moe.safetensors"
    ortho_hydra.save(ortho_hydra.Adapter(layers={layer.name: layer}), path)
    loaded = ortho_hydra.load(path).layers[layer.name]
    assert loaded.router == layer.router and torch.equal(loaded.inv_scale, layer.inv_scale)
    x, sigma = torch.randn(2, 6, 40), torch.tensor([0.2, 0.8])
    assert torch.equal(loaded.gate(x, sigma), layer.gate(x, sigma))
    gate = loaded.gate(x, sigma)
    # expert e serves band e mod 2: σ=0.2 -> band 0 (experts 0, 2), σ=0.8 -> band 1 (experts 1, 3)
    assert torch.all(gate[0, 1::2] == 0) and torch.all(gate[1, 0::2] == 0)
    assert torch.allclose(gate.sum(-1), torch.ones(2))


def _reference_layout_file(path, layer, inv_scale=None):
    """Write what the reference trainer writes: √|λ| split between down and ups, router untouched."""
    q_eff, p_eff = training_factors64(layer)
    lam = layer.lam.detach().double()
    root = lam.abs().sqrt()
    down = torch.diag(root) @ q_eff
    if inv_scale is not None:
        down = down / inv_scale.double()  # the runtime multiplies x by inv_scale before down
    prefix = layer.name
    tensors = {f"{prefix}.lora_down.weight": down.float(),
               f"{prefix}.router.weight": layer.router.weight.detach().clone(),
               f"{prefix}.router.bias": layer.router.bias.detach().clone(),
               f"{prefix}.alpha": torch.tensor(float(layer.alpha))}
    for e in range(layer.num_experts):
        tensors[f"{prefix}.lora_ups.{e}.weight"] = (p_eff[e] @ torch.diag(root * lam.sign())).float()
    if inv_scale is not None:
        tensors[f"{prefix}.inv_scale"] = inv_scale.float()
    save_file(tensors, str(path), metadata={"ss_network_spec": "ortho_hydra", "ss_use_moe_style": "shared_A",
                                            "ss_router_source": "input", "ss_network_dim": str(layer.rank)})


@pytest.mark.parametrize("with_inv_scale", [False, True])
def test_reference_layout_loads_with_training_time_gates(tmp_path, with_inv_scale):
    layer = trained_layer(rank=6, experts=4)
    inv_scale = torch.rand(40) + 0.5 if with_inv_scale else None
    path = tmp_path / "ref_moe.safetensors"
    _reference_layout_file(path, layer, inv_scale)
    x = torch.randn(5, 8, 40)
    with torch.no_grad():  # down·diag(inv_scale) = diag(√|λ|) Q_eff: training saw Q_eff x
        train_gate = ortho_hydra.distill(layer).gate(x)
        train_delta = layer.delta(x)
    corrected = ortho_hydra.load(path).layers[layer.name]
    assert torch.allclose(corrected.gate(x), train_gate, atol=1e-5)
    assert torch.allclose(corrected.delta(x), train_delta, atol=1e-5 * train_delta.abs().max().item())
    raw = ortho_hydra.load(path, router_correction="none").layers[layer.name]
    assert torch.equal(raw.router_weight, layer.router.weight.detach())
    assert (raw.gate(x) - train_gate).abs().max() > 1e-3  # the defect is real, and the option reproduces it


def test_dead_lambda_component_keeps_its_router_column(tmp_path):
    # With λ_i = 0 the file's down row is zero, so the pooled component is lost either way;
    # the loader must keep that column instead of dividing by zero.
    layer = trained_layer(rank=6, experts=4)
    with torch.no_grad():
        layer.lam[2] = 0.0
    path = tmp_path / "dead_moe.safetensors"
    _reference_layout_file(path, layer)
    corrected = ortho_hydra.load(path).layers[layer.name]
    stored = layer.router.weight.detach()
    assert torch.equal(corrected.router_weight[:, 2], stored[:, 2])
    root = layer.lam.detach().abs().sqrt()
    for i in (0, 1, 3, 4, 5):
        assert torch.allclose(corrected.router_weight[:, i], stored[:, i] / root[i], rtol=1e-5)
    assert torch.isfinite(corrected.gate(torch.randn(2, 3, 40))).all()


def test_hydra_spec_files_are_not_corrected(tmp_path):
    layer = trained_layer()
    path = tmp_path / "hydra_moe.safetensors"
    _reference_layout_file(path, layer)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"ss_network_spec": "hydra"})
    assert torch.equal(ortho_hydra.load(path).layers[layer.name].router_weight, layer.router.weight.detach())


def test_split_qkv_legs_and_plain_legs_are_read(tmp_path):
    base = ortho_hydra.distill(trained_layer(out=48, name="x"))
    tensors = {}
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        p = f"lora_unet_blocks_0_self_attn_{part}"
        tensors[f"{p}.lora_down.weight"] = base.down.clone()
        tensors[f"{p}.router.weight"] = base.router_weight.clone()
        tensors[f"{p}.router.bias"] = base.router_bias.clone()
        tensors[f"{p}.alpha"] = torch.tensor(4.0)
        for e in range(3):
            tensors[f"{p}.lora_ups.{e}.weight"] = base.ups[e, 16 * i:16 * (i + 1)].clone()
    tensors["lora_unet_blocks_0_mlp_layer2.lora_down.weight"] = torch.randn(2, 40)
    tensors["lora_unet_blocks_0_mlp_layer2.lora_up.weight"] = torch.randn(40, 2)
    path = tmp_path / "qkv_moe.safetensors"
    save_file(tensors, str(path), metadata={"ss_network_spec": "hydra"})
    loaded = ortho_hydra.load(path)
    assert len(loaded.layers) == 3 and list(loaded.plain_layers) == ["lora_unet_blocks_0_mlp_layer2"]
    x = torch.randn(2, 5, 40)
    fused = torch.cat([loaded.layers[f"lora_unet_blocks_0_self_attn_{p}"].delta(x)
                       for p in ("q_proj", "k_proj", "v_proj")], dim=-1)
    assert torch.allclose(fused, base.delta(x), atol=1e-6)


# ---- bad files: one clear error each, naming file, key and fix --------------------------------

def _good_tensors():
    return adapter_tensors(adapter(num_layers=2, with_plain=False))


def _write(path, tensors, metadata=None):
    save_file(tensors, str(path), metadata=metadata or {"ss_network_spec": "hydra"})
    return path


def _expect(path, *fragments, **kwargs):
    with pytest.raises(OrthoHydraError) as err:
        ortho_hydra.load(path, **kwargs)
    message = str(err.value)
    assert str(path) in message and "Fix:" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return err.value


def test_truncated_file_is_refused(tmp_path):
    path = _write(tmp_path / "t.safetensors", _good_tensors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated")
    path.write_bytes(data[:5])
    _expect(path, "too short")


def test_pickles_are_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    raw = tmp_path / "evil.safetensors"
    raw.write_bytes(pickle.dumps(Evil(), protocol=2))
    _expect(raw, "pickle")
    zipped = tmp_path / "evil.ckpt"
    torch.save({"w": torch.zeros(1)}, zipped)
    _expect(zipped, "pickle")
    assert not marker.exists()


def test_foreign_file_is_refused(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    _expect(path, "not valid safetensors JSON")
    checkpoint = _write(tmp_path / "ckpt.safetensors", {"model.diffusion_model.x.weight": torch.zeros(2, 2)})
    err = _expect(checkpoint, "not a LoRA adapter", "model.diffusion_model.x.weight")
    assert err.key == "lora_ups"


def test_plain_lora_points_to_the_stock_loader(tmp_path):
    path = _write(tmp_path / "plain.safetensors", {"lora_unet_a.lora_down.weight": torch.zeros(2, 4),
                                                  "lora_unet_a.lora_up.weight": torch.zeros(4, 2)})
    _expect(path, "plain LoRA", "LoraLoaderModelOnly")


@pytest.mark.parametrize("missing", ["lora_down.weight", "router.weight", "router.bias"])
def test_routed_prefix_missing_down_or_router(tmp_path, missing):
    tensors = _good_tensors()
    key = f"lora_unet_blocks_1_mlp_layer1.{missing}"
    del tensors[key]
    err = _expect(_write(tmp_path / "m.safetensors", tensors), f"no {missing}")
    assert err.key == key


def test_shape_mismatches_are_named(tmp_path):
    tensors = _good_tensors()
    tensors["lora_unet_blocks_0_mlp_layer1.lora_ups.2.weight"] = torch.zeros(48, 5)
    _expect(_write(tmp_path / "a.safetensors", tensors), "lora_ups.2.weight", "expected (48, 4)")
    tensors = _good_tensors()
    tensors["lora_unet_blocks_0_mlp_layer1.router.weight"] = torch.zeros(2, 4)
    _expect(_write(tmp_path / "b.safetensors", tensors), "router.weight", "for 3 experts")
    tensors = _good_tensors()
    tensors["lora_unet_blocks_0_mlp_layer1.inv_scale"] = torch.ones(39)
    _expect(_write(tmp_path / "c.safetensors", tensors), "inv_scale", "expected (40,)")
    tensors = _good_tensors()
    tensors["lora_unet_blocks_0_mlp_layer1.router.weight"] = torch.zeros(3, 7)  # odd σ width
    _expect(_write(tmp_path / "d.safetensors", tensors), "router.weight", "even")


def test_different_expert_counts_are_refused(tmp_path):
    tensors = _good_tensors()
    p = "lora_unet_blocks_1_mlp_layer1"
    tensors[f"{p}.lora_ups.3.weight"] = torch.zeros(48, 4)
    tensors[f"{p}.router.weight"] = torch.zeros(4, 4)
    tensors[f"{p}.router.bias"] = torch.zeros(4)
    _expect(_write(tmp_path / "e.safetensors", tensors), "disagree on the number of experts", "has 4", "has 3")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_refused(tmp_path, bad):
    tensors = _good_tensors()
    tensors["lora_unet_blocks_0_mlp_layer1.lora_ups.1.weight"][3, 1] = bad
    err = _expect(_write(tmp_path / "n.safetensors", tensors), "NaN/Inf")
    assert err.key == "lora_unet_blocks_0_mlp_layer1.lora_ups.1.weight"


def test_unknown_router_source_is_refused(tmp_path):
    path = _write(tmp_path / "r.safetensors", _good_tensors(), {"ss_network_spec": "hydra",
                                                                "ss_router_source": "clip_pooled"})
    err = _expect(path, "'clip_pooled' is not supported")
    assert err.key == "ss_router_source"


def test_failed_save_writes_nothing_and_keeps_the_old_file(tmp_path):
    good = adapter()
    path = tmp_path / "keep.safetensors"
    ortho_hydra.save(good, path)
    before = path.read_bytes()
    bad = adapter()
    next(iter(bad.layers.values())).ups[0, 0, 0] = float("nan")
    with pytest.raises(OrthoHydraError, match="NaN/Inf"):
        ortho_hydra.save(bad, path)
    assert path.read_bytes() == before
    with pytest.raises(OrthoHydraError, match="2 expert names for 3 experts"):
        ortho_hydra.save(adapter(names=["a", "b"]), tmp_path / "new.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"]  # no temp files left behind


def test_missing_file_is_named(tmp_path):
    _expect(tmp_path / "nope.safetensors", "file not found")


def _file_with_header_length(path, residue: int) -> int:
    """A valid one-tensor safetensors file, written by hand, whose header length is ≡ residue (mod 256)."""
    data = torch.arange(6, dtype=torch.float32).numpy().tobytes()
    entry = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, len(data)]}}
    for pad in range(512):
        header = json.dumps({"__metadata__": {"note": "x" * pad}, **entry}).encode()
        if len(header) % 256 == residue:
            path.write_bytes(len(header).to_bytes(8, "little") + header + data)
            return len(header)
    raise AssertionError(residue)


def test_every_header_length_mod_256_is_accepted(tmp_path):
    """The first byte of a valid file is its header length's low byte: 0x80 (the pickle opcode) included."""
    from ortho_hydra.safetensors_io import read_header, read_safetensors

    for residue in range(256):
        path = tmp_path / f"h{residue}.safetensors"
        length = _file_with_header_length(path, residue)
        assert path.read_bytes()[0] == residue and length % 256 == residue
        entries, metadata = read_header(path)
        assert entries["w"]["shape"] == [2, 3] and set(metadata["note"]) <= {"x"}
    # files written by safetensors itself pad the header to 8 bytes: every reachable residue loads whole
    seen = set()
    for pad in range(400):
        path = tmp_path / "lib.safetensors"
        save_file({"w": torch.ones(2, 3)}, str(path), metadata={"note": "y" * pad})
        residue = path.read_bytes()[0]
        if residue in seen:
            continue
        seen.add(residue)
        tensors, metadata = read_safetensors(path)
        assert torch.equal(tensors["w"], torch.ones(2, 3)) and metadata["note"] == "y" * pad
    assert 0x80 in seen and len(seen) == 32


def test_moe_file_with_0x80_first_byte_loads(tmp_path):
    """An ordinary adapter whose header happens to be 128 mod 256 bytes long is loaded, not called a pickle."""
    original = adapter(names=["ink", "watercolor", "pixel"])
    for pad in range(300):
        path = tmp_path / "style_moe.safetensors"
        ortho_hydra.save(original, path, metadata={"oh_provenance": json.dumps({"note": "z" * pad})})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        raise AssertionError("no padding gave a 0x80 first byte")
    loaded = ortho_hydra.load(path)
    assert loaded.expert_names == ("ink", "watercolor", "pixel")
    for name, layer in original.layers.items():
        assert torch.equal(layer.ups, loaded.layers[name].ups)


def test_foreign_formats_are_named_without_reading(tmp_path):
    gguf = tmp_path / "model.safetensors"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 64)
    _expect(gguf, "GGUF")
    pickled = tmp_path / "p.safetensors"
    pickled.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    _expect(pickled, "pickle")
    small = tmp_path / "s.safetensors"  # a length that fits, then something that is not JSON
    small.write_bytes((4).to_bytes(8, "little") + b"\x80\x04K\x01")
    _expect(small, "not a safetensors JSON object")
