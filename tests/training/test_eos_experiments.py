"""EoS reproductions 1 and 3: datasets, run configs, the execute hook, stored-run round trip."""

import json
import math

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.runner.encoding import config_key, json_value
from sharpdim.training.eos_experiments import (
    EoSRun,
    MLPSetup,
    eos_run_config,
    optimizer_thresholds,
    progressive_sharpening,
)
from sharpdim.training.loop import TrainConfig

RUN = EoSRun(
    optimizer="gd",
    lr=0.5,
    threshold=4.0,
    status="diverged",
    diverged_at=9,
    steps=(0, 4, 8, 12),
    loss=(1.0, 0.5, math.inf, math.nan),
    sharpness=(2.0, 4.0, 6.0, math.nan),
    bounded=(2.0, 4.0, 6.0, 10.0),
    late_median_ratio=math.nan,
    late_ratio_range=(math.nan, math.nan),
    final_train_loss=math.nan,
    final_train_accuracy=None,
    wall_time_s=1.25,
)


def test_setup_refuses_datasets_eos_cannot_train():
    with pytest.raises(SharpdimError, match="dataset 'idx' is not one of the EoS datasets"):
        MLPSetup(dataset="idx")
    with pytest.raises(SharpdimError, match="n_train=1501 does not fit in the 1500 training"):
        MLPSetup(n_train=1501).data()


def test_modular_is_one_hot_encoded_for_the_mlp():
    data = MLPSetup(dataset="modular", n_train=60).data()
    assert tuple(data.x_train.shape) == (60, 194) and data.x_train.dtype == torch.float64
    assert data.num_outputs == 97 and data.x_train.sum(dim=1).tolist() == [2.0] * 60


def test_run_survives_the_json_round_trip_of_the_store():
    stored = json.loads(json.dumps(json_value(RUN.to_dict())))
    assert stored["loss"] == [1.0, 0.5, None, None]
    back = EoSRun.from_dict(stored)
    assert back.steps == (0, 4, 8, 12) and back.diverged_at == 9
    assert math.isnan(back.loss[3]) and math.isnan(back.loss[2])  # inf is stored as null
    assert json_value(back.to_dict()) == json_value(RUN.to_dict())


def test_summarized_takes_the_late_records():
    run = RUN.summarized(12, 0.5)  # records at steps 8 and 12: ratios 1.5 and 2.5
    assert run.late_median_ratio == 2.0  # median of an even count: the mean of the middle two
    assert run.late_ratio_range == (1.5, 2.5)
    assert RUN.summarized(12, 0.25).late_ratio_range == (2.5, 2.5)


def test_run_config_holds_what_determines_the_run():
    setup = MLPSetup(n_train=60, width=8, depth=1)

    def config(**kw):
        return eos_run_config(
            setup, TrainConfig(steps=12, **kw), every=4, max_examples=5000, tol=1e-4
        )

    gd = config(optimizer="gd", lr=0.2)
    assert gd["setup"] == {"dataset": "digits", "n_train": 60, "width": 8, "depth": 1,
                           "activation": "tanh", "loss": "mse", "seed": 0, "dtype": "float64"}  # fmt: skip
    assert gd["monitor"] == {"every": 4, "max_examples": 5000, "tol": 1e-4}
    assert {"momentum", "betas", "eps"}.isdisjoint(gd["train"]) and gd["train"]["lr"] == 0.2
    heavy = config(optimizer="momentum", lr=0.2, momentum=0.9)
    assert heavy["train"]["momentum"] == 0.9 and "betas" not in heavy["train"]
    # Adam's betas do not change a momentum run's key; its own momentum does
    other_betas = config(optimizer="momentum", lr=0.2, momentum=0.9, betas=(0.5, 0.5))
    assert config_key(other_betas) == config_key(heavy)
    assert config_key(config(optimizer="momentum", lr=0.2, momentum=0.8)) != config_key(heavy)
    adam = config(optimizer="adam", lr=0.01, betas=(0.8, 0.99))
    assert adam["train"]["betas"] == (0.8, 0.99) and "momentum" not in adam["train"]


def test_execute_hook_can_skip_training_and_data_loading():
    seen = []

    def execute(config, train):
        seen.append((config["train"]["optimizer"], config["train"]["lr"]))
        return RUN

    setup = MLPSetup(n_train=1501)  # data() would raise: never loaded
    result = optimizer_thresholds(
        [("momentum", 0.2), ("adam", 0.01)], setup=setup, steps=12, execute=execute
    )
    assert seen == [("momentum", 0.2), ("adam", 0.01)]
    assert [r.late_median_ratio for r in result.runs] == [2.5, 2.5]  # last 30%: step 12
    assert result.wall_time_s == 2.5  # the runs' own times
    sharp = progressive_sharpening([0.3], setup=setup, steps=12, late_fraction=0.5, execute=execute)
    assert sharp.runs[0].late_ratio_range == (1.5, 2.5)


