"""Optimizers: one step equals the hand-written update; thresholds are stability boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpdim.errors import SharpdimError
from sharpdim.training.loop import TrainConfig
from sharpdim.training.optimizers import (
    adam_preconditioner,
    adam_step,
    lr_scaling,
    make_optimizer,
    optimizer_name,
    optimizer_stability_threshold,
    reference_lr,
    stability_threshold,
)

A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]], dtype=torch.float64)
B = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
W0 = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
LR, MU, BETAS, EPS, WD = 0.05, 0.8, (0.9, 0.99), 1e-8, 0.1


def grad(w: torch.Tensor) -> torch.Tensor:
    """Gradient of L(w) = 0.5 w^T A w - b^T w."""
    return A @ w - B


def hand_written(name: str, steps: int) -> torch.Tensor:
    """The update rules written out (PyTorch's conventions), ``steps`` steps from W0."""
    w, v, m, s = W0.clone(), torch.zeros(3, dtype=torch.float64), 0 * W0, 0 * W0
    for t in range(1, steps + 1):
        g = grad(w)
        if name == "gd":
            w = w - LR * (g + WD * w)
        elif name in ("momentum", "nesterov"):
            g = g + WD * w
            v = MU * v + g
            w = w - LR * (g + MU * v if name == "nesterov" else v)
        else:
            if name == "adamw":
                w = w * (1 - LR * WD)
            else:
                g = g + WD * w
            m = BETAS[0] * m + (1 - BETAS[0]) * g
            s = BETAS[1] * s + (1 - BETAS[1]) * g**2
            m_hat, s_hat = m / (1 - BETAS[0] ** t), s / (1 - BETAS[1] ** t)
            w = w - LR * m_hat / (s_hat.sqrt() + EPS)
    return w


def run_torch(name: str, steps: int, optimizer=None):
    w = nn.Parameter(W0.clone())
    opt = (
        optimizer(w)
        if optimizer
        else make_optimizer(name, [w], lr=LR, momentum=MU, betas=BETAS, eps=EPS, weight_decay=WD)
    )
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * w @ A @ w - B @ w).backward()
        opt.step()
    return w.detach(), opt


REFERENCE = {
    "gd": lambda w: torch.optim.SGD([w], lr=LR, weight_decay=WD),
    "momentum": lambda w: torch.optim.SGD([w], lr=LR, momentum=MU, weight_decay=WD),
    "nesterov": lambda w: torch.optim.SGD([w], lr=LR, momentum=MU, weight_decay=WD, nesterov=True),
    "adam": lambda w: torch.optim.Adam([w], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD),
    "adamw": lambda w: torch.optim.AdamW([w], lr=LR, betas=BETAS, eps=EPS, weight_decay=WD),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("steps", [1, 3])
def test_step_equals_hand_written_and_torch_optim(name, steps):
    ours, opt = run_torch(name, steps)
    torch.testing.assert_close(ours, hand_written(name, steps), rtol=1e-12, atol=1e-14)
    reference, _ = run_torch(name, steps, REFERENCE[name])
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    assert optimizer_name(opt) == name


def test_aliases_and_bad_input():
    assert optimizer_name(make_optimizer("sgd", [nn.Parameter(W0)], lr=0.1, momentum=0.9)) == "gd"
    assert optimizer_name(make_optimizer("heavy_ball", [nn.Parameter(W0)], lr=0.1)) == "momentum"
    with pytest.raises(SharpdimError, match="unknown optimizer"):
        make_optimizer("lbfgs", [nn.Parameter(W0)], lr=0.1)
    with pytest.raises(SharpdimError, match="learning rate"):
        make_optimizer("gd", [nn.Parameter(W0)], lr=0.0)
    with pytest.raises(SharpdimError, match="momentum"):
        stability_threshold("momentum", 0.1, momentum=1.0)
    with pytest.raises(SharpdimError, match="no stability threshold"):
        optimizer_name(torch.optim.RMSprop([nn.Parameter(W0)]))


def test_nesterov_needs_a_positive_momentum():
    with pytest.raises(SharpdimError, match=r"^momentum 0.0 must lie in \(0, 1\) for nesterov"):
        TrainConfig(optimizer="nesterov", momentum=0.0)
    with pytest.raises(SharpdimError, match=r"for nesterov"):
        stability_threshold("nesterov", 0.1, momentum=0.0)
    assert TrainConfig(optimizer="momentum", momentum=0.0).momentum == 0.0  # heavy-ball: GD


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("adam", {"eps": -1.0}, r"^eps -1.0 must be >= 0: e.g. 1e-8$"),
        ("adamw", {"eps": float("nan")}, r"^eps nan must be >= 0"),
        ("gd", {"weight_decay": -0.1}, r"^weight_decay -0.1 must be >= 0"),
        ("adam", {"weight_decay": -1e-3}, r"^weight_decay -0.001 must be >= 0"),
    ],
)
def test_negative_eps_and_weight_decay_are_refused(name, options, message):
    with pytest.raises(SharpdimError, match=message):
        make_optimizer(name, [nn.Parameter(W0)], lr=0.1, **options)
    sgd = make_optimizer("gd", [nn.Parameter(W0)], lr=0.1, eps=-1.0)  # eps is Adam's only
    assert isinstance(sgd, torch.optim.SGD)


