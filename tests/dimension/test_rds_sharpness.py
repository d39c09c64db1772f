"""RDS sharpness: batch means of sorted exponents, max over iterates, exact per-batch spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpdim.curvature.params import get_flat_params
from sharpdim.dimension.rds_sharpness import rds_exponents, rds_sharpness
from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError, TooLargeError
from tests.dynamics.real_optim import in_parameter_units


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
        jac = phi.jacobian(x, t)
        if config.optimizer != "sgd":  # the package's coordinates: (w, lr v), the last step
            jac = in_parameter_units(jac, phi.num_params, config.lr)
        s = torch.linalg.svdvals(jac)
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
    # an (m, d) numpy array, as ph_dimension takes, was refused as "not a list"
    same = rds_sharpness(model, _ce, batches, config, iterates=np.stack([w0.numpy(), w1.numpy()]))
    assert torch.equal(same.exponents, r.exponents) and same.num_iterates == 2


def test_rds_sharpness_bad_input() -> None:
    model, batches = _setup()
    with pytest.raises(SharpdimError, match="batches must be a non-empty list"):
        rds_sharpness(model, _ce, [], StepSpectrumConfig())
    with pytest.raises(TooLargeError):
        rds_sharpness(model, _ce, batches, StepSpectrumConfig(), max_params=10)
    with pytest.raises(SharpdimError, match="iterate"):
        rds_sharpness(model, _ce, batches, StepSpectrumConfig(), iterates=[torch.zeros(3)])
    # an empty list (e.g. a trajectory that recorded nothing) measured the current parameters
    w = get_flat_params(list(model.parameters()))
    for flat in (w, w.numpy()):  # (split into numbers: "iterate of shape () does not match")
        with pytest.raises(SharpdimError, match=r"^iterates is one flat vector of shape \("):
            rds_sharpness(model, _ce, batches, StepSpectrumConfig(), iterates=flat)
    for empty in ([], np.zeros((0, 4)), np.zeros(0), torch.zeros(0)):
        with pytest.raises(SharpdimError, match="iterates is empty"):
            rds_sharpness(model, _ce, batches, StepSpectrumConfig(), iterates=empty)


@pytest.mark.parametrize("bad", [[[1.0, 2.0], [3.0]], "a", [["a", "b"]]])
def test_rds_exponents_ragged_or_non_numeric_input(bad: object) -> None:
    with pytest.raises(SharpdimError, match="rows of equal length") as err:
        rds_exponents(bad)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def _norm_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    return model.weight.norm()  # finite (0) at w = 0, its Hessian is NaN there


def _exp_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    return torch.exp(model(batch[0]).squeeze(-1)).mean()  # float32: finite loss, inf Hessian


@pytest.mark.parametrize(
    ("dtype", "weight", "loss_fn", "x"),
    [(torch.float64, 0.0, _norm_loss, 1.0), (torch.float32, 0.04, _exp_loss, 1000.0)],
)
def test_non_finite_hessian_with_a_finite_loss(
    dtype: torch.dtype, weight: float, loss_fn: object, x: float
) -> None:
    model = nn.Linear(2, 1, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.fill_(weight)
    batch = (torch.full((3, 2), x, dtype=dtype), torch.zeros(3, dtype=dtype))
    assert math.isfinite(float(loss_fn(model, batch).detach()))  # type: ignore[operator]
    with pytest.raises(SharpdimError, match=r"Hessian holds NaN or inf.*float64") as err:
        rds_sharpness(model, loss_fn, [batch], StepSpectrumConfig())  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_overflowing_exponents_name_the_learning_rate() -> None:
    model = nn.Linear(2, 1, bias=False).double()
    batch = (torch.full((3, 2), 10.0, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))

    def mse(m: nn.Module, b: tuple) -> torch.Tensor:  # Hessian eigenvalues 0 and 400
        return (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()

    with pytest.raises(SharpdimError, match=r"exponents overflow float64.*lower lr"):
        rds_sharpness(model, mse, [batch], StepSpectrumConfig(lr=1e308))


def test_exactly_singular_direction_with_eps_0_asks_for_eps() -> None:
    model, batches = _setup()  # Adam with b1 = 0: each block has sigma_2 = b1 = 0 exactly
    config = StepSpectrumConfig(optimizer="adam", betas=(0.0, 0.999), lr=0.1, eps=0.0)
    n = sum(p.numel() for p in model.parameters())
    ones = torch.ones(n, dtype=torch.float64)
    with pytest.raises(SharpdimError, match=r"exactly 0.*eps=0.*pass eps > 0") as err:
        rds_sharpness(model, _ce, batches, config, preconditioner=ones)
    assert "\n" not in str(err.value) and "overflow" not in str(err.value)


def test_each_batch_draws_its_own_dropout_masks_in_train_mode() -> None:
    """Every dense minibatch Hessian gets fresh masks: the same batch twice gives two
    different steps in train mode and the same one in eval mode; the caller's random stream
    is not advanced either way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).double()
    _, batches = _setup()
    config = StepSpectrumConfig(lr=0.5)
    for mode, same in (("train", False), ("eval", True)):
        state = torch.get_rng_state()
        first = rds_sharpness(model, _ce, [batches[0], batches[0]], config, mode=mode)
        assert torch.equal(torch.get_rng_state(), state), mode
        assert torch.equal(first.per_batch[0], first.per_batch[1]) is same, mode
        torch.manual_seed(1)  # the global state does not matter: the generator does
        again = rds_sharpness(model, _ce, [batches[0], batches[0]], config, mode=mode)
        assert torch.equal(again.per_batch, first.per_batch)
        gen = torch.Generator().manual_seed(5)
        other = rds_sharpness(model, _ce, [batches[0]], config, mode=mode, generator=gen)
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())
        assert torch.equal(other.per_batch[0], first.per_batch[0]) is same, mode


def test_an_infinite_preconditioner_is_refused() -> None:
    """inf passed the positivity check and made its directions look flat."""
    model, batches = _setup()
    n = sum(p.numel() for p in model.parameters())
    p = torch.ones(n, dtype=torch.float64)
    p[0] = math.inf
    config = StepSpectrumConfig(optimizer="adam", lr=0.1)
    with pytest.raises(SharpdimError, match=r"preconditioner must be positive and finite"):
        rds_sharpness(model, _ce, batches, config, preconditioner=p)


def test_one_batch_as_a_tuple_a_non_module_and_a_bad_config_are_refused():
    """A bare (x, y) tuple was read as two batches x and y, and returned a wrong lambda_1."""
    torch.manual_seed(0)
    model = nn.Linear(3, 3).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64)

    def mse(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    config = StepSpectrumConfig(lr=0.5)
    one = rds_sharpness(model, mse, [(x, y)], config)
    assert one.num_batches == 1
    with pytest.raises(
        SharpdimError, match=r"^batches is a tuple of tensors: one \(x, y\) batch or"
    ):
        rds_sharpness(model, mse, (x, y), config)
    with pytest.raises(SharpdimError, match=r"^config must be a StepSpectrumConfig, got NoneType"):
        rds_sharpness(model, mse, [(x, y)], None)  # type: ignore[arg-type]
    with pytest.raises(SharpdimError, match=r"^model must be a torch.nn.Module, got NoneType"):
        rds_sharpness(None, mse, [(x, y)], config)  # type: ignore[arg-type]
    with pytest.raises(
        SharpdimError, match=r"^`exponents` must be real numbers .* got torch.complex64"
    ):
        rds_exponents(torch.tensor([[0.5 + 3j, -1 + 0j]]))
