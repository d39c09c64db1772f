"""EoSMonitor: sharpness against dense float64 eigvalsh, thresholds, both kinds of loops."""

import json
import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpdim.curvature.dense import dense_hessian
from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset
from sharpdim.training.loop import TrainConfig, train
from sharpdim.training.losses import mse_loss
from sharpdim.training.models import build_mlp
from sharpdim.training.monitor import EoSMonitor, EoSRecord, upcoming_adam_preconditioner
from sharpdim.training.optimizers import adam_preconditioner, adam_step, optimizer_name

ROOT = Path(__file__).resolve().parents[2]


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


def _model(seed: int = 0) -> torch.nn.Module:
    return build_mlp(3, 2, width=4, depth=1, seed=seed, dtype=torch.float64)


def _top(matrix: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(matrix)[-1])


def test_sharpness_equals_dense_eigvalsh_and_gd_threshold():
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    monitor = EoSMonitor(mse_loss, (x, y), every=1, tol=1e-10)
    record = monitor.on_step(0, model, 0.5, opt)
    assert isinstance(record, EoSRecord)
    expected = _top(dense_hessian(model, mse_loss, (x, y)))
    assert record.sharpness == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert record.threshold == 8.0 and record.optimizer == "gd" and record.lr == 0.25
    assert record.ratio == pytest.approx(expected / 8.0, rel=1e-9)
    assert record.preconditioned_sharpness is None and record.converged
    assert record.loss == 0.5 and record.num_matvecs > 0


def test_subset_and_chunks():
    x, y = _data(40)
    model = _model(1)
    first = EoSMonitor(mse_loss, (x, y), max_examples=15, tol=1e-10).measure(model)
    expected = _top(dense_hessian(model, mse_loss, (x[:15], y[:15])))
    assert first.sharpness == pytest.approx(expected, rel=1e-9)
    assert math.isnan(first.threshold) and math.isnan(first.ratio)  # no optimizer given
    chunked = EoSMonitor(mse_loss, (x, y), max_examples=None, chunk_size=7, tol=1e-10).measure(
        model
    )
    full = _top(dense_hessian(model, mse_loss, (x, y)))
    assert chunked.sharpness == pytest.approx(full, rel=1e-9)


def test_momentum_threshold():
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    record = EoSMonitor("mse", (x, y), tol=1e-10).measure(model, opt, step=3)
    assert record.optimizer == "momentum"
    assert record.threshold == pytest.approx(38.0)
    assert record.ratio == pytest.approx(record.sharpness / 38.0)


def test_adam_preconditioned_sharpness():
    x, y = _data()
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), weight_decay=0.01)
    monitor = EoSMonitor(mse_loss, (x, y), every=1, tol=1e-10)
    for step in range(3):
        opt.zero_grad()
        loss = mse_loss(model, (x, y))
        loss.backward()
        record = monitor.on_step(step, model, float(loss.detach()), opt)
        params = list(model.parameters())
        p_next = upcoming_adam_preconditioner(opt, params)
        unbiased = upcoming_adam_preconditioner(opt, params, bias_correction=False)
        t_next = adam_step(opt, params, upcoming=True)
        h = dense_hessian(model, mse_loss, (x, y))
        d = p_next.rsqrt()
        # eigenvalues of P^-1 (H + wd I): Adam's L2 decay is part of the curvature it sees
        expected = _top(d[:, None] * (h + 0.01 * torch.eye(len(h), dtype=h.dtype)) * d[None, :])
        assert record is not None and record.preconditioned_sharpness is not None
        assert record.preconditioned_sharpness == pytest.approx(expected, rel=1e-8)
        assert record.sharpness == pytest.approx(_top(h), rel=1e-8)
        assert record.threshold == pytest.approx((2 + 2 * 0.9) / (0.01 * 0.1))
        assert record.ratio == pytest.approx(expected / record.threshold, rel=1e-8)
        opt.step()  # the preconditioner the step used is the one predicted before it
        torch.testing.assert_close(adam_preconditioner(opt), p_next, rtol=1e-12, atol=1e-15)
        assert adam_step(opt) == t_next == step + 1
        torch.testing.assert_close(
            adam_preconditioner(opt, bias_correction=False), unbiased, rtol=1e-12, atol=1e-15
        )


