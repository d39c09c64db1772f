"""Training loop: determinism, GD by hand, divergence, checkpoints, monitor hook."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from sharpdim.curvature.params import get_flat_params
from sharpdim.errors import SharpdimError
from sharpdim.training.checkpoint import checkpoint_path, load_checkpoint
from sharpdim.training.datasets import load_dataset
from sharpdim.training.loop import TrainConfig, train
from sharpdim.training.loop_state import data_fingerprint
from sharpdim.training.losses import get_loss, mse_loss
from sharpdim.training.models import DeepScalarLinear, build_mlp


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", n_train=200, n_test=50, dtype=torch.float64)


def small_mlp(seed: int = 0):
    return build_mlp(64, 10, width=16, depth=1, seed=seed, dtype=torch.float64)


def flat(model):
    return get_flat_params(list(model.parameters()))


def test_full_batch_gd_equals_a_hand_written_loop(digits):
    model, manual = small_mlp(), small_mlp()
    config = TrainConfig(optimizer="gd", lr=0.1, steps=5)
    result = train(model, digits, config)
    losses = []
    for _ in range(5):
        loss = mse_loss(manual, digits.train_batch())
        losses.append(float(loss.detach()))
        grads = torch.autograd.grad(loss, list(manual.parameters()))
        with torch.no_grad():
            for p, g in zip(manual.parameters(), grads, strict=True):
                p -= 0.1 * g
    torch.testing.assert_close(flat(model), flat(manual), rtol=1e-12, atol=1e-14)
    assert [s for s, _ in result.history] == list(range(5))
    assert [v for _, v in result.history] == pytest.approx(losses, rel=1e-12)
    assert result.status == "ok" and result.steps_completed == 5 and result.diverged_at is None
    assert result.final_train_loss == pytest.approx(
        float(mse_loss(manual, digits.train_batch()).detach())
    )
    assert result.final_test_accuracy is not None


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_same_seed_same_run(digits, optimizer):
    config = TrainConfig(optimizer=optimizer, lr=0.01, batch_size=32, steps=15, seed=4)
    runs = [small_mlp() for _ in range(3)]
    r0 = train(runs[0], digits, config)
    r1 = train(runs[1], digits, config)
    train(
        runs[2], digits, TrainConfig(optimizer=optimizer, lr=0.01, batch_size=32, steps=15, seed=5)
    )
    assert torch.equal(flat(runs[0]), flat(runs[1])) and r0.history == r1.history
    assert not torch.equal(flat(runs[0]), flat(runs[2]))


def test_global_rng_untouched_and_dropout_seeded(digits):
    model = torch.nn.Sequential(torch.nn.Dropout(0.2), small_mlp())
    other = copy.deepcopy(model)
    state = torch.get_rng_state()
    config = TrainConfig(lr=0.05, steps=4)
    train(model, digits, config)
    assert torch.equal(torch.get_rng_state(), state)
    train(other, digits, config)
    assert torch.equal(flat(model), flat(other))


def test_training_inside_no_grad_trains_the_same(digits):
    model, other = small_mlp(), small_mlp()
    config = TrainConfig(optimizer="momentum", lr=0.05, steps=3)
    with torch.no_grad():
        assert train(model, digits, config).status == "ok"
    train(other, digits, config)
    assert torch.equal(flat(model), flat(other)) and not torch.equal(flat(model), flat(small_mlp()))


def test_a_model_with_too_few_outputs_is_refused(digits):
    model = build_mlp(64, 5, width=8, depth=1, dtype=torch.float64)
    for loss in ("mse", "ce"):
        with pytest.raises(SharpdimError, match=r"^labels range over 0..9 but the model has 5 "):
            train(model, digits, TrainConfig(loss=loss, steps=2))


def test_divergence_is_recorded_not_raised(digits):
    result = train(small_mlp(), digits, TrainConfig(lr=50.0, steps=100))
    assert result.status == "diverged" and result.diverged
    assert result.diverged_at is not None and 0 < result.diverged_at < 100
    assert result.steps_completed == result.diverged_at
    assert len(result.history) == result.diverged_at
    capped = train(small_mlp(), digits, TrainConfig(lr=50.0, steps=100, divergence_threshold=2.0))
    assert capped.diverged and capped.diverged_at <= result.diverged_at


def test_an_lr_beyond_the_model_dtype_is_refused(digits):
    """lr=1e39 on a float32 model was a RuntimeError inside optimizer.step()."""
    model = build_mlp(64, 10, width=4, depth=1, dtype=torch.float32)
    with pytest.raises(
        SharpdimError, match=r"^lr=1e\+39 does not fit in the model's torch.float32"
    ):
        train(model, digits, TrainConfig(lr=1e39, steps=2))
    far = train(small_mlp(), digits, TrainConfig(lr=1e39, steps=2))  # float64: a divergence
    assert far.diverged and far.evaluations == ()


def test_an_update_that_overflows_the_dtype_is_a_divergence(digits):
    """Adam's first step is lr / (1 - beta1) = 1e39 at lr 1e38: torch raised inside step()
    (a traceback from `sharpdim eos thresholds --adam-lr 1e38 --float32`)."""
    model = build_mlp(64, 10, width=4, depth=1, dtype=torch.float32)
    result = train(model, digits, TrainConfig(optimizer="adam", lr=1e38, steps=5))
    assert (result.status, result.diverged_at, result.steps_completed) == ("diverged", 1, 0)


def test_an_overflow_in_a_later_group_leaves_no_group_updated(digits):
    """torch's SGD updates group by group: the first group moved before the second raised,
    so the run recorded "update not applied" and evaluated a half-updated model."""
    model = build_mlp(64, 10, width=4, depth=1, dtype=torch.float32)
    ps = list(model.parameters())
    before = [p.detach().clone() for p in ps]
    optimizer = torch.optim.SGD([{"params": ps[:2], "lr": 0.1}, {"params": ps[2:], "lr": 1e39}])
    result = train(model, digits, TrainConfig(steps=3), optimizer=optimizer)
    assert (result.status, result.diverged_at, result.steps_completed) == ("diverged", 1, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, ps, strict=True))


def test_minimalist_example_converges_below_and_diverges_above():
    net = DeepScalarLinear((2.0, 0.3, 2.0, 0.3))
    one = net.batch()
    from sharpdim.training.datasets import Dataset

    data = Dataset("scalar", one[0], one[1], one[0][:0], one[1][:0], 0)
    ok = train(net, data, TrainConfig(lr=0.01, steps=2000))
    assert ok.status == "ok" and ok.final_train_loss < 1e-10
    assert ok.final_test_accuracy is None
    bad = train(DeepScalarLinear((2.0, 0.3, 2.0, 0.3)), data, TrainConfig(lr=5.0, steps=2000))
    assert bad.status == "diverged"


def test_nonfinite_parameters_end_the_run(digits):
    def poison(step, model, loss_value, optimizer):
        if step == 2:
            next(model.parameters()).grad.fill_(float("inf"))

    result = train(small_mlp(), digits, TrainConfig(lr=0.1, steps=10), callbacks=[poison])
    assert result.status == "diverged" and result.diverged_at == 3


def _scalar_run(tmp_path, steps, **options):
    """GD on ``0.5 w^2`` from ``w = 1`` at lr 11: ``w_s = (-10)^s``, ``L_s = 0.5 * 100^s``."""
    from sharpdim.training.datasets import Dataset

    model = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(1.0)
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    data = Dataset("scalar", x, y, x[:0], y[:0], 0)
    config = TrainConfig(lr=11.0, steps=steps, checkpoint_dir=str(tmp_path), **options)
    return model, data, train(model, data, config)


@pytest.mark.parametrize(
    ("steps", "options"),
    [(4, {}), (3, {"divergence_threshold": 1e4})],  # limits 1e6 x max(0.5, 1) and 1e4
)
def test_a_loss_past_the_limit_after_the_last_update_is_a_divergence(tmp_path, steps, options):
    """The loop tested each step's loss before its update only: L_4 = 5e7 > 1e6 after the last
    of 4 updates was reported ok (as L_3 = 5e5 > 1e4 with divergence_threshold=1e4)."""
    model, data, result = _scalar_run(tmp_path, steps, checkpoint_steps=(0, 2, steps), **options)

    def outcome(run):
        return run.status, run.diverged_at, run.steps_completed

    assert outcome(result) == ("diverged", steps, steps)
    assert result.final_train_loss == 0.5 * 100.0**steps
    assert result.evaluations == ()  # the final evaluation is not a good one
    assert set(result.checkpoint_paths) == set(result.snapshots) == {0, 2}  # no good end
    longer = _scalar_run(tmp_path / "longer", steps + 3, **options)[2]  # the loop sees it
    assert outcome(longer) == outcome(result)
    config = TrainConfig(lr=11.0, steps=steps, **options)
    resumed = train(model, data, config, resume_from=result.checkpoint_paths[2])
    assert outcome(resumed) == outcome(result)
    assert model.weight.detach().item() == (-10.0) ** steps


@pytest.mark.parametrize("steps", [1, 3])
def test_the_end_test_sees_the_loss_in_training_mode(steps):
    """Batch norm over inputs offset by 1e4: in training mode the loss stays near 0.9, while
    eval mode's lagging running statistics give 5e7 after a few steps; the end test read the
    eval-mode loss and called such runs diverged."""
    from sharpdim.training.datasets import Dataset

    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = torch.randn(64, 1, generator=g, dtype=torch.float64)
    data = Dataset("offset", x, y, x[:0], y[:0], 0)
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.BatchNorm1d(3, dtype=torch.float64), torch.nn.Linear(3, 1, dtype=torch.float64)
    )
    stats = [b.clone() for b in model.buffers()]
    result = train(model, data, TrainConfig(lr=1e-3, steps=steps, loss="mse"))
    assert (result.status, result.steps_completed) == ("ok", steps)
    assert result.final_train_loss > 1e6  # (the eval-mode loss the end test must not read)
    assert int(model[0].num_batches_tracked) == steps  # the end test left the buffers alone
    assert not torch.equal(model[0].running_mean, stats[0])


def test_a_dataset_without_training_examples_is_refused():
    from sharpdim.training.datasets import Dataset

    x, y = torch.zeros(0, 3), torch.zeros(0, 1)
    with pytest.raises(SharpdimError, match="no training examples"):
        train(torch.nn.Linear(3, 1), Dataset("empty", x, y, x, y, 0), TrainConfig(steps=2))


def test_checkpoints_on_disk_and_in_memory(digits, tmp_path):
    model = small_mlp()
    initial = flat(model)
    config = TrainConfig(
        optimizer="momentum",
        lr=0.05,
        steps=6,
        checkpoint_steps=(6, 0, 3),
        checkpoint_dir=str(tmp_path),
    )
    result = train(model, digits, config)
    assert sorted(result.snapshots) == [0, 3, 6] and sorted(result.checkpoint_paths) == [0, 3, 6]
    assert torch.equal(result.snapshots[0], initial)
    assert torch.equal(result.snapshots[6], flat(model))
    restored = small_mlp(seed=9)
    optimizer = config.make_optimizer(list(restored.parameters()))
    assert load_checkpoint(checkpoint_path(tmp_path, 3), restored, optimizer) == 3
    assert torch.equal(flat(restored), result.snapshots[3])
    assert optimizer.state_dict()["state"]  # momentum buffers came back
    with pytest.raises(SharpdimError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt", restored)
    with pytest.raises(SharpdimError, match=r"is a folder: pass the step_XXXXXX.pt file in it"):
        load_checkpoint(tmp_path, restored)
    assert result.to_dict()["snapshots"]["0"] == initial.tolist()


def test_monitor_sees_each_step_before_the_update(digits):
    class Recorder:
        def __init__(self):
            self.calls = []

        def on_step(self, step, model, loss_value, optimizer):
            current = float(mse_loss(model, digits.train_batch()).detach())
            self.calls.append((step, loss_value, current, type(optimizer).__name__))

    monitor = Recorder()
    seen = []
    result = train(
        small_mlp(),
        digits,
        TrainConfig(lr=0.1, steps=4),
        monitor=monitor,
        callbacks=[lambda s, m, v, o: seen.append(s)],
    )
    assert [c[0] for c in monitor.calls] == [0, 1, 2, 3] == seen
    for (_, value, current, name), (_, logged) in zip(monitor.calls, result.history, strict=True):
        assert value == pytest.approx(current, rel=1e-12) and value == logged and name == "SGD"


def test_evaluations_stop_loss_and_casting(digits):
    model = build_mlp(64, 10, width=16, depth=1)  # float32 model, float64 data: cast
    result = train(model, digits, TrainConfig(lr=0.1, steps=10, eval_every=4, log_every=3))
    assert [e["step"] for e in result.evaluations] == [0, 4, 8, 10]
    assert [s for s, _ in result.history] == [0, 3, 6, 9]
    stopped = train(small_mlp(), digits, TrainConfig(lr=0.1, steps=50, stop_loss=0.44))
    assert stopped.status == "ok" and stopped.steps_completed < 50
    assert stopped.history[-1][1] < 0.44
    assert train(small_mlp(), digits, TrainConfig(steps=3), progress=True).status == "ok"


def test_config_validation():
    with pytest.raises(SharpdimError, match="unknown optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(SharpdimError, match="unknown loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(SharpdimError, match="checkpoint steps"):
        TrainConfig(steps=5, checkpoint_steps=(6,))
    with pytest.raises(SharpdimError, match="lr="):
        TrainConfig(lr=-1.0)
    with pytest.raises(SharpdimError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig(betas=[0.5, 0.6]).to_dict()["betas"] == (0.5, 0.6)
    # betas were checked for Adam only: IndexError / TypeError for the others
    for optimizer in ("gd", "momentum", "adam"):
        for bad in ((0.9,), None):
            with pytest.raises(SharpdimError, match=r"^betas must be a pair \(b1, b2\)"):
                TrainConfig(optimizer=optimizer, betas=bad)
    with pytest.raises(SharpdimError, match=r"^betas must be a finite number in \[0, 1\), got 'x'"):
        TrainConfig(optimizer="adam", betas=(0.9, "x"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stop_loss": float("nan")}, r"^stop_loss must be a finite number or None, got nan"),
        ({"divergence_threshold": float("nan")}, r"^divergence_threshold must be a finite"),
        ({"stop_loss": "0.1"}, r"^stop_loss must be a finite number or None, got '0.1'"),
        ({"steps": 10.5}, r"^steps must be an integer >= 0, got 10.5"),
        ({"steps": -1}, r"^steps must be an integer >= 0, got -1"),
        ({"log_every": 0}, r"^log_every must be an integer >= 1, got 0"),
        ({"checkpoint_steps": (2.5,)}, r"^a checkpoint step must be an integer >= 0, got 2.5"),
        ({"batch_size": 2.5}, r"^batch_size must be an integer >= 1, got 2.5"),
    ],
)
def test_bad_numbers_in_the_config_are_refused(options, message):
    with pytest.raises(SharpdimError, match=message):
        TrainConfig(**options)


def test_whole_floats_in_the_config_become_ints(digits, tmp_path):
    config = TrainConfig(
        steps=4.0,
        eval_every=2.0,
        batch_size=50.0,
        checkpoint_steps=(2.0, 0),
        checkpoint_dir=str(tmp_path),
    )
    assert (config.steps, config.eval_every, config.batch_size) == (4, 2, 50)
    assert config.checkpoint_steps == (0, 2) and all(
        type(s) is int for s in config.checkpoint_steps
    )
    assert sorted(train(small_mlp(), digits, config).checkpoint_paths) == [0, 2]


def with_dropout():
    model = small_mlp()
    model.insert(2, torch.nn.Dropout(0.3))
    return model


def test_resuming_a_minibatch_run_is_bit_identical(digits, tmp_path):
    config = TrainConfig(
        optimizer="momentum",
        lr=0.05,
        batch_size=10,
        steps=10,
        seed=3,
        checkpoint_steps=(5,),
        checkpoint_dir=str(tmp_path),
    )
    whole = with_dropout()
    uninterrupted = train(whole, digits, config)
    resumed_model = with_dropout()  # same initialisation: the checkpoint overwrites it anyway
    state = torch.get_rng_state()
    resumed = train(
        resumed_model,
        digits,
        TrainConfig(optimizer="momentum", lr=0.05, batch_size=10, steps=10, seed=3),
        resume_from=checkpoint_path(tmp_path, 5),
    )
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(whole.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.steps_completed == 10 and [s for s, _ in resumed.history] == [5, 6, 7, 8, 9]
    assert resumed.history == uninterrupted.history[5:]


def test_stop_loss_at_a_checkpoint_step_keeps_the_checkpoint_of_that_step(digits, tmp_path):
    # losses of this run: 1.14, 0.92, 0.69, 0.68, 0.74, 0.42 at step 5 (first below 0.45)
    base = {"optimizer": "momentum", "lr": 0.05, "batch_size": 10, "steps": 10, "seed": 3}
    full = TrainConfig(**base, checkpoint_steps=(5,), checkpoint_dir=str(tmp_path / "full"))
    whole = with_dropout()
    train(whole, digits, full)
    stop_dir = tmp_path / "stop"
    stopped = train(
        with_dropout(),
        digits,
        TrainConfig(**base, stop_loss=0.45, checkpoint_steps=(5,), checkpoint_dir=str(stop_dir)),
    )
    assert stopped.steps_completed == 5 and list(stopped.checkpoint_paths) == [5]
    ref = torch.load(checkpoint_path(tmp_path / "full", 5), weights_only=True)
    got = torch.load(checkpoint_path(stop_dir, 5), weights_only=True)
    assert got["loop"]["batches"]["taken"] == ref["loop"]["batches"]["taken"] == 5
    assert torch.equal(got["loop"]["rng"], ref["loop"]["rng"])
    resumed = with_dropout()
    train(resumed, digits, TrainConfig(**base), resume_from=checkpoint_path(stop_dir, 5))
    assert torch.equal(flat(whole), flat(resumed))


def test_resuming_under_another_config_is_refused(digits, tmp_path):
    config = TrainConfig(
        optimizer="momentum",
        lr=0.05,
        batch_size=10,
        steps=6,
        seed=3,
        checkpoint_steps=(3,),
        checkpoint_dir=str(tmp_path),
    )
    first = train(small_mlp(), digits, config)
    assert 0 <= first.wall_time_s < 60  # seconds spent in train, not a clock reading
    base = {**config.to_dict(), "checkpoint_steps": (), "checkpoint_dir": None}
    for change in ({"lr": 0.5}, {"momentum": 0.5}, {"seed": 4}, {"loss": "ce"}):
        with pytest.raises(SharpdimError) as err:
            train(
                small_mlp(),
                digits,
                TrainConfig(**{**base, **change}),
                resume_from=checkpoint_path(tmp_path, 3),
            )
        ((name, value),) = change.items()
        assert f"{name}=" in str(err.value) and f"(now {value!r})" in str(err.value)
        assert "\n" not in str(err.value)
    n = digits.num_train
    for other in (digits.subset(n // 2), replace(digits, y_train=digits.y_train.flip(0))):
        with pytest.raises(SharpdimError, match="was written on another training set") as err:
            train(small_mlp(), other, TrainConfig(**base), resume_from=checkpoint_path(tmp_path, 3))
        assert f"({n} examples of shape [64]; now {other.num_train} of shape [64]" in str(err.value)
    # another precision: load_state_dict cast the float64 state and the run went on in float32
    with pytest.raises(SharpdimError, match=r"^\S+step_000003.pt holds 1.weight as torch.float64 "):
        train(
            small_mlp().float(),
            digits,
            TrainConfig(**base),
            resume_from=checkpoint_path(tmp_path, 3),
        )
    resumed = train(
        small_mlp(), digits, TrainConfig(**base), resume_from=checkpoint_path(tmp_path, 3)
    )
    assert resumed.steps_completed == 6 and 0 <= resumed.wall_time_s < 60


def test_resuming_from_a_checkpoint_without_loop_state_replays_the_batch_order(digits, tmp_path):
    config = TrainConfig(
        optimizer="momentum",
        lr=0.05,
        batch_size=30,
        steps=9,
        checkpoint_steps=(7,),
        checkpoint_dir=str(tmp_path),
    )
    whole = small_mlp()
    train(whole, digits, config)
    state = torch.load(checkpoint_path(tmp_path, 7), weights_only=True)
    del state["loop"], state["sha256"], state["optimizer_params"]  # as older versions wrote
    torch.save(state, tmp_path / "old.pt")
    resumed = small_mlp(seed=1)
    train(
        resumed,
        digits,
        TrainConfig(**{**config.to_dict(), "checkpoint_dir": None}),
        resume_from=tmp_path / "old.pt",
    )
    assert torch.equal(flat(whole), flat(resumed))


def test_files_that_are_not_checkpoints_give_one_line_errors(digits, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    model = small_mlp()
    other = {
        "no_model.pt": {"step": 1, "weights": model.state_dict()},
        "step_not_int.pt": {"step": "one", "model": model.state_dict()},
        "bad_loop.pt": {"step": 1, "model": model.state_dict(), "optimizer": None, "loop": {}},
    }
    for name, state in other.items():
        torch.save(state, tmp_path / name)
    config = TrainConfig(steps=3)
    with pytest.raises(SharpdimError, match=r"notes.pt is not a readable sharpdim checkpoint"):
        load_checkpoint(text, small_mlp())
    with pytest.raises(SharpdimError, match=r"notes.pt is not a readable sharpdim checkpoint"):
        train(small_mlp(), digits, config, resume_from=text)
    for name in other:
        with pytest.raises(SharpdimError, match=rf"{name} is not a sharpdim checkpoint") as err:
            train(small_mlp(), digits, config, resume_from=tmp_path / name)
        assert "\n" not in str(err.value) and "written by train()" in str(err.value)


def test_bad_checkpoints_and_options_give_one_line_errors(digits, tmp_path):
    with pytest.raises(SharpdimError, match=r"^eps -1.0 must be >= 0"):
        TrainConfig(optimizer="adam", eps=-1.0)
    with pytest.raises(SharpdimError, match=r"^weight_decay -0.1 must be >= 0"):
        TrainConfig(weight_decay=-0.1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(SharpdimError, match="cannot create checkpoint directory"):
        train(
            small_mlp(),
            digits,
            TrainConfig(steps=2, checkpoint_steps=(2,), checkpoint_dir=str(blocker / "sub")),
        )
    config = TrainConfig(steps=2, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path))
    train(small_mlp(), digits, config)
    wrong = build_mlp(64, 10, width=8, depth=1, dtype=torch.float64)
    with pytest.raises(SharpdimError, match="does not fit this model"):
        load_checkpoint(checkpoint_path(tmp_path, 2), wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SharpdimError, match="is not a readable sharpdim checkpoint"):
        load_checkpoint(garbage, small_mlp())
    with pytest.raises(SharpdimError, match="past steps=1"):
        train(small_mlp(), digits, TrainConfig(steps=1), resume_from=checkpoint_path(tmp_path, 2))
    with pytest.raises(SharpdimError, match=r"batch_size=None \(now 10\)"):
        train(
            small_mlp(),
            digits,
            TrainConfig(steps=3, batch_size=10),
            resume_from=checkpoint_path(tmp_path, 2),
        )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("limit", "abc"),
        ("rng", "state"),
        ("rng", torch.zeros(3)),
        ("taken", -5),
        ("taken", 1.5),
        ("config", "x"),  # (these two crashed with AttributeError / TypeError)
        ("data", [1]),
    ],
)
def test_a_checkpoint_with_a_malformed_loop_state_is_refused(digits, tmp_path, field, value):
    config = TrainConfig(
        steps=4, batch_size=50, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path)
    )
    train(small_mlp(), digits, config)
    state = torch.load(checkpoint_path(tmp_path, 2), weights_only=True)
    target = state["loop"]["batches"] if field == "taken" else state["loop"]
    target[field] = value
    del state["sha256"]  # (edited by hand: refused for its layout, not as damaged)
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    with pytest.raises(SharpdimError, match=r"edited.pt is not a sharpdim checkpoint"):
        train(small_mlp(), digits, config, resume_from=edited)


def test_numpy_hyperparameters_give_readable_checkpoints(digits, tmp_path):
    """An lr from np.logspace reached the optimizer and the checkpoint, which
    torch.load(weights_only=True) then refused: the run could not be resumed."""
    import numpy as np

    lr = np.logspace(-2, -1, 3)[1]
    config = TrainConfig(
        optimizer="momentum",
        lr=lr,
        momentum=np.float32(0.5),
        batch_size=np.int64(40),
        steps=6,
        seed=np.int64(2),
        divergence_threshold=np.float64(1e3),
        checkpoint_steps=(3,),
        checkpoint_dir=str(tmp_path / "a"),
    )
    assert type(config.lr) is float and config.lr == float(lr)
    assert type(config.momentum) is float and type(config.seed) is int
    assert type(config.divergence_threshold) is float
    whole = small_mlp()
    train(whole, digits, config)
    resumed = small_mlp()
    train(resumed, digits, config, resume_from=checkpoint_path(tmp_path / "a", 3))
    assert torch.equal(flat(whole), flat(resumed))


def test_a_users_optimizer_with_numpy_lr_saves_a_readable_checkpoint(tmp_path):
    import numpy as np

    from sharpdim.training.checkpoint import save_checkpoint

    model = small_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=np.float64(0.1), momentum=0.9)
    path = save_checkpoint(tmp_path, 0, model, optimizer)
    other = small_mlp(1)
    twin = torch.optim.SGD(other.parameters(), lr=0.5, momentum=0.9)
    assert load_checkpoint(path, other, twin) == 0
    # an optimizer of another model's parameters would not train this one
    with pytest.raises(SharpdimError, match=r"the optimizer has a parameter not in the model"):
        load_checkpoint(path, small_mlp(1), twin)
    assert twin.param_groups[0]["lr"] == 0.1 and type(twin.param_groups[0]["lr"]) is float


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": 1.5}, r"^seed must be an integer >= 0, got 1.5"),
        ({"seed": -1}, r"^seed must be an integer >= 0, got -1"),
        ({"seed": 2**32}, r"^seed must be at most 2\*\*32 - 1 \(torch keeps only"),
        ({"lr": float("inf")}, r"^lr must be a finite number, got inf"),
        ({"momentum": "0.9"}, r"^momentum must be a finite number, got '0.9'"),
        ({"divergence_factor": float("nan")}, r"need lr > 0 and a divergence factor > 1"),
        ({"divergence_factor": "big"}, r"^divergence_factor must be a number > 1"),
        ({"checkpoint_steps": 5}, r"^checkpoint_steps must be a sequence of steps, got 5"),
        ({"checkpoint_dir": 123}, r"^checkpoint_dir must be a path or None, got 123"),
        ({"keep_snapshots": "no"}, r"^keep_snapshots must be True or False, got 'no'"),  # (kept)
    ],
)
def test_bad_seeds_and_settings_are_one_line_errors(options, message):
    with pytest.raises(SharpdimError, match=message):
        TrainConfig(**options)


def test_an_infinite_divergence_factor_leaves_only_non_finite_losses(digits):
    config = TrainConfig(lr=0.1, steps=3, divergence_factor=float("inf"))
    assert train(small_mlp(), digits, config).status == "ok"
    blow_up = replace(config, lr=1e9, steps=40)
    result = train(small_mlp(), digits, blow_up)
    assert result.status == "diverged" and result.diverged_at is not None


def test_training_leaves_the_cuda_generators_alone(digits, monkeypatch):
    """train() seeded every CUDA generator through torch.manual_seed and restored none."""
    calls = []
    for name in ("manual_seed_all", "manual_seed"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: calls.append(name))
    train(small_mlp(), digits, TrainConfig(lr=0.1, steps=2))
    assert calls == []


def test_a_model_only_checkpoint_says_how_to_train_from_it(digits, tmp_path):
    from sharpdim.training.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path, 0, small_mlp())
    with pytest.raises(SharpdimError, match=r"load_checkpoint\(path, model\), no optimizer"):
        train(small_mlp(), digits, TrainConfig(lr=0.1, steps=2), resume_from=path)


def test_train_gives_every_submodule_its_mode_back(digits):
    """A batch norm frozen with ``.eval()`` came back in training mode after ``train()``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 10)
    ).double()
    model[1].eval()
    result = train(model, digits, TrainConfig(lr=0.1, steps=3, batch_size=20, eval_every=2))
    assert result.status == "ok"
    assert [m.training for m in model] == [True, False, True, True] and model.training


