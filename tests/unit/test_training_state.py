import pytest
import torch
from factories import trained_layer

from ortho_hydra import OrthoHydraError
from ortho_hydra.training_state import (
    TrainingState,
    gather_optimizer_state,
    load_training_state,
    restore_optimizer_state,
    resume_path_for,
    save_training_state,
)


def _step(layer, opt, x, target):
    opt.zero_grad()
    (layer.delta(x) - target).pow(2).mean().backward()
    opt.step()


def test_sidecar_round_trip_restores_module_optimizer_and_rng(tmp_path):
    layer = trained_layer()
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    x, target = torch.randn(2, 4, 40), torch.randn(2, 4, 48)
    _step(layer, opt, x, target)
    names = {id(p): n for n, p in layer.named_parameters()}
    torch.manual_seed(123)
    state = TrainingState(step=1, module_states={"l0": layer.state_dict()},
                          optimizer_state=gather_optimizer_state(opt, names),
                          rng={"torch_cpu": torch.get_rng_state()}, info={"rank": 4})
    path = resume_path_for(tmp_path / "a.safetensors")
    assert path.endswith("a.resume.safetensors")
    save_training_state(path, state)
    expected_draw = torch.rand(3)

    loaded = load_training_state(path)
    assert loaded.step == 1 and loaded.info == {"rank": 4}
    clone = trained_layer(seed=5)  # different values everywhere
    clone.load_state_dict(loaded.module_states["l0"])
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1e-2)
    restore_optimizer_state(opt2, loaded.optimizer_state, dict(clone.named_parameters()), path)
    torch.set_rng_state(loaded.rng["torch_cpu"])
    assert torch.equal(torch.rand(3), expected_draw)
    _step(layer, opt, x, target)
    _step(clone, opt2, x, target)
    for (n, p), (_, q) in zip(layer.named_parameters(), clone.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_foreign_resume_file_and_mismatched_optimizer_state_are_refused(tmp_path):
    from factories import adapter

    import ortho_hydra

    path = tmp_path / "x.safetensors"
    ortho_hydra.save(adapter(), path)
    with pytest.raises(OrthoHydraError, match="not an Ortho-Hydra resume file"):
        load_training_state(path)
    layer = trained_layer(rank=4)
    opt = torch.optim.AdamW(layer.parameters())
    with pytest.raises(OrthoHydraError, match="does not fit"):
        restore_optimizer_state(opt, {"lam": {"exp_avg": torch.zeros(8)}}, dict(layer.named_parameters()), path)
    with pytest.raises(OrthoHydraError, match="no parameter for"):
        restore_optimizer_state(opt, {"ghost": {"exp_avg": torch.zeros(1)}}, dict(layer.named_parameters()), path)


def _network(seed=0):
    from ortho_hydra.network import OrthoHydraNetwork

    g = torch.Generator().manual_seed(seed)
    weights = {"lora_unet_blocks_0_mlp_layer1": torch.randn(48, 40, generator=g),
               "lora_unet_blocks_1_mlp_layer1": torch.randn(48, 40, generator=g)}
    return OrthoHydraNetwork(weights, rank=4, num_experts=3, seed=seed)


def _run_steps(net, opt, gen, steps):
    for _ in range(steps):
        x = torch.randn(2, 5, 40, generator=gen)
        loss = sum((layer.delta(x) - 0.1 * x[..., :48].sum(-1, keepdim=True)).pow(2).mean()
                   for _, layer in net.items())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_captured_run_resumes_bit_for_bit(tmp_path):
    from ortho_hydra.training_state import capture_training_state, restore_training_state

    fingerprint, config = {"a": [48, 40]}, {"rank": 4}
    straight, opt_s, gen_s = _network(), None, torch.Generator().manual_seed(7)
    opt_s = torch.optim.AdamW(straight.parameters(), lr=1e-2)
    _run_steps(straight, opt_s, gen_s, 6)

    first = _network()
    opt_f = torch.optim.AdamW(first.parameters(), lr=1e-2)
    gen_f = torch.Generator().manual_seed(7)
    _run_steps(first, opt_f, gen_f, 3)
    path = tmp_path / "run.resume.safetensors"
    save_training_state(path, capture_training_state(first, opt_f, gen_f, 3,
                                                     {"config": config, "fingerprint": fingerprint}))
    resumed = _network(seed=0)
    opt_r = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    gen_r = torch.Generator()
    state = load_training_state(path)
    restore_training_state(state, resumed, opt_r, gen_r, fingerprint=fingerprint, config=config, path=path)
    assert state.step == 3 and state.info["param_groups"][0]["lr"] == 1e-2
    _run_steps(resumed, opt_r, gen_r, 3)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_restore_refuses_another_model_or_other_settings(tmp_path):
    from ortho_hydra.training_state import capture_training_state, restore_training_state

    net = _network()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    state = capture_training_state(net, opt, gen, 0, {"config": {"rank": 4}, "fingerprint": {"a": [48, 40]}})
    with pytest.raises(OrthoHydraError, match=r"another model .*shapes differ") as err:
        restore_training_state(state, net, opt, gen, fingerprint={"a": [48, 41]}, config={"rank": 4}, path="r.st")
    assert "r.st" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(OrthoHydraError, match="adapts 1 layers"):
        restore_training_state(state, net, opt, gen, fingerprint={"b": [1, 1], "c": [1, 1]}, config={"rank": 4})
    with pytest.raises(OrthoHydraError, match="settings differ"):
        restore_training_state(state, net, opt, gen, fingerprint={"a": [48, 40]}, config={"rank": 8})