def test_adam_without_gradients_uses_the_last_step():
    x, y = _data()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    mse_loss(model, (x, y)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    params = list(model.parameters())
    torch.testing.assert_close(upcoming_adam_preconditioner(opt, params), adam_preconditioner(opt))
    record = EoSMonitor(mse_loss, (x, y), raw_sharpness=False).measure(model, opt)
    assert math.isnan(record.sharpness) and record.preconditioned_sharpness is not None


class _UnusedHead(torch.nn.Module):
    """The MLP of ``_model`` plus a head that no loss uses (it never gets a gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()
        self.aux_head = torch.nn.Linear(2, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _adam_scaling(opt, params, b1, b2, eps):
    """``P^-1/2`` of the coming Adam step by torch's formulas; 0 where the step moves nothing."""
    pieces = []
    for p in params:
        state = opt.state.get(p, {})
        if p.grad is None and not state:
            pieces.append(torch.zeros(p.numel(), dtype=torch.float64))
            continue
        if p.grad is None:
            v, t = state["exp_avg_sq"], float(state["step"])
        else:
            v0 = state.get("exp_avg_sq", torch.zeros_like(p))
            v, t = b2 * v0 + (1 - b2) * p.grad**2, float(state.get("step", 0)) + 1
        pieces.append(((1 - b1**t) * ((v / (1 - b2**t)).sqrt() + eps)).rsqrt().reshape(-1))
    return torch.cat(pieces)


def test_adam_parameters_without_gradients_are_frozen():
    x, y = _data()
    model = _UnusedHead()
    params = list(model.parameters())
    b1, b2, eps = 0.9, 0.99, 1e-8
    opt = torch.optim.Adam(params, lr=0.01, betas=(b1, b2), eps=eps)
    monitor = EoSMonitor(mse_loss, (x, y), every=1, tol=1e-10)
    dropped = {0: model.body[1].bias, 2: model.body[3].weight}  # a gradient the user drops
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        mse_loss(model, (x, y)).backward()
        if step in dropped:  # step 0: no Adam state yet; step 2: the last step's P
            dropped[step].grad = None
        record = monitor.on_step(step, model, 0.0, opt)
        d = _adam_scaling(opt, params, b1, b2, eps)
        h = dense_hessian(model, mse_loss, (x, y))
        assert record is not None and record.preconditioned_sharpness is not None
        assert record.preconditioned_sharpness == pytest.approx(
            _top(d[:, None] * h * d[None, :]), rel=1e-8
        )
        before = [p.detach().clone() for p in params]
        opt.step()
        for p, w in zip(params, before, strict=True):  # frozen directions stay put
            assert torch.equal(p.detach(), w) == (p.grad is None)


def test_adam_with_an_unused_head_inside_train():
    x, y = _data(30)
    data = Dataset("toy", x, y, x[:0], y[:0], num_classes=2)
    monitor = EoSMonitor(mse_loss, data, every=2)
    config = TrainConfig(optimizer="adam", lr=1e-3, steps=5)
    assert train(_UnusedHead(), data, config, monitor=monitor).status == "ok"
    assert monitor.history["step"] == [0, 2, 4]
    assert all(math.isfinite(r.preconditioned_sharpness or math.nan) for r in monitor.records)
    fresh = list(_model().parameters())
    with pytest.raises(SharpdimError, match="neither gradients nor state"):
        upcoming_adam_preconditioner(torch.optim.Adam(fresh), fresh)


def test_a_train_mode_monitor_leaves_the_dropout_stream_alone():
    x, y = _data(40)
    data = Dataset("toy", x, y, x[:0], y[:0], num_classes=2)
    config = TrainConfig(optimizer="adam", lr=0.01, steps=6, batch_size=10)

    def run(monitor):
        model = _model()
        model.insert(3, torch.nn.Dropout(0.3))
        train(model, data, config, monitor=monitor)
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    watched = EoSMonitor(mse_loss, data, every=2, mode="train")
    assert torch.equal(run(watched), run(None)) and len(watched.records) == 3


def test_warm_start_saves_products():
    x, y = _data(60)
    model = build_mlp(3, 2, width=16, depth=2, seed=0, dtype=torch.float64)
    cold = EoSMonitor(mse_loss, (x, y), warm_start=False)
    warm = EoSMonitor(mse_loss, (x, y), warm_start=True)
    a, b = cold.measure(model), cold.measure(model)
    c, d = warm.measure(model), warm.measure(model)
    # a fresh random start each time (the generator advances) needs about as many products;
    # the previous top eigenvector (plus its random part) fewer: 10 against 14-15 here
    assert d.num_matvecs < min(a.num_matvecs, b.num_matvecs, c.num_matvecs) - 2
    assert d.sharpness == pytest.approx(a.sharpness, rel=1e-7)


class _TwoBlocks(nn.Module):
    """Two parameter blocks without shared terms: a block-diagonal Hessian
    ``diag(8, 1, 1) (+) scale * diag(5, 2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.b = nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.scale = 1.0


def _two_blocks_loss(model: nn.Module, batch: object) -> torch.Tensor:
    ca = torch.tensor([8.0, 1.0, 1.0], dtype=torch.float64)
    cb = torch.tensor([5.0, 2.0], dtype=torch.float64)
    return 0.5 * (ca * model.a**2).sum() + 0.5 * model.scale * (cb * model.b**2).sum()


def test_warm_start_sees_another_block_overtake():
    """The last top eigenvector (block a's, 8) stays an eigenvector when block b sharpens to
    15: its Krylov space never left it, and 8 was reported as converged after one product."""
    model = _TwoBlocks()
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))
    monitor = EoSMonitor(_two_blocks_loss, data)
    assert monitor.measure(model).sharpness == pytest.approx(8.0, rel=1e-6)
    model.scale = 3.0
    again = monitor.measure(model)
    assert again.sharpness == pytest.approx(15.0, rel=1e-6) and again.converged


def test_inside_the_training_loop():
    x, y = _data(50)
    data = Dataset("toy", x, y, x[:0], y[:0], num_classes=2)
    model = _model()
    monitor = EoSMonitor(mse_loss, data, every=5)
    train(model, data, TrainConfig(optimizer="gd", lr=0.3, steps=21), monitor=monitor)
    hist = monitor.history
    assert hist["step"] == [0, 5, 10, 15, 20]
    assert all(t == pytest.approx(2 / 0.3) for t in hist["threshold"])
    assert all(s > 0 for s in hist["sharpness"])
    assert set(hist) >= {"loss", "sharpness", "threshold", "ratio", "sd", "wall_time_s"}
    out = json.loads(json.dumps(monitor.to_dict()))
    assert len(out["records"]) == 5 and out["num_examples"] == 50
    monitor.reset()
    assert monitor.records == []


def test_sharpness_dimension_option():
    x, y = _data(40)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    monitor = EoSMonitor(
        mse_loss, (x, y), every=2, sd_every=4, sd_options={"batch_size": 10, "num_batches": 3}
    )
    records = [monitor.on_step(s, model, 0.0, opt) for s in range(5)]
    assert records[1] is None and records[3] is None
    assert records[0] is not None and records[0].sd is not None
    assert 0.0 <= records[0].sd <= sum(p.numel() for p in model.parameters())
    assert records[2] is not None and records[2].sd is None


def _direct_sd(model, x, y, lr, **kwargs):
    from sharpdim.dimension.sharpness_dimension import sharpness_dimension

    # one full batch: the value does not depend on the generator's state
    return sharpness_dimension(
        model, mse_loss, (x, y), lr, batch_size=len(x), num_batches=1, num_bootstrap=0, **kwargs
    ).sd


def test_sharpness_dimension_uses_the_optimizer_weight_decay():
    x, y = _data(40)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5, weight_decay=5.0)
    options = {"batch_size": 40, "num_batches": 1}
    record = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options).measure(
        model, opt, step=0
    )
    expected = _direct_sd(model, x, y, 0.5, optimizer="momentum", momentum=0.5, weight_decay=5.0)
    assert record.sd == pytest.approx(expected, rel=1e-12)
    assert expected != pytest.approx(
        _direct_sd(model, x, y, 0.5, optimizer="momentum", momentum=0.5)
    )


@pytest.mark.parametrize("tensor_betas", [False, True])
@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_sharpness_dimension_uses_the_live_adam_preconditioner(cls, tensor_betas):
    x, y = _data(40)
    model = _model()
    b1, b2, eps, wd = 0.8, 0.95, 1e-3, 0.05
    betas = (b1, b2)
    if tensor_betas:  # torch's Adam takes 0-dim tensors too
        betas = tuple(torch.tensor(b, dtype=torch.float64) for b in betas)
    opt = cls(model.parameters(), lr=0.01, betas=betas, eps=eps, weight_decay=wd)
    options = {"batch_size": 40, "num_batches": 1}
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options)
    for step in range(3):
        opt.zero_grad()
        mse_loss(model, (x, y)).backward()
        record = monitor.on_step(step, model, 0.0, opt)
        # Adam's P of the update about to be taken, by hand (torch's formulas)
        params = list(model.parameters())
        w = torch.cat([p.detach().reshape(-1) for p in params])
        g = torch.cat([p.grad.reshape(-1) for p in params]) + (
            wd * w if cls is torch.optim.Adam else 0
        )
        v = torch.cat(
            [
                opt.state[p]["exp_avg_sq"].reshape(-1)
                if p in opt.state
                else torch.zeros(p.numel(), dtype=w.dtype)
                for p in params
            ]
        )
        v, t = b2 * v + (1 - b2) * g * g, step + 1
        precond = (v / (1 - b2**t)).sqrt() + eps  # with 1 - b1^t passed as the step count
        name = "adam" if cls is torch.optim.Adam else "adamw"
        kwargs = {"optimizer": name, "betas": (b1, b2), "weight_decay": wd, "adam_eps": eps}
        kwargs["step"] = t
        expected = _direct_sd(model, x, y, 0.01, preconditioner=precond, **kwargs)
        assert record is not None and record.sd == pytest.approx(expected, rel=1e-10)
        assert expected != pytest.approx(
            _direct_sd(model, x, y, 0.01, optimizer=name, betas=(b1, b2))
        )
        opt.step()


def test_sharpness_dimension_after_the_update_uses_the_last_adam_preconditioner():
    """Called with no gradients (after ``zero_grad(set_to_none=True)``), the SD was refused
    ('no common step count (found: none)') while the sharpness used the last update's P."""
    x, y = _data(40)
    model = _model()
    b1, b2, eps = 0.8, 0.95, 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(b1, b2), eps=eps)
    options = {"batch_size": 40, "num_batches": 1}
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options)
    with pytest.raises(SharpdimError, match="neither gradients nor state"):  # never stepped
        monitor.measure(model, opt, step=0)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        mse_loss(model, (x, y)).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    record = monitor.measure(model, opt, step=2)
    params = list(model.parameters())
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params])
    precond = (v / (1 - b2**2)).sqrt() + eps  # the last update's (t = 2), by hand
    kwargs = {"optimizer": "adam", "betas": (b1, b2), "adam_eps": eps, "step": 2}
    expected = _direct_sd(model, x, y, 0.01, preconditioner=precond, **kwargs)
    assert record.sd == pytest.approx(expected, rel=1e-10)


