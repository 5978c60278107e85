"""The trainer's memory on the real host, counted exactly (every tensor storage allocated, until freed):
checkpointing keeps a fraction of the activations and changes no number, a model loaded inside inference mode (as
ComfyUI's executor loads it) costs what a normally loaded one does, and setup holds one weight's fp32 copy at a time
and skips its SVDs the second time."""

import folder_paths
import pytest
import torch

from devkit import tiny_dit
from devkit.host import import_pack
from devkit.memory import TensorMemory

LATENTS = torch.randn(2, 16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
POSITIVE = tiny_dit.cosmos_conditioning(tokens=8, seed=1)


@pytest.fixture(scope="module")
def T():
    return import_pack().comfy_glue.training


@pytest.fixture()
def loras(tmp_path):
    folder_paths.add_model_folder_path("loras", str(tmp_path), is_default=True)
    yield tmp_path
    folder_paths.folder_names_and_paths["loras"][0].remove(str(tmp_path))


def cosmos(blocks: int = 8, inference: bool = True):
    """A Cosmos-Predict2 DiT (the 2B's block, 256 wide), loaded inside inference mode as ComfyUI's executor does."""
    if not inference:
        return tiny_dit.load_cosmos(num_blocks=blocks, seed=0, channels=256)
    with torch.inference_mode():
        return tiny_dit.load_cosmos(num_blocks=blocks, seed=0, channels=256)


def config(T, **kw):
    values = dict(steps=2, learning_rate=1e-2, batch_size=2, rank=4, experts=4, training_dtype="fp32", seed=0,
                  output_name="memory", balance_weight=1e-2, lr_schedule="constant", label_guidance=0.0,
                  init="ortho")
    values.update(kw)
    return T.TrainConfig(**values)


class Probe:
    """Per micro-step of ``train``: the exact peak of the storages its forward and backward allocate, and every gate
    handed to the step's gate store (layer, gate) during them (not the calibration pass's)."""

    def __init__(self, T, monkeypatch):
        self.peaks, self.gates = [], []
        self.stepping = False
        fwd_bwd, store = T.OrthoHydraTrainSampler.fwd_bwd, T.StepGates.__call__
        probe = self

        def counted(sampler, *args, **kwargs):
            probe.gates.append([])
            probe.stepping = True
            with TensorMemory() as memory:
                loss = fwd_bwd(sampler, *args, **kwargs)
            probe.stepping = False
            probe.peaks.append(memory.peak)
            return loss

        def recorded(gates, layer, gate, context=None):
            if probe.stepping:
                probe.gates[-1].append((layer, gate.detach().clone()))
            return store(gates, layer, gate, context)

        monkeypatch.setattr(T.OrthoHydraTrainSampler, "fwd_bwd", counted)
        monkeypatch.setattr(T.StepGates, "__call__", recorded)


def run(T, model, monkeypatch, labels=None, **kw):
    probe = Probe(T, monkeypatch)
    with torch.inference_mode():  # as ComfyUI's executor runs the node
        _, adapter, losses, _ = T.train(model, LATENTS, POSITIVE, config(T, **kw), labels=labels)
    monkeypatch.undo()
    return probe, adapter, losses["loss"]


@pytest.mark.parametrize("guidance", [0.0, 1.0], ids=["balance-term", "label-guidance"])
def test_checkpointing_keeps_a_fraction_of_the_activations_and_changes_no_number(T, loras, monkeypatch, guidance):
    model = cosmos()
    labels = torch.tensor([0, 1]) if guidance else None
    extra = {"label_guidance": guidance, "label_guidance_steps": 10} if guidance else {}
    plain, plain_adapter, plain_loss = run(T, model, monkeypatch, labels, gradient_checkpointing=False, **extra)
    ckpt, ckpt_adapter, ckpt_loss = run(T, model, monkeypatch, labels, gradient_checkpointing=True, **extra)
    layers = len(plain_adapter.layers)
    stores = 2 if guidance else 1  # label guidance also stores the gate of each layer's detached input
    for probe in (plain, ckpt):  # one gate per layer and store per micro-step: the forward's, never a re-run's
        assert [len(step) for step in probe.gates] == [stores * layers] * 2
    for step_a, step_b in zip(plain.gates, ckpt.gates, strict=True):
        for (name_a, a), (name_b, b) in zip(step_a, step_b, strict=True):
            assert name_a == name_b and torch.equal(a, b), name_a
    assert plain_loss == ckpt_loss
    for name, layer in plain_adapter.layers.items():
        for attr in ("down", "ups", "router_weight", "router_bias"):
            assert torch.equal(getattr(layer, attr), getattr(ckpt_adapter.layers[name], attr)), (name, attr)
    # 8 blocks: a re-run holds one block's activations at a time, beside the 8 blocks' inputs
    assert max(ckpt.peaks) < max(plain.peaks) / 3, (ckpt.peaks, plain.peaks)


def test_a_model_loaded_in_inference_mode_trains_in_the_memory_of_a_normally_loaded_one(T, loras, monkeypatch):
    inference, normal = cosmos(inference=True), cosmos(inference=False)
    weights = list(inference.model.parameters())
    assert all(w.is_inference() for w in weights) and not any(w.is_inference() for w in normal.model.parameters())
    weight_bytes = sum(w.nbytes for w in weights)
    loaded_normally = run(T, normal, monkeypatch, steps=1, gradient_checkpointing=False)[0]
    loaded_in_inference_mode = run(T, inference, monkeypatch, steps=1, gradient_checkpointing=False)[0]
    assert abs(loaded_in_inference_mode.peaks[0] - loaded_normally.peaks[0]) <= 0.01 * weight_bytes
    assert list(inference.model.parameters()) == weights and all(w.is_inference() for w in weights)  # given back
    # Control: the fallback for tensors that cannot be viewed (copy per forward) applied to every weight, as the
    # trainer once did; the counter must see those copies (of the weights on the gradient path, about a third here).
    monkeypatch.setattr(import_pack().comfy_glue.train_support, "_aliasable", lambda tensor: False)
    copies = run(T, inference, monkeypatch, steps=1, gradient_checkpointing=False)[0]
    assert copies.peaks[0] - loaded_normally.peaks[0] > 0.2 * weight_bytes


def test_setup_holds_one_weights_fp32_copy_at_a_time_and_a_second_run_skips_the_svds(T, loras, monkeypatch):
    model = cosmos(blocks=4)
    targets = import_pack().comfy_glue.model_linears.adaptable_linears(model, "attention+mlp")
    largest = max(w.numel() for _, w in targets.values()) * 4
    everything = sum(w.numel() for _, w in targets.values()) * 4
    monkeypatch.setattr(T, "BASES", import_pack().ortho_hydra.basis.BasisCache())
    setups = []

    def measured(seed):
        calibrate = T.OrthoHydraTrainSampler.calibrate

        def setup_ends(sampler, *args, **kwargs):  # the calibration pass follows setup
            setups.append(memory.peak)
            return calibrate(sampler, *args, **kwargs)

        with TensorMemory() as memory, monkeypatch.context() as patch:
            patch.setattr(T.OrthoHydraTrainSampler, "calibrate", setup_ends)
            with torch.inference_mode():
                _, adapter, _, _ = T.train(model, LATENTS, POSITIVE, config(T, steps=1, seed=seed))
        return adapter

    first = measured(seed=0)
    assert T.BASES.computed == len(targets) and T.BASES.hits == 0
    network = sum(t.numel() * 4 for layer in first.layers.values() for t in (layer.down, layer.ups))
    again = measured(seed=0)
    assert T.BASES.computed == len(targets) and T.BASES.hits == len(targets)  # no SVD the second time
    for name, layer in first.layers.items():
        assert torch.equal(layer.ups, again.layers[name].ups) and torch.equal(layer.down, again.layers[name].down)
    measured(seed=1)  # the bases depend on the seed: a new seed computes them
    assert T.BASES.computed == 2 * len(targets)
    # the adapter's bases twice (the network's and the cache's copy) and one weight's fp32 copy (the randomised SVD's
    # work matrices are r·E columns wide); copying every targeted weight to fp32 at once, as setup did, adds
    # `everything`
    assert everything > 8 * largest
    assert setups[0] <= 2 * network + largest, (setups, network, largest)
