"""The example graphs for real models (example_workflows/0*.json) run end to end in a real headless ComfyUI, on tiny
stand-ins of the same architectures saved under the file names the graphs name.

What is swapped in, and why:

* SD3.5 Medium (``CheckpointLoaderSimple``, stock): a 2-block MMDiT built from ComfyUI's own class (text width 4096,
  pooled 2048, as SD3.5's) plus a 16-channel TAESD VAE, saved as ``sd3.5_medium.safetensors``; ComfyUI detects both
  from the file.  The real SD3 VAE's widths are fixed by ComfyUI, so a tiny one would not load.
* ``TripleCLIPLoader`` becomes the stock ``CLIPLoader`` (type sd3) with only ``clip_l.safetensors``: a CLIP-L with
  seeded random weights (full size, ComfyUI's class).  CLIP-G and T5-XXL at full size would be gigabytes; ComfyUI's
  SD3 text encoder pads the missing parts with zeros, so ``CLIPTextEncode`` (stock) gives SD3.5's shapes.
* Cosmos-Predict2 / Anima: ``UNETLoader`` and ``CLIPLoader`` + ``CLIPTextEncode`` become the test-only nodes in
  tests/host/fixtures/standin_nodes (ComfyUI's detection knows only the 2B and 14B widths; T5-XXL has no small
  form); its ``VAELoader`` (stock) loads a TAEHV with 16 latent channels (the tiny Wan 2.1 VAE's architecture, which
  ComfyUI detects as one) saved as ``wan_2.1_vae.safetensors``.
* Sizes, step counts and the trainer's batch shrink to what a CPU runs in seconds.

Everything else (the pack's nodes, KSampler, VAE Encode / Decode, Save / Preview Image, every widget value not named
above) runs as committed.
"""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from devkit import real_examples, tiny_dit, workflow
from devkit.adapters import library, lora_weights, randomized_adapter
from devkit.demo_assets import bank_lora
from devkit.host import ROOT
from devkit.server import ComfyServer, execution_error, link_pack, output_images
from devkit.text_encoder import random_clip_l_state_dict

pytestmark = pytest.mark.graphs  # a slow tier: three graphs on stand-in models, about 3 minutes

STYLES = ["ink", "pixel", "watercolor"]
SIZE = 64