def test_sharpness_dimension_after_an_update_some_parameters_skipped():
    """With no gradients and step counts that differ (a parameter without a gradient at one
    step), each parameter's 1 - beta1^t is folded into P, as with gradients; it raised 'no
    common step count (found: 1, 2)'."""
    x, y = _data(40)
    model = _model()
    b1, b2, eps = 0.8, 0.95, 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(b1, b2), eps=eps)
    params = list(model.parameters())
    for step in range(2):
        opt.zero_grad(set_to_none=True)
        mse_loss(model, (x, y)).backward()
        if step == 1:
            params[0].grad = None  # (Adam leaves it alone: its count stays 1)
        opt.step()
    opt.zero_grad(set_to_none=True)
    options = {"batch_size": 40, "num_batches": 1}
    record = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options).measure(
        model, opt, step=2
    )
    pieces = []
    for p in params:  # each parameter's P of its last update, 1 - beta1^t folded in
        t = float(opt.state[p]["step"])
        v = opt.state[p]["exp_avg_sq"].reshape(-1)
        pieces.append((1 - b1**t) * ((v / (1 - b2**t)).sqrt() + eps))
    assert [float(opt.state[p]["step"]) for p in params] == [1.0, 2.0, 2.0, 2.0]
    kwargs = {"optimizer": "adam", "betas": (b1, b2), "adam_eps": eps}
    expected = _direct_sd(model, x, y, 0.01, preconditioner=torch.cat(pieces), **kwargs)
    assert record.sd == pytest.approx(expected, rel=1e-10)


def test_no_sharpness_dimension_at_lr_zero():
    """A warm-up's first step (lr 0): the threshold is inf and the step the identity; with
    sd_every the monitor raised 'lr must be a finite number > 0' from inside the loop."""
    x, y = _data(40)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 2))
    options = {"batch_size": 40, "num_batches": 1}
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options)
    sds = []
    for step in range(3):
        opt.zero_grad()
        loss = mse_loss(model, (x, y))
        loss.backward()
        record = monitor.on_step(step, model, loss.item(), opt)
        sds.append(record.sd)
        opt.step()
        schedule.step()
    assert sds[0] is None and monitor.records[0].threshold == math.inf
    assert sds[1] is not None and sds[2] is not None  # (lr 0.25, 0.5)


def test_bad_input():
    x, y = _data()
    with pytest.raises(SharpdimError):
        EoSMonitor(mse_loss, (x, y), every=0)
    with pytest.raises(SharpdimError):
        EoSMonitor(mse_loss, (x, y), every=3, sd_every=4)
    with pytest.raises(SharpdimError):
        EoSMonitor(mse_loss, x)
    with pytest.raises(SharpdimError):
        EoSMonitor(mse_loss, (x, y[:3]))
    with pytest.raises(SharpdimError):
        EoSMonitor(mse_loss, (x, y), max_examples=0)
    with pytest.raises(SharpdimError):
        EoSMonitor("nope", (x, y))


def test_example_script_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["monitor_own_loop.py"])
    namespace = runpy.run_path(str(ROOT / "examples" / "monitor_own_loop.py"))
    monitor = namespace["main"](steps=41, lr=0.5)
    out = capsys.readouterr().out
    assert "sharpness" in out and "median sharpness / (2/eta)" in out
    assert monitor.history["step"] == [0, 20, 40]
    assert all(t == pytest.approx(4.0) for t in monitor.history["threshold"])


