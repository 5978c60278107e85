"""The toy world (devkit/toy_world.py) on the real ComfyUI: cache, renders, conditioning, probe, base model.

The base model is built once into the host's models/ folder (about a minute on 2 CPU cores) and reused by
every later run with the same recipe.
"""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from devkit import toy_world as tw
from devkit.host import import_pack

SHAPE_IOU = 0.8  # every base sample must match its conditioned content's template at least this well


@pytest.fixture(scope="module")
def base_model_path():
    return tw.build_base_model()


@pytest.fixture(scope="module")
def base_samples(base_model_path):
    model = tw.load_base_model()
    ids = [c for _ in range(2) for c in range(len(tw.CONTENTS))]
    samples = torch.cat([tw.sample_base(model, list(range(len(tw.CONTENTS))), seed=1000 * k) for k in range(2)])
    return samples, ids


def test_the_cache_key_follows_the_recipe(tmp_path):
    assert tw.recipe_hash() == tw.recipe_hash(tw.recipe())
    assert tw.recipe_hash(tw.recipe(steps=999)) != tw.recipe_hash()
    assert tw.recipe_hash(tw.recipe(seed=1)) != tw.recipe_hash()
    assert tw.model_path(tmp_path).name == f"ortho_hydra_toy_{tw.recipe_hash()}.safetensors"
    assert tw.model_path(tmp_path, tw.recipe(lr=5e-4)) != tw.model_path(tmp_path)
    assert tw.model_path(tmp_path).parent == tmp_path / "diffusion_models"
    with pytest.raises(KeyError, match="unknown recipe keys"):
        tw.recipe(no_such_key=1)


def test_a_build_is_written_atomically_and_then_reused(tmp_path):
    quick = tw.recipe(steps=2, warmup=1)
    before = tw.BUILD_COUNT
    path = tw.build_base_model(tmp_path, quick, log=lambda *_: None)
    assert tw.BUILD_COUNT == before + 1
    assert path == tw.model_path(tmp_path, quick) and path.is_file()
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns
    assert tw.build_base_model(tmp_path, quick, log=lambda *_: None) == path
    assert tw.BUILD_COUNT == before + 1 and path.stat().st_mtime_ns == mtime  # not trained again
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["ortho_hydra_toy_recipe"]) == quick
    # forced again elsewhere, in this process this time: the same weights (training is deterministic)
    other = tw.build_base_model(tmp_path / "again", quick, log=lambda *_: None, force=True, in_process=True)
    first, second = load_file(str(path)), load_file(str(other))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_successor_continues_from_its_parent_on_the_broader_mix(tmp_path):
    """recipe_v2's mechanism: zero further steps reproduce the parent exactly; two steps move every block."""
    parent = tw.recipe(steps=2, warmup=1)
    same = tw.build_base_model(tmp_path, tw.recipe_v2(parent=parent, steps=0, warmup=1), log=lambda *_: None,
                               in_process=True)
    assert tw.model_path(tmp_path, parent).is_file()  # the parent was built first, in the same folder
    first, unchanged = load_file(str(tw.model_path(tmp_path, parent))), load_file(str(same))
    assert all(torch.equal(first[k], unchanged[k]) for k in first)
    moved = load_file(str(tw.build_base_model(tmp_path, tw.recipe_v2(parent=parent, steps=2, warmup=1),
                                              log=lambda *_: None, in_process=True)))
    changed = [k for k in first if k.endswith("qkv.weight") and not torch.equal(first[k], moved[k])]
    assert len(changed) == len([k for k in first if k.endswith("qkv.weight")])
    assert tw.recipe_hash(tw.recipe_v2()) != tw.recipe_hash()  # and v1's own hash is not touched by the new keys
    assert "parent" not in tw.recipe() and "extra_palettes" not in tw.recipe()


def test_the_cached_base_model_is_reused(base_model_path):
    count, mtime = tw.BUILD_COUNT, base_model_path.stat().st_mtime_ns
    assert tw.build_base_model() == base_model_path
    assert tw.BUILD_COUNT == count and base_model_path.stat().st_mtime_ns == mtime
    with safe_open(str(base_model_path), "pt") as f:
        assert json.loads(f.metadata()["ortho_hydra_toy_recipe"]) == tw.recipe()


