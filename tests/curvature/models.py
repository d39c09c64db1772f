"""Small float64 models, losses and dense reference Hessians for the curvature tests.

References are built with ``torch.autograd.functional.hessian`` on a function of one flat
parameter vector (``torch.func.functional_call``), never with ``torch.func.hessian`` or
``jacrev(jacrev(...))``, which under torch 2.13 return a wrong, asymmetric Hessian for models
with LayerNorm. Every reference checks its own symmetry.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sharpdim.curvature.params import flatten

DTYPE = torch.float64
RTOL = 1e-10
"""Float64 tolerance: references and operators differ only by summation order."""

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


def make_mlp(
    sizes: Sequence[int],
    activation: str = "tanh",
    *,
    bias: bool = True,
    layernorm: bool = False,
    dropout: float = 0.0,
    batchnorm: bool = False,
    seed: int = 0,
) -> nn.Sequential:
    """A float64 MLP ``sizes[0] -> ... -> sizes[-1]``; optional norm/dropout after layer 1."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _build_mlp(sizes, activation, bias, layernorm, dropout, batchnorm)


def _build_mlp(
    sizes: Sequence[int],
    activation: str,
    bias: bool,
    layernorm: bool,
    dropout: float,
    batchnorm: bool,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            if i == 0 and layernorm:
                layers.append(nn.LayerNorm(b))
            if i == 0 and batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTIVATIONS[activation]())
            if i == 0 and dropout:
                layers.append(nn.Dropout(dropout))
    model = nn.Sequential(*layers).to(DTYPE)
    if layernorm or batchnorm:  # move the affine parameters away from their (1, 0) init
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return model


def regression_batch(n: int, d_in: int, d_out: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=DTYPE), torch.randn(
        n, d_out, generator=g, dtype=DTYPE
    )


def classification_batch(
    n: int, d_in: int, classes: int, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=DTYPE)
    return x, torch.randint(0, classes, (n,), generator=g)


def mse_loss(model: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def ce_loss(model: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention written out (no dropout)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, t, d))


class TinyTransformer(nn.Module):
    """Token + position embedding, one pre-LN block (causal attention, MLP), LN, head."""

    def __init__(self, vocab: int = 7, dim: int = 8, heads: int = 2, seq: int = 5) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.tok(tokens) + self.pos(pos)
        h = h + self.attn(self.ln1(h))
        h = h + self.mlp(self.ln2(h))
        return self.head(self.ln_f(h))


def make_transformer(seed: int = 0) -> TinyTransformer:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyTransformer().to(DTYPE)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def lm_batch(n: int = 6, seq: int = 5, vocab: int = 7, seed: int = 1) -> torch.Tensor:
    """Token sequences of length ``seq + 1``: inputs ``[:, :-1]``, targets ``[:, 1:]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seq + 1), generator=g)


def lm_loss(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over all positions."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def reference_hessian(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Any,
    params: Sequence[torch.Tensor] | None = None,
    *,
    train: bool = False,
) -> torch.Tensor:
    """Dense Hessian by ``torch.autograd.functional.hessian`` of ``w -> loss(w)``.

    Works on a deep copy of the model (in train or eval mode), so the model's buffers and
    flags are never touched; ``params`` selects a subset (the others stay fixed).
    """
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = list(model.parameters()) if params is None else list(params)
    chosen_names = [names[id(p)] for p in chosen]
    shapes = [p.shape for p in chosen]
    sizes = [p.numel() for p in chosen]
    twin = copy.deepcopy(model).train(train)

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split(sizes)
        values = {n: c.view(s) for n, c, s in zip(chosen_names, pieces, shapes, strict=True)}

        def call(*args: Any) -> torch.Tensor:
            return functional_call(twin, values, args)

        return loss_fn(call, batch)

    w0 = flatten([p.detach() for p in chosen]).clone()
    h = torch.autograd.functional.hessian(loss_of, w0)
    assert_symmetric(h)
    return h


def assert_symmetric(h: torch.Tensor, rtol: float = RTOL) -> None:
    scale = max(float(h.abs().max()), 1e-300)
    asym = float((h - h.T).abs().max()) / scale
    assert asym <= rtol, f"reference Hessian is asymmetric: relative {asym:.2e}"


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    """Entry-wise ``rtol`` with an absolute floor of ``rtol * max|expected|``."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-12))


def tiny_linear_problem() -> tuple[nn.Module, Any, Any]:
    """``Linear(3, 1)`` in float64 with a seeded batch of 8 and the mean squared error."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64))

    def loss_fn(m: nn.Module, b: Any) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    return model, loss_fn, batch