def test_adam_with_decoupled_weight_decay_is_measured_as_adamw():
    """torch's Adam(decoupled_weight_decay=True) is AdamW's update: no L2 term in the gradient."""
    x, y = _data()
    model = _model()
    opt = torch.optim.Adam(
        model.parameters(), lr=0.01, weight_decay=0.5, decoupled_weight_decay=True
    )
    for _ in range(3):
        opt.zero_grad()
        mse_loss(model, (x, y)).backward()
        p_next = upcoming_adam_preconditioner(opt, list(model.parameters()))
        opt.step()
        torch.testing.assert_close(adam_preconditioner(opt), p_next, rtol=1e-12, atol=1e-15)
    assert optimizer_name(opt) == "adamw"


def _grouped(cls, lrs, **options):
    """The MLP of ``_model`` with its first layer in one param group and the rest in another."""
    model = _model()
    first = list(model[1].parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in first)]
    groups = [{"params": first, "lr": lrs[0]}, {"params": rest, "lr": lrs[1]}]
    return model, cls(groups, **options)


def _lr_vector(model, opt):
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    return torch.cat(
        [torch.full((p.numel(),), lr_of[id(p)], dtype=torch.float64) for p in model.parameters()]
    )


@pytest.mark.parametrize(
    ("cls", "options", "name", "bound"),
    [
        (torch.optim.SGD, {}, "gd", 2.0),
        (torch.optim.SGD, {"momentum": 0.5}, "momentum", 3.0),
        (torch.optim.SGD, {"momentum": 0.5, "nesterov": True}, "nesterov", 1.5),
        (torch.optim.AdamW, {"betas": (0.9, 0.99)}, "adamw", 38.0),
    ],
)
def test_param_groups_with_different_lr(cls, options, name, bound):
    """ratio = lambda_max(diag(lr_i) P^-1 H) / (threshold * lr), P = I without Adam: exact."""
    x, y = _data()
    model, opt = _grouped(cls, (0.02, 0.2), **options)
    opt.zero_grad()
    mse_loss(model, (x, y)).backward()
    record = EoSMonitor(mse_loss, (x, y), tol=1e-10).measure(model, opt)
    h = dense_hessian(model, mse_loss, (x, y))
    scale = _lr_vector(model, opt)
    if name == "adamw":
        scale = scale / upcoming_adam_preconditioner(opt, list(model.parameters()))
    d = scale.sqrt()
    true = _top(d[:, None] * h * d[None, :])  # lambda_max(diag(lr_i) P^-1 H)
    assert record.optimizer == name and record.lr == 0.2
    assert record.threshold == pytest.approx(bound / 0.2)
    assert record.ratio == pytest.approx(true / bound, rel=1e-8)
    assert record.preconditioned_sharpness == pytest.approx(true / 0.2, rel=1e-8)
    assert record.sharpness == pytest.approx(_top(h), rel=1e-8)


def test_param_groups_that_differ_only_in_weight_decay():
    x, y = _data()
    model, opt = _grouped(torch.optim.SGD, (0.2, 0.2), momentum=0.5)
    opt.param_groups[1]["weight_decay"] = 0.01
    record = EoSMonitor(mse_loss, (x, y), tol=1e-10).measure(model, opt)
    h = dense_hessian(model, mse_loss, (x, y))
    decay = torch.cat(
        [torch.full((p.numel(),), g["weight_decay"]) for g in opt.param_groups for p in g["params"]]
    ).double()
    order = {id(p): i for i, p in enumerate(model.parameters())}
    assert [order[id(p)] for g in opt.param_groups for p in g["params"]] == sorted(order.values())
    # the update sees H + diag(decay): measured as the "preconditioned" sharpness (P = I)
    expected = _top(h + torch.diag(decay))
    assert record.sharpness == pytest.approx(_top(h), rel=1e-9)
    assert record.preconditioned_sharpness == pytest.approx(expected, rel=1e-9)
    assert record.threshold == pytest.approx(15.0)
    assert record.ratio == pytest.approx(expected / 15.0, rel=1e-9)


@pytest.mark.parametrize("key", ["lr", "weight_decay"])
def test_sharpness_dimension_refuses_param_groups_that_differ(key):
    x, y = _data()
    model, opt = _grouped(torch.optim.SGD, (0.2, 0.2))
    opt.param_groups[1][key] = 0.1
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1)
    with pytest.raises(
        SharpdimError, match=rf"^sd_every: the optimizer's param groups differ in {key}"
    ):
        monitor.measure(model, opt, step=0)
    if key == "weight_decay":  # given in sd_options, the groups' values are not used
        options = {"weight_decay": 0.0, "batch_size": 40, "num_batches": 1}
        monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options)
        assert monitor.measure(model, opt, step=0).sd is not None


def test_sharpness_dimension_refuses_an_optimizer_over_some_parameters():
    """Parameters the optimizer does not hold do not move (lr 0): as groups of different lr."""
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(list(model.parameters())[-2:], lr=0.2)
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1)
    with pytest.raises(
        SharpdimError,
        match=r"^sd_every: the optimizer does not hold every trainable parameter \(the others "
        r"do not move, lr 0\) and sharpness_dimension takes one lr for all: use sd_every=0, "
        r"or freeze",
    ):
        monitor.measure(model, opt, step=0)
    assert EoSMonitor(mse_loss, (x, y), every=1).measure(model, opt).ratio > 0


def _masked_ce(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, ignore_index=-100)  # mean over labels != -100


def test_chunk_weight_for_a_per_label_mean():
    x, labels0 = _data(40)
    y = labels0.clone()
    y[14:21] = -100  # the third chunk of 7 has no label at all
    y[30:33] = -100
    model = _model()
    expected = _top(dense_hessian(model, _masked_ce, (x, y)))
    whole = EoSMonitor(_masked_ce, (x, y), tol=1e-10).measure(model)
    assert whole.sharpness == pytest.approx(expected, rel=1e-9)
    labels = EoSMonitor(
        _masked_ce, (x, y), chunk_size=7, chunk_weight=lambda b: (b[1] != -100).sum(), tol=1e-10
    ).measure(model)
    assert labels.sharpness == pytest.approx(expected, rel=1e-9)
    y[14:21] = labels0[14:21]  # no empty chunk, but one with 4 labels of 7
    by_examples = EoSMonitor(_masked_ce, (x, y), chunk_size=7, tol=1e-10).measure(model)
    expected = _top(dense_hessian(model, _masked_ce, (x, y)))
    assert by_examples.sharpness != pytest.approx(expected, rel=1e-3)  # chunks by example count


