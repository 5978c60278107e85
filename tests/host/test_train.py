"""The in-graph trainer on the real host (CPU): fitting, de-uniformisation, resume, interrupt, reload, errors.

As ComfyUI's executor does, every model here is loaded, and every training run called, inside
``torch.inference_mode()``."""

import itertools
import math
import warnings

import comfy.model_management as mm
import pytest
import torch

from devkit import tiny_dit
from devkit.adapters import library
from devkit.host import import_pack


@pytest.fixture(scope="module")
def T():
    return import_pack().comfy_glue.training


@pytest.fixture(scope="module")
def base():
    """The tiny MMDiT, loaded inside inference mode (its weights are inference tensors, as in ComfyUI)."""
    with torch.inference_mode():
        return tiny_dit.load_mmdit(depth=2, seed=0)


def train(*args, **kwargs):
    """``train`` called as the node's ``execute`` is: inside inference mode."""
    with torch.inference_mode():
        return import_pack().comfy_glue.training.train(*args, **kwargs)


LATENTS = torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(0))
POSITIVE = tiny_dit.mmdit_conditioning(seed=1)


def config(T, **kw):
    values = dict(steps=20, learning_rate=1e-2, batch_size=4, grad_accumulation=1, rank=4, experts=4, alpha=0.0,
                  init="ortho", jitter_std=0.1, balance_weight=1e-5, router_lr_scale=10.0, targets="attention+mlp",
                  target_regex="", timestep_sampling="logit_normal", shift=3.0, gradient_checkpointing=False,
                  training_dtype="fp32", seed=0, save_every=0, output_name="run", fixed_noise=False,
                  lr_schedule="constant", label_guidance=0.0)
    values.update(kw)
    return T.TrainConfig(**values)


def test_fixed_batch_loss_falls_and_ortho_gates_leave_uniform(T, base, loras):
    _, _, loss_map, trace = train(base, LATENTS, POSITIVE, config(T, fixed_noise=True, trace_every=1,
                                                                     learning_rate=3e-2, targets="all_linear"))
    loss = loss_map["loss"]
    assert len(loss) == 20 and all(torch.isfinite(torch.tensor(loss)))
    first, last = sum(loss[:3]) / 3, sum(loss[-3:]) / 3
    assert last < 0.99 * first, (first, last)  # it learns the fixed batch (see README: no 2x drop on a random DiT)
    assert sum(b < a for a, b in itertools.pairwise(loss)) >= 15  # and keeps improving step after step
    assert 1 - trace.mean_entropy[0] < 0.01  # starts at the uniform prior ...
    assert 1 - trace.mean_entropy[-1] > 0.05  # ... and leaves it within 20 steps
    assert trace.mean_kl[-1] > trace.mean_kl[0]


def test_resume_is_exact(T, base, loras):
    lib = library()
    full = train(base, LATENTS, POSITIVE, config(T, steps=8, output_name="straight"))[1]
    train(base, LATENTS, POSITIVE, config(T, steps=4, output_name="split"))
    resumed = train(base, LATENTS, POSITIVE, config(T, steps=8, output_name="split"),
                      resume=str(loras / "split.resume.safetensors"))[1]
    state = lib.training_state.load_training_state(loras / "split.resume.safetensors")
    assert state.step == 8
    for name, layer in full.layers.items():
        other = resumed.layers[name]
        for attr in ("down", "ups", "router_weight", "router_bias"):
            assert torch.allclose(getattr(layer, attr), getattr(other, attr), atol=1e-6, rtol=1e-5), (name, attr)
    assert not torch.equal(full.layers[name].ups, train(base, LATENTS, POSITIVE, config(
        T, steps=4, output_name="short"))[1].layers[name].ups)  # and 4 steps really differ from 8