def test_wrong_kinds_of_train_arguments_are_one_line_errors(digits):
    config = TrainConfig(lr=0.1, steps=2)
    model = small_mlp()
    cases = [
        ({"dataset": digits.train_batch()}, r"^dataset must be a Dataset.*got tuple"),
        ({"monitor": lambda *a: None}, r"^monitor must be an object with on_step.*callbacks"),
        ({"callbacks": [1]}, r"^callbacks must be a list of functions"),
        ({"callbacks": "print"}, r"^callbacks must be a list of functions"),
        ({"loss_fn": 3}, r"^loss_fn must be a loss name .*got int"),
        ({"config": {"lr": 0.1}}, r"^config must be a TrainConfig, got dict"),
        ({"model": None}, r"^model must be a torch.nn.Module, got NoneType"),
    ]
    for change, message in cases:
        kwargs = {"model": model, "dataset": digits, "config": config, **change}
        with pytest.raises(SharpdimError, match=message):
            train(kwargs.pop("model"), kwargs.pop("dataset"), kwargs.pop("config"), **kwargs)
    by_name = train(small_mlp(), digits, config, loss_fn="mse")
    by_config = train(small_mlp(), digits, replace(config, loss="mse"))
    assert by_name.history == by_config.history


def test_modes_are_given_back_through_each_modules_own_train(digits):
    """A module whose ``train(mode)`` does more than set its flag (here: merging weights for
    inference) must see that call when its mode is restored."""

    class Merging(torch.nn.Linear):
        merged = False

        def train(self, mode: bool = True) -> Merging:
            self.merged = not mode
            return super().train(mode)

    torch.manual_seed(0)
    model = torch.nn.Sequential(Merging(64, 8), torch.nn.Tanh(), torch.nn.Linear(8, 10)).double()
    model.train()
    from sharpdim.training.losses import evaluate

    evaluate(model, get_loss("ce"), digits.train_batch())
    assert model[0].training and not model[0].merged
    model.eval()
    train(model, digits, TrainConfig(lr=0.1, steps=2))
    assert not model[0].training and model[0].merged