def test_step_sizes_must_be_positive_and_finite():
    with pytest.raises(SharpdimError, match=r"^each of lrs must be a finite number > 0, got inf"):
        progressive_sharpening([0.2, math.inf])
    with pytest.raises(SharpdimError, match=r"^each run's lr must be a finite number > 0, got nan"):
        optimizer_thresholds([("momentum", 0.2), ("adam", math.nan)])
    # were a numpy truth-value ValueError, TypeErrors and a tuple-unpacking ValueError
    with pytest.raises(SharpdimError, match=r"^each of lrs must be a finite number > 0, got '0.1'"):
        progressive_sharpening(["0.1"])
    with pytest.raises(SharpdimError, match=r"^lrs is empty"):
        progressive_sharpening(np.array([]))
    with pytest.raises(SharpdimError, match=r"^each run's lr must be a finite number > 0, got 'x'"):
        optimizer_thresholds([("adam", "x")])
    with pytest.raises(SharpdimError, match=r"^runs must be \(optimizer, lr\) pairs"):
        optimizer_thresholds([("adam", 0.1, 0.2)])
    seen = []

    def execute(config, train):
        seen.append(config["train"]["lr"])
        return RUN

    setup = MLPSetup(n_train=8, width=4, depth=1)
    progressive_sharpening(np.array([0.1, 0.2]), setup=setup, steps=2, execute=execute)
    assert seen == [0.1, 0.2]


def test_setup_sizes_are_whole_numbers():
    assert MLPSetup(n_train=5.0).n_train == 5
    for bad in (2.5, "5", 0):
        with pytest.raises(SharpdimError, match=r"^n_train must be an integer >= 1"):
            MLPSetup(n_train=bad)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("dataset", ["digits", "mnist1d", "modular", "teacher_student"])
def test_setup_data_are_the_loaders_in_the_setups_dtype(dataset, dtype):
    """The data were loaded in float32 and cast: float64 digits were 4.2e-7 off."""
    from sharpdim.training.datasets import load_dataset

    if dataset == "mnist1d":
        pytest.importorskip("mnist1d")
    setup = MLPSetup(dataset=dataset, n_train=40, dtype=dtype)
    options = {"mnist1d": {"n_test": 200}, "modular": {"encoding": "onehot"}}.get(dataset, {})
    torch_dtype = getattr(torch, dtype)
    sizes = {} if dataset == "digits" else {"n_train": 40}  # (digits: the first 40 of 1,500)
    exact = load_dataset(dataset, seed=0, dtype=torch_dtype, **sizes, **options)
    data = setup.data()
    assert data.x_train.dtype == torch_dtype and data.num_train == 40
    assert torch.equal(data.x_train, exact.x_train[:40])
    assert torch.equal(data.y_train, exact.y_train[:40])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "bogus"}, r"^unknown loss 'bogus': use 'mse' or 'ce'$"),
        ({"activation": "sigmoid"}, r"^unknown activation 'sigmoid': use one of tanh, relu, gelu$"),
        ({"width": 0}, r"^width must be an integer >= 1, got 0"),
        ({"width": 2.5}, r"^width must be an integer >= 1, got 2.5"),
        ({"depth": -1}, r"^depth must be an integer >= 0, got -1"),
        ({"seed": -1}, r"^seed must be an integer >= 0, got -1"),
        ({"seed": 2**32}, r"^seed must be at most 2\*\*32 - 1"),
        (
            {"dataset": "teacher_student", "loss": "ce"},
            r"^teacher_student is a regression dataset without class labels: use loss='mse'",
        ),
    ],
)
def test_setup_fields_are_checked_when_it_is_built(kwargs, message):
    """They built, and failed (ce on regression targets) only once a run started."""
    with pytest.raises(SharpdimError, match=message):
        MLPSetup(**kwargs)


def test_setup_keeps_valid_fields():
    setup = MLPSetup(width=8.0, depth=0, seed=np.int64(3), loss="ce", activation="relu")
    assert (setup.width, setup.depth, setup.seed) == (8, 0, 3)
    assert type(setup.width) is int and type(setup.seed) is int


def test_the_late_window_keeps_the_step_on_its_boundary() -> None:
    """(1 - 0.7) * 1000 = 300.00000000000006 dropped the record of step 300: 70 of 71."""
    from sharpdim.training.eos_experiments import _late_stats

    steps = list(range(0, 1001, 10))
    ratios = [0.0] * 30 + [1.0] * 71  # steps 300..1000 are the last 70%
    median, (low, high) = _late_stats(steps, ratios, 1000, 0.7)
    assert (median, low, high) == (1.0, 1.0, 1.0)
    ratios[30] = 5.0  # step 300: inside the window
    assert _late_stats(steps, ratios, 1000, 0.7)[1] == (1.0, 5.0)