@pytest.mark.parametrize("weight", [-1.0, math.nan, 0.0, "two"])
def test_bad_chunk_weight(weight):
    x, y = _data()
    monitor = EoSMonitor(mse_loss, (x, y), chunk_size=7, chunk_weight=lambda b: weight)
    with pytest.raises(SharpdimError, match=r"^chunk_weight"):
        monitor.measure(_model())


def test_sharpness_dimension_in_the_monitors_mode():
    """With batch norm the train- and eval-mode Hessians differ; ``sd_every`` follows ``mode``."""
    x, y = _data(40)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 2)
    ).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    options = {"batch_size": 40, "num_batches": 1}
    sds = {}
    for mode in ("train", "eval"):
        monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options, mode=mode)
        sds[mode] = monitor.measure(model, opt, step=0).sd
        assert sds[mode] == pytest.approx(_direct_sd(model, x, y, 0.5, mode=mode), rel=1e-12)
    assert sds["train"] != pytest.approx(sds["eval"], rel=1e-3)


def test_adam_sd_when_a_parameter_skipped_a_step():
    """A layer frozen for the first step lags one Adam step behind: the SD folds each
    parameter's 1 - b1^t into P (it raised "no common step count"); equal to a direct call."""
    x, y = _data(20)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    options = {"batch_size": 20, "num_batches": 1}
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options)
    first = next(iter(model.parameters()))
    first.requires_grad_(False)
    mse_loss(model, (x, y)).backward()
    first.requires_grad_(True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mse_loss(model, (x, y)).backward()
    record = monitor.on_step(1, model, 0.0, opt)
    folded = upcoming_adam_preconditioner(opt, list(model.parameters()))
    expected = _direct_sd(model, x, y, 0.01, optimizer="adam", preconditioner=folded)
    assert record is not None and record.sd == pytest.approx(expected, rel=1e-10)
    opt.zero_grad(set_to_none=True)  # no gradient at all: the last update's P (it raised)
    last = upcoming_adam_preconditioner(opt, list(model.parameters()))
    assert torch.isinf(last[: first.numel()]).all()  # (never stepped: frozen, P = inf ...)
    last = torch.where(
        torch.isinf(last), torch.finfo(last.dtype).max ** 0.5, last
    )  # (... made finite)
    record = monitor.on_step(1, model, 0.0, opt)
    expected = _direct_sd(model, x, y, 0.01, optimizer="adam", preconditioner=last)
    assert record is not None and record.sd == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_a_warm_up_from_lr_0_is_measured_not_refused(opt: str):
    """A linear warm-up starts at lr = 0: the monitor raised 'learning rate 0.0 must be > 0'
    and stopped the user's loop. At lr = 0 every curvature is stable: threshold inf."""
    x, y = _data()
    model = _model()
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.1)
        if opt == "sgd"
        else torch.optim.Adam(model.parameters(), lr=0.1)
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / 10)
    monitor = EoSMonitor(mse_loss, (x, y), every=1)
    for step in range(2):
        optimizer.zero_grad()
        mse_loss(model, (x, y)).backward()
        record = monitor.on_step(step, model, 0.0, optimizer)
        optimizer.step()
        schedule.step()
        if step == 0:
            assert record.lr == 0 and record.threshold == math.inf and record.ratio == 0
            assert record.sharpness == pytest.approx(monitor.measure(model).sharpness, rel=1e-6)
        else:
            assert record.lr == pytest.approx(0.01) and math.isfinite(record.threshold)


def test_an_infinite_lr_is_refused_by_name():
    from sharpdim.training.optimizers import stability_threshold

    with pytest.raises(SharpdimError, match=r"^learning rate inf must be a finite number > 0"):
        stability_threshold("gd", math.inf)


def test_coupled_weight_decay_is_in_the_bounded_quantity():
    """SGD's L2 decay adds wd I to the Hessian the update sees: with lambda_max = 10,
    eta = 0.19 and wd = 1 the run diverges although lambda_max / (2/eta) = 0.95 (the ratio
    reported was 0.95; it is (10 + 1) / (2/0.19) = 1.045)."""
    x, y = _data()
    model = _model()
    h = _top(dense_hessian(model, mse_loss, (x, y)))
    for momentum, threshold in ((0.0, 2 / 0.1), (0.5, 3 / 0.1)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=0.3)
        record = EoSMonitor(mse_loss, (x, y), tol=1e-10).measure(model, opt)
        assert record.sharpness == pytest.approx(h, rel=1e-9)  # the loss's own
        assert record.preconditioned_sharpness is None and record.num_matvecs > 0
        assert record.ratio == pytest.approx((h + 0.3) / threshold, rel=1e-9)
    decoupled = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.3)
    mse_loss(model, (x, y)).backward()
    record = EoSMonitor(mse_loss, (x, y), tol=1e-10).measure(model, decoupled)
    d = upcoming_adam_preconditioner(decoupled, list(model.parameters())).rsqrt()
    hessian = dense_hessian(model, mse_loss, (x, y))
    expected = _top(d[:, None] * hessian * d[None, :])  # AdamW's decay is not curvature
    assert record.preconditioned_sharpness == pytest.approx(expected, rel=1e-8)


def test_adam_freezes_parameters_it_does_not_hold():
    """Documented as lr scale 0; Adam raised 'a parameter of the model is not in the Adam
    optimizer' (SGD did what the docs say)."""
    x, y = _data()
    model = _model()
    first = list(model[1].parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in first)]
    opt = torch.optim.Adam(rest, lr=0.01)
    mse_loss(model, (x, y)).backward()
    record = EoSMonitor(mse_loss, (x, y), tol=1e-10).measure(model, opt)
    held = torch.cat(
        [torch.full((p.numel(),), float(any(p is q for q in rest))) for p in model.parameters()]
    ).double()
    p_rest = upcoming_adam_preconditioner(opt, rest)
    d = torch.zeros_like(held)
    d[held.bool()] = p_rest.rsqrt()
    hessian = dense_hessian(model, mse_loss, (x, y))
    assert record.preconditioned_sharpness == pytest.approx(
        _top(d[:, None] * hessian * d[None, :]), rel=1e-8
    )