def _shared_by_two_parents(shared: torch.nn.Module) -> torch.nn.Sequential:
    """``root(a(shared), b(shared))`` with flags root, a, shared, b = train, eval, train, eval
    (what ``modules()`` lists: ``b`` last, whose recursive ``train`` would reach ``shared``)."""
    a, b = torch.nn.Sequential(shared), torch.nn.Sequential(shared)
    root = torch.nn.Sequential(a, b)
    root.train()
    b.eval()
    a.eval()
    shared.train()
    return root


def test_a_module_shared_by_two_parents_gets_its_own_mode_back():
    """``modules()`` lists a shared module once; restoring through each parent's recursive
    ``train()`` let the later parent override its flag."""
    from sharpdim.module_modes import restored_modes

    shared = torch.nn.BatchNorm1d(3)
    root = _shared_by_two_parents(shared)
    before = [m.training for m in root.modules()]
    with restored_modes(root):
        root.eval()
    assert [m.training for m in root.modules()] == before == [True, False, True, False]


def test_a_shared_module_with_its_own_train_is_restored_through_it():
    from sharpdim.module_modes import restored_modes

    class Merging(torch.nn.Linear):
        merged = False

        def train(self, mode: bool = True) -> Merging:
            self.merged = not mode
            return super().train(mode)

    shared = Merging(3, 3)
    root = _shared_by_two_parents(shared)
    with restored_modes(root):
        root.eval()
    assert [m.training for m in root.modules()] == [True, False, True, False]
    assert not shared.merged  # its train(True) ran last, as before the block