def test_threshold_values():
    assert stability_threshold("gd", 0.01) == pytest.approx(200.0)
    assert stability_threshold("momentum", 0.01, momentum=0.9) == pytest.approx(380.0)
    assert stability_threshold("nesterov", 0.01, momentum=0.9) == pytest.approx(380.0 / 2.8)
    assert stability_threshold("adam", 1e-3, betas=(0.9, 0.999)) == pytest.approx(38000.0)
    opt = make_optimizer("momentum", [nn.Parameter(W0)], lr=0.1, momentum=0.5)
    assert optimizer_stability_threshold(opt) == ("momentum", pytest.approx(30.0))


def _final_size(name: str, curvature: float, steps: int = 1500) -> float:
    """|w| after running the real optimizer on 0.5 * a * w^2 from w = 1."""
    w = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = make_optimizer(name, [w], lr=0.1, momentum=0.7)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * w.pow(2).sum()).backward()
        opt.step()
    return float(w.detach().abs())


@pytest.mark.parametrize("name", ["gd", "momentum", "nesterov"])
def test_threshold_is_the_stability_boundary_of_the_real_step(name):
    threshold = stability_threshold(name, 0.1, momentum=0.7)
    assert _final_size(name, 0.98 * threshold) < 1e-3
    assert _final_size(name, 1.02 * threshold) > 1e3


def test_adam_threshold_is_the_boundary_with_a_frozen_preconditioner():
    lr, beta1 = 0.01, 0.9
    threshold = stability_threshold("adam", lr, betas=(beta1, 0.999))

    def radius(a: float) -> float:
        # state (m, w): m' = beta1 m + (1 - beta1) a w;  w' = w - lr m'  (P^-1 H = a)
        step = torch.tensor(
            [[beta1, (1 - beta1) * a], [-lr * beta1, 1 - lr * (1 - beta1) * a]], dtype=torch.float64
        )
        return float(torch.linalg.eigvals(step).abs().max())

    assert radius(0.999 * threshold) < 1 < radius(1.001 * threshold)
    assert radius(threshold) == pytest.approx(1.0, abs=1e-12)


