"""Trajectory capture: ring buffer in RAM and on disk, forward simulation."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset, load_dataset
from sharpdim.training.loop import TrainConfig
from sharpdim.training.models import build_mlp
from sharpdim.training.trajectory import (
    IterateRecorder,
    capture_backward,
    capture_forward,
    per_example_losses,
)


@pytest.mark.parametrize("max_bytes", [10**9, 0])
def test_ring_buffer_keeps_last_in_order(max_bytes: int, tmp_path: Path) -> None:
    rec = IterateRecorder(4, max_memory_bytes=max_bytes, spill_dir=tmp_path)
    for s in range(11):
        rec.record(s, torch.full((3,), float(s)), loss_value=s * 0.5)
    assert rec.on_disk == (max_bytes == 0)
    traj = rec.finish()
    assert traj.steps.tolist() == [7, 8, 9, 10]
    assert traj.points[:, 0].tolist() == [7.0, 8.0, 9.0, 10.0]
    assert traj.losses.tolist() == [3.5, 4.0, 4.5, 5.0]
    if max_bytes == 0:
        assert traj.path is not None and Path(traj.path).exists()
        assert not (Path(traj.path).parent / "ring.npy").exists()
        np.testing.assert_array_equal(np.load(traj.path)[:, 1], [7.0, 8.0, 9.0, 10.0])


def test_recorders_sharing_a_spill_dir_keep_their_own_files(tmp_path: Path) -> None:
    recorders = [IterateRecorder(3, max_memory_bytes=0, spill_dir=tmp_path) for _ in range(2)]
    for offset, rec in zip((0.0, 100.0), recorders, strict=True):
        for s in range(5):
            rec.record(s, torch.full((4,), offset + s, dtype=torch.float64))
    first = recorders[0].finish()
    second = recorders[1].finish()  # written after the first finished
    assert first.path is not None and second.path is not None
    folders = {Path(first.path).parent, Path(second.path).parent}
    assert len(folders) == 2 and {f.parent for f in folders} == {tmp_path}
    assert first.points[:, 0].tolist() == [2.0, 3.0, 4.0]
    assert second.points[:, 0].tolist() == [102.0, 103.0, 104.0]
    np.testing.assert_array_equal(np.load(str(first.path))[:, 3], [2.0, 3.0, 4.0])


def test_fewer_records_than_capacity() -> None:
    rec = IterateRecorder(5)
    rec.record(0, torch.zeros(2))
    traj = rec.finish(final=(1, torch.ones(2)))
    assert traj.steps.tolist() == [0, 1] and len(traj) == 2


def test_capture_backward_matches_training_iterates() -> None:
    data = load_dataset("digits", n_train=64, n_test=10, dtype=torch.float64)
    model = build_mlp(64, 10, width=8, depth=1, dtype=torch.float64)
    config = TrainConfig(optimizer="gd", lr=0.1, steps=20, checkpoint_steps=(17, 20))
    result, traj = capture_backward(model, data, config, 5, every=1)
    assert traj.steps.tolist() == [16, 17, 18, 19, 20]
    torch.testing.assert_close(traj.points[1], result.snapshots[17])
    torch.testing.assert_close(traj.points[-1], result.snapshots[20])


def test_capture_backward_stopped_by_stop_loss_has_no_duplicate_point() -> None:
    data = load_dataset("digits", n_train=40, n_test=10, dtype=torch.float64)
    model = build_mlp(64, 10, width=4, depth=1, seed=0, dtype=torch.float64)
    config = TrainConfig(lr=0.1, steps=20, stop_loss=0.44)
    result, traj = capture_backward(model, data, config, 5)
    end = result.steps_completed
    assert result.status == "ok" and end < 20  # stopped early by stop_loss at step `end`
    assert traj.steps.tolist() == list(range(end - 4, end + 1))
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(traj.points[-1], final, rtol=0, atol=0)
    assert math.isfinite(traj.losses[-1].item())  # the recorded iterate, not a copy
    assert (traj.points[1:] - traj.points[:-1]).norm(dim=1).min() > 0


def test_finish_skips_a_final_point_already_recorded() -> None:
    rec = IterateRecorder(3)
    for s in range(4):
        rec.record(s, torch.full((2,), float(s)), loss_value=1.0)
    traj = rec.finish(final=(3, torch.full((2,), 3.0)))
    assert traj.steps.tolist() == [1, 2, 3] and traj.losses.tolist() == [1.0, 1.0, 1.0]


def test_capture_forward_records_divergence() -> None:
    # GD on mean_i (3 w_i)^2 (Hessian 9 I), lr = 5, w_0 = e_1: w_t = (-44)^t e_1, and the loss
    # at w_t first overflows (9 * 44^(2t) > float64 max) at t = 94
    model = torch.nn.Linear(2, 1, bias=False).double()
    x, y = 3 * torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    data = Dataset("quadratic", x, y, x, y, 0)

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    w0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    traj = capture_forward(model, data, w0, 2000, lr=5.0, loss_fn=mse)
    assert traj.diverged_at == 94 and traj.to_dict()["diverged_at"] == 94
    assert traj.steps.tolist() == list(range(95))
    expected = torch.tensor([(-44.0) ** t for t in range(95)], dtype=torch.float64)
    torch.testing.assert_close(traj.points[:, 0], expected, rtol=1e-12, atol=0)
    assert capture_forward(model, data, w0, 5, lr=0.01, loss_fn=mse).diverged_at is None


def test_capture_forward_full_batch_equals_gd() -> None:
    data = load_dataset("digits", n_train=64, n_test=10, dtype=torch.float64)
    model = build_mlp(64, 10, width=8, depth=1, dtype=torch.float64)
    config = TrainConfig(optimizer="gd", lr=0.1, steps=6, checkpoint_steps=(0, 6))
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    traj = capture_forward(model, data, w0, 6, lr=0.1, every=3)
    result, _ = capture_backward(model, data, config, 1)
    assert traj.steps.tolist() == [0, 3, 6]
    torch.testing.assert_close(traj.points[-1], result.snapshots[6])


def test_capture_forward_fresh_batches_are_seeded() -> None:
    data = load_dataset("digits", n_train=64, n_test=10, dtype=torch.float64)
    model = build_mlp(64, 10, width=8, depth=1, dtype=torch.float64)
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    a = capture_forward(model, data, w0, 5, lr=0.1, batch_size=8)
    b = capture_forward(model, data, w0, 5, lr=0.1, batch_size=8)
    c = capture_forward(
        model, data, w0, 5, lr=0.1, batch_size=8, generator=torch.Generator().manual_seed(9)
    )
    torch.testing.assert_close(a.points, b.points)
    assert not torch.equal(a.points[-1], c.points[-1])


def test_per_example_losses_mean_is_the_loss() -> None:
    data = load_dataset("digits", n_train=32, n_test=10, dtype=torch.float64)
    model = build_mlp(64, 10, width=8, depth=1, dtype=torch.float64)
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    points = torch.stack([w0, w0 * 0.5])
    for loss in ("mse", "ce"):
        losses = per_example_losses(model, points, data.train_batch(), loss=loss)
        assert losses.shape == (2, 32)
        from sharpdim.training.losses import get_loss

        with torch.no_grad():
            ref = get_loss(loss)(model, data.train_batch())
        torch.testing.assert_close(losses[0].mean(), ref.double())
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), w0)


def test_per_example_losses_refuse_a_batch_that_is_not_a_pair() -> None:
    """A dict batch unpacked its keys (AttributeError on a str), a 3-tuple raised ValueError."""
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1])
    model = build_mlp(3, 2, width=2, depth=1, dtype=torch.float64)
    points = torch.cat([p.detach().reshape(-1) for p in model.parameters()])[None]
    for batch, got in (
        ({"x": x, "y": y}, "dict"),
        ((x, y, y), "tuple of 3"),
        ((x, "y"), "tuple of 2"),
    ):
        with pytest.raises(
            SharpdimError, match=rf"^batch must be a pair \(x, y\) of tensors, got {got}:"
        ):
            per_example_losses(model, points, batch, loss="ce")


def test_per_example_cross_entropy_checks_labels_as_the_ce_loss_does() -> None:
    """Float targets were cut to class numbers (0.2 -> 0) and bool labels accepted; a label
    column (N, 1), which the 'ce' loss takes, raised torch's RuntimeError."""
    torch.manual_seed(0)
    x = torch.randn(5, 4, dtype=torch.float64)
    model = nn.Linear(4, 3).double()
    points = torch.cat([p.detach().reshape(-1) for p in model.parameters()])[None]
    for y, message in (
        (torch.tensor([0.2, 1.7, 2.9, 0.0, 1.0], dtype=torch.float64), "floating point"),
        (torch.tensor([True, False, True, False, True]), "must be integers"),
        (torch.tensor([0, 1, 7, 2, 1]), r"labels range over 0\.\.7 but the model has 3"),
    ):
        with pytest.raises(SharpdimError, match=message):
            per_example_losses(model, points, (x, y), loss="ce")
    y = torch.tensor([0, 1, 2, 2, 1])
    column = per_example_losses(model, points, (x, y[:, None]), loss="ce")
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(column[0], ref)