def test_a_refused_resume_leaves_the_model_and_optimizer_as_they_were(digits, tmp_path):
    """The past-steps and batch-size checks ran after the checkpoint had been loaded: the
    error was raised with the caller's model and optimizer already overwritten."""
    config = TrainConfig(
        optimizer="momentum", lr=0.05, steps=4, checkpoint_steps=(3,), checkpoint_dir=str(tmp_path)
    )
    train(small_mlp(), digits, config)
    model = small_mlp(seed=5)
    before = flat(model).clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for steps, batch_size, message in ((2, None, "past steps=2"), (4, 10, r"batch_size=None")):
        with pytest.raises(SharpdimError, match=message):
            train(
                model,
                digits,
                TrainConfig(optimizer="momentum", lr=0.05, steps=steps, batch_size=batch_size),
                optimizer=optimizer,
                resume_from=checkpoint_path(tmp_path, 3),
            )
        assert torch.equal(flat(model), before) and optimizer.state_dict()["state"] == {}


def test_a_resume_on_relabelled_examples_is_refused(digits, tmp_path):
    """The training set's fingerprint hashed 64 evenly spaced examples: relabelling any of
    the others (a label-noise study with another noise seed) resumed without a word."""
    config = TrainConfig(lr=0.1, steps=4, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path))
    train(small_mlp(), digits, config)
    n = digits.num_train
    sampled = set(torch.linspace(0, n - 1, 64).round().long().tolist())
    row = next(i for i in range(n) if i not in sampled)
    labels = digits.y_train.clone()
    labels[row] = (labels[row] + 1) % 10
    relabelled = replace(digits, y_train=labels)
    resume = TrainConfig(lr=0.1, steps=4)
    with pytest.raises(SharpdimError, match="was written on another training set"):
        train(small_mlp(), relabelled, resume, resume_from=checkpoint_path(tmp_path, 2))
    # a checkpoint of an older version holds the sampled fingerprint, which still decides
    state = torch.load(checkpoint_path(tmp_path, 2), weights_only=True)
    del state["sha256"], state["optimizer_params"]  # (both came later)
    state["loop"]["data"] = data_fingerprint(digits.to(dtype=torch.float64), sampled=True)
    torch.save(state, tmp_path / "old.pt")
    whole, resumed = small_mlp(), small_mlp(seed=1)
    train(whole, digits, resume)
    train(resumed, digits, resume, resume_from=tmp_path / "old.pt")
    assert torch.equal(flat(whole), flat(resumed)) and "rows" not in state["loop"]["data"]
    with pytest.raises(SharpdimError, match="was written on another training set"):
        train(small_mlp(), digits.subset(n - 1), resume, resume_from=tmp_path / "old.pt")