def test_a_resume_file_without_a_data_order_still_resumes_exactly_and_says_so(T, base, loras, caplog):
    """Files written before epoch sampling have no data_order; the order is derived from the step anyway. Batch 3
    of 4 images: one batch per epoch, one image sits out each epoch."""
    lib = library()
    full = train(base, LATENTS, POSITIVE, config(T, steps=6, batch_size=3, output_name="epochs"))[1]
    train(base, LATENTS, POSITIVE, config(T, steps=3, batch_size=3, output_name="old"))
    path = loras / "old.resume.safetensors"
    state = lib.training_state.load_training_state(path)
    assert state.info.pop("data_order") == {"sampler": "DistributedSampler", "dataset": 4, "global_batch": 3,
                                            "epoch": 3, "batch_in_epoch": 0}
    lib.training_state.save_training_state(path, state)  # as an old trainer wrote it
    with caplog.at_level("WARNING", logger="ortho_hydra"):
        resumed = train(base, LATENTS, POSITIVE, config(T, steps=6, batch_size=3, output_name="old"),
                          resume=str(path))[1]
    assert "old.resume.safetensors predates epoch sampling" in caplog.text
    for name, layer in full.layers.items():
        assert torch.allclose(layer.ups, resumed.layers[name].ups, atol=1e-6, rtol=1e-5), name


def test_a_decaying_lr_follows_its_curve_and_resumes_exactly(T, base, loras):
    """Cosine over 6 steps: the saved optimizer's lr is base x the closed form at the last update, and a run
    resumed from its step-3 checkpoint (same total) ends where the uninterrupted one does."""
    lib = library()
    cosine = dict(steps=6, lr_schedule="cosine", save_every=3)
    full = train(base, LATENTS, POSITIVE, config(T, output_name="cos_full", **cosine))[1]
    groups = lib.training_state.load_training_state(loras / "cos_full.resume.safetensors").info["param_groups"]
    expected = 0.5 * (1 + math.cos(math.pi * 5 / 6))  # the 6th update has index 5
    assert [g["lr"] for g in groups] == pytest.approx([1e-2 * expected, 1e-1 * expected], rel=1e-12)
    assert [g["base_lr"] for g in groups] == pytest.approx([1e-2, 1e-1])

    stopped = []

    def stop_after_checkpoint(self, *args, **kwargs):  # a cancel right after the step-3 save
        path = original(self, *args, **kwargs)
        if self.step == 3 and not stopped:
            stopped.append(path)
            raise mm.InterruptProcessingException()
        return path

    original = T.TrainingRun.checkpoint
    with pytest.MonkeyPatch.context() as mp, pytest.raises(mm.InterruptProcessingException):
        mp.setattr(T.TrainingRun, "checkpoint", stop_after_checkpoint)
        train(base, LATENTS, POSITIVE, config(T, output_name="cos_split", **cosine))
    resumed = train(base, LATENTS, POSITIVE, config(T, output_name="cos_split", **cosine),
                      resume=str(loras / "cos_split.resume.safetensors"))[1]
    constant = train(base, LATENTS, POSITIVE, config(T, output_name="cos_const", steps=6))[1]
    for name, layer in full.layers.items():
        assert torch.allclose(layer.ups, resumed.layers[name].ups, atol=1e-6, rtol=1e-5), name
    assert not torch.allclose(full.layers[name].ups, constant.layers[name].ups, atol=1e-6)  # the schedule acts


def test_interrupt_saves_a_loadable_checkpoint_then_re_raises(T, base, loras, monkeypatch):
    def press_cancel_after_step_three(payload):  # what the UI's cancel button does, mid-run
        if payload["step"] == 3:
            mm.interrupt_current_processing(True)

    monkeypatch.setattr(T, "notify", press_cancel_after_step_three)
    with pytest.raises(mm.InterruptProcessingException):
        train(base, LATENTS, POSITIVE, config(T, steps=10, output_name="stopped", trace_every=1))
    adapter = library().load(loras / "stopped.safetensors")
    assert adapter.num_experts == 4 and len(adapter.layers) > 0
    assert library().training_state.load_training_state(loras / "stopped.resume.safetensors").step == 3
    assert not [p for p in loras.iterdir() if p.name.endswith(".tmp")]


