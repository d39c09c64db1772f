"""Trajectory capture: ring buffer in RAM and on disk, forward simulation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import load_dataset
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
        assert not (tmp_path / "ring.npy").exists()
        np.testing.assert_array_equal(np.load(traj.path)[:, 1], [7.0, 8.0, 9.0, 10.0])


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


def test_bad_input() -> None:
    with pytest.raises(SharpdimError):
        IterateRecorder(0)
    with pytest.raises(SharpdimError):
        IterateRecorder(3).finish()
