"""The sharpness dimension of a model, its data, an optimizer and a learning rate.

Paper Def. 4.2 (Tuci et al., "Generalization at the Edge of Stability", arXiv 2604.19740): the
Kaplan–Yorke dimension of the RDS sharpnesses ``lambda_1 >= ... >= lambda_n`` (Def. 4.1), the
batch-averaged sorted log singular values of the optimizer's one-step Jacobian at the current
parameters. Methods:

* ``"exact"``: per sampled minibatch the dense Hessian, float64 ``eigvalsh``, closed-form
  singular values (:mod:`sharpdim.dimension.rds_sharpness`), Def. 4.2 on the batch mean.
  Refused above ``max_params`` with a message naming the scalable methods.
* ``"slq"``, ``"kde"``, ``"ps"``: stochastic Lanczos quadrature, one fresh minibatch and one
  Rademacher probe per run, full reorthogonalization, then SD-SLQ / SD-KDE / SD-PS
  (:mod:`sharpdim.dimension.sd_estimators`).

Minibatches of ``batch_size`` examples are drawn without replacement from ``data`` with the
given ``torch.Generator``, independently for every batch. The confidence interval is a
percentile bootstrap over batches (exact) or Lanczos runs (SLQ methods), seeded from the
same generator.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, overload

import torch
from torch import nn

from sharpdim.checks import check_betas, check_count, check_number, default_generator
from sharpdim.curvature.dense import DENSE_LIMIT
from sharpdim.curvature.hessian import HessianOperator, LossFn, Mode, require_loss_fn
from sharpdim.curvature.measure import equal_mass_cell_means
from sharpdim.curvature.params import get_flat_params, trainable_parameters
from sharpdim.curvature.slq import check_reorthogonalization
from sharpdim.dimension.kaplan_yorke import kaplan_yorke_dimension
from sharpdim.dimension.rds_sharpness import rds_sharpness
from sharpdim.dimension.sd_arguments import check_data, check_estimator_options
from sharpdim.dimension.sd_estimators import (
    SD_METHODS,
    exponent_measure,
    sd_from_measure,
)
from sharpdim.dynamics.jacobian_spectra import (
    ADAPTIVE_OPTIMIZERS,
    LOG_EPS,
    MOMENTUM_OPTIMIZERS,
    StepMatrixOperator,
    StepSpectrumConfig,
    optimizer_kind,
)
from sharpdim.errors import SharpdimError, TooLargeError
from sharpdim.module_modes import uncompiled
from sharpdim.rng import forked_global_rng, operator_seed, peek_seed

METHODS: tuple[str, ...] = ("exact", *SD_METHODS)
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class SDResult:
    """The sharpness dimension and what it was computed from.

    Attributes:
        sd: the sharpness dimension, in ``[0, num_exponents]``.
        j_star: ``j*`` of Def. 4.2 (for the SLQ methods: the exponent mass above the crossing).
        lambda_1: RDS sharpness (mean over batches of the top exponent); lambda_1_stderr its
            standard error.
        exponents: ``lambda_k`` in descending order (exact), or the means of the estimated
            exponent measure over equal-mass cells (SLQ methods; at most 1,000, descending),
            each standing for ``exponent_weight`` exponents.
        exponent_weight: how many exponents each entry of ``exponents`` stands for.
        num_expanding: number (mass) of expanding directions, ``sigma > 1`` beyond round-off
            (SGD: ``alpha > 2/eta`` or ``alpha < 0``, flat directions not counted; see
            :func:`_expanding_mass`).
        num_params: ``d``; num_exponents: ``d`` (SGD) or ``2d`` (momentum, Adam).
        ci_low, ci_high: bootstrap confidence interval of SD (NaN without bootstrap).
        confidence: its level; num_bootstrap: resamples.
        method, optimizer, lr: the request; settings: every other setting used (for Adam,
            ``settings["preconditioner"]`` says how ``P`` was estimated, or ``"given"``).
        wall_time_s: seconds spent.
    """

    sd: float
    j_star: float
    lambda_1: float
    lambda_1_stderr: float
    exponents: torch.Tensor
    exponent_weight: float
    num_expanding: float
    num_params: int
    num_exponents: int
    ci_low: float
    ci_high: float
    confidence: float
    num_bootstrap: int
    method: str
    optimizer: str
    lr: float
    settings: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0

    @property
    def sd_fraction(self) -> float:
        """``SD / num_exponents``."""
        return self.sd / self.num_exponents

    def to_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "sd": self.sd,
            "j_star": self.j_star,
            "lambda_1": self.lambda_1,
            "lambda_1_stderr": clean(self.lambda_1_stderr),
            "num_expanding": self.num_expanding,
            "num_params": self.num_params,
            "num_exponents": self.num_exponents,
            "sd_fraction": self.sd_fraction,
            "ci_low": clean(self.ci_low),
            "ci_high": clean(self.ci_high),
            "confidence": self.confidence,
            "num_bootstrap": self.num_bootstrap,
            "method": self.method,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "settings": dict(self.settings),
            "wall_time_s": self.wall_time_s,
            "exponent_weight": self.exponent_weight,
            "exponents": self.exponents.tolist(),
        }


class _Batches(Sequence[tuple[torch.Tensor, ...]]):
    """Minibatches drawn up front as index vectors and copied out of the data only when one
    is used: the memory of one batch, not of all ``num_runs`` (full-batch copies of the data
    each, before)."""

    def __init__(self, data: Sequence[torch.Tensor], indices: list[torch.Tensor]) -> None:
        self._data, self._indices = data, indices

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[torch.Tensor, ...]]: ...
    def __getitem__(
        self, i: int | slice
    ) -> tuple[torch.Tensor, ...] | list[tuple[torch.Tensor, ...]]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        idx = self._indices[i]
        return tuple(t[idx.to(t.device)] for t in self._data)


def _sample_batches(
    data: Sequence[torch.Tensor], count: int, batch_size: int, generator: torch.Generator
) -> _Batches:
    n = int(data[0].shape[0])
    return _Batches(
        data, [torch.randperm(n, generator=generator)[:batch_size] for _ in range(count)]
    )


def _estimate_preconditioner(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    adam_eps: float,
    mode: Mode,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """``P = sqrt(mean_B (g_B + wd w)^2) + eps``: the stationary second moment over the batches.

    ``wd`` is Adam's coupled L2 decay (torch ``Adam(weight_decay=wd)`` adds ``wd w`` to the
    gradient before its second moment); pass ``0`` for AdamW, whose decay is decoupled.
    """
    w = get_flat_params(trainable_parameters(model)).to(torch.float64)
    sq = None
    for b in batches:
        op = HessianOperator(model, loss_fn, b, mode=mode, seed=operator_seed(mode))
        _, g = op.loss_and_gradient()
        g2 = (g.detach().to(torch.float64) + weight_decay * w) ** 2
        sq = g2 if sq is None else sq + g2
    assert sq is not None
    p = (sq / len(batches)).sqrt() + adam_eps
    if bool((p == 0).any()):
        raise SharpdimError(
            f"the estimated preconditioner is 0 for {int((p == 0).sum())} parameter(s) with "
            "zero gradient on every batch (e.g. dead ReLU units) and adam_eps=0: pass "
            "adam_eps > 0 (torch's default 1e-8) or your optimizer's own preconditioner"
        )
    return p


def _child_generator(gen: torch.Generator) -> torch.Generator:
    """A new generator seeded from ``gen`` (the bootstrap's own stream)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))


def _percentile_ci(samples: list[float], confidence: float) -> tuple[float, float]:
    if not samples:
        return float("nan"), float("nan")
    t = torch.tensor(samples, dtype=torch.float64)
    lo = (1 - confidence) / 2
    q = torch.quantile(t, torch.tensor([lo, 1 - lo], dtype=torch.float64))
    return float(q[0]), float(q[1])


def _own_dropout_stream(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn(model, ..., generator=...)`` in a forked global RNG seeded from a copy of the
    generator: train-mode dropout masks are then fixed by ``generator`` and the caller's
    random stream (e.g. a training run) is left as it was."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        gen = kwargs.get("generator")
        seed = peek_seed(gen if isinstance(gen, torch.Generator) else default_generator(None))
        model = args[0] if args else kwargs.get("model")
        params = list(model.parameters()) if isinstance(model, nn.Module) else []
        with forked_global_rng(seed, params):
            return fn(*args, **kwargs)

    return wrapper


def _expanding_mass(
    values: torch.Tensor, masses: torch.Tensor, eps: float, params: list[torch.Tensor]
) -> float:
    """The mass of exponents ``ln(sigma + eps)`` with ``sigma > 1 + r``: directions that expand.

    ``r = 4 u (1 + sigma_max)``, ``u`` the unit round-off of the parameters' dtype (about
    the eigenvalue error of a Hessian in that dtype, times ``eta``): a flat direction
    (``alpha = 0``) or one at the threshold (``eta alpha = 2``) has ``sigma = 1`` up to that
    round-off, and its exponent ``ln(1 + eps) > 0`` would otherwise count it, or not, by the
    sign of the noise (float32 and float64 twins of one model differed by 100 of 610). Real
    directions closer to 1 than ``r`` are left out too (float32: ``sigma - 1`` below ~1e-6;
    4 of 63 on a 241-parameter MLP whose float64 twin resolves them). For momentum and Adam
    a flat direction's block has ``sigma_1 > 1`` and is counted.
    """
    u = max(torch.finfo(p.dtype).eps for p in params)
    sigma_max = math.exp(float(values.max()))
    margin = 4 * u * (1 + sigma_max)
    return float(masses[values > math.log1p(eps + margin)].sum())


_USED_BY = {
    "momentum": MOMENTUM_OPTIMIZERS,
    "betas": ADAPTIVE_OPTIMIZERS,
    "adam_eps": ADAPTIVE_OPTIMIZERS,
    "step": ADAPTIVE_OPTIMIZERS,
}
"""The optimizers whose step spectrum each optional hyperparameter enters."""


def _refuse_unused(optimizer: str, **given: Any) -> None:
    """Refuse a hyperparameter that ``optimizer``'s step does not use (it would be ignored)."""
    for name, value in given.items():
        if value is not None and optimizer not in _USED_BY[name]:
            users = " or ".join(repr(o) for o in _USED_BY[name])
            raise SharpdimError(
                f"{name}={value!r} is not used by optimizer={optimizer!r} and would be ignored: "
                f"drop it, or pass optimizer={users}"
            )


@_own_dropout_stream
def sharpness_dimension(
    model: nn.Module,
    loss_fn: LossFn,
    data: Sequence[torch.Tensor],
    lr: float,
    *,
    method: str = "exact",
    optimizer: str = "sgd",
    num_batches: int = 10,
    batch_size: int = 128,
    generator: torch.Generator | None = None,
    eps: float = LOG_EPS,
    max_params: int | None = DENSE_LIMIT,
    num_runs: int = 100,
    num_steps: int = 100,
    reorthogonalization: str = "full",
    momentum: float | None = None,
    betas: tuple[float, float] | None = None,
    weight_decay: float = 0.0,
    adam_eps: float | None = None,
    preconditioner: torch.Tensor | None = None,
    step: int | None = None,
    iterates: Sequence[torch.Tensor] | None = None,
    mode: Mode = "eval",
    num_bootstrap: int = 200,
    confidence: float = 0.95,
    estimator_options: dict[str, Any] | None = None,
) -> SDResult:
    """Sharpness dimension (paper Def. 4.2) of ``model`` trained by ``optimizer`` at step size ``lr``.

    Args:
        model: the network at (near) convergence; loss_fn: ``loss_fn(model, batch) -> scalar``
            with ``batch`` an ``(x, y)`` tuple.
        data: the training set as a tuple of tensors ``(x, y)``; minibatches are drawn from it
            (floating tensors are cast to the model's dtype, all moved to its device).
        lr: the optimizer's step size ``eta`` (> 0).
        method: ``"exact"``, ``"slq"`` (SD-SLQ), ``"kde"`` (SD-KDE) or ``"ps"`` (SD-PS).
        optimizer: ``"sgd"``, ``"momentum"`` (heavy ball, torch convention), ``"nesterov"``,
            ``"adam"`` or ``"adamw"`` (frozen preconditioner, see
            :mod:`sharpdim.dynamics.jacobian_spectra`).
        num_batches: minibatches for the exact method; batch_size: their size.
        generator: source of the minibatches, probes and bootstrap (default: seed 0).
        eps: guard in ``ln(sigma + eps)``.
        max_params: the exact method refuses models above this size.
        num_runs, num_steps: Lanczos runs (one minibatch each) and steps per run.
        reorthogonalization: ``"full"`` (the paper's SD-SLQ), ``"partial"`` (Simon 1984,
            semi-orthogonal basis: same quadrature to working precision, faster on large
            models) or ``"none"`` (plain Lanczos, O(n) memory; the quadrature still
            integrates the measure, Greenbaum 1989); see
            :func:`~sharpdim.curvature.slq.slq_spectrum`.
        momentum, betas, weight_decay, adam_eps: optimizer hyperparameters (torch's meaning);
            ``momentum`` (default 0.9) only for ``"momentum"``/``"nesterov"``, ``betas``
            (default ``(0.9, 0.999)``), ``adam_eps`` (1e-8) and ``step`` only for Adam/AdamW:
            one given to an optimizer that does not use it is refused, not ignored.
        preconditioner: Adam's ``P = sqrt(v_hat) + adam_eps`` (flat); default: estimated as
            ``sqrt(mean_B g_B^2) + adam_eps`` over ``num_batches`` sampled minibatches, with
            ``g_B + weight_decay w`` in place of ``g_B`` for ``"adam"`` (coupled L2 decay).
            From a live optimizer: ``adam_preconditioner(opt, bias_correction=False)`` with
            ``step=adam_step(opt)`` (``sharpdim.training.optimizers``); folding ``1 - b1^t``
            into ``P`` with ``step=None`` gives the same SD.
        step: Adam's step count for the bias correction of ``m``; ``None``: late training.
        iterates: flat parameter vectors of late iterates (attractor samples, exact only):
            per batch and ``k`` the maximum over them before averaging.
        mode: module mode for the Hessians (``"eval"`` default).
        num_bootstrap: bootstrap resamples for the confidence interval (0: none; 1 is
            refused; none either with a single batch (exact) or run (SLQ methods), which has
            no spread to resample).
        confidence: level of the interval.
        estimator_options: extra keywords of the SD estimator: ``num_bins`` (``"slq"``),
            ``bandwidth``, ``grid_size``, ``points_per_bandwidth``, ``max_grid``,
            ``integration`` (``"kde"``), ``num_quantiles`` (``"ps"``); none for ``"exact"``.

    Returns:
        :class:`SDResult`.

    Raises:
        SharpdimError: bad input; TooLargeError: ``"exact"`` above ``max_params``.
    """
    start = time.perf_counter()
    model = uncompiled(model)  # (a torch.compile wrapper has no double backward)
    if method not in METHODS:
        raise SharpdimError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    optimizer = optimizer_kind(optimizer)
    require_loss_fn(loss_fn)
    lr = check_number(lr, "lr", "> 0", "the optimizer's step size, 0.1")
    n = check_data(data)
    batch_size = check_count(batch_size, "batch_size")
    if batch_size > n:
        raise SharpdimError(
            f"batch_size={batch_size} but the data has {n} examples: pass 1 <= batch_size <= {n}"
        )
    check_reorthogonalization(reorthogonalization)
    num_batches = check_count(num_batches, "num_batches")
    num_runs = check_count(num_runs, "num_runs")
    num_steps = check_count(num_steps, "num_steps")
    num_bootstrap = check_count(num_bootstrap, "num_bootstrap", 0)
    if num_bootstrap == 1:
        raise SharpdimError(
            "num_bootstrap=1 gives no interval (one resample, a zero-width 'CI' that misses sd): "
            "pass 0 (no CI) or e.g. 200"
        )
    if (num_batches if method == "exact" else num_runs) < 2:
        num_bootstrap = 0  # resampling one batch or run gives a zero-width, not a real, interval
    confidence = check_number(confidence, "confidence", "in (0, 1)", "0.95")
    eps = check_number(eps, "eps", ">= 0", "1e-12")
    _refuse_unused(optimizer, momentum=momentum, betas=betas, adam_eps=adam_eps, step=step)
    momentum = check_number(0.9 if momentum is None else momentum, "momentum", "in [0, 1)", "0.9")
    weight_decay = check_number(weight_decay, "weight_decay", ">= 0", "0.0")
    adam_eps = check_number(1e-8 if adam_eps is None else adam_eps, "adam_eps", ">= 0", "1e-8")
    betas = check_betas((0.9, 0.999) if betas is None else betas)
    if step is not None:
        step = check_count(step, "step", hint="Adam's step count, or None late in training")
    if max_params is not None:
        max_params = check_count(max_params, "max_params", hint="a parameter count, or None")
    gen = default_generator(generator)
    if preconditioner is not None and optimizer not in ("adam", "adamw"):
        raise SharpdimError(
            f"a preconditioner is Adam's; optimizer={optimizer!r} does not use it: drop it or "
            "pass optimizer='adam' or 'adamw'"
        )
    if iterates is not None and method != "exact":
        raise SharpdimError("`iterates` (attractor samples) needs method='exact'")
    config = StepSpectrumConfig(
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        betas=betas,
        weight_decay=weight_decay,
        step=step,
        eps=eps,
    )
    trainable = trainable_parameters(model)
    d = sum(p.numel() for p in trainable)
    if trainable:  # floating data in the model's dtype, all on its device (as train() does)
        ref = trainable[0]
        data = tuple(
            t.to(ref.device, ref.dtype) if t.is_floating_point() else t.to(ref.device) for t in data
        )
    if method == "exact" and max_params is not None and d > max_params:
        raise TooLargeError(
            f"method='exact' needs dense Hessians of {d:,} parameters, above max_params="
            f"{max_params:,}: use method='slq', 'kde' or 'ps' (or raise max_params)"
        )
    opts = check_estimator_options(method, estimator_options)
    settings: dict[str, Any] = {
        "batch_size": batch_size,
        "eps": eps,
        "mode": mode,
        "estimator_options": opts,
    }
    if optimizer in ("momentum", "nesterov"):
        settings["momentum"] = momentum
    if config.is_adam:
        settings.update(betas=list(betas), adam_eps=adam_eps, step=step)
    if weight_decay:
        settings["weight_decay"] = weight_decay
    if config.is_adam and preconditioner is None:
        coupled = weight_decay if optimizer == "adam" else 0.0  # AdamW decouples its decay
        batches = _sample_batches(data, num_batches, batch_size, gen)
        preconditioner = _estimate_preconditioner(
            model, loss_fn, batches, adam_eps, mode, weight_decay=coupled
        )
        settings["preconditioner"] = (
            "estimated: sqrt(mean_B (g_B + weight_decay w)^2) + adam_eps"
            if coupled
            else "estimated: sqrt(mean_B g_B^2) + adam_eps"
        )
        settings["preconditioner_batches"] = num_batches  # (whatever the method)
    elif config.is_adam:
        settings["preconditioner"] = "given"
    num_exp = d * config.states_per_param

    if method == "exact":
        batches = _sample_batches(data, num_batches, batch_size, gen)
        boot_gen = _child_generator(gen)
        rds = rds_sharpness(
            model,
            loss_fn,
            batches,
            config,
            preconditioner=preconditioner,
            iterates=iterates,
            mode=mode,
            max_params=max_params,
            generator=gen,  # its dropout masks (peeked: gen is not advanced)
        )
        ky = kaplan_yorke_dimension(rds.exponents)
        boot = []
        for _ in range(num_bootstrap):
            pick = torch.randint(0, num_batches, (num_batches,), generator=boot_gen)
            boot.append(kaplan_yorke_dimension(rds.per_batch[pick].mean(0)).dimension)
        settings.update(num_batches=num_batches, num_iterates=rds.num_iterates)
        exponents, weight = rds.exponents, 1.0
        lam1, lam1_se = rds.lambda_1, rds.lambda_1_stderr
        expanding = _expanding_mass(rds.exponents, torch.ones_like(rds.exponents), eps, trainable)
    else:
        from sharpdim.curvature.slq import slq_spectrum

        batches = _sample_batches(data, num_runs, batch_size, gen)
        boot_gen = _child_generator(gen)

        def factory(run: int, _gen: torch.Generator) -> StepMatrixOperator:
            return StepMatrixOperator(
                HessianOperator(model, loss_fn, batches[run], mode=mode, seed=operator_seed(mode)),
                config,
                preconditioner,
            )

        slq = slq_spectrum(
            factory,
            num_runs=num_runs,
            num_steps=num_steps,
            generator=gen,
            reorthogonalization=reorthogonalization,
        )
        values, masses = exponent_measure(slq.nodes, slq.weights, d, config)
        ky = sd_from_measure(method, values, masses, **opts)
        boot = []
        for _ in range(num_bootstrap):
            pick = torch.randint(0, num_runs, (num_runs,), generator=boot_gen)
            boot.append(sd_from_measure(method, values[pick], masses[pick], **opts).dimension)
        top = values.amax(dim=1)
        lam1 = float(top.mean())
        lam1_se = (
            float(top.std(correction=1) / math.sqrt(num_runs)) if num_runs > 1 else float("nan")
        )
        m_q = min(num_exp, 1000)
        exponents = equal_mass_cell_means(values, masses, m_q)
        weight = num_exp / m_q
        expanding = _expanding_mass(values, masses, eps, trainable)
        settings.update(
            num_runs=num_runs, num_steps=num_steps, reorthogonalization=reorthogonalization
        )
    # (the estimators' mass can exceed d by an ulp)
    boot = [min(max(b, 0.0), float(num_exp)) for b in boot]
    lo, hi = _percentile_ci(boot, confidence)
    return SDResult(
        sd=min(max(ky.dimension, 0.0), float(num_exp)),
        j_star=ky.j_star,
        lambda_1=lam1,
        lambda_1_stderr=lam1_se,
        exponents=exponents,
        exponent_weight=weight,
        num_expanding=expanding,
        num_params=d,
        num_exponents=num_exp,
        ci_low=lo,
        ci_high=hi,
        confidence=confidence,
        num_bootstrap=num_bootstrap,
        method=method,
        optimizer=optimizer,
        lr=float(lr),
        settings=settings,
        wall_time_s=time.perf_counter() - start,
    )