def test_a_resume_with_another_loss_fn_is_refused(digits, tmp_path):
    """The checkpoint recorded config.loss, not the loss_fn the run trained on: a run started
    with loss_fn="ce" under the default config (mse) resumed on MSE without a word."""
    config = TrainConfig(lr=0.1, steps=4, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path))
    whole = small_mlp()
    train(whole, digits, config, loss_fn="ce")
    resume = TrainConfig(lr=0.1, steps=4)
    path = checkpoint_path(tmp_path, 2)
    with pytest.raises(SharpdimError, match=r"written with the loss cross_entropy_loss \(now mse"):
        train(small_mlp(), digits, resume, resume_from=path)

    def my_ce(model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(SharpdimError, match=r"\(now tests.training.test_loop.*my_ce\): resume"):
        train(small_mlp(), digits, resume, loss_fn=my_ce, resume_from=path)
    for same in ("cross_entropy", get_loss("ce")):  # an alias, or the function itself
        resumed = small_mlp(seed=1)
        train(resumed, digits, resume, loss_fn=same, resume_from=path)
        assert torch.equal(flat(whole), flat(resumed))


def test_a_resume_on_a_model_with_other_modules_is_refused(digits, tmp_path):
    """Only parameter names and shapes were compared: a ReLU twin of a tanh model (or another
    dropout rate) loaded its checkpoint and trained on, against the docs."""
    config = TrainConfig(lr=0.1, steps=4, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path))
    train(small_mlp(), digits, config)
    resume, path = TrainConfig(lr=0.1, steps=4), checkpoint_path(tmp_path, 2)
    relu = build_mlp(64, 10, width=16, depth=1, activation="relu", dtype=torch.float64)
    before = flat(relu).clone()
    message = r"written from another model \(module '2' Tanh\(\); now module '2' ReLU\(\)\)"
    with pytest.raises(SharpdimError, match=message):
        train(relu, digits, resume, resume_from=path)
    assert torch.equal(flat(relu), before)
    # a checkpoint of an older version has no module list: names and shapes decide, as before
    state = torch.load(path, weights_only=True)
    del state["sha256"], state["loop"]["modules"], state["loop"]["loss_fn"]
    del state["optimizer_params"]  # (came after the digest)
    torch.save(state, tmp_path / "old.pt")
    assert train(relu, digits, resume, resume_from=tmp_path / "old.pt").status == "ok"