def test_trained_adapter_reloaded_through_the_loader_gives_the_same_sample(T, base, loras):
    pack = import_pack()
    live, _adapter, _, _ = train(base, LATENTS, POSITIVE, config(T, steps=6, output_name="reload_me"))
    loaded = pack.nodes.load_apply.OrthoHydraLoader.execute("reload_me.safetensors", "training").args[0]
    again = pack.nodes.load_apply.OrthoHydraApply.execute(base, loaded, 1.0).args[0]
    latent = torch.zeros(1, 16, 16, 16)
    neg = tiny_dit.mmdit_conditioning(seed=2)
    a = tiny_dit.sample(live, latent, POSITIVE, neg, steps=3)
    b = tiny_dit.sample(again, latent, POSITIVE, neg, steps=3)
    mm.unload_all_models()
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, tiny_dit.sample(base, latent, POSITIVE, neg, steps=3), atol=1e-4)


def test_hydra_baselines_train_and_are_stamped_hydra(T, base, loras):
    for init in ("hydra_zero", "hydra_jitter"):
        _, adapter, loss_map, trace = train(base, LATENTS, POSITIVE, config(T, steps=3, init=init,
                                                                              output_name=init))
        assert adapter.spec == "hydra" and trace.init == init and len(loss_map["loss"]) == 3
        assert library().load(loras / f"{init}.safetensors").metadata["ss_network_spec"] == "hydra"


def test_bad_inputs_get_clear_errors(T, base, loras):
    lib = library()
    with pytest.raises(lib.OrthoHydraError, match="3 conditionings for 4 latents"):
        train(base, LATENTS, POSITIVE * 3, config(T))
    with pytest.raises(lib.OrthoHydraError, match="rank 999 exceeds min") as err:
        train(base, LATENTS, POSITIVE, config(T, rank=999))
    assert "Fix:" in str(err.value)
    with pytest.raises(lib.OrthoHydraError, match="3 style labels for 4 images"):
        train(base, LATENTS, POSITIVE, config(T), labels=T.style_labels_from("0,1,0", 3))
    with warnings.catch_warnings(record=True) as caught:  # E·r over the disjoint limit: warn and report, no crash
        warnings.simplefilter("always")
        _, _adapter, _, trace = train(base, LATENTS, POSITIVE, config(T, steps=2, rank=48, experts=4,
                                                                        output_name="crowded"))
    assert trace.replicated_layers and any("replicating the top slice" in str(w.message) or "deadlock" in
                                           str(w.message) for w in caught)
    train(base, LATENTS, POSITIVE, config(T, steps=2, output_name="for_sd3"))
    with torch.inference_mode():
        other = tiny_dit.load_mmdit(depth=3, seed=1)
    with pytest.raises(lib.OrthoHydraError, match="written for another model") as err:
        train(other, LATENTS, tiny_dit.mmdit_conditioning(seed=1), config(T, steps=4, output_name="x"),
                resume=str(loras / "for_sd3.resume.safetensors"))
    assert "for_sd3.resume.safetensors" in str(err.value)
    with pytest.raises(lib.OrthoHydraError, match="settings differ"):
        train(base, LATENTS, POSITIVE, config(T, steps=4, rank=2, output_name="y"),
                resume=str(loras / "for_sd3.resume.safetensors"))


def test_out_of_memory_becomes_a_clear_error_and_keeps_the_checkpoint(T, base, loras, monkeypatch):
    real = T.UsageBalance.loss
    calls = {"n": 0}

    def runs_out_of_memory_on_the_third_step(self, gates):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, gates)

    monkeypatch.setattr(T.UsageBalance, "loss", runs_out_of_memory_on_the_third_step)
    with pytest.raises(library().OrthoHydraError) as err:
        train(base, LATENTS, POSITIVE, config(T, steps=10, output_name="oom"))
    message = str(err.value)
    assert "out of GPU memory at step 2" in message and "gradient_checkpointing" in message
    assert "oom.safetensors" in message
    assert library().training_state.load_training_state(loras / "oom.resume.safetensors").step == 2


