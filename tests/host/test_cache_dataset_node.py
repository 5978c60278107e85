"""Ortho-Hydra Cache Dataset on the real host: a real (random) SD-style VAE, shards, skip, refusals, then the
torchrun command trains on the cache and the nodes load its adapter."""

import os
import subprocess
import sys

import comfy.sd
import folder_paths
import pytest
import torch
from safetensors.torch import save_file

from devkit import tiny_dit
from devkit.adapters import library
from devkit.host import COMFY_DIR, ROOT, import_pack, loras_folder


@pytest.fixture(scope="module")
def vae():
    """ComfyUI's own KL autoencoder (the SD layout ComfyUI detects) with 16 latent channels and random weights."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}  # ComfyUI's

    torch.manual_seed(0)
    model = AutoencoderKL(ddconfig=ddconfig, embed_dim=16)
    with torch.no_grad():  # ComfyUI allocates weights with torch.empty; give them ordinary values
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, p[0].numel() ** -0.5)
            else:
                p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return comfy.sd.VAE(sd=state)


@pytest.fixture()
def output(tmp_path):
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(before)


def _node():
    return import_pack().nodes.dataset_cache.OrthoHydraCacheDataset


def _styles(labels, names):
    return import_pack().comfy_glue.types.StyleSet(tuple(labels), tuple(names))


def test_cached_latents_equal_vae_encoding_and_a_rerun_skips(vae, output):
    images = torch.rand(5, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    conditioning = [tiny_dit.mmdit_conditioning(seed=i)[0] for i in range(5)]
    styles = _styles([0, 1, 0, 1, 1], ["a", "b"])
    path, latent, summary = _node().execute(images, vae, "set_one", "", 2, conditioning=conditioning,
                                            styles=styles).args
    assert "5 images as 3 shards" in summary
    cached = library().dataset_cache.read(path)
    with torch.inference_mode():
        expected = vae.encode(images).float()  # one batch; the node encoded shards of 2 (batched convs differ ~1e-6)
    torch.testing.assert_close(cached.latents, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(latent["samples"], cached.latents)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1]["pooled_output"], b[1]["pooled_output"])
               for a, b in zip(cached.positive, conditioning, strict=True))
    assert cached.labels.tolist() == [0, 1, 0, 1, 1] and cached.style_names == ("a", "b")
    shards = sorted(p for p in os.listdir(path) if p.startswith("shard-"))
    mtimes = [os.stat(os.path.join(path, p)).st_mtime_ns for p in shards]
    again = _node().execute(images, vae, "set_one", "", 2, conditioning=conditioning, styles=styles).args[2]
    assert "skipped" in again
    assert [os.stat(os.path.join(path, p)).st_mtime_ns for p in shards] == mtimes  # nothing rewritten


def test_bad_inputs_are_refused(vae, output):
    error = library().OrthoHydraError
    with pytest.raises(error, match="not finite"):  # a broken VAE's NaN latents never reach a training set
        _node().execute(torch.full((2, 64, 64, 3), float("nan")), vae, "nans", "", 8,
                        conditioning=tiny_dit.mmdit_conditioning(seed=0))
    images = torch.rand(3, 64, 64, 3)
    one = tiny_dit.mmdit_conditioning(seed=0)
    _node().execute(images, vae, "taken", "", 8, conditioning=one)
    with pytest.raises(error, match="already holds another dataset"):
        _node().execute(torch.rand(4, 64, 64, 3), vae, "taken", "", 8, conditioning=one)
    with pytest.raises(error, match="not a safe file name"):
        _node().execute(images, vae, "../escape", "", 8, conditioning=one)
    with pytest.raises(error, match="2 conditionings for 3 images"):
        _node().execute(images, vae, "other", "", 8, conditioning=one * 2)
    with pytest.raises(error, match="no conditioning"):
        _node().execute(images, vae, "other", "", 8)
    with pytest.raises(error, match="2 style labels for 3 images"):
        _node().execute(images, vae, "other", "", 8, conditioning=one, styles=_styles([0, 1], ["a", "b"]))
    assert not (output / "ortho_hydra_datasets" / "other").exists() or not any(
        (output / "ortho_hydra_datasets" / "other").iterdir())


@pytest.mark.multiprocess  # torchrun, two processes: the slow tier (make test-slow)
def test_the_command_trains_on_the_cache_and_the_nodes_load_the_result(vae, output):
    images = torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    conditioning = [tiny_dit.mmdit_conditioning(seed=i)[0] for i in range(4)]
    path = _node().execute(images, vae, "for_torchrun", "", 2, conditioning=conditioning).args[0]
    save_file(tiny_dit.mmdit_state_dict(depth=2, seed=0), str(output / "dit.safetensors"))
    (output / "train.toml").write_text('steps = 3\nrank = 2\nexperts = 2\ntraining_dtype = "fp32"\nbatch_size = 1\n'
                                       'output_name = "from_cache"\ntargets = "mlp"\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMFYUI_DIR": str(COMFY_DIR)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(31500 + os.getpid() % 1000), "-m", "ortho_hydra_train", "--model",
                          str(output / "dit.safetensors"), "--dataset", path, "--config", str(output / "train.toml"),
                          "--output-dir", str(output / "loras")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with loras_folder(output / "loras"):
        adapter, summary = import_pack().nodes.load_apply.OrthoHydraLoader.execute("from_cache.safetensors").args
    assert adapter.num_experts == 2 and "2 experts" in summary


def test_captions_are_encoded_as_clip_text_encode_does(vae, output):
    from devkit.text_encoder import random_clip_l
    from nodes import CLIPTextEncode

    clip = random_clip_l()
    captions = ["a warm disc", "a cool ring", "a warm disc"]
    path = _node().execute(torch.rand(3, 64, 64, 3), vae, "captioned", "\n".join(captions), 8, clip=clip).args[0]
    cached = library().dataset_cache.read(path)
    for entry, text in zip(cached.positive, captions, strict=True):
        reference = CLIPTextEncode().encode(clip, text)[0][0]
        assert torch.equal(entry[0], reference[0].float())
        assert torch.equal(entry[1]["pooled_output"], reference[1]["pooled_output"].float())
    one = _node().execute(torch.rand(2, 64, 64, 3), vae, "one_prompt", "a dotted square", 8, clip=clip).args[0]
    both = library().dataset_cache.read(one).positive
    assert torch.equal(both[0][0], both[1][0])
    with pytest.raises(library().OrthoHydraError, match="2 captions for 3 images"):
        _node().execute(torch.rand(3, 64, 64, 3), vae, "short", "a\nb", 8, clip=clip)