def test_adam_preconditioner_reproduces_the_step():
    w, opt = run_torch("adam", 3)
    before = w.clone()
    param = opt.param_groups[0]["params"][0]
    opt.zero_grad()
    (0.5 * param @ A @ param - B @ param).backward()
    opt.step()
    precond = adam_preconditioner(opt)
    m = opt.state[param]["exp_avg"]
    # w_t = w_{t-1} - lr * P_t^-1 m_t (weight decay enters through g and so through m)
    torch.testing.assert_close(param.detach() - before, -LR * m / precond, rtol=1e-12, atol=1e-15)
    assert math.isfinite(float(precond.min())) and float(precond.min()) > 0
    # the SD's pair: P without 1 - beta1^t, and t (4 steps taken)
    beta1 = opt.param_groups[0]["betas"][0]
    assert adam_step(opt) == 4
    torch.testing.assert_close(
        (1 - beta1**4) * adam_preconditioner(opt, bias_correction=False),
        precond,
        rtol=1e-14,
        atol=0,
    )
    fresh = make_optimizer("adam", [nn.Parameter(W0.clone())], lr=0.1)
    with pytest.raises(SharpdimError, match="take at least one step"):
        adam_preconditioner(fresh)
    with pytest.raises(SharpdimError, match="no common step count"):
        adam_step(fresh)
    with pytest.raises(SharpdimError, match="no Adam preconditioner"):
        adam_preconditioner(make_optimizer("gd", [nn.Parameter(W0)], lr=0.1))


def _two_groups(
    name: str, lrs: tuple[float, float], **options
) -> tuple[list, torch.optim.Optimizer]:
    """``W0`` as two parameters (first entry, the rest) in param groups of learning rates ``lrs``."""
    params = [nn.Parameter(W0[:1].clone()), nn.Parameter(W0[1:].clone())]
    opt = make_optimizer(name, params, lr=lrs[0], momentum=0.7)
    opt.param_groups.clear()
    for p, lr in zip(params, lrs, strict=True):
        opt.add_param_group({"params": [p], "lr": lr, **options})
    return params, opt


@pytest.mark.parametrize("name", ["gd", "momentum", "nesterov"])
def test_groups_with_different_lr_scale_the_curvature(name):
    """With lr_i per group the real step is stable iff lambda_max(diag(lr_i / lr) A) < threshold(lr)."""
    params, opt = _two_groups(name, (0.1, 0.4))
    assert reference_lr(opt) == 0.4
    scale = lr_scaling(opt, params)
    assert scale is not None and scale.tolist() == [0.25, 1.0, 1.0]
    name_read, threshold = optimizer_stability_threshold(opt)
    assert name_read == name and threshold == pytest.approx(
        stability_threshold(name, 0.4, momentum=0.7)
    )
    d = scale.sqrt()
    top = float(torch.linalg.eigvalsh(d[:, None] * A * d[None, :])[-1])

    def final_size(curvature_factor: float) -> float:
        with torch.no_grad():
            for p, w in zip(params, (W0[:1], W0[1:]), strict=True):
                p.copy_(w)
        opt.state.clear()
        for _ in range(1500):
            opt.zero_grad()
            w = torch.cat(params)
            (0.5 * curvature_factor * w @ A @ w).backward()
            opt.step()
        return float(torch.cat(params).detach().norm())

    assert final_size(0.98 * threshold / top) < 1e-3
    assert final_size(1.02 * threshold / top) > 1e3


def test_groups_that_differ_only_in_weight_decay_share_the_threshold():
    params, opt = _two_groups("momentum", (0.1, 0.1), momentum=0.5)
    opt.param_groups[1]["weight_decay"] = 0.01
    assert optimizer_stability_threshold(opt) == ("momentum", pytest.approx(30.0))
    assert lr_scaling(opt, params) is None
    unheld = lr_scaling(opt, [*params, nn.Parameter(W0)])  # not moved by this optimizer
    assert unheld is not None and unheld.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("momentum", "momentum", 0.0),
        ("momentum", "nesterov", True),
        ("momentum", "dampening", 0.1),
        ("adam", "betas", (0.8, 0.999)),
    ],
)
def test_groups_that_differ_in_a_threshold_setting_are_refused(name, key, value):
    _, opt = _two_groups(name, (0.1, 0.1))
    opt.param_groups[1][key] = value
    match = "beta1" if key == "betas" else key
    with pytest.raises(SharpdimError, match=rf"^the optimizer's param groups differ in {match}"):
        optimizer_stability_threshold(opt)