def test_bad_input() -> None:
    with pytest.raises(SharpdimError):
        IterateRecorder(0)
    with pytest.raises(SharpdimError):
        IterateRecorder(3).finish()


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_per_example_losses_refuse_per_token_outputs(loss: str) -> None:
    """A transformer with last_only=False has outputs (n, C, T): one loss per example is not
    defined (ce returned per-token losses, mse mixed positions into the examples)."""
    from sharpdim.curvature.params import get_flat_params
    from sharpdim.training.models import build_transformer

    model = build_transformer(4, 4, seq_len=4, d_model=8, num_heads=2, last_only=False)
    tokens = torch.tensor([[0, 1, 2, 3]] * 4)
    points = get_flat_params(list(model.parameters()))[None]
    with pytest.raises(SharpdimError, match=r"one output row per example.*\(4, 4, 4\)"):
        per_example_losses(model, points, (tokens, tokens), loss=loss)


def test_a_ring_on_disk_ends_at_finish_and_one_in_ram_goes_on(tmp_path: Path) -> None:
    """After finish() handed a spilled ring to its file, record() started a zero-filled ring
    and the next finish() returned zeros for the older steps."""
    on_disk = IterateRecorder(3, max_memory_bytes=0, spill_dir=tmp_path)
    in_ram = IterateRecorder(3)
    for rec in (on_disk, in_ram):
        for step in range(5):
            rec.record(step, torch.full((2,), float(step)))
    first = on_disk.finish()
    assert first.steps.tolist() == [2, 3, 4] and first.points[:, 0].tolist() == [2, 3, 4]
    for call in (lambda: on_disk.record(5, torch.ones(2)), on_disk.finish):
        with pytest.raises(SharpdimError, match=r"went to .*trajectory.npy at finish\(\)"):
            call()
    in_ram.finish()
    in_ram.record(5, torch.full((2,), 5.0))
    assert in_ram.finish().points[:, 0].tolist() == [3.0, 4.0, 5.0]