def test_maximizing_optimizers_are_refused():
    x, y = _data()
    model = _model()
    for opt in (
        torch.optim.SGD(model.parameters(), lr=0.1, maximize=True),
        torch.optim.Adam(model.parameters(), lr=0.1, maximize=True),
    ):
        with pytest.raises(SharpdimError, match=r"^the optimizer has maximize=True"):
            EoSMonitor(mse_loss, (x, y)).measure(model, opt)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": 0.1}, r"^sd_options \['lr'\] are set by the monitor"),
        ({"methd": "slq"}, r"^sd_options \['methd'\] are not sharpness_dimension options"),
        ([("method", "slq")], r"^sd_options must be a dict, got list"),
    ],
)
def test_sd_options_are_checked_when_the_monitor_is_built(options, message):
    """They failed with a TypeError at the first SD measurement, deep inside training."""
    with pytest.raises(SharpdimError, match=message):
        EoSMonitor(mse_loss, _data(), sd_every=10, sd_options=options)


def test_a_diverged_model_is_recorded_in_a_users_own_loop():
    """train() stops before the monitor sees a non-finite loss; a hand-written loop got a
    SharpdimError traceback instead of a record."""
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = EoSMonitor(mse_loss, (x, y), every=1)
    assert math.isfinite(monitor.on_step(0, model, 0.5, opt).sharpness)
    with torch.no_grad():
        next(model.parameters()).fill_(math.inf)
    record = monitor.on_step(1, model, math.inf, opt)
    assert math.isnan(record.sharpness) and math.isnan(record.ratio)
    assert record.threshold == 20.0 and not record.converged and record.num_matvecs == 0
    assert [r.step for r in monitor.records] == [0, 1]
    bad = x.clone()
    bad[3, 1] = math.nan  # bad data are an error, not a NaN record of a healthy model
    with pytest.raises(SharpdimError, match=r"^the monitor's examples hold NaN or inf"):
        EoSMonitor(mse_loss, (bad, y))


def test_float64_data_stay_unrounded_after_a_float32_model():
    """The examples were cast to the first model's dtype for good."""
    x, y = _data()
    monitor = EoSMonitor(mse_loss, (x, y), tol=1e-12)
    monitor.measure(_model().float())
    again = monitor.measure(_model()).sharpness
    fresh = EoSMonitor(mse_loss, (x, y), tol=1e-12).measure(_model()).sharpness
    assert again == pytest.approx(fresh, rel=1e-12)  # were 1.5e-10 apart (rounded data)
    assert monitor.x.dtype == torch.float64


