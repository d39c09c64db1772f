"""SD-SLQ / SD-KDE / SD-PS against the exact SD on a small model (seeded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sharpdim.dimension.sharpness_dimension import sharpness_dimension

pytest.importorskip("sharpdim.curvature.slq")


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * ((model(batch[0]) - batch[1]) ** 2).sum(1).mean()


def _setup() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()  # 114 params
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    return model, (x, y)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
@pytest.mark.parametrize("method", ["slq", "kde", "ps"])
def test_estimators_close_to_exact_on_one_hessian(method: str, optimizer: str) -> None:
    # batch_size = n: every minibatch is the whole set, so all estimators target one spectrum
    model, data = _setup()
    kw = {"batch_size": 60, "optimizer": optimizer, "momentum": 0.5, "num_bootstrap": 0}
    exact = sharpness_dimension(model, _mse, data, 1.5, num_batches=1, **kw)
    est = sharpness_dimension(
        model,
        _mse,
        data,
        1.5,
        method=method,
        num_runs=150,
        num_steps=40,
        generator=torch.Generator().manual_seed(0),
        **kw,
    )
    assert 0 < exact.sd < exact.num_exponents
    assert abs(est.sd - exact.sd) / exact.num_exponents < 0.03, (est.sd, exact.sd)
    assert est.lambda_1 == pytest.approx(exact.lambda_1, abs=0.02)
    assert est.exponents.numel() == est.num_exponents and est.exponent_weight == 1.0


def test_slq_with_fresh_minibatches_and_bootstrap() -> None:
    model, data = _setup()
    exact = sharpness_dimension(
        model, _mse, data, 1.5, num_batches=40, batch_size=20, num_bootstrap=0
    )
    est = sharpness_dimension(
        model,
        _mse,
        data,
        1.5,
        method="ps",
        num_runs=120,
        num_steps=40,
        batch_size=20,
        num_bootstrap=30,
        generator=torch.Generator().manual_seed(3),
    )
    assert abs(est.sd - exact.sd) / 114 < 0.05
    assert est.ci_low <= est.sd <= est.ci_high
    assert est.settings["num_runs"] == 120 and est.settings["num_steps"] == 40