def test_a_final_point_is_not_kept_in_a_ram_ring_that_goes_on() -> None:
    """finish(final) wrote ``final`` into the ring: the next trajectory held its step twice."""
    rec = IterateRecorder(4)
    for step in range(3):
        rec.record(step, torch.full((2,), float(step)))
    look = rec.finish(final=(3, torch.full((2,), 3.0)))
    assert look.steps.tolist() == [0, 1, 2, 3] and look.points[:, 0].tolist() == [0, 1, 2, 3]
    assert rec.count == 3
    for step in (3, 4):
        rec.record(step, torch.full((2,), float(step)))
    later = rec.finish()
    assert later.steps.tolist() == [1, 2, 3, 4] and later.points[:, 0].tolist() == [1, 2, 3, 4]
    empty = IterateRecorder(2)  # a final point alone, then the ring is still empty
    assert empty.finish(final=(0, torch.ones(2))).steps.tolist() == [0]
    with pytest.raises(SharpdimError, match="no iterate was recorded"):
        empty.finish()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_iterates": 2.5}, r"^num_iterates must be an integer >= 1, got 2.5"),
        ({"num_iterates": 3, "every": 0}, r"^every must be an integer >= 1, got 0"),
        ({"num_iterates": 3, "max_memory_bytes": -1}, r"^max_memory_bytes must be an integer"),
    ],
)
def test_recorder_settings_are_checked_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SharpdimError, match=message):
        IterateRecorder(**kwargs)