def test_bad_monitor_arguments_are_one_line_errors():
    """Strings, NaN and fractions were TypeErrors (some only at the first measurement, inside
    train()), and ``every=nan`` made a monitor that never measured."""
    x, y = _data()
    cases = [
        ({"every": "2"}, r"^every must be an integer >= 1, got '2'"),
        ({"every": math.nan}, r"^every must be an integer >= 1, got nan"),
        ({"sd_every": -1}, r"^sd_every must be an integer >= 0"),
        ({"max_examples": "5"}, r"^max_examples must be an integer >= 1"),
        ({"max_examples": 2.5}, r"^max_examples must be an integer >= 1, got 2.5"),
        ({"chunk_size": 2.5}, r"^chunk_size must be an integer >= 1, got 2.5"),
        ({"max_iter": 0}, r"^max_iter must be an integer >= 1, got 0"),
        ({"tol": "1e-4"}, r"^tol must be a finite number > 0"),
        ({"tol": 0.0}, r"^tol must be a finite number > 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SharpdimError, match=message):
            EoSMonitor(mse_loss, (x, y), **kwargs)
    with pytest.raises(SharpdimError, match=r"^loss_fn must be a loss name or a function.*int"):
        EoSMonitor(3, (x, y))  # type: ignore[arg-type]
    monitor = EoSMonitor(mse_loss, (x, y), every=2.0, max_examples=20.0)
    assert monitor.every == 2 and monitor.x.shape[0] == 20


class _Product(nn.Module):
    """``f(x) = a b x`` with ``a = 0.1``: second derivatives ``b^2 x^2`` overflow float32 at
    ``b = 5e19`` while the loss (1.2e37) is finite."""

    def __init__(self, b: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.1))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * self.b * x


def _product_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * (model(batch[0]) - batch[1]).pow(2).mean()


def test_a_finite_loss_whose_hessian_overflows_is_recorded_not_raised():
    """f = a b x in float32 at a = 0.1, b = 5e19: the loss (1.2e37) is finite, its second
    derivative b^2 x^2 = 2.5e39 is not; that escaped the monitor and ended train(). After a
    finite measurement it is recorded; at the first one it is an error (it may be a loss that
    is not twice differentiable: the user's to fix)."""

    loss_fn = _product_loss
    x, y = torch.ones(4, 1), torch.zeros(4, 1)
    model = _Product(5e19)
    assert math.isfinite(float(loss_fn(model, (x, y)).detach()))
    opt = torch.optim.SGD(model.parameters(), lr=1e-40)
    with pytest.raises(SharpdimError, match=r"^H @ v is not finite although the loss is"):
        EoSMonitor(loss_fn, (x, y), every=1).on_step(0, model, 1.0, opt)
    monitor = EoSMonitor(loss_fn, (x, y), every=1)
    with torch.no_grad():
        model.b.fill_(1.0)
    assert math.isfinite(monitor.on_step(0, model, 1.0, opt).sharpness)
    with torch.no_grad():
        model.b.fill_(5e19)
    with pytest.warns(RuntimeWarning, match=r"^step 3: H @ v is not finite.*recorded as NaN"):
        record = monitor.on_step(3, model, 1.0, opt)
    assert record is not None and math.isnan(record.sharpness) and math.isnan(record.ratio)
    assert record.threshold == pytest.approx(2e40, rel=1e-6) and len(monitor.records) == 2


def test_adam_sd_with_an_unused_parameter_measures_instead_of_failing():
    """A parameter with neither gradient nor Adam state had P = inf, which
    sharpness_dimension refuses: an unused head ended train() with an error about a
    preconditioner the user never passed. Its Hessian block is 0, so any finite P gives the
    same SD."""
    x, y = _data(40)

    class WithUnusedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _model()
            self.unused = nn.Linear(2, 2).double()

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.body(inputs)

    torch.manual_seed(0)
    model = WithUnusedHead()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    options = {"batch_size": 40, "num_batches": 1}
    monitor = EoSMonitor(mse_loss, (x, y), every=1, sd_every=1, sd_options=options)
    opt.zero_grad()
    mse_loss(model, (x, y)).backward()
    record = monitor.on_step(0, model, 0.0, opt)
    assert record.sd is not None and math.isfinite(record.sd)
    params = list(model.parameters())
    g = torch.cat(
        [
            torch.zeros(p.numel(), dtype=p.dtype) if p.grad is None else p.grad.reshape(-1)
            for p in params
        ]
    )
    b2, eps = 0.999, 1e-8
    precond = ((1 - b2) * g * g / (1 - b2)).sqrt() + eps
    n_body = sum(p.numel() for p in model.body.parameters())
    for filler in (1.0, 7.0):  # any finite P on the unused block
        p = precond.clone()
        p[n_body:] = filler
        kwargs = {"optimizer": "adam", "adam_eps": eps, "step": 1, "preconditioner": p}
        assert record.sd == pytest.approx(_direct_sd(model, x, y, 0.01, **kwargs), rel=1e-10)


def test_overflowing_curvature_is_recorded_for_adam_without_raw_sharpness():
    """With raw_sharpness=False only the preconditioned value is measured (sharpness NaN by
    design): the check for an earlier finite measurement must read the bounded quantity."""

    loss_fn = _product_loss
    x, y = torch.ones(4, 1), torch.zeros(4, 1)
    model = _Product(1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    monitor = EoSMonitor(loss_fn, (x, y), every=1, raw_sharpness=False)
    loss_fn(model, (x, y)).backward()
    first = monitor.on_step(0, model, 1.0, opt)
    assert math.isnan(first.sharpness) and math.isfinite(first.bounded)
    with torch.no_grad():
        model.b.fill_(5e19)
    with pytest.warns(RuntimeWarning, match=r"recorded as NaN"):
        second = monitor.on_step(1, model, 1.0, opt)
    assert math.isnan(second.bounded)


def test_frozen_adam_parameters_are_frozen_in_float16_too():
    from sharpdim.training.monitor import _finite

    p = torch.tensor([2.0, math.inf], dtype=torch.float16)
    out = _finite(p)
    assert out.dtype == torch.float32 and out[0] == 2.0
    assert float(out[1]) == pytest.approx(torch.finfo(torch.float32).max ** 0.5, rel=1e-6)


def test_a_diverged_adam_model_without_raw_sharpness_is_recorded():
    """NaN gradients make Adam's preconditioner NaN; the scaled operator refused its vector
    before the loss check could record the divergence."""
    x, y = _data(20)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    mse_loss(model, (x, y)).backward()
    monitor = EoSMonitor(mse_loss, (x, y), every=1, raw_sharpness=False)
    record = monitor.on_step(0, model, math.nan, opt)
    assert math.isnan(record.bounded) and math.isnan(record.ratio)


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("raw", [True, False])
def test_adam_on_a_model_with_inf_gradients_records_nan(cls, raw):
    """Loss and every gradient inf (float32, theta = 1e10) made Adam's preconditioner inf
    everywhere, read as 'neither gradients nor state': an exception where SGD got a record."""
    from sharpdim.training.models import DeepScalarLinear
    from sharpdim.training.optimizers import stability_threshold

    net = DeepScalarLinear((1e10, 1e10, 1e10, 1e10), dtype=torch.float32)
    opt = cls(net.parameters(), lr=0.01)
    loss = mse_loss(net, net.batch())
    loss.backward()
    assert math.isinf(loss.item()) and bool(torch.isinf(net.theta.grad).all())
    assert bool(torch.isinf(upcoming_adam_preconditioner(opt, [net.theta])).all())
    monitor = EoSMonitor(mse_loss, net.batch(), every=1, raw_sharpness=raw)
    record = monitor.on_step(0, net, loss.item(), opt)
    assert math.isnan(record.sharpness) and math.isnan(record.bounded)
    assert math.isnan(record.ratio) and record.num_matvecs == 0 and not record.converged
    assert record.threshold == stability_threshold("adam", 0.01, betas=(0.9, 0.999))


def test_inf_gradients_with_a_finite_monitor_loss_are_an_error_then_a_nan_record():
    """An inf gradient gave P = inf, which froze its directions: a finite, wrong record. At
    the first measurement it is an error; after finite ones, a run heading for divergence
    (Adam's next step makes the parameters NaN), recorded as NaN with a warning, not a crash."""
    x, y = _data(20)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    mse_loss(model, (x, y)).backward()
    monitor = EoSMonitor(mse_loss, (x, y))
    assert math.isfinite(monitor.measure(model, opt).bounded)
    next(model.parameters()).grad[0, 0] = math.inf
    with pytest.raises(SharpdimError, match=r"^Adam's preconditioner is not finite \(NaN or inf"):
        EoSMonitor(mse_loss, (x, y)).measure(model, opt)
    with pytest.warns(RuntimeWarning, match=r"^step 10: Adam's preconditioner is not finite"):
        record = monitor.on_step(10, model, 0.5, opt)  # (every=10)
    assert record is not None and math.isnan(record.bounded) and math.isnan(record.ratio)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.SGD(ps, lr=0.0),
        lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=1e-3),
    ],
)
def test_an_optimizer_of_another_model_is_refused(make):
    """SGD gave ratio 0 (lr scale 0 for every parameter it does not hold), Adam 'neither
    gradients nor state'."""
    x, y = _data(20)
    model, other = _model(0), _model(1)
    opt = make(other.parameters())
    for net in (model, other):
        mse_loss(net, (x, y)).backward()
    message = r"^the optimizer holds none of the model's trainable parameters: pass the optim"
    with pytest.raises(SharpdimError, match=message):
        EoSMonitor(mse_loss, (x, y)).measure(model, opt)
    record = EoSMonitor(mse_loss, (x, y), tol=1e-10).measure(other, opt)  # its own model
    assert math.isfinite(record.bounded)


def test_an_empty_example_set_is_refused_when_the_monitor_is_built():
    """It made a monitor that recorded NaN at every step."""
    x, y = _data(20)
    empty = Dataset("toy", x[:0], y[:0], x, y, num_classes=2)
    for data in ((x[:0], y[:0]), empty):
        with pytest.raises(SharpdimError, match=r"^the monitor's data hold no examples"):
            EoSMonitor(mse_loss, data)