class _PredictionProbe:
    """A ComfyUI sampler that, instead of sampling, predicts x0 for a batch and for each image alone."""

    def __init__(self, T, sigmas):
        import comfy.samplers

        probe = self

        class Sampler(comfy.samplers.Sampler):
            def sample(self, model_wrap, sigmas_, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                       disable_pbar=False):
                from comfy_extras import nodes_train

                model_wrap.conds = nodes_train.process_cond_list(model_wrap.conds)
                conds = model_wrap.conds["positive"]
                idx = list(range(latent_image.shape[0]))
                rows = []
                handle = model_wrap.inner_model.diffusion_model.register_forward_pre_hook(
                    lambda module, args: rows.append(args[0].shape[0]))
                try:
                    probe.batched = T.predict_x0(model_wrap, conds, extra_args, latent_image, idx, sigmas, probe.noise)
                    probe.batched_rows = list(rows)
                    probe.alone = torch.cat([T.predict_x0(model_wrap, conds, extra_args, latent_image, [i],
                                                          sigmas[i:i + 1], probe.noise[i:i + 1]) for i in idx])
                finally:
                    handle.remove()
                return torch.zeros_like(latent_image)

        self.sampler = Sampler()
        self.noise = torch.randn(LATENTS.shape, generator=torch.Generator().manual_seed(5))

    def run(self, model, positive):
        from comfy_extras import nodes_custom_sampler

        guider = nodes_custom_sampler.Guider_Basic(model)
        guider.set_conds(positive)
        with torch.no_grad():
            guider.sample(torch.zeros_like(LATENTS), LATENTS, self.sampler, torch.arange(4, dtype=torch.float32),
                          seed=0)
        return self


@pytest.mark.parametrize("tokens", [(8, 8, 8, 8), (8, 7, 8, 5)], ids=["mergeable", "per-image-fallback"])
def test_each_image_in_a_batch_is_predicted_with_its_own_conditioning_only(T, base, tokens):
    # ComfyUI applies every entry of a conditioning list to the whole batch; four per-image entries used to
    # run 16 rows and train each image against the mean of the four conditionings.
    positive = [entry for i, n in enumerate(tokens) for entry in tiny_dit.mmdit_conditioning(tokens=n, seed=10 + i)]
    sigmas = torch.tensor([0.9, 0.6, 0.4, 0.2])
    probe = _PredictionProbe(T, sigmas).run(base.clone(), positive)
    torch.testing.assert_close(probe.batched, probe.alone, rtol=1e-4, atol=1e-5)
    assert probe.batched_rows == ([4] if len(set(tokens)) == 1 else [1, 1, 1, 1])
    different = _PredictionProbe(T, sigmas).run(base.clone(), positive[::-1])
    assert not torch.allclose(different.batched, probe.batched, atol=1e-3)  # the conditioning does matter


def test_training_runs_under_no_grad_and_gives_the_model_back_as_it_was(T, base, loras):
    """A script may call ``train`` under ``torch.no_grad()``; checkpointing patches each block's ``forward`` and the
    trainer views inference weights as normal tensors while it runs: afterwards every module and tensor is the
    original one."""
    tensors = {name: t for name, t in base.model.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        _, adapter, loss_map, _ = T.train(base, LATENTS, POSITIVE, config(T, steps=2, gradient_checkpointing=True,
                                                                          output_name="no_grad"))
    assert len(loss_map["loss"]) == 2 and adapter.layers
    assert any(not torch.equal(layer.ups, torch.zeros_like(layer.ups)) for layer in adapter.layers.values())
    after = base.model.state_dict(keep_vars=True)
    assert after.keys() == tensors.keys() and all(after[k] is t for k, t in tensors.items())
    assert all(t.is_inference() for t in tensors.values())
    assert not [name for name, module in base.model.named_modules() if "forward" in module.__dict__]


def test_the_trainer_nodes_widget_defaults_are_train_configs_defaults(T):
    import dataclasses

    node = import_pack().nodes.train.OrthoHydraTrain
    widgets = {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}
    fields = {f.name: f.default for f in dataclasses.fields(T.TrainConfig)}
    shared = sorted(set(widgets) & set(fields) - {"style_names"})  # a tuple in the config, typed text on the node
    # the options the node does not show (tests, studies and the torchrun command's TOML set them)
    assert set(fields) - set(shared) == {"style_names", "calibrate_router", "label_guidance_detached", "trace_every"}
    assert {k: widgets[k] for k in shared} == {k: fields[k] for k in shared}
    assert widgets["balance_weight"] == T.TrainConfig().balance_weight and widgets["steps"] == T.TrainConfig().steps
