"""RDS sharpness: batch-averaged sorted log singular values of the optimizer's one-step Jacobian.

Paper Def. 4.1 (Tuci et al., arXiv 2604.19740): for the random dynamical system of a stochastic
optimizer with one-step Jacobian ``J_B(w)`` (minibatch ``B``), the RDS sharpness of order ``k``
is

    lambda_k = E_B[ sup_{w in A} ln sigma_k(J_B(w)) ],   sigma_1 >= ... >= sigma_n,

``A`` the attractor. In practice (paper Sec. 5) ``w`` is one iterate ``w*`` near convergence and
the expectation is the mean over independently sampled minibatches of the *sorted* exponents.
Closer to the definition, several late iterates ``w^(1..I)`` sample the attractor: per batch and
per ``k`` the maximum over them is taken before averaging over batches.

:func:`rds_exponents` does the averaging on given per-batch exponents;
:func:`rds_sharpness` computes them exactly from dense minibatch Hessians (closed-form
singular values of :mod:`sharpdim.dynamics.jacobian_spectra`, float64 ``eigvalsh``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sharpdim.checks import default_generator, real_tensor
from sharpdim.curvature.dense import DENSE_LIMIT, check_dense_size, dense_hessian
from sharpdim.curvature.hessian import LossFn, Mode
from sharpdim.curvature.params import get_flat_params, set_flat_params, trainable_parameters
from sharpdim.dimension.sd_estimators import HESSIAN_NOT_FINITE, check_exponents
from sharpdim.dynamics.jacobian_spectra import (
    StepSpectrumConfig,
    step_log_singular_values,
    step_matrix,
)
from sharpdim.dynamics.step_maps import refuse_tensor_tuple
from sharpdim.errors import SharpdimError
from sharpdim.rng import forked_global_rng, operator_seed, peek_seed


@dataclass(frozen=True)
class RDSSharpnessResult:
    """Batch-averaged exponents ``lambda_1 >= ... >= lambda_n`` (paper Def. 4.1).

    Attributes:
        exponents: ``lambda_k``, the mean over batches of the sorted per-batch exponents.
        stderr: standard error of each ``lambda_k`` over batches (NaN for one batch).
        per_batch: the sorted per-batch exponents ``(num_batches, n)`` (after the maximum over
            iterates when several were given).
        lambda_1: the RDS sharpness ``lambda_1``; lambda_1_stderr its standard error.
        num_batches: number of sampled minibatches; num_iterates: attractor samples used.
    """

    exponents: torch.Tensor
    stderr: torch.Tensor
    per_batch: torch.Tensor
    lambda_1: float
    lambda_1_stderr: float
    num_batches: int
    num_iterates: int

    def to_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "lambda_1": self.lambda_1,
            "lambda_1_stderr": clean(self.lambda_1_stderr),
            "num_batches": self.num_batches,
            "num_iterates": self.num_iterates,
            "exponents": self.exponents.tolist(),
            "stderr": [clean(x) for x in self.stderr.tolist()],
        }


def rds_exponents(log_singular_values: torch.Tensor) -> RDSSharpnessResult:
    """Average sorted exponents over batches (and maximise over iterates first).

    Args:
        log_singular_values: ``(num_batches, n)`` exponents ``ln(sigma + eps)`` per batch, or
            ``(num_iterates, num_batches, n)`` for several attractor samples. Each row is
            sorted in descending order here.

    Returns:
        :class:`RDSSharpnessResult` with ``lambda_k = mean_B max_i sorted_k``.

    Example:
        >>> r = rds_exponents(torch.tensor([[0.0, 1.0], [-1.0, 2.0]]))
        >>> r.exponents.tolist(), r.lambda_1
        ([1.5, -0.5], 1.5)
    """
    try:
        x = real_tensor(log_singular_values, "`exponents`", word_errors=False)
    except SharpdimError:
        raise
    except (TypeError, ValueError, RuntimeError):
        raise SharpdimError(
            "exponents must be a numeric (num_batches, n) array with rows of equal length: "
            "pass one row of n exponents per batch"
        ) from None
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.numel() == 0:
        raise SharpdimError(
            f"expected exponents of shape (num_batches, n) or (num_iterates, num_batches, n), "
            f"got {tuple(x.shape)}: pass one sorted row per batch"
        )
    if not torch.isfinite(x).all():
        raise SharpdimError("exponents hold NaN or inf: guard them as ln(sigma + eps), eps > 0")
    per_batch = torch.sort(x, dim=-1, descending=True).values.amax(dim=0)
    b = per_batch.shape[0]
    mean = per_batch.mean(dim=0)
    if b > 1:
        stderr = per_batch.std(dim=0, correction=1) / math.sqrt(b)
    else:
        stderr = torch.full_like(mean, float("nan"))
    return RDSSharpnessResult(
        exponents=mean,
        stderr=stderr,
        per_batch=per_batch,
        lambda_1=float(mean[0]),
        lambda_1_stderr=float(stderr[0]),
        num_batches=b,
        num_iterates=x.shape[0],
    )


def batch_log_singular_values(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    config: StepSpectrumConfig,
    *,
    preconditioner: torch.Tensor | None = None,
    mode: Mode = "eval",
    max_params: int | None = DENSE_LIMIT,
    seed: int | None = None,
) -> torch.Tensor:
    """Sorted exponents ``ln(sigma_k + eps)`` of one step with ``batch`` at the current ``w``.

    Dense minibatch Hessian, its step matrix ``A`` (:func:`step_matrix`), float64
    ``eigvalsh`` and the closed-form block singular values. ``mode`` and ``seed`` (of
    train-mode dropout) are those of :class:`~sharpdim.curvature.hessian.HessianOperator`.
    """
    h = dense_hessian(model, loss_fn, batch, mode=mode, max_params=max_params, seed=seed)
    a = step_matrix(h, config, preconditioner)
    del h
    if not torch.isfinite(a).all():
        raise SharpdimError(f"the minibatch Hessian holds NaN or inf: {HESSIAN_NOT_FINITE}")
    exponents = step_log_singular_values(torch.linalg.eigvalsh(a), config)
    check_exponents(exponents, config.eps)
    return exponents


def rds_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    config: StepSpectrumConfig,
    *,
    preconditioner: torch.Tensor | None = None,
    iterates: Sequence[torch.Tensor] | None = None,
    mode: Mode = "eval",
    max_params: int | None = DENSE_LIMIT,
    generator: torch.Generator | None = None,
) -> RDSSharpnessResult:
    """Exact RDS sharpness ``lambda_k`` (paper Def. 4.1) from dense minibatch Hessians.

    Args:
        model, loss_fn: the network and ``loss_fn(model, batch) -> scalar``.
        batches: independently sampled minibatches ``B_1..B_b``.
        config: optimizer, learning rate and the guard ``eps``
            (:class:`~sharpdim.dynamics.jacobian_spectra.StepSpectrumConfig`).
        preconditioner: Adam's ``P = sqrt(v_hat) + eps_adam`` (flat), for Adam/AdamW only.
        iterates: optional flat parameter vectors of late iterates (attractor samples); per
            batch and ``k`` the maximum over them is taken. Default: the current parameters.
            The model's parameters are restored afterwards.
        mode: module mode for the Hessian (``"eval"``: deterministic).
        max_params: refuse dense Hessians above this size (``None``: no limit).
        generator: fixes the train-mode dropout masks (default: seed 0); it is not advanced,
            and neither is the global generator.

    Returns:
        :class:`RDSSharpnessResult`.
    """
    if not isinstance(batches, Sequence) or len(batches) == 0:
        raise SharpdimError("batches must be a non-empty list of minibatches: pass [(x, y), ...]")
    refuse_tensor_tuple(batches)
    if not isinstance(config, StepSpectrumConfig):
        raise SharpdimError(
            f"config must be a StepSpectrumConfig, got {type(config).__name__}: pass e.g. "
            "StepSpectrumConfig(optimizer='sgd', lr=0.1)"
        )
    flat = tuple(getattr(iterates, "shape", ()))
    if len(flat) == 1 and flat[0] > 0:  # (list() would split it into numbers)
        raise SharpdimError(
            f"iterates is one flat vector of shape {flat}: pass a list of them ([w]) or an "
            f"(m, {flat[0]}) tensor"
        )
    if isinstance(iterates, np.ndarray):  # (an (m, d) array, as ph_dimension takes)
        iterates = list(iterates)
    if iterates is not None and not isinstance(iterates, (Sequence, torch.Tensor)):
        raise SharpdimError(
            f"iterates must be a list of flat parameter vectors (or an (m, d) tensor), got "
            f"{type(iterates).__name__}: pass e.g. trajectory.points"
        )
    if iterates is not None and len(iterates) == 0:
        raise SharpdimError(
            "iterates is empty: pass at least one flat parameter vector, or leave it out "
            "(None) to measure at the current parameters"
        )
    params = trainable_parameters(model)
    check_dense_size(sum(p.numel() for p in params), max_params)
    saved = get_flat_params(params)
    points = [saved] if iterates is None else list(iterates)
    rows: list[torch.Tensor] = []
    # in train mode each batch draws its dropout masks once (a fork of the global generator
    # seeded from a copy of `generator`: no random stream is advanced); the map of a sampled
    # batch is then the same at every iterate, so the max over iterates is Def. 4.1's sup
    # over the attractor, not also a max over independent masks
    with forked_global_rng(peek_seed(default_generator(generator)), params):
        seeds = [operator_seed(mode) for _ in batches]
        try:
            for w in points:
                set_flat_params(params, _as_point(w, saved))
                row = [
                    batch_log_singular_values(
                        model,
                        loss_fn,
                        b,
                        config,
                        preconditioner=preconditioner,
                        mode=mode,
                        max_params=max_params,
                        seed=seed,
                    )
                    for b, seed in zip(batches, seeds, strict=True)
                ]
                rows.append(torch.stack(row))
        finally:
            set_flat_params(params, saved)
    return rds_exponents(torch.stack(rows))


def _as_point(w: Any, saved: torch.Tensor) -> torch.Tensor:
    """An iterate as a flat parameter vector like ``saved``; one-line errors otherwise."""
    if not isinstance(w, torch.Tensor):
        try:
            w = torch.as_tensor(w, dtype=saved.dtype, device=saved.device)
        except (TypeError, ValueError, RuntimeError):
            raise SharpdimError(
                f"iterate of type {type(w).__name__} is not numeric: pass flat "
                "parameter vectors (sharpdim get_flat_params)"
            ) from None
    if w.shape != saved.shape:
        raise SharpdimError(
            f"iterate of shape {tuple(w.shape)} does not match {saved.numel()} "
            "parameters: pass flat parameter vectors (sharpdim get_flat_params)"
        )
    return w
