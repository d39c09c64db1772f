"""Losses: MSE to one-hot targets (Cohen et al.), plain MSE, cross-entropy, accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sharpdim.errors import SharpdimError
from sharpdim.training.losses import (
    accuracy,
    cross_entropy_loss,
    evaluate,
    get_loss,
    mse_loss,
)


class Fixed(nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out


OUT = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, -1.0]], dtype=torch.float64)
LABELS = torch.tensor([2, 0])


def test_mse_to_one_hot():
    # 0.5 * mean_i ||f_i - e_{y_i}||^2 = 0.5 * ((1 + 0 + 1) + (0.25 + 0.25 + 1)) / 2
    assert float(mse_loss(Fixed(OUT), (None, LABELS)).detach()) == pytest.approx(0.875)


def test_mse_regression_and_shape_check():
    y = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert float(mse_loss(Fixed(OUT), (None, y))) == pytest.approx(0.5 * (5 + 0.25 + 0.25 + 4) / 2)
    flat = Fixed(torch.tensor([[1.0], [3.0]]))
    assert float(mse_loss(flat, (None, torch.tensor([0.0, 1.0])))) == pytest.approx(1.25)
    with pytest.raises(SharpdimError, match="do not match"):
        mse_loss(flat, (None, torch.zeros(3)))


def test_cross_entropy_and_accuracy():
    ref = nn.functional.cross_entropy(OUT, LABELS)
    assert float(cross_entropy_loss(Fixed(OUT), (None, LABELS))) == pytest.approx(float(ref))
    assert accuracy(Fixed(OUT), (None, LABELS)) == 1.0
    assert accuracy(Fixed(OUT), (None, torch.tensor([2, 2]))) == 0.5
    with pytest.raises(SharpdimError, match="integer class labels"):
        cross_entropy_loss(Fixed(OUT), (None, OUT))
    with pytest.raises(SharpdimError, match="pair"):
        mse_loss(Fixed(OUT), OUT)


@pytest.mark.parametrize("loss_fn", [mse_loss, cross_entropy_loss])
def test_labels_beyond_the_outputs_name_both(loss_fn):
    with pytest.raises(SharpdimError, match=r"^labels range over 0..3 but the model has 3 outputs"):
        loss_fn(Fixed(OUT), (None, torch.tensor([3, 0])))
    with pytest.raises(SharpdimError, match=r"^labels must be >= 0, got -1: pass class labels 0"):
        loss_fn(Fixed(OUT), (None, torch.tensor([-1, 2])))


def test_get_loss_and_evaluate():
    assert get_loss("mse") is mse_loss and get_loss("ce") is cross_entropy_loss
    with pytest.raises(SharpdimError, match="unknown loss"):
        get_loss("hinge")
    model = nn.Sequential(nn.Dropout(0.5), Fixed(OUT))
    model.train()
    loss, acc = evaluate(model, mse_loss, (torch.zeros(2, 3), LABELS))
    assert loss == pytest.approx(0.875) and acc == 1.0 and model.training
    loss, acc = evaluate(
        model, mse_loss, (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64))
    )
    assert acc is None


def test_cross_entropy_keeps_its_ignore_index():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    y = torch.tensor([0, -100])
    expected = nn.functional.cross_entropy(logits, y)
    assert float(cross_entropy_loss(Fixed(logits), (None, y))) == pytest.approx(float(expected))
    with pytest.raises(SharpdimError, match=r"^labels must be >= 0, got -100: the mse loss has no"):
        mse_loss(Fixed(logits), (None, torch.tensor([-100, 2])))


def test_accuracy_leaves_out_ignored_labels():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, -100, -100])  # 1 of the 2 counted labels is right
    assert accuracy(Fixed(logits), (None, y)) == 0.5
    assert math.isnan(accuracy(Fixed(logits), (None, torch.full((4,), -100))))


def test_accuracy_reads_the_classes_along_dim_1_as_the_loss():
    """Per-token logits (N, C, T) with labels (N, T), as F.cross_entropy takes them."""
    logits = torch.zeros(2, 3, 5)
    y = torch.tensor([[0, 1, 2, 0, -100], [2, 2, 1, -100, -100]])
    for n in range(2):
        for t in range(5):
            logits[n, max(int(y[n, t]), 0), t] = 1.0
    logits[1, :, 2] = torch.tensor([0.0, 0.0, 1.0])  # one wrong token of the 7 counted
    assert accuracy(Fixed(logits), (None, y)) == pytest.approx(6 / 7)
    with pytest.raises(SharpdimError, match=r"^outputs of shape \(2, 5, 3\) give predictions"):
        accuracy(Fixed(logits.transpose(1, 2)), (None, y))


def test_mse_with_class_labels_refuses_per_token_outputs():
    logits = torch.zeros(3, 4, 3)  # (N, C, T): N == T would silently mix tokens and classes
    with pytest.raises(
        SharpdimError, match=r"^mse with class labels needs outputs of shape \(N, C\)"
    ):
        mse_loss(Fixed(logits), (None, torch.zeros(3, 3, dtype=torch.long)))
    targets = torch.ones(3, 4, 3)  # regression targets of the outputs' shape are fine
    assert float(mse_loss(Fixed(logits), (None, targets))) == pytest.approx(0.5 * 12)


def test_a_column_of_labels_is_read_as_labels_and_other_shapes_are_refused():
    """Labels of shape (n, 1) broadcast against (n, C) outputs to an (n, n, C) difference:
    mse returned a plausible wrong number (1.47 instead of 0.91) and a wrong Hessian."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    with torch.no_grad():
        exact = 0.5 * ((model(x) - torch.eye(4, dtype=torch.float64)[y]) ** 2).sum(1).mean()
        assert float(mse_loss(model, (x, y[:, None]))) == pytest.approx(float(exact), rel=1e-15)
        ce = cross_entropy_loss(model, (x, y[:, None]))
        assert float(ce) == pytest.approx(float(cross_entropy_loss(model, (x, y))), rel=1e-15)
    assert accuracy(model, (x, y[:, None])) == accuracy(model, (x, y))
    with torch.no_grad():  # int32 labels: torch's cross_entropy wants int64 ("Long or Byte")
        int32 = cross_entropy_loss(model, (x, y.int()))
        assert float(int32) == float(cross_entropy_loss(model, (x, y)))
    for loss_fn in (mse_loss, cross_entropy_loss):
        with pytest.raises(SharpdimError, match=r"labels of shape \(3,\) do not fit outputs"):
            loss_fn(model, (x, y[:3]))
        with pytest.raises(SharpdimError, match=r"class labels must be integers, got torch.bool"):
            loss_fn(model, (x, y > 1))
    with pytest.raises(SharpdimError, match=r"targets of shape \(4, 6\) do not match outputs"):
        mse_loss(model, (x, torch.randn(4, 6, dtype=torch.float64)))  # transposed


