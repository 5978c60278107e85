"""The torchrun command on CPU with gloo: 2 processes equal 1 process at twice the batch; rank 0 writes alone."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from devkit import tiny_dit
from devkit.host import COMFY_DIR, ROOT
from ortho_hydra import dataset_cache as dataset
from ortho_hydra import load

pytestmark = pytest.mark.multiprocess  # torchrun, several processes: the slow tier (make test-slow)

CONFIG = """steps = 10
learning_rate = 1e-2
rank = 4
experts = 2
training_dtype = "fp32"
balance_weight = 0.0
label_guidance = 1.0
label_guidance_steps = 10
seed = 3
output_name = "ddp_adapter"
targets = "mlp"
lr_schedule = "constant"  # the resume test extends a 5-step run to 10, which a decaying schedule would bend
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    save_file(tiny_dit.mmdit_state_dict(depth=2, seed=0), str(folder / "dit.safetensors"))
    g = torch.Generator().manual_seed(0)
    # 9 images: not a multiple of the 2 ranks (DistributedSampler pads) nor of the global batch of 4 (the epoch
    # tail is dropped), so 10 steps cross 4 epoch boundaries and the 5-step resume lands mid-epoch
    latents = torch.randn(9, 16, 16, 16, generator=g)
    conditioning = [tiny_dit.mmdit_conditioning(seed=i)[0] for i in range(9)]
    dataset.write(folder / "data", latents, conditioning, labels=[i % 2 for i in range(9)],
                  style_names=["left", "right"])
    for name, batch in (("b2.toml", 2), ("b4.toml", 4)):
        (folder / name).write_text(CONFIG + f"batch_size = {batch}\n")
    return folder


def command(files, *args, processes: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                "--master-port", str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMFYUI_DIR": str(COMFY_DIR)}
    return subprocess.run([*launcher, "-m", "ortho_hydra_train", "--model", str(files / "dit.safetensors"),
                           "--dataset", str(files / "data"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_two_processes_equal_one_at_twice_the_batch_and_rank_zero_writes_alone(files):
    two = command(files, "--config", str(files / "b2.toml"), "--output-dir", str(files / "two"), processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = command(files, "--config", str(files / "b4.toml"), "--output-dir", str(files / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load(files / "two" / "ddp_adapter.safetensors"), load(files / "one" / "ddp_adapter.safetensors")
    worst = 0.0
    for name, layer in b.layers.items():
        for key, tensor in layer.tensors().items():
            other = a.layers[name].tensors()[key]
            worst = max(worst, float((other - tensor).abs().max() / tensor.abs().max().clamp_min(1e-12)))
    print(f"largest relative difference, 2 processes x batch 2 vs 1 x batch 4, 10 steps: {worst:.2e}")
    assert worst < 1e-4
    assert a.expert_names == ("left", "right")  # the dataset's style names became expert names
    assert sorted(p.name for p in (files / "two").iterdir()) == [
        "ddp_adapter.png", "ddp_adapter.resume.safetensors", "ddp_adapter.safetensors"]  # nothing partial
    assert two.stdout.count("wrote ") == 1  # one rank reports (and writes)


def test_bad_inputs_end_with_one_clear_line(files, tmp_path):
    missing = command(files, "--config", str(files / "b2.toml"), "--output-dir", str(tmp_path))
    assert missing.returncode == 0  # the fixture's own files work
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG + "batch_size = 2\nlearning_rat = 1.0\n")
    result = command(files, "--config", str(bad))
    assert result.returncode == 2 and "key 'learning_rat' is not a trainer option" in result.stderr
    no_model = subprocess.run([sys.executable, "-m", "ortho_hydra_train", "--model", str(tmp_path / "nope.safetensors"),
                               "--dataset", str(files / "data"), "--config", str(files / "b2.toml")], cwd=ROOT,
                              env={**os.environ, "COMFYUI_DIR": str(COMFY_DIR)},
                              capture_output=True, text=True, timeout=300)
    assert no_model.returncode == 2 and "nope.safetensors: no such model file" in no_model.stderr
    no_data = command(files, "--config", str(files / "b2.toml"), "--dataset", str(tmp_path))
    assert no_data.returncode == 2 and "no manifest.json" in no_data.stderr
    dataset.write(tmp_path / "sdxl", torch.randn(2, 4, 16, 16), tiny_dit.mmdit_conditioning(seed=0) * 2)
    other_vae = command(files, "--config", str(files / "b2.toml"), "--dataset", str(tmp_path / "sdxl"))
    assert other_vae.returncode == 2 and "latents have 4 channels" in other_vae.stderr
    assert "cache the dataset with this model's VAE" in other_vae.stderr


def test_resume_on_another_world_size_continues_as_if_uninterrupted(files):
    """2 processes x batch 2 for 5 steps, then 1 process x batch 4 resuming to 10 = 1 process x batch 4 for 10: at
    the same global batch the epoch and position are derived from the step, and the generator state and the
    step-seeded noise carry over (the documented equivalence)."""
    first = files / "b2_5.toml"
    first.write_text(CONFIG.replace("steps = 10", "steps = 5") + "batch_size = 2\n")
    out = files / "resumed"
    assert command(files, "--config", str(first), "--output-dir", str(out), processes=2).returncode == 0
    halfway = load(out / "ddp_adapter.safetensors")
    resumed = command(files, "--config", str(files / "b4.toml"), "--output-dir", str(out),
                      "--resume", str(out / "ddp_adapter.resume.safetensors"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load(out / "ddp_adapter.safetensors")
    b = load(files / "one" / "ddp_adapter.safetensors")  # the uninterrupted single-process run (test above)
    for name, layer in b.layers.items():
        for key, tensor in layer.tensors().items():
            assert torch.allclose(a.layers[name].tensors()[key], tensor, rtol=1e-4, atol=1e-6), (name, key)
            assert torch.isfinite(a.layers[name].tensors()[key]).all()
    assert not torch.equal(halfway.layers[name].ups, a.layers[name].ups)  # it did train on


def test_killing_one_rank_leaves_a_loadable_checkpoint_and_a_failed_exit(files, tmp_path):
    long = tmp_path / "long.toml"
    long.write_text(CONFIG.replace("steps = 10", "steps = 400") + "batch_size = 2\nsave_every = 2\n")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", str(30500 + os.getpid() % 1000)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMFYUI_DIR": str(COMFY_DIR)}
    proc = subprocess.Popen([*launcher, "-m", "ortho_hydra_train", "--model", str(files / "dit.safetensors"),
                             "--dataset", str(files / "data"), "--config", str(long), "--output-dir",
                             str(tmp_path / "out")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    checkpoint = tmp_path / "out" / "ddp_adapter.resume.safetensors"
    deadline = time.time() + 240
    while not checkpoint.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.is_file(), "no checkpoint appeared"
    victim = next(pid for pid in _children(proc.pid) if _env(pid).get("LOCAL_RANK") == "1")
    os.kill(victim, signal.SIGKILL)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0, output[-2000:]
    adapter = load(tmp_path / "out" / "ddp_adapter.safetensors")  # still loadable after the crash
    assert adapter.num_experts == 2 and all(torch.isfinite(t).all() for layer in adapter.layers.values()
                                            for t in layer.tensors().values())
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left


def _children(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            try:
                kids = open(f"/proc/{parent}/task/{task}/children").read().split()
            except OSError:
                continue
            found += [int(k) for k in kids]
            frontier += [int(k) for k in kids]
    return found


def _env(pid: int) -> dict[str, str]:
    try:
        raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