def test_a_run_that_blows_up_at_its_last_step_is_diverged():
    """The loss after the last of 8 steps (1.3e6 > 1e6 x max(L_0, 1)) went untested: the run
    was ok, measured at step 8 and summarised (late ratio 2.6); 40 steps diverge at step 8."""
    setup = MLPSetup(n_train=30, width=6, depth=2, dtype="float32")
    run, longer = (
        progressive_sharpening([2.0], setup=setup, steps=steps, every=4).runs[0]
        for steps in (8, 40)
    )
    assert (run.status, run.diverged_at, run.steps) == ("diverged", 8, (0, 4))
    assert (longer.status, longer.diverged_at, longer.steps) == ("diverged", 8, (0, 4))
    assert run.final_train_loss == longer.final_train_loss > 1e6
    assert math.isnan(run.late_median_ratio)  # no record in the last 30% before step 8


def _dense_sharpness(setup: MLPSetup, data, n: int) -> float:
    """lambda_max of the dense Hessian (float64) of the loss on the first ``n`` training
    examples at ``setup``'s initial parameters."""
    from torch.func import functional_call

    from sharpdim.training.losses import get_loss

    model = setup.model(data)
    named = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in named.values()])
    batch = (data.x_train[:n], data.y_train[:n])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = w.split([p.numel() for p in named.values()])
        params = {k: t.reshape(p.shape) for (k, p), t in zip(named.items(), parts, strict=True)}
        return get_loss(setup.loss)(lambda x: functional_call(model, params, (x,)), batch)

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).max())


def test_the_sweeps_measure_the_sharpness_on_all_training_examples():
    """The default max_examples=5000 measured the Hessian of the first 5,000 examples while
    GD trained on all of them (here 5,001; the modular dataset allows 9,409)."""
    setup = MLPSetup(dataset="teacher_student", n_train=5001, width=2, depth=1)
    data = setup.data()
    keys = []

    def execute(config, train):
        keys.append(config)
        return train()

    def sharpness(**kw):  # at step 0: the initial parameters
        run = progressive_sharpening([0.01], setup=setup, steps=1, every=1, execute=execute, **kw)
        return run.runs[0].sharpness[0]

    full = _dense_sharpness(setup, data, 5001)
    assert full != pytest.approx(_dense_sharpness(setup, data, 5000), rel=1e-6)
    assert sharpness() == pytest.approx(full, rel=1e-8)
    assert sharpness(max_examples=None) == pytest.approx(full, rel=1e-8)
    assert sharpness(max_examples=50) == pytest.approx(_dense_sharpness(setup, data, 50), rel=1e-8)
    thresholds = optimizer_thresholds([("gd", 0.01)], setup=setup, steps=1, every=1)
    assert thresholds.runs[0].sharpness[0] == pytest.approx(full, rel=1e-8)
    # the stored runs' key: a run measured on the first 5,000 examples is not reused
    assert [k["monitor"]["max_examples"] for k in keys] == [None, None, 50]
    old = {**keys[0], "monitor": {**keys[0]["monitor"], "max_examples": 5000}}
    assert config_key(old) != config_key(keys[0])


def test_bad_window_options_and_an_infinite_threshold_are_one_line_errors() -> None:
    """every='2' and late_fraction='0.3' raised TypeError from a comparison; a subnormal lr
    gave threshold inf, which the store writes as null and reads back as NaN (ratio 0 became
    NaN after a rerun)."""
    setup = MLPSetup(n_train=10, width=2, depth=0)
    with pytest.raises(SharpdimError, match=r"^every must be an integer >= 1, got '2'"):
        progressive_sharpening([0.1], setup=setup, steps=2, every="2")
    with pytest.raises(SharpdimError, match=r"^late_fraction must be a finite number > 0"):
        optimizer_thresholds([("momentum", 0.1)], setup=setup, steps=2, late_fraction="0.3")
    with pytest.raises(SharpdimError, match=r"^lr=9.99989e-321 puts the gd stability threshold"):
        progressive_sharpening([1e-320], setup=setup, steps=2, every=1)
    with pytest.raises(SharpdimError, match=r"^lr=1e-310 puts the adam stability threshold at inf"):
        optimizer_thresholds([("adam", 1e-310)], setup=setup, steps=2, every=1)
    run = progressive_sharpening([0.1], setup=setup, steps=2, every=1).runs[0]
    assert run.threshold == 20.0
