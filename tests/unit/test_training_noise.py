"""The trainer's noise draws and objective, host-free: fixed noise repeats per image, a step's noise split over
processes equals one process's draw, and the objective adds exactly the terms that are on."""

import pytest
import torch

from ortho_hydra.training import calibration_generator, fixed_noise, step_noise, total_loss


def test_fixed_noise_is_per_image_and_repeats():
    levels, noise = fixed_noise([3, 5], (2, 4), seed=11, mode="logit_normal")
    again_levels, again = fixed_noise([5, 3], (2, 4), seed=11, mode="logit_normal")
    assert torch.equal(levels, again_levels.flip(0)) and torch.equal(noise, again.flip(0))  # keyed by image index
    other, _ = fixed_noise([3, 5], (2, 4), seed=12, mode="logit_normal")
    assert not torch.equal(levels, other)
    assert noise.shape == (2, 2, 4) and ((levels > 0) & (levels < 1)).all()


def test_a_steps_noise_split_over_processes_is_the_one_process_draw():
    whole = step_noise(6, (3,), seed=2, step=4, micro=1, rows=slice(0, 6))
    halves = torch.cat([step_noise(6, (3,), seed=2, step=4, micro=1, rows=slice(0, 3)),
                        step_noise(6, (3,), seed=2, step=4, micro=1, rows=slice(3, 6))])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, step_noise(6, (3,), seed=2, step=5, micro=1, rows=slice(0, 6)))
    assert not torch.equal(whole, step_noise(6, (3,), seed=2, step=4, micro=0, rows=slice(0, 6)))


def test_calibration_draws_are_their_own_stream():
    calibration = torch.randn(4, generator=calibration_generator(2))
    assert torch.equal(calibration, torch.randn(4, generator=calibration_generator(2)))
    assert not torch.equal(calibration, step_noise(1, (4,), seed=2, step=0, micro=0, rows=slice(0, 1))[0])


def test_the_objective_adds_exactly_the_terms_that_are_on():
    mse, balance, guided = torch.tensor(0.5), torch.tensor(2.0), torch.tensor(3.0)
    assert float(total_loss(mse)) == 0.5
    assert float(total_loss(mse, (0.1, balance), (2.0, guided))) == pytest.approx(0.5 + 0.1 * 2.0 + 2.0 * 3.0)
    assert float(total_loss(mse, (0.0, balance), (2.0, None))) == 0.5  # weight 0, or no term made: off
