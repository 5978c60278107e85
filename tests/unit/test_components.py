"""Nothing is dropped silently: every key the loader does not apply is named, by component, and strict refuses."""

import pytest
import torch
from factories import adapter as make_adapter

from ortho_hydra import OrthoHydraError, load, save
from ortho_hydra.components import classify, require_all_applied, unapplied_counts
from ortho_hydra.safetensors_io import read_safetensors, write_safetensors

EXTRA = {
    "reft_unet_blocks_0.rotate_layer.weight": torch.randn(4, 40),
    "reft_unet_blocks_0.learned_source.weight": torch.randn(4, 40),
    "reft_unet_blocks_0.learned_source.bias": torch.randn(4),
    "reft_unet_blocks_0.alpha": torch.tensor(1.0),
    "freq_router.net.0.weight": torch.randn(8, 6),
    "freq_router.net.0.bias": torch.randn(8),
    "mystery.tensor": torch.randn(3),
}


@pytest.fixture()
def mixed_file(tmp_path):
    path = tmp_path / "mixed_moe.safetensors"
    save(make_adapter(num_layers=2, experts=3, rank=4), path)
    tensors, metadata = read_safetensors(path)
    write_safetensors(path, {**tensors, **EXTRA}, metadata)
    return path


def test_every_unapplied_component_is_counted_and_named_in_the_summary(mixed_file):
    adapter = load(mixed_file)
    assert len(adapter.layers) == 2  # the LoRA / Hydra part still loads
    assert set(adapter.reft) == {"reft_unet_blocks_0"}  # ReFT is applied now: loaded, not counted as left out
    assert unapplied_counts(adapter.metadata) == {"ChimeraHydra frequency router": 2, "unknown keys": 1}
    summary = adapter.summary()
    for line in ("ReFT block edits on 1 blocks (rank 4), applied", "NOT APPLIED: ChimeraHydra frequency router "
                 "(2 keys)", "NOT APPLIED: unknown keys (1 keys)"):
        assert line in summary
    assert "NOT APPLIED: ReFT" not in summary


def test_strict_refuses_naming_the_components_and_the_reference_node(mixed_file):
    adapter = load(mixed_file)
    with pytest.raises(OrthoHydraError) as err:
        require_all_applied(adapter.metadata, adapter.path)
    text = str(err.value)
    assert "mixed_moe.safetensors" in text and "ChimeraHydra frequency router (2 keys)" in text
    assert "ReFT" not in text
    assert "ComfyUI-Anima_lora-Adapter" in text and "strict" in text


def test_a_clean_file_passes_strict_and_the_stamp_is_not_carried_to_a_resave(mixed_file, tmp_path):
    adapter = load(mixed_file)
    again = tmp_path / "again_moe.safetensors"
    save(adapter, again)
    require_all_applied(load(again).metadata, str(again))  # the re-saved file holds only what was applied
    assert unapplied_counts(load(again).metadata) == {}


def test_classification_of_keys():
    groups = classify(["freq_router.net.2.weight", "soft_tokens.embedding", "x.y"])
    assert groups == {"ChimeraHydra frequency router": ["freq_router.net.2.weight"],
                      "soft tokens": ["soft_tokens.embedding"], "unknown keys": ["x.y"]}


def test_a_file_of_unknown_keys_only_is_a_clear_error(tmp_path):
    path = tmp_path / "nothing_moe.safetensors"
    write_safetensors(path, {"mystery.a": torch.randn(2), "mystery.b": torch.randn(2)}, {})
    with pytest.raises(OrthoHydraError) as err:
        load(path)
    assert "nothing_moe.safetensors" in str(err.value)
