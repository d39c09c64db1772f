"""Models for edge-of-stability experiments: MLP, small decoder-only transformer, scalar network.

Every builder initialises its parameters from a seeded ``torch.Generator`` and leaves the
global RNG untouched (the layers are constructed inside ``torch.random.fork_rng``), so a seed
gives the same model on every run, in every dtype (the values are float32 numbers, whatever
torch's default dtype):

* linear layers: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases (PyTorch's
  default distribution for ``nn.Linear``);
* embeddings: ``N(0, 1/d_model)``; LayerNorm: weight 1, bias 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar, final

import torch
from torch import nn

from sharpdim.checks import (
    check_flag,
    check_numbers,
    check_seed,
    check_size,
    default_generator,
)
from sharpdim.errors import SharpdimError

_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
ACTIVATIONS = tuple(_ACTIVATIONS)
"""The hidden activations of :func:`build_mlp`."""


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise SharpdimError(
            f"dtype must be a floating torch dtype, got {dtype!r}: pass e.g. torch.float64"
        )


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:  # (a CPU torch.Generator: the draws are made on the CPU)
        return default_generator(generator)
    return torch.Generator().manual_seed(0 if seed is None else check_seed(seed))


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every Linear, Embedding and LayerNorm of ``module`` from ``generator``.

    Draws happen on the CPU in float64 and are then cast to the module's dtype (the builders
    initialise in float32 and cast afterwards, so their values do not depend on the dtype,
    the device or torch's default dtype).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.in_features)
            w = torch.rand(m.weight.shape, generator=generator, dtype=torch.float64)
            m.weight.copy_((2 * w - 1) * bound)
            if m.bias is not None:
                b = torch.rand(m.bias.shape, generator=generator, dtype=torch.float64)
                m.bias.copy_((2 * b - 1) * bound)
        elif isinstance(m, nn.Embedding):
            std = 1.0 / math.sqrt(m.embedding_dim)
            m.weight.copy_(
                torch.randn(m.weight.shape, generator=generator, dtype=torch.float64) * std
            )
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()


def build_mlp(
    in_dim: int,
    out_dim: int,
    *,
    width: int = 64,
    depth: int = 2,
    activation: str = "tanh",
    bias: bool = True,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """A fully connected network ``Flatten -> [Linear -> act] x depth -> Linear``.

    Args:
        in_dim: number of input features (inputs of any shape are flattened first).
        out_dim: number of outputs (classes, or regression targets).
        width: hidden width.
        depth: number of hidden layers; ``0`` gives a linear model.
        activation: ``"tanh"`` (Cohen et al. 2021's EoS experiments), ``"relu"`` or ``"gelu"``.
        bias: whether the linear layers have biases.
        seed: seed of the initialisation (ignored when ``generator`` is given).
        generator: draw the initialisation from this generator instead.
        dtype: parameter dtype (float64 for exact curvature checks).

    Example:
        >>> model = build_mlp(64, 10, width=32, depth=2)
        >>> sum(p.numel() for p in model.parameters())
        3466
    """
    if not isinstance(activation, str) or activation not in _ACTIVATIONS:  # (a list: unhashable)
        raise SharpdimError(
            f"unknown activation {activation!r}: use one of {', '.join(_ACTIVATIONS)}"
        )
    in_dim, out_dim = check_size(in_dim, "in_dim"), check_size(out_dim, "out_dim")
    width, depth = check_size(width, "width"), check_size(depth, "depth", 0)
    bias = check_flag(bias, "bias")
    _check_float_dtype(dtype)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_dim
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), _ACTIVATIONS[activation]()]
            fan_in = width
        layers.append(nn.Linear(fan_in, out_dim, bias=bias))
        model = nn.Sequential(*layers)
    return _initialised(model, seed, generator, dtype)


_Module = TypeVar("_Module", bound=nn.Module)


def _initialised(
    model: _Module, seed: int | None, generator: torch.Generator | None, dtype: torch.dtype
) -> _Module:
    """``model`` initialised in float32, whatever torch's default dtype, then cast to ``dtype``:
    a seed gives the same values (float32 numbers) for every dtype and default."""
    init_parameters(model.to(torch.float32), _generator(seed, generator))
    return model.to(dtype)


@final
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, written out (softmax of masked ``QK^T / sqrt(d_h)``).

    Written by hand rather than with fused kernels so that double backward (Hessian-vector
    products) works on every backend.
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise SharpdimError(
                f"d_model={d_model} is not divisible by num_heads={num_heads}: "
                "choose num_heads dividing d_model"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        q, k, v = self.qkv(h).split(d, dim=-1)
        heads = [
            x.view(n, t, self.num_heads, d // self.num_heads).transpose(1, 2) for x in (q, k, v)
        ]
        scores = heads[0] @ heads[1].transpose(-2, -1) / math.sqrt(d // self.num_heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)
        weights = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        out = (weights @ heads[2]).transpose(1, 2).reshape(n, t, d)
        return self.proj(out)


@final
class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``h + attn(LN(h))``, then ``h + MLP(LN(h))`` with a GELU MLP."""

    def __init__(self, d_model: int, num_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.ln1(h))
        return h + self.mlp(self.ln2(h))


@final
class DecoderTransformer(nn.Module):
    """A small decoder-only transformer over token sequences.

    ``tokens (n, T) -> token + position embeddings -> blocks -> LayerNorm -> head``. With
    ``last_only=True`` (default) the output is the logits at the last position, shape
    ``(n, num_outputs)``: the answer token of modular arithmetic ``[a, b, =] -> (a + b) mod p``
    (Power et al. 2022; Nanda et al. 2023). Otherwise the logits at every position, shape
    ``(n, num_outputs, T)``: classes on dim 1, as ``F.cross_entropy`` and the package's
    ``cross_entropy_loss`` / ``accuracy`` read per-token targets ``(n, T)``.
    """

    def __init__(
        self,
        vocab_size: int,
        num_outputs: int,
        seq_len: int,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        d_mlp: int,
        last_only: bool,
    ) -> None:
        super().__init__()
        self.seq_len, self.last_only = seq_len, last_only
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, num_heads, d_mlp) for _ in range(num_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_outputs)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        """A one-line error for a token outside the vocabulary (the embedding's IndexError, or
        a device-side assert on a GPU); skipped under ``torch.func`` transforms (vmap), where
        a tensor's values cannot be read."""
        if not tokens.numel():
            return
        try:
            low, high = int(tokens.min()), int(tokens.max())
        except RuntimeError:  # a batched tensor of vmap: its values are not available
            return
        vocab = self.token_embedding.num_embeddings
        if low < 0 or high >= vocab:
            raise SharpdimError(
                f"tokens must lie in 0..{vocab - 1} (vocab_size={vocab}), got values in "
                f"{low}..{high}: build the transformer with a larger vocab_size"
            )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # int64 or int32 only: the embedding refuses bool and uint8 indices; T >= 1: the last
        # position's logits of an empty sequence raised an IndexError
        if (
            not isinstance(tokens, torch.Tensor)
            or tokens.ndim != 2
            or not 1 <= tokens.shape[1] <= self.seq_len
            or tokens.dtype not in (torch.int64, torch.int32)
        ):
            got = (
                f"{tokens.dtype} {tuple(tokens.shape)}"
                if isinstance(tokens, torch.Tensor)
                else type(tokens).__name__
            )
            raise SharpdimError(
                f"transformer input must be integer tokens of shape (n, T<={self.seq_len}), got "
                f"{got}: pass int64 (or int32) tokens with 1 <= T <= {self.seq_len}, e.g. "
                "encoding='tokens' for modular arithmetic"
            )
        self._check_tokens(tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.ln_final(h))
        return logits[:, -1] if self.last_only else logits.transpose(1, 2)