def test_settings_that_are_not_numbers_and_params_that_are_not_parameters_are_refused():
    """lr='0.1' (make_optimizer, stability_threshold) and momentum='0.9' raised TypeErrors
    from a comparison, params=None a TypeError from list(); a 0-dim tensor lr gave a tensor
    threshold."""
    params = [nn.Parameter(W0)]
    bad = [
        (lambda: make_optimizer("sgd", params, lr="0.1"), "lr must be a finite number, got '0.1'"),
        (lambda: stability_threshold("gd", "0.1"), "lr must be a finite number, got '0.1'"),
        (lambda: stability_threshold("gd", True), "lr must be a finite number, got True"),
        (
            lambda: stability_threshold("momentum", 0.1, momentum="0.9"),
            "momentum must be a finite number, got '0.9': pass e.g. 0.9",
        ),
        (
            lambda: make_optimizer("adam", params, lr=0.1, eps=None),
            "eps must be a finite number, got None",
        ),
        (
            lambda: make_optimizer("sgd", params, lr=0.1, weight_decay="0"),
            "weight_decay must be a finite number, got '0'",
        ),
        (
            lambda: make_optimizer("sgd", None, lr=0.1),
            "params must be an iterable of parameters, got NoneType: pass e.g. model.parameters()",
        ),
        (
            lambda: make_optimizer("sgd", [], lr=0.1),
            "params must hold parameters (tensors or param-group dicts), got nothing",
        ),
        (
            lambda: make_optimizer("sgd", [None], lr=0.1),
            "params must hold parameters (tensors or param-group dicts), got NoneType",
        ),
    ]
    for call, message in bad:
        with pytest.raises(SharpdimError) as err:
            call()
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    threshold = stability_threshold("gd", torch.tensor(0.5, dtype=torch.float64))
    assert type(threshold) is float and threshold == 4.0
    # momentum is not looked at where it is not used (documented as ignored)
    assert stability_threshold("gd", 0.5, momentum=None) == 4.0


def test_named_parameters_are_taken_as_torch_takes_them() -> None:
    """The params check refused model.named_parameters() ('got tuple'), which torch accepts
    (and records as param_names)."""
    layer = nn.Linear(2, 1)
    optimizer = make_optimizer("sgd", layer.named_parameters(), lr=0.1)
    assert optimizer.param_groups[0]["param_names"] == ["weight", "bias"]
    with pytest.raises(SharpdimError, match=r"^params must hold parameters"):
        make_optimizer("sgd", [("weight", 1.0)], lr=0.1)


def test_a_mix_of_named_and_plain_entries_is_one_line() -> None:
    """Accepting each entry on its own let [w, ('bias', b)] through to torch's ValueError
    ('all optimizer params should be with/without names')."""
    layer = nn.Linear(2, 1)
    for params in (
        [layer.weight, ("bias", layer.bias)],
        [{"params": [layer.weight]}, ("b", layer.bias)],
    ):
        with pytest.raises(SharpdimError, match=r"^params mixes .* entries, which torch refuses"):
            make_optimizer("sgd", params, lr=0.1)


def test_non_leaf_tensors_are_refused_in_one_line():
    """torch raised ValueError("can't optimize a non-leaf Tensor")."""
    model = torch.nn.Linear(3, 2)
    with pytest.raises(SharpdimError, match=r"^params holds a tensor computed from others"):
        make_optimizer("sgd", [p * 2 for p in model.parameters()], lr=0.1)
    named = [(n, p * 2) for n, p in model.named_parameters()]
    with pytest.raises(SharpdimError, match=r"^params holds a tensor computed from others"):
        make_optimizer("adam", named, lr=0.1)


