"""RDS sharpness: batch means of sorted exponents, max over iterates, exact per-batch spectra."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpdim.curvature.params import get_flat_params
from sharpdim.dimension.rds_sharpness import rds_exponents, rds_sharpness
from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError, TooLargeError


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _setup() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(18, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (18,), generator=gen)
    return model, [(x[i : i + 6], y[i : i + 6]) for i in (0, 6, 12)]


def test_rds_exponents_sorts_averages_and_stderr() -> None:
    r = rds_exponents(torch.tensor([[0.0, 1.0, -2.0], [-1.0, 3.0, 0.0]]))
    assert r.exponents.tolist() == [2.0, 0.0, -1.5]
    assert r.lambda_1 == 2.0
    assert r.lambda_1_stderr == pytest.approx(math.sqrt(2.0) / math.sqrt(2))  # std(1, 3) / sqrt 2
    assert r.num_batches == 2 and r.num_iterates == 1
    single = rds_exponents(torch.tensor([[1.0, 0.0]]))
    assert math.isnan(single.lambda_1_stderr) and single.to_dict()["lambda_1_stderr"] is None


def test_max_over_iterates_before_average() -> None:
    it1 = torch.tensor([[1.0, -1.0], [0.0, -3.0]])
    it2 = torch.tensor([[0.5, 0.0], [2.0, -4.0]])
    r = rds_exponents(torch.stack([it1, it2]))
    # batch 1: max(1, .5), max(-1, 0) = (1, 0); batch 2: (2, -3)
    assert r.per_batch.tolist() == [[1.0, 0.0], [2.0, -3.0]]
    assert r.exponents.tolist() == [1.5, -1.5]
    assert r.num_iterates == 2


def test_rds_exponents_bad_input() -> None:
    with pytest.raises(SharpdimError):
        rds_exponents(torch.zeros(0, 3))
    with pytest.raises(SharpdimError):
        rds_exponents(torch.tensor([[float("-inf"), 0.0]]))
    with pytest.raises(SharpdimError):
        rds_exponents(torch.zeros(3))


def _brute(
    model: nn.Module, batches: list, config: StepSpectrumConfig, x: torch.Tensor | None = None
) -> torch.Tensor:
    phi = TrainingMap(
        model,
        _ce,
        batches,
        optimizer=config.optimizer,
        lr=config.lr,
        momentum=config.momentum,
        mode="eval",
    )
    x = phi.initial_state() if x is None else x
    rows = []
    for t in range(len(batches)):
        s = torch.linalg.svdvals(phi.jacobian(x, t))
        rows.append(torch.sort(torch.log(s + config.eps), descending=True).values)
    return torch.stack(rows)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_exact_equals_brute_force(optimizer: str) -> None:
    model, batches = _setup()
    config = StepSpectrumConfig(optimizer=optimizer, lr=3.0, momentum=0.5)
    r = rds_sharpness(model, _ce, batches, config)
    ref = _brute(model, batches, config).mean(0)
    torch.testing.assert_close(r.exponents, ref, rtol=0, atol=1e-9)


def test_iterates_restore_parameters_and_take_max() -> None:
    model, batches = _setup()
    config = StepSpectrumConfig(lr=3.0)
    w0 = get_flat_params(list(model.parameters()))
    w1 = w0 + 0.3 * torch.randn(
        w0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    r = rds_sharpness(model, _ce, batches, config, iterates=[w0, w1])
    torch.testing.assert_close(get_flat_params(list(model.parameters())), w0, rtol=0, atol=0)
    b0 = _brute(model, batches, config, w0)
    b1 = _brute(model, batches, config, w1)
    torch.testing.assert_close(r.exponents, torch.maximum(b0, b1).mean(0), rtol=0, atol=1e-9)
    assert r.num_iterates == 2


def test_rds_sharpness_bad_input() -> None:
    model, batches = _setup()
    with pytest.raises(SharpdimError, match="no batches"):
        rds_sharpness(model, _ce, [], StepSpectrumConfig())
    with pytest.raises(TooLargeError):
        rds_sharpness(model, _ce, batches, StepSpectrumConfig(), max_params=10)
    with pytest.raises(SharpdimError, match="iterate"):
        rds_sharpness(model, _ce, batches, StepSpectrumConfig(), iterates=[torch.zeros(3)])