def test_per_example_losses_keep_each_submodule_mode_and_take_int32_labels() -> None:
    """``model.train(was_training)`` switched a batch norm the user froze back to training;
    cross-entropy refused the int32 labels ``cross_entropy_loss`` takes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)
    ).double()
    model.train()
    model[1].eval()  # frozen statistics
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.int32)
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    losses = per_example_losses(model, w0[None], (x, y), loss="ce")
    assert [m.training for m in model] == [True, False, True] and model.training
    model.eval()
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(x), y.long(), reduction="none")
    torch.testing.assert_close(losses[0], ref)


def test_capture_forward_counts_are_checked_in_one_line() -> None:
    model = torch.nn.Linear(2, 1, bias=False).double()
    x, y = torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    data = Dataset("quadratic", x, y, x, y, 0)
    w0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    traj = capture_forward(model, data, w0, 4.0, lr=0.1, every=2.0)
    assert traj.steps.tolist() == [0, 2, 4]  # num_steps // every + 1 points
    bad: list[
        tuple[dict, str]
    ] = [  # every=2.5 kept 3 points of 4 steps, num_steps=2.5 raised a TypeError, True ran
        ({"num_steps": 4, "every": 2.5}, "every must be an integer >= 1, got 2.5: pass e.g. 1"),
        ({"num_steps": 2.5}, "num_steps must be an integer >= 0, got 2.5: pass e.g. 100"),
        ({"num_steps": True}, "num_steps must be an integer >= 0, got True: pass e.g. 100"),
        ({"num_steps": 4, "every": True}, "every must be an integer >= 1, got True"),
        ({"num_steps": -1}, "num_steps must be an integer >= 0, got -1"),
    ]
    for kwargs, message in bad:
        with pytest.raises(SharpdimError) as err:
            capture_forward(model, data, w0, lr=0.1, **kwargs)
        assert str(err.value).startswith(message)


def test_capture_backward_of_a_run_diverged_at_step_0_returns_an_empty_trajectory() -> None:
    """Nothing was recorded, and finish() raised 'no iterate was recorded' instead of handing
    back the diverged result: a divergence at step 0 crashed a sweep."""
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    x, y = torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    data = Dataset("quadratic", x, y, x, y, 0)  # L_0 = 0.5 > divergence_threshold
    config = TrainConfig(lr=0.1, steps=5, divergence_threshold=1e-3)
    result, traj = capture_backward(model, data, config, 3)
    assert (result.status, result.diverged_at, result.steps_completed) == ("diverged", 0, 0)
    assert traj.points.shape == (0, 2) and traj.points.dtype == torch.float64
    assert traj.to_dict() == {
        "num_points": 0,
        "dim": 2,
        "steps": [],
        "losses": [],
        "path": None,
        "kind": "backward",
        "diverged_at": None,
    }
    # diverged later: the iterates before the divergence, no final point
    result, traj = capture_backward(
        model, data, TrainConfig(lr=40.0, steps=9, divergence_threshold=1e5), 4
    )
    assert (result.status, result.diverged_at) == ("diverged", 3)  # L_s = 0.5 * 19^(2s)
    assert traj.steps.tolist() == [0, 1, 2]


def test_capture_forward_checks_batch_size_w_star_and_dataset_in_one_line() -> None:
    """batch_size=2.5 or '8' raised a TypeError and True ran with batches of 1; w_star as a
    list and a dataset given as (x, y) raised AttributeErrors."""
    from sharpdim.training.trajectory import fresh_batches

    model = torch.nn.Linear(2, 1, bias=False).double()
    x, y = torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    data = Dataset("quadratic", x, y, x, y, 0)
    w0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    size = "batch_size must be an integer >= 1, got {}: pass a positive size or None"
    bad: list[tuple[dict, str]] = [
        ({"batch_size": 2.5}, size.format("2.5")),
        ({"batch_size": "8"}, size.format("'8'")),
        ({"batch_size": True}, size.format("True")),
        ({"w_star": [1.0, 0.0]}, "w_star must be a real tensor of flat parameters, got list:"),
        ({"w_star": torch.ones(2, dtype=torch.bool)}, "w_star must be a real tensor of flat "),
        ({"dataset": (x, y)}, "dataset must be a Dataset, got tuple: pass e.g. load_dataset("),
    ]
    for kwargs, message in bad:
        options = {"dataset": data, "w_star": w0, **kwargs}
        with pytest.raises(SharpdimError) as err:
            capture_forward(model, num_steps=2, lr=0.1, **options)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(SharpdimError, match=r"^batch_size must be an integer >= 1, got 1.5"):
        fresh_batches(data, 1.5, 2, gen)
    with pytest.raises(SharpdimError, match=r"^dataset must be a Dataset, got tuple"):
        fresh_batches((x, y), None, 2, gen)
    assert fresh_batches(data, 2.0, 2, gen)(0)[0].shape == (2, 2)  # a whole float is a size


def test_an_iterate_that_is_no_tensor_is_a_one_line_error() -> None:
    """record(0, [1.0, 2.0]) raised AttributeError: 'list' object has no attribute 'detach'."""
    rec = IterateRecorder(2)
    with pytest.raises(SharpdimError, match=r"^an iterate must be a tensor, got list"):
        rec.record(0, [1.0, 2.0])
    rec.record(0, torch.tensor([1.0, 2.0]))
    assert rec.finish().points.tolist() == [[1.0, 2.0]]


def test_a_spill_without_the_disk_space_is_refused_before_recording(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ring was a sparse memmap: on a full disk the first row written killed the process
    with SIGBUS, and finish() needed a second ring's worth for its copy."""
    import errno
    import os
    import shutil

    from sharpdim.training import trajectory

    real = shutil.disk_usage
    w = torch.ones(1000)  # a ring of 4 x 4000 bytes: 32,000 needed with the copy
    monkeypatch.setattr(trajectory.shutil, "disk_usage", lambda p: real(p)._replace(free=31_999))
    rec = IterateRecorder(4, max_memory_bytes=0, spill_dir=tmp_path)
    with pytest.raises(SharpdimError, match=r"needs 0.0 MiB on disk \(the ring and its copy"):
        rec.record(0, w)
    assert list(tmp_path.iterdir()) == []  # (its spill folder removed)
    monkeypatch.setattr(trajectory.shutil, "disk_usage", real)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trajectory.os, "posix_fallocate", full, raising=False)
    rec = IterateRecorder(4, max_memory_bytes=0, spill_dir=tmp_path)
    with pytest.raises(SharpdimError, match=r"^cannot reserve 0.0 MiB for .*ring.npy \(No space"):
        rec.record(0, w)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SharpdimError, match=r"^num_iterates=10000000000000 needs .* of RAM"):
        IterateRecorder(10**13)