def test_the_same_content_renders_in_every_style():
    styles = [tw.NEUTRAL, *range(len(tw.STYLES))]
    latents, ids, labels = tw.dataset(3, seed=5, styles=styles)
    assert latents.shape == (3 * len(tw.CONTENTS) * len(styles), 16, tw.SIZE, tw.SIZE)
    masks = tw.shape_mask(latents)
    per_render = len(tw.CONTENTS) * len(styles)
    for i in range(len(latents)):
        content, seed = int(ids[i]), 5 * 10007 + i // per_render
        template = tw.content_mask(content, *tw.jitter(content, seed))
        assert torch.equal(masks[i], template), (content, int(labels[i]))
    # the pictures differ by style, and only the styled ones vary with the seed
    rgb = tw.to_rgb(latents).view(3, len(tw.CONTENTS), len(styles), 3, tw.SIZE, tw.SIZE)
    for a in range(len(styles)):
        for b in range(a + 1, len(styles)):
            assert (rgb[:, :, a] - rgb[:, :, b]).abs().mean() > 0.05
    assert torch.equal(rgb[0, :, 0], rgb[1, :, 0])


def test_latents_preview_as_their_pictures_and_hold_nothing_invisible():
    latent_to_rgb = import_pack().comfy_glue.images.latent_to_rgb
    fmt = tw.latent_format()
    latents, ids, labels = tw.dataset(1, seed=2, styles=[None, 0, 1, 2, 3])
    pictures = torch.stack([tw.render_rgb(int(c), int(s), seed=2 * 10007) for c, s in zip(ids, labels, strict=True)])
    preview = latent_to_rgb(latents, fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias, upscale=1)
    assert torch.allclose(preview.movedim(-1, 1), pictures, atol=1e-5)
    assert torch.allclose(tw.to_rgb(latents), pictures, atol=1e-5)
    f = torch.tensor(fmt.latent_rgb_factors, dtype=torch.float64)
    null = torch.eye(16, dtype=torch.float64) - f @ torch.linalg.pinv(f)  # projector onto the invisible directions
    assert torch.einsum("kc,bchw->bkhw", null, latents.double()).abs().max() < 1e-4


def test_conditioning_names_the_content_and_never_the_style():
    one = tw.conditioning(2)
    assert one[0][0].shape == (1, tw.COND_TOKENS, tw.CONTEXT_DIM)
    assert one[0][1]["pooled_output"].shape == (1, tw.ADM_DIM)
    _, ids, labels = tw.dataset(1, seed=0)
    batch = tw.conditioning(ids.tolist())
    for content in range(len(tw.CONTENTS)):
        rows = (ids == content).nonzero().flatten()
        assert len(set(labels[rows].tolist())) == len(tw.STYLES)  # one row per style...
        for r in rows:  # ...and all of them carry the same conditioning
            assert torch.equal(batch[0][0][r], tw.conditioning(content)[0][0][0])
            assert torch.equal(batch[0][1]["pooled_output"][r], tw.conditioning(content)[0][1]["pooled_output"][0])
    contexts = torch.cat([tw.conditioning(c)[0][0] for c in range(len(tw.CONTENTS))])
    assert torch.unique(contexts, dim=0).shape[0] == len(tw.CONTENTS)
    assert not tw.unconditional(2)[0][0].any()


def test_the_style_probe_is_a_valid_instrument_on_real_styled_latents():
    probe, report = tw.fit_probe()
    assert probe.valid and report["held_out_accuracy"] >= 0.95
    assert report["held_out_accuracy_degraded"] >= 0.95
    with pytest.raises(Exception, match="validity threshold"):
        probe.validate(*tw.dataset(1, seed=9)[::2], threshold=1.01)


def test_the_base_model_draws_the_conditioned_shape(base_samples):
    samples, ids = base_samples
    scores = tw.shape_scores(samples, ids)
    assert scores["predicted"] == ids, scores
    assert min(scores["iou"]) >= SHAPE_IOU, scores["iou"]


def test_base_samples_are_neutral_to_the_probe(base_samples):
    samples, _ = base_samples
    probe, _ = tw.fit_probe(include_neutral=True)
    assert (probe.predict(samples) == tw.NEUTRAL).all()


def test_grid_png(tmp_path):
    from PIL import Image

    latents, _, _ = tw.dataset(1, seed=0, styles=[None, 0, 1, 2, 3], contents=[0, 1])
    path = tw.save_grid_png(latents, tmp_path / "grid.png", row_labels=["disc", "ring"],
                            col_labels=["neutral", *tw.STYLES])
    with Image.open(path) as image:
        assert image.width > 5 * tw.SIZE * 8 and image.height > 2 * tw.SIZE * 8