def test_evaluate_on_an_empty_batch_gives_nan_loss_and_no_accuracy():
    model = Fixed(OUT)
    for y in (torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.float64)):
        loss, acc = evaluate(model, mse_loss, (torch.zeros(0, 3), y))
        assert math.isnan(loss) and acc is None


def test_regression_targets_of_another_layout_are_refused_not_repaired():
    """(2, 4, 3) targets for (2, 3, 4) outputs hold the same count: a reshape re-paired them
    into a loss of 66 for outputs equal to the targets' transpose."""
    out = torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4)
    assert float(mse_loss(Fixed(out), (None, out.clone()))) == 0.0
    with pytest.raises(SharpdimError, match=r"targets of shape \(2, 4, 3\) do not match"):
        mse_loss(Fixed(out), (None, out.transpose(1, 2).contiguous()))
    column = Fixed(torch.tensor([[1.0], [3.0]]))  # size-1 dimensions may differ
    assert float(mse_loss(column, (None, torch.tensor([[[0.0]], [[1.0]]])))) == 1.25


@pytest.mark.parametrize("labels", [torch.zeros(0, dtype=torch.long), torch.zeros(0, 4)])
def test_mse_on_an_empty_batch_is_nan_as_the_reference(labels):
    loss = mse_loss(Fixed(torch.zeros(0, 4)), (None, labels))
    assert math.isnan(float(loss))
    assert math.isnan(float(nn.functional.mse_loss(torch.zeros(0, 4), torch.zeros(0, 4))))


def test_non_tensor_and_unbatched_labels_get_one_line_errors():
    for fn in (mse_loss, cross_entropy_loss, accuracy):
        with pytest.raises(SharpdimError, match="must be a tensor"):
            fn(Fixed(OUT), (None, [2, 0]))
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    ref = nn.functional.cross_entropy(logits, torch.tensor(2))
    assert float(cross_entropy_loss(Fixed(logits), (None, torch.tensor(2)))) == float(ref)
    for bad, match in (
        (torch.tensor(True), "integers"),
        (torch.tensor(7), "4 outputs"),
        (torch.tensor(-1), ">= 0"),
        (torch.tensor([1, 2]), "0-dim label"),
    ):
        with pytest.raises(SharpdimError, match=match):
            cross_entropy_loss(Fixed(logits), (None, bad))


def test_accuracy_checks_labels_as_the_losses_do():
    for bad, match in (
        (torch.tensor([True, False]), "integers"),
        (torch.tensor([2, 9]), "3 outputs"),
        (torch.tensor([-1, 0]), ">= 0"),
    ):
        with pytest.raises(SharpdimError, match=match):
            accuracy(Fixed(OUT), (None, bad))
    assert accuracy(Fixed(OUT), (None, torch.tensor([2, -100]))) == 1.0


def test_a_list_for_a_loss_name_is_a_one_line_error():
    """get_loss(["mse"]) raised 'unhashable type: list'."""
    with pytest.raises(SharpdimError, match=r"^unknown loss \['mse'\]: use one of mse"):
        get_loss(["mse"])  # type: ignore[arg-type]
