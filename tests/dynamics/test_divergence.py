"""Divergence of nearby trajectories with known growth rates."""

import math

import pytest
import torch

from sharpdim.dynamics.divergence import trajectory_divergence
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError

F64 = torch.float64


def test_linear_expansion_rate_exact() -> None:
    a = torch.diag(torch.tensor([1.5, 0.5], dtype=F64))
    r = trajectory_divergence(lambda x: a @ x, torch.zeros(2, dtype=F64), 30)
    # a random direction: the distance is dominated by the 1.5 axis after a few steps
    assert abs(r.growth_rate - math.log(1.5)) < 0.02


def test_contraction_rate() -> None:
    r = trajectory_divergence(lambda x: 0.5 * x, torch.ones(3, dtype=F64), 20)
    assert abs(r.growth_rate - math.log(0.5)) < 1e-9
    assert not r.saturated and r.fit_stop == 21


def test_logistic_rate_and_saturation() -> None:
    r = trajectory_divergence(
        lambda x: 4 * x * (1 - x), torch.tensor([0.3], dtype=F64), 80, delta=1e-12
    )
    assert r.saturated and r.fit_stop < 60
    assert abs(r.growth_rate - math.log(2)) < 0.1


def test_training_map_gd_quadratic() -> None:
    # GD on 0.5 * sum a_i w_i^2 (a linear model on e_i rows): distance factor |1 - eta a_max|
    model = torch.nn.Linear(2, 1, bias=False).double()
    x = torch.diag(torch.tensor([2.0, 0.5], dtype=F64).sqrt()) * math.sqrt(2)
    batch = (x, torch.zeros(2, 1, dtype=F64))

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return 0.5 * ((m(b[0]) - b[1]) ** 2).sum(dim=1).mean()

    phi = TrainingMap(model, mse, [batch], lr=1.5)  # Hessian diag(2, 0.5): factors 2, 0.25
    r = trajectory_divergence(phi, phi.initial_state(), 25)
    assert abs(r.growth_rate - math.log(2.0)) < 1e-3


def test_bad_input() -> None:
    with pytest.raises(SharpdimError):
        trajectory_divergence(lambda x: x, torch.ones(2, dtype=F64), 0)
    with pytest.raises(SharpdimError):  # delta not resolvable in float32 around 1e4
        trajectory_divergence(lambda x: x, torch.full((2,), 1e4), 5, delta=1e-9)
    assert trajectory_divergence(lambda x: x, torch.ones(2, dtype=F64), 3).to_dict()["num_steps"]