def test_mode_and_flags_are_checked_when_the_monitor_is_built():
    """mode='evaluation' failed only at the first measurement; raw_sharpness='no' was true."""
    x, y = _data(20)
    cases = [
        ({"mode": "evaluation"}, r"^unknown mode 'evaluation': use 'eval', 'train' or 'keep'"),
        ({"mode": None}, r"^unknown mode None"),
        ({"raw_sharpness": "no"}, r"^raw_sharpness must be True or False, got 'no'"),
        ({"warm_start": 1}, r"^warm_start must be True or False, got 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SharpdimError, match=message):
            EoSMonitor(mse_loss, (x, y), **kwargs)
    for mode in ("eval", "train", "keep"):
        assert EoSMonitor(mse_loss, (x, y), mode=mode, raw_sharpness=False).mode == mode


def test_the_loss_tensor_itself_is_taken_as_the_loss_value():
    """float() of a loss that requires grad warned, an error under -W error."""
    x, y = _data(20)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = mse_loss(model, (x, y))
    loss.backward()
    record = EoSMonitor(mse_loss, (x, y), every=1).on_step(0, model, loss, opt)
    assert record is not None and record.loss == float(loss.detach())


def _masked_by_weight(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y, mask = batch
    per_example = F.cross_entropy(model(x), y, reduction="none")
    return (per_example * mask).sum() / mask.sum()


def test_a_batch_of_three_tensors_is_measured_like_the_other_estimators():
    """(inputs, targets, mask) worked with HessianOperator and sharpness_dimension but the
    monitor refused it ('a pair (x, y)'): masked-token users had to re-encode their masks."""
    x, y = _data(40)
    mask = (torch.arange(40) % 3 != 0).double()
    model = _model()
    batch = (x, y, mask)
    exact = _top(dense_hessian(model, _masked_by_weight, batch))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    whole = EoSMonitor(_masked_by_weight, batch, tol=1e-10).measure(model, opt)
    assert whole.sharpness == pytest.approx(exact, rel=1e-8)
    chunked = EoSMonitor(
        _masked_by_weight, batch, tol=1e-10, chunk_size=7, chunk_weight=lambda c: float(c[2].sum())
    ).measure(model, opt)
    assert chunked.sharpness == pytest.approx(exact, rel=1e-8)
    cut = EoSMonitor(_masked_by_weight, batch, tol=1e-10, max_examples=20)
    assert [len(t) for t in cut.batch] == [20, 20, 20]
    # (x,) is accepted now, a loss may derive its targets from x: test_monitor_data.py
    for bad in ((x, y, mask[:10]), (x, y, 3.0), ()):
        with pytest.raises(SharpdimError, match=r"^data must be"):
            EoSMonitor(_masked_by_weight, bad)


def test_integration_mistakes_are_one_line_errors():
    """A scheduler for the optimizer raised AttributeError ('no attribute param_groups'), a
    torch functional loss a TypeError from inside torch, in the user's loop and in train()."""
    x, y = _data(40)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    schedule = torch.optim.lr_scheduler.StepLR(opt, 10)
    monitor = EoSMonitor(mse_loss, (x, y), every=1)
    with pytest.raises(
        SharpdimError, match=r"got StepLR: .* \(a scheduler's or wrapper's is its .optimizer\)"
    ):
        monitor.on_step(0, model, 1.0, schedule)
    with pytest.raises(SharpdimError, match=r"^loss_fn is F.cross_entropy, which takes"):
        EoSMonitor(F.cross_entropy, (x, y), every=1)
    data = Dataset("d", x, y, x[:5], y[:5], 2)
    with pytest.raises(SharpdimError, match=r"^loss_fn is F.cross_entropy, which takes"):
        train(model, data, TrainConfig(steps=1, batch_size=10), loss_fn=F.cross_entropy)


def test_a_bad_loss_value_is_refused_before_any_measuring():
    """None (documented as nan), a forgotten loss (the optimizer in its place) and a
    per-example loss raised torch's TypeError/ValueError after the whole measurement."""
    x, y = _data()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = EoSMonitor(mse_loss, (x, y))
    per_example = torch.ones(4)
    for value, message in (
        (optimizer, r"^loss_value is the SGD optimizer: call on_step\(step, model, loss_value"),
        (per_example, r"^loss_value is a tensor of shape \(4,\).*loss\.item\(\)"),
        ([0.5], r"^loss_value must be a real number, got list"),
    ):
        with pytest.raises(SharpdimError, match=message):
            monitor.on_step(0, model, value)  # type: ignore[arg-type]
    assert monitor.records == []
    record = monitor.on_step(0, model, None, optimizer)  # type: ignore[arg-type]
    assert record is not None and math.isnan(record.loss) and len(monitor.records) == 1
    assert monitor.on_step(0, model, torch.tensor([0.25]), optimizer).loss == 0.25


def test_upcoming_preconditioner_takes_a_generator_and_checks_unheld() -> None:
    """model.parameters() was used up by the first loop, and the 'neither gradients nor
    state' check then saw nothing; unheld='Freeze' was read as 'error'."""
    model = _model()
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    mse_loss(model, (x, y)).backward()
    ref = upcoming_adam_preconditioner(opt, list(model.parameters()))
    assert torch.equal(upcoming_adam_preconditioner(opt, model.parameters()), ref)
    for bad in ("Freeze", True, None):
        with pytest.raises(SharpdimError, match=r"^unheld must be 'error' or 'freeze', got"):
            upcoming_adam_preconditioner(opt, list(model.parameters()), unheld=bad)


def test_steps_losses_and_chunk_weights_are_checked_before_measuring() -> None:
    """on_step(2.5) skipped silently, measure(step=2.5) recorded 2, step='x' failed after
    the measurement, loss '0.5' and True were recorded, chunk_weight=3 failed mid-run."""
    model = _model()
    monitor = EoSMonitor("mse", _data(), every=2)
    for call, message in [
        (lambda: monitor.on_step(2.5, model, 1.0), r"^step must be an integer >= 0, got 2.5"),
        (lambda: monitor.on_step("4", model, 1.0), r"^step must be an integer >= 0, got '4'"),
        (lambda: monitor.measure(model, step=2.5), r"^step must be an integer >= -1, got 2.5"),
        (lambda: monitor.measure(model, loss_value="0.5"), r"^loss_value must be a real number"),
        (lambda: monitor.measure(model, loss_value=True), r"^loss_value must be a real number"),
        (
            lambda: EoSMonitor("mse", _data(), chunk_size=4, chunk_weight=3),
            r"^chunk_weight must be a function chunk -> number, got int",
        ),
    ]:
        with pytest.raises(SharpdimError, match=message):
            call()
    assert monitor.records == []
    assert monitor.on_step(4.0, model, 1.0).step == 4  # (a whole float is a step)