def _tiny_vae(kind: str, seed: int) -> dict[str, torch.Tensor]:
    """ComfyUI's TAESD (16 latent channels, SD3's) or TAEHV (Wan 2.1's latent) with seeded weights: ComfyUI builds
    them without initialising, so every parameter is drawn here (fan-in scaled; biases 0, the VAE scale 1)."""
    import comfy.taesd.taehv
    import comfy.taesd.taesd

    module = comfy.taesd.taesd.TAESD(latent_channels=16) if kind == "taesd" else comfy.taesd.taehv.TAEHV(16)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            else:
                p.fill_(1.0 if name == "vae_scale" else 0.0)
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def _style_images(folder, seed: int = 0) -> None:
    """Two pictures per style: ink dark strokes, pixel hard blocks, watercolor soft washes."""
    g = np.random.default_rng(seed)
    for s, style in enumerate(STYLES):
        (folder / style).mkdir(parents=True)
        for i in range(2):
            if style == "ink":
                img = np.full((SIZE, SIZE, 3), 235.0)
                img[:, g.integers(0, SIZE, 6)] = 20.0
            elif style == "pixel":
                img = np.kron(g.integers(0, 255, (8, 8, 3)), np.ones((8, 8, 1)))
            else:
                img = np.clip(128 + 60 * np.sin(np.arange(SIZE) / 9.0 + s + i)[:, None, None]
                              + g.normal(0, 5, (SIZE, SIZE, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(folder / style / f"{i}.png")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_examples")
    link_pack(base / "custom_nodes")
    (base / "custom_nodes" / "ortho_hydra_test_standins").symlink_to(
        ROOT / "tests" / "host" / "fixtures" / "standin_nodes", target_is_directory=True)
    models = base / "models"
    for folder in ("checkpoints", "text_encoders", "vae", "loras"):
        (models / folder).mkdir(parents=True)
    mmdit = tiny_dit.mmdit_state_dict(depth=2, seed=0, context_dim=4096, adm_dim=2048)
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in mmdit.items()}
    checkpoint.update({f"first_stage_model.{k}": v for k, v in _tiny_vae("taesd", seed=1).items()})
    save_file(checkpoint, str(models / "checkpoints" / real_examples.SD35_CHECKPOINT))
    save_file({k: v.half().contiguous() for k, v in random_clip_l_state_dict(seed=0).items()},
              str(models / "text_encoders" / real_examples.SD35_TEXT_ENCODERS[0]))
    save_file(_tiny_vae("taehv", seed=2), str(models / "vae" / real_examples.COSMOS_VAE))
    for i, name in enumerate(real_examples.BANK_LORAS):
        save_file(bank_lora(mmdit, seed=i), str(models / "loras" / name))
    cosmos = tiny_dit.load_cosmos(num_blocks=2, seed=0)
    moe = randomized_adapter(lora_weights(cosmos, pattern=r"blocks_\d+_(self_attn_[qkv]_proj|mlp_layer1)$"),
                             rank=4, experts=3, seed=3, lam_scale=2.0)
    library().save(moe, models / "loras" / real_examples.MOE_FILE)
    _style_images(base / "input" / real_examples.STYLES_DATASET)
    srv = ComfyServer(base_dir=base, log_path=base / "comfyui.log").start()
    yield srv, base
    srv.stop()
    shutil.rmtree(models, ignore_errors=True)  # ~300 MB of stand-ins


def _prompt(srv, name: str) -> dict:
    return workflow.to_api(workflow.load(real_examples.FOLDER / name), srv.get("/object_info"))


def _set(prompt: dict, class_type: str, **inputs) -> dict:
    prompt = copy.deepcopy(prompt)
    hits = [node for node in prompt.values() if node["class_type"] == class_type]
    assert hits, class_type
    for node in hits:
        node["inputs"].update(inputs)
    return prompt


def _small(prompt: dict) -> dict:
    """CPU-sized: SIZE pixels, 3 sampling steps."""
    for node in prompt.values():
        if node["class_type"] in ("EmptySD3LatentImage", "OrthoHydraLoadStyleFolders"):
            node["inputs"].update(width=SIZE, height=SIZE)
        if node["class_type"] in ("KSampler", "OrthoHydraExpertGallery"):
            node["inputs"]["steps"] = 3
    return prompt


def _sd35_text_encoder(prompt: dict) -> dict:
    """TripleCLIPLoader -> CLIPLoader (sd3) with the CLIP-L stand-in only (see the module docstring)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] == "TripleCLIPLoader":
            node["class_type"] = "CLIPLoader"
            node["inputs"] = {"clip_name": node["inputs"]["clip_name1"], "type": "sd3", "device": "default"}
    return prompt


def _cosmos_standins(prompt: dict) -> dict:
    prompt = copy.deepcopy(prompt)
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "UNETLoader":
            node["class_type"] = "OrthoHydraTestCosmosModelStandIn"
        elif node["class_type"] == "CLIPTextEncode":
            node["class_type"] = "OrthoHydraTestCosmosTextStandIn"
            del node["inputs"]["clip"]
        elif node["class_type"] == "CLIPLoader":
            del prompt[node_id]
    return prompt


def _run(srv, base, prompt: dict) -> tuple[dict, list]:
    entry = srv.run(prompt, timeout=600)
    assert execution_error(entry) is None, execution_error(entry)
    images = output_images(entry, base / "output")
    assert images and all(p.is_file() for p in images)
    return entry, [np.asarray(Image.open(p), dtype=np.float64) for p in images]


def test_committed_examples_are_the_generated_ones_and_match_the_nodes_inputs(server):
    """The files equal what devkit/real_examples.py writes, and every node's widget list has exactly one value per
    widget input the server declares now (plus the seed's control), each combo value a valid option unless it is a
    file the user picks."""
    srv, _ = server
    info = srv.get("/object_info")
    for name, build in real_examples.EXAMPLES.items():
        saved = workflow.load(real_examples.FOLDER / name)
        assert saved == json.loads(json.dumps(build())), name
        assert any(n["type"] == "Note" and len(n["widgets_values"][0]) > 200 for n in saved["nodes"])
        for node in saved["nodes"]:
            if node["type"] == "Note":
                continue
            widgets = [(k, spec) for section in ("required", "optional")
                       for k, spec in info[node["type"]]["input"].get(section, {}).items()
                       if isinstance(spec[0], list) or spec[0] in workflow.WIDGET_TYPES]
            expected = sum(2 if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate")
                           else 1 for _, spec in widgets)
            assert len(node["widgets_values"]) == expected, (name, node["type"])
            values = iter(node["widgets_values"])
            for key, spec in widgets:
                value = next(values)
                extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                options = spec[0] if isinstance(spec[0], list) else (extra.get("options") if spec[0] == "COMBO"
                                                                     else None)
                if extra.get("control_after_generate"):
                    assert next(values) == "fixed", (name, node["type"], key)  # seeds stay put between queues
                if options and not str(value).endswith(".safetensors") and key != "dataset":
                    assert value in options, (name, node["type"], key, value)


def test_lora_bank_mixer_blends_two_loras_and_the_router_changes_the_picture(server):
    srv, base = server
    prompt = _small(_sd35_text_encoder(_prompt(srv, "01_lora_bank_mixer_sd35.json")))
    _, (blend,) = _run(srv, base, prompt)
    _, (pin0,) = _run(srv, base, _set(prompt, "OrthoHydraRouter", mode="pin", expert=0))
    _, (off,) = _run(srv, base, _set(prompt, "OrthoHydraApply", strength=0.0))
    assert blend.shape == (SIZE, SIZE, 3) and blend.std() > 1.0  # a picture, not one flat colour
    assert np.abs(blend - pin0).mean() > 0.5 and np.abs(blend - off).mean() > 0.5


def test_moe_file_loads_and_pinning_chooses_the_expert(server):
    srv, base = server
    prompt = _small(_cosmos_standins(_prompt(srv, "02_moe_load_and_pin_cosmos_anima.json")))
    _, (pin0,) = _run(srv, base, prompt)
    _, (pin1,) = _run(srv, base, _set(prompt, "OrthoHydraRouter", expert=1))
    assert pin0.shape == (SIZE, SIZE, 3) and pin0.std() > 1.0
    assert np.abs(pin0 - pin1).mean() > 0.5


def test_style_folders_train_named_experts_and_render_the_gallery(server):
    srv, base = server
    prompt = _small(_sd35_text_encoder(_prompt(srv, "03_train_styles_from_folders_sd35.json")))
    prompt = _set(prompt, "OrthoHydraTrain", steps=4, batch_size=2)
    entry, images = _run(srv, base, prompt)
    trained = library().load(base / "models" / "loras" / "ortho_hydra_my_styles.safetensors")
    assert trained.num_experts == 3 and list(trained.expert_names) == STYLES  # named from the folders, in sorted order
    assert len(images) == 1 and images[0].shape[1] > (len(STYLES) + 1) * SIZE - 1  # a tile per expert + live
    previews = [i for out in entry["outputs"].values() for i in out.get("images", []) if i.get("type") == "temp"]
    assert previews  # the training plot