@pytest.mark.parametrize(
    ("name", "group", "message"),
    [
        ("gd", {"lr": -0.1}, r"^learning rate -0.1 must be a finite number > 0"),  # (ascent)
        ("gd", {"momentum": 0.9}, r"^a param group sets momentum=0.9, which gd does not use"),
        ("gd", {"weight_decay": -1.0}, r"^weight_decay -1.0 must be >= 0"),
        ("momentum", {"momentum": 1.5}, r"^momentum 1.5 must lie in \[0, 1\)"),
        ("momentum", {"nesterov": True}, r"^a param group sets nesterov=True, which momentum"),
        ("adam", {"betas": (0.9, 1.5)}, r"^betas must be a finite number in \[0, 1\), got 1.5"),
        ("adam", {"amsgrad": True}, r"^a param group sets amsgrad=True, which adam does not use"),
        ("sgd", {"maximize": True}, r"^a param group sets maximize=True, which sgd does not use"),
    ],
)
def test_param_group_dicts_get_the_checks_of_the_keyword_settings(name, group, message):
    """A group's own settings bypassed every check: lr=-0.1 ran gradient ascent, a momentum in
    a 'gd' group built heavy ball (and its threshold said momentum), betas (0.9, 1.5) failed
    at the first step with a complex-cast RuntimeError."""
    w = nn.Parameter(W0.clone())
    with pytest.raises(SharpdimError, match=message):
        make_optimizer(name, [{"params": [w], **group}], lr=0.1)


def test_param_group_dicts_hold_parameters() -> None:
    w = nn.Parameter(W0.clone())
    for groups, message in [
        ([{"lr": 0.1}], r"^a param group has no 'params' entry \(keys \['lr'\]\)"),
        ([{"params": [w * 2]}], r"^params holds a tensor computed from others"),
        ([{"params": [1, 2]}], r"^params must hold parameters .* got int"),
        ([{"params": []}], r"^every param group is empty"),
        # (raw TypeErrors, or "got str" for a dict, in the first relaxed version)
        ([{"params": None}], r"^params must be an iterable of parameters, got NoneType"),
        ([{"params": 5}], r"^params must be an iterable of parameters, got int"),
        ([{"params": {"w": w}}], r"^params must be an iterable of parameters, got dict"),
        ([{"params": [w], "momentum": np.array([0.9, 0.9])}], r"^a param group sets momentum="),
    ]:
        with pytest.raises(SharpdimError, match=message):
            make_optimizer("gd", groups, lr=0.1)
    # allowed: a generator or one tensor as params, own lr / weight decay / betas
    layer = nn.Linear(2, 1)
    opt = make_optimizer(
        "adam",
        [{"params": layer.parameters(), "lr": 0.5, "betas": (0.8, 0.9)}, {"params": w}],
        lr=0.1,
    )
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[1]["lr"] == 0.1


def test_param_groups_torch_takes_stay_accepted() -> None:
    """The first group checks refused an empty group (a decay / no-decay split on a model
    without biases), a frozen group (lr 0), groups copied from a torch optimizer (they carry
    dampening=0, nesterov=False, maximize=False) and kept a copy of the caller's dict."""
    layer = nn.Linear(3, 2, bias=False)
    extra = nn.Parameter(torch.ones(2))
    empty = make_optimizer("adam", [{"params": layer.parameters()}, {"params": []}], lr=0.1)
    assert [len(g["params"]) for g in empty.param_groups] == [1, 0]
    frozen = make_optimizer(
        "gd", [{"params": [layer.weight], "lr": 0.0}, {"params": [extra]}], lr=0.1
    )
    assert [g["lr"] for g in frozen.param_groups] == [0.0, 0.1]
    copied = torch.optim.SGD([layer.weight], lr=0.1, momentum=0.9).param_groups[0]
    again = make_optimizer("momentum", [dict(copied)], lr=0.1)
    assert again.param_groups[0]["momentum"] == 0.9
    assert make_optimizer("nesterov", [{"params": [extra], "nesterov": True}], lr=0.1)
    mine = {"params": [extra], "lr": 0.3}
    opt = make_optimizer("gd", [mine], lr=0.1)
    assert opt.param_groups[0] is mine
    mine["lr"] = 0.0  # (a schedule written into the caller's dict reaches the optimizer)
    assert opt.param_groups[0]["lr"] == 0.0