def build_transformer(
    vocab_size: int,
    num_outputs: int | None = None,
    *,
    seq_len: int = 3,
    d_model: int = 64,
    num_heads: int = 4,
    num_layers: int = 1,
    d_mlp: int | None = None,
    last_only: bool = True,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> DecoderTransformer:
    """Build a small decoder-only transformer (see :class:`DecoderTransformer`).

    Args:
        vocab_size: number of input tokens (``p + 1`` for modular arithmetic with ``=``).
        num_outputs: size of the output head; default ``vocab_size``.
        seq_len: maximal sequence length (3 for ``[a, b, =]``).
        d_model, num_heads, num_layers: width, heads per block and number of blocks.
        d_mlp: hidden width of each block's MLP; default ``4 * d_model``.
        last_only: return only the last position's logits ``(n, C)``; else every
            position's, ``(n, C, T)`` (classes on dim 1, for per-token losses).
        seed, generator, dtype: as in :func:`build_mlp`.
    """
    sizes: dict[str, int | None] = {"vocab_size": vocab_size, "seq_len": seq_len}
    sizes |= {"d_model": d_model, "num_heads": num_heads, "num_layers": num_layers}
    sizes |= {"num_outputs": num_outputs, "d_mlp": d_mlp}
    n = {  # (whole floats as ints, as build_mlp takes them)
        name: check_size(value, name)
        for name, value in sizes.items()
        if value is not None or name not in ("num_outputs", "d_mlp")
    }
    last_only = check_flag(last_only, "last_only")
    _check_float_dtype(dtype)
    with torch.random.fork_rng(devices=[]):  # the layers' own init draws from the global RNG
        model = DecoderTransformer(
            n["vocab_size"],
            n.get("num_outputs", n["vocab_size"]),
            n["seq_len"],
            d_model=n["d_model"],
            num_heads=n["num_heads"],
            num_layers=n["num_layers"],
            d_mlp=n.get("d_mlp", 4 * n["d_model"]),
            last_only=last_only,
        )
    return _initialised(model, seed, generator, dtype)


@final
class DeepScalarLinear(nn.Module):
    """The scalar deep linear network ``f(u) = u * x * y * z * w`` (Zhu et al., ICLR 2023).

    Its parameters are one vector ``theta = (x, y, z, w)`` (``depth`` factors in general), so the
    flat parameter vector is exactly ``theta``. With the batch of :meth:`batch`, ``u = 1`` and
    target ``1``, :func:`~sharpdim.training.losses.mse_loss` is the minimalist example
    ``L(x, y, z, w) = 0.5 * (1 - x*y*z*w)^2``, whose Hessian at a minimum has the single
    non-zero eigenvalue ``sum_i prod_{j != i} theta_j^2``.

    Example:
        >>> net = DeepScalarLinear((2.0, 0.3, 2.0, 0.3))
        >>> net(torch.ones(1, 1)).item()  # doctest: +ELLIPSIS
        0.36...
    """

    def __init__(
        self,
        init: Sequence[float] = (2.0, 0.3, 2.0, 0.3),
        *,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        _check_float_dtype(dtype)
        factors = check_numbers(init, "init", "any", "(2, 0.3, 2, 0.3)", allow_empty=True)
        if len(factors) < 1:
            raise SharpdimError(
                "DeepScalarLinear needs at least one factor: pass e.g. (2, 0.3, 2, 0.3)"
            )
        self.theta = nn.Parameter(torch.tensor(factors, dtype=dtype))

    @torch.no_grad()
    def set_parameters(self, values: Sequence[float]) -> None:
        """Set ``theta`` in place (same number of factors, each a finite number)."""
        factors = check_numbers(values, "values", "any", "(1.0, 2.0, 0.5, 1.0)", allow_empty=True)
        if len(factors) != self.theta.numel():
            raise SharpdimError(
                f"got {len(factors)} values for {self.theta.numel()} factors: pass one per factor"
            )
        self.theta.copy_(torch.tensor(factors, dtype=self.theta.dtype))

    def product(self) -> torch.Tensor:
        """``x * y * z * w``."""
        return self.theta.prod()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * self.theta.prod()

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-example batch ``(u=1, target=1)`` that turns MSE into the minimalist loss."""
        one = torch.ones(1, 1, dtype=self.theta.dtype, device=self.theta.device)
        return one, one.clone()