class _Scaled(torch.nn.Module):
    """A user's module whose repr shows a trained value."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return self.scale * x

    def extra_repr(self) -> str:
        return f"scale={self.scale.item():.6f}"


def test_modules_whose_repr_shows_trained_values_are_compared_by_class(digits, tmp_path):
    """A user's own module, a quantization observer (torch.ao: its repr shows the min/max it
    has seen) and nn.ParameterList (its repr lists its tensors, on several lines) refused
    their own checkpoints."""
    from torch.ao.quantization import MinMaxObserver

    def model():
        extra = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(10, dtype=torch.float64))])
        observer = MinMaxObserver(dtype=torch.quint8)
        return torch.nn.Sequential(small_mlp(), _Scaled(), observer, _Shift(extra))

    config = TrainConfig(lr=0.1, steps=4, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path))
    whole, resumed = model(), model()
    train(whole, digits, config)
    train(resumed, digits, TrainConfig(lr=0.1, steps=4), resume_from=checkpoint_path(tmp_path, 2))
    assert torch.equal(flat(whole), flat(resumed)) and whole[1].scale.item() != 1.0


class _Shift(torch.nn.Module):
    def __init__(self, shifts: torch.nn.ParameterList) -> None:
        super().__init__()
        self.shifts = shifts

    def forward(self, x):
        return x + self.shifts[0]


def _scalar_problem():
    """GD on ``0.5 w^2`` from ``w = 1`` at lr 11: ``L_s = 0.5 * 100^s``; with
    ``divergence_threshold=1e4`` the run diverges at step 3 (``L_3 = 5e5``)."""
    from sharpdim.training.datasets import Dataset

    def model():
        net = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
        with torch.no_grad():
            net.weight.fill_(1.0)
        return net

    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    return model, Dataset("scalar", x, y, x[:0], y[:0], 0)


@pytest.mark.parametrize("legacy_inf", [False, True])
def test_a_checkpoint_written_after_resuming_a_model_only_one_keeps_the_limit(tmp_path, legacy_inf):
    """Resuming a checkpoint without loop state (save_checkpoint) left the divergence limit
    inf until that step's loss was seen, and the checkpoint of that step stored the inf: a
    run resumed from it never diverged by its loss again (ok, L_5 = 5e9, instead of
    diverged at 3 under divergence_threshold=1e4). Such files are now repaired on reading."""
    from sharpdim.training.checkpoint import read_checkpoint, save_checkpoint

    model, data = _scalar_problem()
    config = TrainConfig(lr=11.0, steps=5, divergence_threshold=1e4)
    first = model()
    optimizer = config.make_optimizer(list(first.parameters()))
    train(first, data, replace(config, steps=1), optimizer=optimizer)
    save_checkpoint(tmp_path / "own", 1, first, optimizer)  # (no loop state)
    again = replace(config, checkpoint_steps=(1,), checkpoint_dir=str(tmp_path / "again"))
    resumed = train(model(), data, again, resume_from=checkpoint_path(tmp_path / "own", 1))
    assert (resumed.status, resumed.diverged_at) == ("diverged", 3)
    written = checkpoint_path(tmp_path / "again", 1)
    limit = read_checkpoint(written)["loop"]["limit"]
    if legacy_inf:  # a file of an earlier version: the unknown limit stored as inf
        state = read_checkpoint(written)
        state["loop"]["limit"] = math.inf
        del state["optimizer_params"]  # (came after the digest, like the module list)
        written = tmp_path / "legacy.pt"
        torch.save(state, written)  # (no sha256: edited by hand)
    twice = train(model(), data, config, resume_from=written)
    assert (twice.status, twice.diverged_at, twice.steps_completed) == ("diverged", 3, 3)
    assert twice.history == ((1, 50.0), (2, 5000.0))
    assert math.isnan(limit)  # recorded as unknown, not as inf


def test_an_inf_limit_is_kept_where_the_config_sets_no_bound(tmp_path):
    """With divergence_factor=inf and no threshold the limit is inf for real: kept on resuming
    (only the loss L_5 = 5e9 after the last update is tested, and passes)."""
    model, data = _scalar_problem()
    config = TrainConfig(lr=11.0, steps=5, divergence_factor=math.inf)
    run = train(model(), data, replace(config, checkpoint_steps=(2,), checkpoint_dir=str(tmp_path)))
    resumed = train(model(), data, config, resume_from=run.checkpoint_paths[2])
    assert (run.status, resumed.status, resumed.final_train_loss) == ("ok", "ok", 5e9)


def test_a_custom_loss_that_is_no_scalar_with_a_graph_is_a_one_line_error(digits):
    """A vector loss raised ValueError, a Python float AttributeError, a detached or integer
    loss a RuntimeError from backward, deep in the loop; a NaN loss with a graph stays a
    recorded divergence."""
    bad = [
        (lambda m, b: (m(b[0]) ** 2).mean(1), "a scalar tensor, got shape (200,)"),
        (lambda m, b: 1.0, "a scalar tensor, got float"),
        (lambda m, b: torch.tensor(3), "a real floating-point scalar, got dtype torch.int64"),
        (lambda m, b: mse_loss(m, b).detach(), "returned a loss without a gradient graph"),
    ]
    for loss_fn, message in bad:
        with pytest.raises(SharpdimError, match=r"^loss_fn ") as err:
            train(small_mlp(), digits, TrainConfig(steps=2), loss_fn=loss_fn)
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SharpdimError, match=r"^loss_fn must return a scalar tensor, got shape"):
        train(small_mlp(), digits, TrainConfig(steps=0), loss_fn=bad[0][0])  # (evaluation)
    nan = train(
        small_mlp(), digits, TrainConfig(steps=3), loss_fn=lambda m, b: mse_loss(m, b) * math.nan
    )
    assert (nan.status, nan.diverged_at, nan.steps_completed) == ("diverged", 0, 0)
    detached_nan = train(  # a loss that gives up with a plain NaN: a divergence, not an error
        small_mlp(), digits, TrainConfig(steps=3), loss_fn=lambda m, b: torch.tensor(math.nan)
    )
    assert (detached_nan.status, detached_nan.diverged_at) == ("diverged", 0)
    with pytest.raises(SharpdimError, match=r"without a gradient graph"):  # finite: an error,
        train(  # also above the divergence threshold (it was recorded as diverged at 0)
            small_mlp(), digits, TrainConfig(steps=3, divergence_threshold=1e-9),
            loss_fn=lambda m, b: mse_loss(m, b).detach(),
        )  # fmt: skip
    shaped = train(
        small_mlp(), digits, TrainConfig(steps=3), loss_fn=lambda m, b: mse_loss(m, b)[None]
    )  # one element of shape (1,): used as the scalar it is
    plain = train(small_mlp(), digits, TrainConfig(steps=3))
    assert shaped.history == plain.history


def test_an_optimizer_name_or_a_number_as_resume_from_is_a_one_line_error(digits):
    """optimizer='sgd' raised AttributeError ('str' has no zero_grad), resume_from=3 a
    TypeError from pathlib."""
    config = TrainConfig(steps=1)
    with pytest.raises(
        SharpdimError, match=r"^optimizer must be None or a torch.optim.Optimizer .*, got str$"
    ):
        train(small_mlp(), digits, config, optimizer="sgd")
    with pytest.raises(SharpdimError, match=r"^resume_from must be None or the path .*, got int$"):
        train(small_mlp(), digits, config, resume_from=3)


def test_training_inside_inference_mode_names_it(digits):
    """The refusal blamed torch.no_grad(), under which training works."""
    with torch.inference_mode(), pytest.raises(SharpdimError, match=r"inside torch.inference_mode"):
        train(small_mlp(), digits, TrainConfig(steps=2))


def test_param_groups_without_a_numeric_lr_still_train(digits):
    """A custom optimizer's group may hold lr=None: the overflow check must not raise."""

    class _Plain(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[override]
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.data.add_(p.grad, alpha=-0.1)

    model = build_mlp(64, 10, width=4, depth=1, dtype=torch.float64)
    ps = list(model.parameters())
    optimizer = _Plain([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1)
    for group in optimizer.param_groups:
        group["lr"] = None
    result = train(model, digits, TrainConfig(steps=3), optimizer=optimizer)
    assert result.status == "ok" and result.steps_completed == 3


def test_an_optimizer_over_another_model_is_refused(digits):
    """It trained nothing and reported status 'ok'."""
    other = small_mlp(1)
    sgd = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(SharpdimError, match=r"^the optimizer holds none of the model's trainable"):
        train(small_mlp(), digits, TrainConfig(lr=0.1, steps=3), optimizer=sgd)


def test_a_batch_larger_than_the_data_is_refused_before_a_checkpoint(digits, tmp_path):
    """It was refused at the first batch, after step 0's checkpoint had been written."""
    config = TrainConfig(lr=0.1, steps=3, batch_size=201, checkpoint_steps=(0,))
    config = replace(config, checkpoint_dir=str(tmp_path))
    with pytest.raises(SharpdimError, match=r"^batch_size=201 is not in \[1, 200\] for digits"):
        train(small_mlp(), digits, config)
    assert list(tmp_path.iterdir()) == []


def test_a_train_result_with_snapshots_goes_into_the_store_as_its_docs_say(digits, tmp_path):
    """``ResumableRuns``' docs give ``lambda r: r.to_dict()`` as the encoder: with the int
    step keys of ``snapshots`` the store refused it after the run was computed (review)."""
    from sharpdim.runner import ResultsStore, ResumableRuns

    config = TrainConfig(
        lr=0.05, batch_size=10, steps=4, checkpoint_steps=(0, 4), checkpoint_dir=str(tmp_path)
    )
    result = train(small_mlp(seed=0), digits, config)
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        runs = ResumableRuns(
            store,
            encode=lambda r: r.to_dict(),
            decode=dict,
            status=lambda r: "diverged" if r.diverged else "done",
        )
        stored = runs({"lr": 0.05}, lambda: result)
    assert sorted(stored["snapshots"]) == ["0", "4"]
    assert stored["snapshots"]["4"] == result.snapshots[4].tolist()
    assert sorted(stored["checkpoint_paths"]) == ["0", "4"]
