"""EoSMonitor's examples: its own copy of the data, and a tuple of one tensor ``(tokens,)``."""

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sharpdim
from sharpdim.dimension.sharpness_dimension import sharpness_dimension
from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset
from sharpdim.training.monitor import EoSMonitor

VOCAB = 5


def _classification(dtype: torch.dtype) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float ``dtype`` MLP and training tensors ``(x, y)`` of the same float dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (10,), generator=g)
    return model, x, y


def _ce(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _dense_top(model: nn.Module, loss_fn, batch: tuple[torch.Tensor, ...]) -> float:
    """``lambda_max`` of the dense float64 Hessian."""
    matrix = sharpdim.HessianOperator(model, loss_fn, batch).dense()
    return float(torch.linalg.eigvalsh(matrix.double())[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_editing_the_users_tensors_in_place_leaves_the_monitors_examples_alone(dtype):
    """The monitor kept views of the user's tensors: with data of the model's dtype, ``.to()``
    returned them as they were, so ``x.mul_(3.0)`` on the training tensor after the monitor
    was built moved the "fixed" sharpness (0.994 -> 3.794 in the reviewer's float32 run),
    while the same data under a model of another dtype (a cast copy) did not."""
    model, x, y = _classification(dtype)
    x0, y0 = x.clone(), y.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = EoSMonitor(_ce, (x, y), every=1, tol=1e-8)
    before = monitor.measure(model, opt, step=0).sharpness
    x.mul_(3.0)  # the user's training tensors change in place
    y.fill_(0)
    fresh = EoSMonitor(_ce, (x0, y0), every=1, tol=1e-8).measure(model, opt, step=0)
    untouched = EoSMonitor(_ce, (x0, y0), every=1, tol=1e-8)
    untouched.measure(model, opt, step=0)
    # with the same history (warm start), the same Lanczos runs on the same Hessian: equal
    assert monitor.measure(model, opt, step=1).sharpness == untouched.measure(model, opt).sharpness
    assert monitor.records[0].sharpness == fresh.sharpness == before
    assert torch.equal(monitor.x, x0) and monitor.y is not None and torch.equal(monitor.y, y0)
    exact = _dense_top(copy.deepcopy(model).double(), _ce, (x0.double(), y0))
    assert before == pytest.approx(exact, rel=1e-5 if dtype == torch.float32 else 1e-7)


def test_editing_a_datasets_tensors_in_place_leaves_the_monitors_examples_alone():
    """A Dataset gave its own training tensors (``train_batch()``), kept as they were: an
    in-place change of ``dataset.x_train`` after the monitor was built moved its sharpness."""
    model, x, y = _classification(torch.float64)
    data = Dataset("toy", x.clone(), y.clone(), x[:2].clone(), y[:2].clone(), num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = EoSMonitor(_ce, data, every=1, tol=1e-10, max_examples=None)
    data.x_train.mul_(3.0)
    record = monitor.measure(model, opt, step=0)
    assert record.sharpness == EoSMonitor(_ce, (x, y), tol=1e-10).measure(model, opt).sharpness
    assert record.sharpness == pytest.approx(_dense_top(model, _ce, (x, y)), rel=1e-8)
    assert torch.equal(monitor.x, x)


class _NextToken(nn.Module):
    """Embedding and a linear read-out: logits for the token after each token."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 3)
        self.out = nn.Linear(3, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(tokens)))


def _next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Self-supervised: the targets are the tokens themselves, shifted by one (only batch[0])."""
    (tokens,) = batch
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _language_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = _NextToken().double()
    tokens = torch.randint(0, VOCAB, (8, 7), generator=torch.Generator().manual_seed(2))
    return model, tokens


def test_a_tuple_of_one_tensor_is_measured_like_the_other_estimators():
    """``(tokens,)`` worked with HessianOperator and sharpness_dimension but the monitor
    refused it with "data must be a Dataset or a tuple (x, y, ...) of tensors, got tuple"
    (``len(data) >= 2``, then ``self.x, self.y = self.batch[:2]``)."""
    model, tokens = _language_model()
    exact = _dense_top(model, _next_token_loss, (tokens,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = EoSMonitor(_next_token_loss, (tokens,), every=1, tol=1e-10)
    assert torch.equal(monitor.x, tokens) and monitor.y is None and len(monitor.batch) == 1
    record = monitor.measure(model, opt, step=0)
    assert record.sharpness == pytest.approx(exact, rel=1e-8)
    assert record.ratio == pytest.approx(exact / 20.0, rel=1e-8)  # threshold 2/eta = 20
    assert monitor.to_dict()["num_examples"] == 8
    # chunks of the one tensor (equal lengths: the mean over tokens is the size-weighted one)
    chunked = EoSMonitor(_next_token_loss, (tokens,), tol=1e-10, chunk_size=3)
    assert chunked.measure(model, opt).sharpness == pytest.approx(exact, rel=1e-8)
    cut = EoSMonitor(_next_token_loss, (tokens,), tol=1e-10, max_examples=5)
    assert cut.measure(model, opt).sharpness == pytest.approx(
        _dense_top(model, _next_token_loss, (tokens[:5],)), rel=1e-8
    )


def test_a_tuple_of_one_tensor_gets_the_sharpness_dimension():
    """The sd_every path passes the monitor's batch on: one tensor there too."""
    model, tokens = _language_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {"batch_size": 8, "num_batches": 1}  # one full batch: no dependence on the RNG
    as_list: Any = [tokens]  # a list is taken as a tuple
    monitor = EoSMonitor(_next_token_loss, as_list, every=1, sd_every=1, sd_options=options)
    record = monitor.measure(model, opt, step=0)
    direct = sharpness_dimension(
        model, _next_token_loss, (tokens,), 0.1, batch_size=8, num_batches=1, num_bootstrap=0
    )
    assert record.sd is not None and record.sd == pytest.approx(direct.sd, rel=1e-12)


def test_tuples_the_monitor_cannot_use_are_one_line_errors():
    """A named loss takes a pair: with one tensor it failed only at the first measurement.
    An empty tuple is still refused, with a message that names what is accepted."""
    _, tokens = _language_model()
    with pytest.raises(SharpdimError, match=r"^the 'ce' loss takes a pair \(x, y\), got 1 "):
        EoSMonitor("ce", (tokens,))
    x = tokens.double()
    with pytest.raises(SharpdimError, match=r"^the 'mse' loss takes a pair \(x, y\), got 3 "):
        EoSMonitor("mse", (x, x, x))
    with pytest.raises(SharpdimError, match=r"^data must be .*\(tokens,\).*got an empty tuple"):
        EoSMonitor(_next_token_loss, ())
    with pytest.raises(SharpdimError, match=r"^data must be .*got Tensor"):
        EoSMonitor(_next_token_loss, tokens)  # type: ignore[arg-type]
