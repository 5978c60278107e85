"""The trainer's learning-rate schedules: closed-form values, and base lrs that survive a state-dict round trip."""

import itertools
import math

import pytest
import torch

from ortho_hydra.training import LR_SCHEDULES, lr_factor, set_learning_rates


@pytest.mark.parametrize("step", [0, 1, 5, 9, 10, 12])
def test_factors_match_the_closed_forms(step):
    total = 10
    p = min(step, total) / total
    assert lr_factor(step, total, "constant") == 1.0
    assert lr_factor(step, total, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * p)), abs=1e-15)
    assert lr_factor(step, total, "linear") == pytest.approx(1 - p, abs=1e-15)


def test_decays_are_monotone_positive_until_the_last_update_and_zero_after():
    for schedule in ("cosine", "linear"):
        values = [lr_factor(s, 7, schedule) for s in range(8)]
        assert values[0] == 1.0 and all(a > b for a, b in itertools.pairwise(values))
        assert values[6] > 0 and values[7] == pytest.approx(0.0, abs=1e-15)


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match=r"warmup_cosine.*constant, cosine, linear"):
        lr_factor(0, 10, "warmup_cosine")
    assert LR_SCHEDULES == ("constant", "cosine", "linear")


def test_each_group_scales_its_own_base_and_the_base_survives_a_round_trip():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    set_learning_rates(opt, 0.5)
    set_learning_rates(opt, 0.25)  # relative to the base, not compounded
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-4, 2.5e-3])
    fresh = torch.optim.AdamW([{"params": [a], "lr": 7.0}, {"params": [b], "lr": 7.0}])
    fresh.load_state_dict(opt.state_dict())
    set_learning_rates(fresh, 1.0)
    assert [g["lr"] for g in fresh.param_groups] == pytest.approx([1e-3, 1e-2])
