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
