"""sharpness_dimension: exact SD against a brute-force reference, Adam, bad input."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.params import get_flat_params
from sharpdim.dimension.sharpness_dimension import SDResult, sharpness_dimension
from sharpdim.errors import SharpdimError, TooLargeError
from tests.dynamics.real_optim import in_parameter_units, real_step_jacobian


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _setup(n: int = 40) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return model, (x, torch.randint(0, 3, (n,), generator=gen))


def _brute_force_sd(
    model: nn.Module,
    data: tuple,
    lr: float,
    optimizer: str,
    num_batches: int,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    loss_fn: object = None,
) -> float:
    """Jacobian of the real torch.optim step by autograd, SVD per batch, mean of sorted logs, Def. 4.2."""
    gen = torch.Generator().manual_seed(seed)
    n = data[0].shape[0]
    w = get_flat_params(list(model.parameters()))
    x = torch.cat([w] + [torch.zeros_like(w)] * (0 if optimizer == "sgd" else 1))
    rows = []
    for _ in range(num_batches):  # the same draws as sharpness_dimension
        idx = torch.randperm(n, generator=gen)[:batch_size]
        batch = (data[0][idx], data[1][idx])
        jac = real_step_jacobian(
            model, loss_fn or _ce, batch, optimizer, x, lr=lr, momentum=momentum
        )
        assert jac.shape == (x.numel(), x.numel())
        if optimizer != "sgd":  # the package's coordinates: (w, lr v), the last step
            jac = in_parameter_units(jac, w.numel(), lr)
        sigma = torch.linalg.svdvals(jac)
        rows.append(torch.sort(torch.log(sigma + 1e-12), descending=True).values)
    lam = torch.stack(rows).mean(0)
    # Def. 4.2 written out independently of kaplan_yorke_dimension
    if float(lam[0]) < 0:
        return 0.0
    partial = torch.cumsum(lam, 0)
    j = int((partial >= 0).sum())  # partial sums of a descending vector: non-negative first
    if j == lam.numel():
        return float(j)
    return j + float(partial[j - 1]) / abs(float(lam[j]))


@pytest.mark.parametrize(
    ("optimizer", "lr"),
    [("sgd", 0.5), ("sgd", 3.0), ("momentum", 1.0), ("momentum", 4.0), ("nesterov", 2.0)],
)
def test_exact_sd_equals_brute_force(optimizer: str, lr: float) -> None:
    model, data = _setup()
    r = sharpness_dimension(
        model,
        _ce,
        data,
        lr,
        optimizer=optimizer,
        num_batches=5,
        batch_size=8,
        generator=torch.Generator().manual_seed(7),
        num_bootstrap=20,
        **({} if optimizer == "sgd" else {"momentum": 0.6}),
    )
    ref = _brute_force_sd(model, data, lr, optimizer, 5, 8, 7, momentum=0.6)
    assert r.sd == pytest.approx(ref, abs=1e-8)
    assert r.num_params == 38 and r.num_exponents == 38 * (1 if optimizer == "sgd" else 2)
    assert 0 <= r.sd <= r.num_exponents
    assert r.exponents.shape == (r.num_exponents,) and r.exponent_weight == 1.0
    assert r.lambda_1 == pytest.approx(float(r.exponents[0]))
    # sigma > 1 beyond round-off: not the flat softmax directions (exponent ln(1 + 1e-12))
    assert r.num_expanding == float((r.exponents > 1e-9).sum())
    if optimizer == "sgd":  # (with momentum, alpha = 0 gives sigma = 1 and mu: none at 1 + eps)
        assert r.num_expanding < float((r.exponents > 0).sum())


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * ((model(batch[0]) - batch[1]) ** 2).sum(1).mean()


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_exact_sd_equals_brute_force_near_a_minimum(optimizer: str) -> None:
    # a trained regression net: strongly contracting directions, SD well inside (0, n)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(48, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, :2]) + 0.1 * torch.randn(48, 2, generator=gen, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(300):
        opt.zero_grad()
        _mse(model, (x, y)).backward()
        opt.step()
    lr = 1.8 / float(torch.linalg.eigvalsh(dense_hessian(model, _mse, (x, y)))[-1])
    kw = {"optimizer": optimizer, "num_batches": 6, "batch_size": 12}
    kw.update({} if optimizer == "sgd" else {"momentum": 0.3})
    r = sharpness_dimension(
        model, _mse, (x, y), lr, generator=torch.Generator().manual_seed(4), num_bootstrap=0, **kw
    )
    ref = _brute_force_sd(model, (x, y), lr, optimizer, 6, 12, 4, momentum=0.3, loss_fn=_mse)
    assert 1 < ref < 0.9 * r.num_exponents
    assert r.sd == pytest.approx(ref, abs=1e-8)


def test_result_fields_bootstrap_and_determinism() -> None:
    model, data = _setup()
    kw = {"num_batches": 6, "batch_size": 10, "num_bootstrap": 50}
    a = sharpness_dimension(model, _ce, data, 2.0, generator=torch.Generator().manual_seed(3), **kw)
    b = sharpness_dimension(model, _ce, data, 2.0, generator=torch.Generator().manual_seed(3), **kw)
    assert isinstance(a, SDResult)
    assert a.sd == b.sd and a.ci_low == b.ci_low and a.ci_high == b.ci_high
    assert a.ci_low <= a.ci_high and a.confidence == 0.95
    assert a.method == "exact" and a.optimizer == "sgd" and a.lr == 2.0
    assert a.settings["num_batches"] == 6 and a.settings["batch_size"] == 10
    assert a.wall_time_s > 0
    d = json.loads(json.dumps(a.to_dict()))
    assert d["sd"] == a.sd and len(d["exponents"]) == a.num_exponents
    no_boot = sharpness_dimension(
        model, _ce, data, 2.0, num_batches=2, batch_size=5, num_bootstrap=0
    )
    assert no_boot.to_dict()["ci_low"] is None


def test_sd_is_zero_below_stability_on_a_convex_loss() -> None:
    # least squares with a full-rank design: H = 2 X^T X / n > 0, all exponents < 0 for small lr
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 2, bias=False).double()

    def mse(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    small = sharpness_dimension(
        model, mse, (x, y), 1e-2, num_batches=3, batch_size=20, num_bootstrap=0
    )
    assert small.sd == 0.0 and small.lambda_1 < 0 and small.num_expanding == 0
    big = sharpness_dimension(
        model, mse, (x, y), 5.0, num_batches=3, batch_size=20, num_bootstrap=0
    )
    assert big.sd > 0 and big.lambda_1 > 0


def test_negative_curvature_expands_at_any_learning_rate() -> None:
    model, data = _setup()  # a tanh network at initialisation: H_B has negative eigenvalues
    r = sharpness_dimension(model, _ce, data, 1e-3, num_batches=2, batch_size=10, num_bootstrap=0)
    assert r.lambda_1 > 0 and r.sd > 0


def test_adam_with_given_and_estimated_preconditioner() -> None:
    model, data = _setup()
    p = torch.full((38,), 0.5, dtype=torch.float64)
    adam = sharpness_dimension(
        model,
        _ce,
        data,
        0.2,
        optimizer="adam",
        preconditioner=p,
        betas=(0.9, 0.999),
        num_batches=3,
        batch_size=10,
        num_bootstrap=0,
        generator=torch.Generator().manual_seed(0),
    )
    # P = 0.5 I: Adam's frozen blocks are heavy ball blocks with lr' = 2 lr (1 - b1), mu = b1,
    # and A = 2 H; in (w, m) coordinates the m-scale differs from heavy ball's v by 1 - b1.
    assert adam.num_exponents == 76 and 0 <= adam.sd <= 76
    est = sharpness_dimension(
        model, _ce, data, 0.2, optimizer="adamw", num_batches=3, batch_size=10, num_bootstrap=0
    )
    assert est.settings["preconditioner"].startswith("estimated") and 0 <= est.sd <= 76
    # the estimate's batches change an SLQ result too, so they are recorded whatever the method
    slq = sharpness_dimension(
        model, _ce, data, 0.2, optimizer="adamw", num_batches=4, batch_size=10, num_bootstrap=0,
        method="slq", num_runs=2, num_steps=5,
    )  # fmt: skip
    assert est.settings["preconditioner_batches"] == 3
    assert slq.settings["preconditioner_batches"] == 4 and "num_batches" not in slq.settings
    assert "preconditioner_batches" not in adam.settings  # (given, not estimated)


def _mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * (model(batch[0]) - batch[1]).square().sum(1).mean()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_estimated_preconditioner_equals_hand_built_one(optimizer: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 1, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    wd, nb, bs = 0.5, 4, 10
    # torch.optim.Adam(weight_decay=wd) feeds g + wd w to its second moment; AdamW feeds g
    coupled = wd if optimizer == "adam" else 0.0
    gen = torch.Generator().manual_seed(0)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sq = torch.zeros_like(w)
    for _ in range(nb):  # the batches sharpness_dimension draws first
        idx = torch.randperm(40, generator=gen)[:bs]
        grads = torch.autograd.grad(_mse(model, (x[idx], y[idx])), list(model.parameters()))
        sq += (torch.cat([g.reshape(-1) for g in grads]) + coupled * w) ** 2
    p_hand = (sq / nb).sqrt() + 1e-8
    kwargs = {"optimizer": optimizer, "weight_decay": wd, "num_batches": nb, "batch_size": bs}
    est = sharpness_dimension(
        model,
        _mse,
        (x, y),
        0.01,
        num_bootstrap=0,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    given = sharpness_dimension(
        model,
        _mse,
        (x, y),
        0.01,
        num_bootstrap=0,
        generator=gen,
        preconditioner=p_hand,
        **kwargs,
    )
    torch.testing.assert_close(est.exponents, given.exponents, rtol=1e-10, atol=1e-12)
    assert est.sd == pytest.approx(given.sd, rel=1e-10)
    assert ("weight_decay w" in est.settings["preconditioner"]) == (optimizer == "adam")


def test_iterates_option() -> None:
    model, data = _setup()
    w = get_flat_params(list(model.parameters()))
    one = sharpness_dimension(
        model, _ce, data, 3.0, num_batches=3, batch_size=10, num_bootstrap=0, iterates=[w]
    )
    base = sharpness_dimension(model, _ce, data, 3.0, num_batches=3, batch_size=10, num_bootstrap=0)
    assert one.sd == base.sd
    two = sharpness_dimension(
        model, _ce, data, 3.0, num_batches=3, batch_size=10, num_bootstrap=0, iterates=[w, w + 0.2]
    )
    assert (two.exponents >= base.exponents - 1e-12).all()  # a max over more iterates
    assert two.settings["num_iterates"] == 2


def test_bad_input() -> None:
    model, data = _setup()
    with pytest.raises(SharpdimError, match="lr"):
        sharpness_dimension(model, _ce, data, 0.0)
    for not_a_module in (model.forward, None, [model]):  # (a raw AttributeError before)
        with pytest.raises(SharpdimError, match=r"^model must be a torch.nn.Module, got"):
            sharpness_dimension(not_a_module, _ce, data, 0.1)
    with pytest.raises(SharpdimError, match="lr"):
        sharpness_dimension(model, _ce, data, -0.1)
    with pytest.raises(SharpdimError, match="empty"):
        sharpness_dimension(model, _ce, (data[0][:0], data[1][:0]), 0.1)
    with pytest.raises(SharpdimError, match="tuple"):
        sharpness_dimension(model, _ce, (), 0.1)
    with pytest.raises(SharpdimError, match="batch_size"):
        sharpness_dimension(model, _ce, data, 0.1, batch_size=41)
    with pytest.raises(SharpdimError, match="unknown method"):
        sharpness_dimension(model, _ce, data, 0.1, method="lanczos")
    with pytest.raises(SharpdimError, match="unknown optimizer"):
        sharpness_dimension(model, _ce, data, 0.1, optimizer="rmsprop")
    with pytest.raises(SharpdimError, match="lengths"):
        sharpness_dimension(model, _ce, (data[0], data[1][:5]), 0.1)
    with pytest.raises(SharpdimError, match="iterates"):
        sharpness_dimension(
            model, _ce, data, 0.1, method="slq", batch_size=10, iterates=[torch.zeros(38)]
        )
    with pytest.raises(TooLargeError, match="'slq', 'kde' or 'ps'"):
        sharpness_dimension(model, _ce, data, 0.1, batch_size=10, max_params=20)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "slq", "estimator_options": {"bandwidth": 0.1}}, "bandwidth.*num_bins"),
        ({"method": "ps", "estimator_options": {"foo": 1}}, "foo.*num_quantiles"),
        ({"method": "kde", "estimator_options": {"num_bins": 10}}, "num_bins.*bandwidth"),
        ({"estimator_options": {"num_bins": 10}}, "no effect with method='exact'"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"lr": True}, "lr must be"),
        ({"lr": "0.1"}, "lr must be"),
        ({"lr": float("inf")}, "lr must be"),
        ({"lr": np.float32(-0.1)}, "lr must be"),
        ({"lr": torch.tensor(0.0)}, "lr must be"),
        ({"lr": torch.tensor([0.1])}, "lr must be"),
        ({"optimizer": "adam", "preconditioner": ["a"] * 38}, "preconditioner"),
        ({"optimizer": "adam", "preconditioner": [1.0] * 37}, "shape"),
        ({"iterates": [["a"] * 38]}, "iterate"),
        ({"iterates": [[0.0] * 37]}, "shape"),
        ({"num_batches": 2.5}, "num_batches must be an integer >= 1"),
        ({"num_batches": "3"}, "num_batches must be an integer >= 1"),
        ({"num_batches": True}, "num_batches must be an integer >= 1"),
        ({"method": "slq", "num_runs": 2.5}, "num_runs must be an integer >= 1"),
        ({"method": "slq", "num_steps": False}, "num_steps must be an integer >= 1"),
        ({"num_bootstrap": 2.5}, "num_bootstrap must be an integer >= 0"),
        ({"num_bootstrap": "10"}, "num_bootstrap must be an integer >= 0"),
        ({"confidence": "0.9"}, r"confidence must be a finite number in \(0, 1\)"),
        ({"confidence": float("nan")}, r"confidence must be a finite number in \(0, 1\)"),
        ({"generator": 123}, "generator must be a torch.Generator, got int"),
        ({"max_params": "100"}, "max_params must be an integer"),
        ({"method": "slq", "estimator_options": "num_bins"}, "estimator_options must be a dict"),
        ({"method": "slq", "estimator_options": {"num_bins": 2.5}}, "num_bins must be an integer"),
        ({"method": "slq", "estimator_options": {"num_bins": "10"}}, "num_bins must be an integer"),
        ({"method": "kde", "estimator_options": {"bandwidth": "a"}}, "bandwidth must be a finite"),
        ({"method": "kde", "estimator_options": {"grid_size": 2.5}}, "grid_size must be an int"),
        (
            {"method": "kde", "estimator_options": {"max_grid": 3}},
            "max_grid must be an int.* >= 64",
        ),
        ({"method": "ps", "estimator_options": {"num_quantiles": 2.5}}, "num_quantiles must be"),
        ({"method": "ps", "estimator_options": {"num_quantiles": True}}, "num_quantiles must be"),
        ({"eps": "x"}, "eps must be a finite number >= 0"),
        ({"eps": float("nan")}, "eps must be a finite number >= 0"),
        ({"eps": float("inf")}, "eps must be a finite number >= 0"),
        ({"weight_decay": "x"}, "weight_decay must be a finite number >= 0"),
        (
            {"optimizer": "momentum", "momentum": "x"},
            r"momentum must be a finite number in \[0, 1\)",
        ),
        ({"optimizer": "adam", "betas": (0.9,)}, r"betas must be a pair \(b1, b2\)"),
        ({"optimizer": "adam", "betas": 0.9}, r"betas must be a pair \(b1, b2\)"),
        ({"optimizer": "adam", "betas": ("a", 0.9)}, r"betas must be a finite number in \[0, 1\)"),
        ({"optimizer": "adam", "adam_eps": True}, "adam_eps must be a finite number >= 0"),
        ({"optimizer": "adam", "step": 2.5}, "step must be an integer >= 1.*Adam's step count"),
        ({"optimizer": "adam", "step": True}, "step must be an integer >= 1.*Adam's step count"),
        ({"preconditioner": torch.ones(38)}, "optimizer='sgd' does not use it"),
        ({"optimizer": "momentum", "momentum": 0.0}, "momentum 0 is plain SGD.*optimizer='sgd'"),
        ({"optimizer": "nesterov", "momentum": 0.0}, "momentum 0 is plain SGD.*optimizer='sgd'"),
        ({"optimizer": "adam", "betas": (0.0, 0.999), "eps": 0.0}, "exactly 0.*pass eps > 0"),
        (
            {"method": "slq", "optimizer": "adam", "betas": (0.0, 0.999), "eps": 0.0},
            "exactly 0.*pass eps > 0",
        ),
        ({"optimizer": "momentum", "preconditioner": [1.0] * 38}, "'momentum' does not use it"),
        ({"num_bootstrap": 1}, r"^num_bootstrap=1 gives no interval"),  # was [22.44, 22.44]
    ],
)
def test_bad_input_is_a_one_line_error(kwargs: dict, match: str) -> None:
    model, data = _setup()
    args = {"lr": 0.1, "batch_size": 10, "num_batches": 2, "num_runs": 2, "num_steps": 3}
    args.update({"num_bootstrap": 0, **kwargs})
    with pytest.raises(SharpdimError, match=match) as err:
        sharpness_dimension(model, _ce, data, **args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("lr", [np.float32(0.5), torch.tensor(0.5), np.int64(2), torch.tensor(2)])
def test_lr_accepts_numpy_and_tensor_scalars(lr: object) -> None:
    model, data = _setup()
    kwargs = {"batch_size": 10, "num_batches": 2, "num_bootstrap": 0}
    r = sharpness_dimension(model, _ce, data, lr, **kwargs)  # type: ignore[arg-type]
    ref = sharpness_dimension(model, _ce, data, float(lr), **kwargs)  # type: ignore[arg-type]
    assert r.lr == ref.lr == float(lr) and r.sd == ref.sd


@pytest.mark.parametrize("method", ["exact", "slq"])
def test_list_preconditioner_equals_tensor(method: str) -> None:
    model, data = _setup()
    p = torch.linspace(0.5, 2.0, 38, dtype=torch.float64)
    kwargs = {"optimizer": "adam", "batch_size": 10, "num_batches": 2, "num_bootstrap": 0}
    kwargs.update(method=method, num_runs=3, num_steps=5)
    ref = sharpness_dimension(model, _ce, data, 0.2, preconditioner=p, **kwargs)
    r = sharpness_dimension(model, _ce, data, 0.2, preconditioner=p.tolist(), **kwargs)
    assert r.sd == ref.sd
    torch.testing.assert_close(r.exponents, ref.exponents, rtol=0, atol=0)


def test_list_iterates_equal_tensors() -> None:
    model, data = _setup()
    w = get_flat_params(list(model.parameters()))
    kwargs = {"batch_size": 10, "num_batches": 2, "num_bootstrap": 0}
    ref = sharpness_dimension(model, _ce, data, 3.0, iterates=[w, w + 0.2], **kwargs)
    r = sharpness_dimension(
        model, _ce, data, 3.0, iterates=[w.tolist(), (w + 0.2).tolist()], **kwargs
    )
    assert r.sd == ref.sd and r.settings["num_iterates"] == 2
    torch.testing.assert_close(r.exponents, ref.exponents, rtol=0, atol=0)
    assert torch.equal(get_flat_params(list(model.parameters())), w)  # restored


def test_bootstrap_ci_collapses_when_every_batch_is_the_same() -> None:
    model, data = _setup()
    r = sharpness_dimension(model, _ce, data, 3.0, num_batches=4, batch_size=40, num_bootstrap=30)
    assert r.ci_low == pytest.approx(r.sd, abs=1e-12)
    assert r.ci_high == pytest.approx(r.sd, abs=1e-12)


def test_bootstrap_ci_brackets_sd_and_shrinks_with_more_batches() -> None:
    model, data = _setup()

    def width(num_batches: int) -> float:
        r = sharpness_dimension(
            model,
            _ce,
            data,
            3.0,
            num_batches=num_batches,
            batch_size=6,
            num_bootstrap=200,
            confidence=0.9,
            generator=torch.Generator().manual_seed(11),
        )
        assert r.ci_low < r.sd < r.ci_high
        assert r.num_bootstrap == 200 and r.confidence == 0.9
        return r.ci_high - r.ci_low

    # a percentile bootstrap of a mean-like statistic: width ~ 1/sqrt(num_batches)
    assert width(64) < 0.7 * width(8)


def _norm_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    return model.weight.norm()  # finite (0) at w = 0, its Hessian is NaN there


@pytest.mark.parametrize("method", ["exact", "slq", "kde", "ps"])
def test_non_finite_curvature_with_a_finite_loss_is_a_clear_error(method: str) -> None:
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    data = (torch.randn(10, 3, dtype=torch.float64), torch.zeros(10, dtype=torch.float64))
    kwargs = {"num_batches": 2, "batch_size": 5, "num_runs": 3, "num_steps": 2}
    with pytest.raises(SharpdimError, match="NaN or inf: second derivatives") as err:
        sharpness_dimension(model, _norm_loss, data, 0.5, method=method, **kwargs)
    assert "\n" not in str(err.value)


def test_sd_and_its_interval_never_exceed_the_number_of_exponents() -> None:
    model, data = _setup()  # lr = 1000: every direction expands, SD = d = 38
    r = sharpness_dimension(
        model, _ce, data, 1e3, method="kde", batch_size=10, num_runs=5, num_steps=5, num_bootstrap=5
    )
    assert r.sd == r.num_exponents == 38  # the pooled mass sums to 38 + 1 ulp
    assert r.ci_low == r.ci_high == 38


def test_given_preconditioner_is_recorded_and_to_dict_has_sd_fraction() -> None:
    model, data = _setup()
    p = torch.full((38,), 0.5, dtype=torch.float64)
    kw = {"optimizer": "adam", "num_batches": 2, "batch_size": 10, "num_bootstrap": 0}
    r = sharpness_dimension(model, _ce, data, 0.2, preconditioner=p, **kw)
    assert r.settings["preconditioner"] == "given"
    d = json.loads(json.dumps(r.to_dict()))
    assert d["settings"]["preconditioner"] == "given"
    assert d["sd_fraction"] == r.sd / 76 == r.sd_fraction


@pytest.mark.parametrize("loss_fn", [None, "cross_entropy"])
def test_loss_fn_must_be_callable(loss_fn: object) -> None:
    model, data = _setup()
    with pytest.raises(SharpdimError, match=r"loss_fn must be callable .*got") as err:
        sharpness_dimension(model, loss_fn, data, 0.1, batch_size=10)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["exact", "slq"])
def test_train_mode_dropout_follows_the_generator_and_leaves_the_global_rng(method: str) -> None:
    """Dropout masks come from a fork of the global RNG seeded from the generator: two calls
    with equal generators agree, the caller's random stream is not advanced, and a different
    generator draws other masks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    data = (x, torch.randint(0, 3, (30,), generator=gen))
    opts = {"method": method, "num_batches": 3, "num_runs": 3, "num_steps": 20, "batch_size": 10}

    def sd(seed: int) -> SDResult:
        g = torch.Generator().manual_seed(seed)
        return sharpness_dimension(model, _ce, data, 0.5, generator=g, mode="train", **opts)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again, other = sd(0), sd(0), sd(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert first.sd == again.sd and torch.equal(first.exponents, again.exponents)
    assert not torch.equal(first.exponents, other.exponents)
    # thirty copies of one example: only the masks can differ between generators (the exact
    # method's were those of seed 0 whatever the generator)
    data = (x[:1].repeat(30, 1), data[1][:1].repeat(30))
    assert (sd(0).exponents - sd(1).exponents).abs().max() > 1e-3


class _Quadratic(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(5, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["exact", "ps"])
def test_flat_and_threshold_directions_are_not_expanding(dtype: torch.dtype, method: str) -> None:
    """H = diag(10, 8, 2, 0, 0) at eta = 0.25 (2/eta = 8): only alpha = 10 expands (DESIGN:
    alpha > 2/eta or alpha < 0); sigma = 1 at alpha = 0 and 8 was counted (4 instead of 1)."""
    curv = torch.tensor([10.0, 8.0, 2.0, 0.0, 0.0], dtype=dtype)

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return 0.5 * (curv * m.w**2).sum() + 0 * b[0].sum()

    data = (torch.zeros(4, 1, dtype=dtype), torch.zeros(4, dtype=dtype))
    r = sharpness_dimension(
        _Quadratic(dtype),
        loss_fn,
        data,
        0.25,
        method=method,
        batch_size=4,
        num_batches=2,
        num_runs=4,
        num_steps=5,
        num_bootstrap=0,
    )
    tol = 1e-9 if dtype == torch.float64 else 1e-6  # (SLQ weights in float32)
    assert r.num_expanding == pytest.approx(1.0, abs=tol)
    # Def. 4.2 itself is unchanged: ln 1.5 + 3 ln(1 + 1e-12) over |ln 0.5|
    assert r.sd == pytest.approx(4 + (np.log(1.5) + 3e-12) / np.log(2), abs=tol)


@pytest.mark.parametrize(
    ("method", "counts"), [("exact", {"num_batches": 1}), ("ps", {"num_runs": 1})]
)
def test_one_batch_or_run_gives_no_interval(method: str, counts: dict) -> None:
    """Resampling a single batch gave the zero-width 'interval' [SD, SD]."""
    model, data = _setup()
    r = sharpness_dimension(
        model, _ce, data, 3.0, method=method, batch_size=8, num_steps=10, **counts
    )
    assert r.num_bootstrap == 0 and np.isnan(r.ci_low) and np.isnan(r.ci_high)
    assert np.isnan(r.lambda_1_stderr) and 0 < r.sd <= r.num_exponents


def test_float32_data_with_a_float64_model_is_cast() -> None:
    """float32 data and a float64 model raised 'expected m1 and m2 to have the same dtype'."""
    model, (x, y) = _setup()
    kwargs = {"num_batches": 2, "batch_size": 8, "num_bootstrap": 0}
    as64 = sharpness_dimension(model, _ce, (x, y), 3.0, **kwargs)
    as32 = sharpness_dimension(model, _ce, (x.float(), y), 3.0, **kwargs)
    assert as32.sd == pytest.approx(as64.sd, rel=1e-5)


def test_repeating_an_iterate_in_train_mode_changes_nothing() -> None:
    """Each (iterate, batch) drew fresh dropout masks, so the max over iterates was also a max
    over independent masks: iterates=[w, w] raised lambda_1 from 0.84 to 0.91. Def. 4.1 fixes
    the sampled map (batch and masks) and takes the sup over the attractor only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(5)
    data = (torch.randn(30, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (30,)))
    w = get_flat_params(list(model.parameters()))
    opts = {"num_batches": 3, "batch_size": 10, "num_bootstrap": 0, "mode": "train"}
    one = sharpness_dimension(model, _ce, data, 0.5, iterates=[w], **opts)
    two = sharpness_dimension(model, _ce, data, 0.5, iterates=[w, w.clone()], **opts)
    assert torch.equal(one.exponents, two.exponents) and one.sd == two.sd


@pytest.mark.parametrize("iterates", [5, (t for t in [])])
def test_iterates_of_the_wrong_type_are_a_one_line_error(iterates: object) -> None:
    model, data = _setup()
    with pytest.raises(SharpdimError, match=r"^iterates must be a list of flat parameter"):
        sharpness_dimension(model, _ce, data, 3.0, num_batches=2, batch_size=8, iterates=iterates)


class _ScaledQuadratic(nn.Module):
    """``L = c/2 sum h_i (w_i / s)^2`` at ``w = s w0``: the worked example's quadratic with the
    loss scaled by ``c`` and the parameters by ``s``."""

    def __init__(self, c: float, s: float) -> None:
        super().__init__()
        self.c, self.s = c, s
        self.w = nn.Parameter(s * torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))

    def loss(self, batch: object) -> torch.Tensor:
        h = torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
        return 0.5 * self.c * (h * (self.w / self.s) ** 2).sum()


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_sd_does_not_depend_on_the_loss_or_parameter_units(optimizer: str) -> None:
    """Loss x c with lr / c (SGD-type) or parameters x s with lr x s (Adam) give bit-identical
    torch.optim iterates; with torch's buffer as the second state the heavy-ball SD of this
    quadratic was 4.84 / 5.49 / 5.08 at c = 1 / 10 / 0.1."""
    data = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    sds = []
    for k in (1.0, 10.0, 0.1):
        adam = optimizer == "adam"
        model = _ScaledQuadratic(c=1.0 if adam else k, s=k if adam else 1.0)
        extra = (
            {"preconditioner": torch.tensor([2.0, 0.5, 1.0]) / k, "step": 5}
            if adam
            else {"momentum": 0.5}
        )
        r = sharpness_dimension(
            model,
            lambda m, b: m.loss(b),
            data,
            0.02 * k if adam else 0.9 / k,
            optimizer=optimizer,
            batch_size=2,
            num_batches=1,
            **extra,
        )
        sds.append(r.sd)
    assert sds == pytest.approx([sds[0]] * 3, rel=1e-12) and 0 < sds[0] < 6


def test_a_lower_confidence_gives_a_nested_narrower_interval() -> None:
    """Percentile intervals of one bootstrap: the 50% one lies strictly inside the 95% one."""

    def interval(confidence: float) -> tuple[float, float]:
        model, data = _setup()
        r = sharpness_dimension(
            model, _ce, data, 3.0, num_batches=6, batch_size=8, num_bootstrap=200,
            confidence=confidence, generator=torch.Generator().manual_seed(7),
        )  # fmt: skip
        return r.ci_low, r.ci_high

    narrow, wide = interval(0.5), interval(0.95)
    assert wide[0] < narrow[0] < narrow[1] < wide[1], (narrow, wide)


def test_sd_ps_with_full_lanczos_has_the_exact_lambda_1_and_its_stderr() -> None:
    """With num_runs = num_batches and one seed, SD-PS draws the exact SD's minibatches, and
    num_steps = d (38) Lanczos steps give each Hessian's exact Ritz values: the same lambda_1
    and standard error over runs, and a quantile measure of nearly the same exponents."""
    model, data = _setup()
    common = dict(batch_size=8, num_bootstrap=0)
    exact = sharpness_dimension(
        model, _ce, data, 3.0, num_batches=6, generator=torch.Generator().manual_seed(7),
        **common,
    )  # fmt: skip
    ps = sharpness_dimension(
        model, _ce, data, 3.0, method="ps", num_runs=6, num_steps=38,
        generator=torch.Generator().manual_seed(7), **common,
    )  # fmt: skip
    assert ps.lambda_1 == pytest.approx(exact.lambda_1, rel=1e-9)
    assert ps.lambda_1_stderr == pytest.approx(exact.lambda_1_stderr, rel=1e-9)
    assert abs(float(ps.exponents.sum() - exact.exponents.sum())) < 0.5


def test_adam_eps_zero_with_a_dead_unit_names_the_cause() -> None:
    """With adam_eps=0, a parameter whose gradient is 0 on every batch makes the estimated
    preconditioner 0; the error told the user to pass a preconditioner they never passed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        model[0].bias[0] = -100.0  # unit 0 never fires: its weights get no gradient
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))

    def ce(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    kwargs = {"optimizer": "adam", "batch_size": 8, "num_batches": 2}
    with pytest.raises(
        SharpdimError, match=r"preconditioner is 0 for \d+ parameter\(s\) with zero"
    ):
        sharpness_dimension(model, ce, (x, y), 0.01, adam_eps=0.0, **kwargs)
    assert sharpness_dimension(model, ce, (x, y), 0.01, adam_eps=1e-8, **kwargs).sd >= 0


def test_a_nan_gradient_is_not_reported_as_a_zero_preconditioner() -> None:
    """``P > 0`` is False for NaN too: a loss with sqrt(|b|^2) at b = 0 (NaN gradient) was
    told about zero gradients and adam_eps=0 it had not passed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].bias.zero_()

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        penalty = (m[0].bias ** 2).sum().sqrt()  # not differentiable at 0
        return nn.functional.cross_entropy(m(b[0]), b[1]) + penalty

    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    with pytest.raises(SharpdimError) as caught:
        sharpness_dimension(model, loss_fn, (x, y), 0.01, optimizer="adam", batch_size=8)
    assert "preconditioner is 0" not in str(caught.value)
    assert "not finite" in str(caught.value)


@pytest.mark.parametrize(
    ("optimizer", "given", "users"),
    [
        ("sgd", {"momentum": 0.9}, "'momentum' or 'nesterov'"),
        ("adam", {"momentum": 0.5}, "'momentum' or 'nesterov'"),
        ("sgd", {"betas": (0.5, 0.6)}, "'adam' or 'adamw'"),
        ("momentum", {"adam_eps": 1e-6}, "'adam' or 'adamw'"),
        ("nesterov", {"step": 3}, "'adam' or 'adamw'"),
    ],
)
def test_a_hyperparameter_the_optimizer_does_not_use_is_refused(
    optimizer: str, given: dict, users: str
) -> None:
    """optimizer='sgd' with momentum=0.9 gave the GD SD without a word (and recorded no
    momentum): a hyperparameter the step does not use is refused, not ignored."""
    model, data = _setup()
    ((name, value),) = given.items()
    with pytest.raises(SharpdimError) as err:
        sharpness_dimension(model, _ce, data, 0.5, optimizer=optimizer, batch_size=8, **given)
    assert str(err.value) == (
        f"{name}={value!r} is not used by optimizer={optimizer!r} and would be ignored: drop it, "
        f"or pass optimizer={users}"
    )


@pytest.mark.parametrize(("alias", "name"), [("gd", "sgd"), ("heavy_ball", "momentum")])
def test_the_training_side_optimizer_names_are_accepted(alias: str, name: str) -> None:
    """make_optimizer, TrainConfig and EoSRecord.optimizer say "gd" and "heavy_ball";
    sharpness_dimension refused them ('unknown optimizer')."""
    model, data = _setup()
    options = {"batch_size": 10, "num_batches": 2, "num_bootstrap": 0}
    got = sharpness_dimension(model, _ce, data, 0.3, optimizer=alias, **options)
    want = sharpness_dimension(model, _ce, data, 0.3, optimizer=name, **options)
    assert got.sd == want.sd and got.lambda_1 == want.lambda_1


def test_torch_functional_losses_are_refused_in_one_line() -> None:
    """F.cross_entropy takes (output, target): a TypeError from inside torch ('argument
    'input' must be Tensor, not Sequential')."""
    model, data = _setup()
    with pytest.raises(SharpdimError, match=r"^loss_fn is F.cross_entropy, which takes"):
        sharpness_dimension(model, nn.functional.cross_entropy, data, 0.1)
    smoothed = functools.partial(nn.functional.cross_entropy, label_smoothing=0.1)
    for wrapped, named in (
        (smoothed, "F.cross_entropy"),  # (a partial has no __name__: it passed the check)
        (torch.binary_cross_entropy_with_logits, "torch.binary_cross_entropy_with_logits"),
        (nn.CrossEntropyLoss().forward, "a CrossEntropyLoss"),
    ):
        with pytest.raises(SharpdimError, match=rf"^loss_fn is {named}, which takes"):
            sharpness_dimension(model, wrapped, data, 0.1)

    @functools.wraps(nn.functional.cross_entropy)  # (a (model, batch) adapter: accepted)
    def adapter(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b[0]), b[1])

    class Smoothed(nn.CrossEntropyLoss):  # (its own (model, batch) method: accepted)
        def on_model(self, m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return self(m(b[0]), b[1])

    options = {"batch_size": 10, "num_batches": 2, "num_bootstrap": 0}
    want = sharpness_dimension(model, _ce, data, 0.1, **options).sd
    for accepted in (adapter, Smoothed().on_model):
        assert sharpness_dimension(model, accepted, data, 0.1, **options).sd == want


def test_sampled_batches_hold_indices_not_copies_of_the_data() -> None:
    """All num_runs minibatches were copied out of the data before the first Lanczos run
    (full batch: num_runs copies of the data); they are now index vectors, each batch copied
    when used, with the same draws of the generator."""
    from sharpdim.dimension.sharpness_dimension import _sample_batches

    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(30)
    batches = _sample_batches((x, y), 25, 30, torch.Generator().manual_seed(7))
    stored = [v for v in vars(batches).values() if isinstance(v, list)]
    assert stored and all(i.dtype == torch.int64 and i.shape == (30,) for i in stored[0])
    g = torch.Generator().manual_seed(7)
    for k in range(25):
        idx = torch.randperm(30, generator=g)
        assert torch.equal(batches[k][0], x[idx]) and torch.equal(batches[k][1], y[idx])
    assert len(batches) == 25 and len(batches[3:6]) == 3
