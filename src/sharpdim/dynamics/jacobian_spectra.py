"""Log singular values of one optimizer step's Jacobian, from the Hessian's eigenvalues.

The RDS sharpness (paper Def. 4.1, Tuci et al., arXiv 2604.19740) needs the singular values
``sigma_k`` of the one-step Jacobian of the optimizer. For the optimizers below the Jacobian is
orthogonally similar to a direct sum of ``1 x 1`` or ``2 x 2`` blocks indexed by the
eigenvalues ``a`` of a symmetric matrix ``A`` (the minibatch Hessian ``H_B``, shifted by the
L2 weight decay, or Adam's preconditioned Hessian), so its singular values follow in closed
form from the eigenvalues of ``A`` — no ``2d x 2d`` SVD. Every formula is checked against the
SVD of ``torch.autograd.functional.jacobian`` of the real torch.optim step in the tests.

Exponents are ``ln(sigma + eps)``: the guard ``eps`` (default :data:`LOG_EPS` ``= 1e-12``)
keeps ``ln 0`` finite. ``sigma = |1 - eta * a|`` computed in float64 carries an absolute
round-off of about ``2.2e-16 * max(1, eta * |a|)``, below ``1e-12`` for ``eta * |a| < 10^3``:
the guard leaves every singular value float64 can resolve essentially unchanged (relative
change ``eps / sigma``) and caps an exactly singular direction at ``ln(1e-12) = -27.6``.

Blocks (``a`` an eigenvalue of ``A``, ``lr`` the step size). The second state is taken in
*parameter units* (the part of the next displacement it carries), so every block depends on
``lr a`` and the momentum constants only: scaling the loss by ``c`` and ``lr`` by ``1/c``, or
the parameters by ``s`` and ``lr`` by ``s^2``, gives bit-identical torch.optim iterates and
now the same singular values (with torch's buffer ``v``, in gradient units, a heavy-ball SD of
the worked example went 4.84 / 5.49 / 5.08 at ``c`` = 1 / 10 / 0.1). A fixed change of
coordinates leaves Lyapunov exponents (long-time growth rates) unchanged; only the one-step
singular values, hence the RDS sharpness, depend on it.

* **SGD** ``w' = w - lr (g + wd w)``: ``A = H_B + wd I``, ``sigma = |1 - lr a|``.
* **Heavy ball** (torch.optim.SGD, ``momentum = mu``, ``dampening = 0``): ``v' = mu v + g``,
  ``w' = w - lr v'``; state ``(w, lr v)`` (``lr v' = w - w'``, the last step): block
  ``[[1 - lr a, -mu], [lr a, mu]]`` (``det = mu``; torch's ``(w, v)`` gives
  ``[[1 - lr a, -lr mu], [a, mu]]``, similar through ``diag(1, lr)``).
* **Nesterov** (``nesterov=True``): ``w' = w - lr (g + mu v')``; state ``(w, lr v)``: block
  ``[[1 - lr (1 + mu) a, -mu^2], [lr a, mu]]`` (``det = mu (1 - lr a)``).
* **Adam / AdamW, frozen preconditioner** (an approximation, stated as such): torch's step is
  ``m' = b1 m + (1 - b1) g``, ``v' = b2 v + (1 - b2) g^2``,
  ``w' = (1 - lr wd_w) w - (lr / c1) m' / (sqrt(v' / c2) + eps_adam)`` with
  ``c_i = 1 - b_i^t`` (``wd_w`` the decoupled AdamW decay). The approximation holds the
  preconditioner ``D = diag(1 / (sqrt(v'/c2) + eps_adam))`` fixed: the dependence of ``v'`` on
  ``w`` (through ``g^2``) is dropped and ``v`` leaves the state, which becomes ``(w, m)``.
  Then ``J = [[(1 - lr wd_w) I - (lr/c1)(1 - b1) D A, -(lr/c1) b1 D], [(1 - b1) A, b1 I]]``
  with ``A = H_B + wd I`` (Adam's L2 decay; ``wd = 0`` for AdamW). ``D A`` is not symmetric,
  so the exponents are taken in the *preconditioned coordinates* ``(u, z) = (D^{-1/2} w,
  (lr/c1) D^{1/2} m)`` (``z'`` is the step in ``u``), where ``J`` becomes ``S^{-1} J S``
  (``S = diag(D^{1/2}, (c1/lr) D^{-1/2})``) with blocks
  ``[[1 - lr wd_w - (lr/c1)(1 - b1) a, -b1], [(lr/c1)(1 - b1) a, b1]]`` and ``a`` the
  eigenvalues of the symmetric ``D^{1/2} A D^{1/2} = P^{-1/2} A P^{-1/2}``.

The singular values of a real ``2 x 2`` block ``[[p, q], [r, s]]`` satisfy
``sigma_1 sigma_2 = |ps - qr|`` and ``sigma_1^2 + sigma_2^2 = p^2 + q^2 + r^2 + s^2``; the
larger is ``(sqrt((p + s)^2 + (q - r)^2) + sqrt((p - s)^2 + (q + r)^2)) / 2`` (a sum of
non-negative terms, no cancellation). The smaller is ``|det| / sigma_1`` with the determinant
in closed form (``mu`` for heavy ball, ``mu (1 - lr a)`` for Nesterov, ``b1 (1 - lr wd_w)`` for
Adam), which keeps its relative accuracy when ``sigma_2 << sigma_1`` (large curvatures), where
the difference of the two square roots would lose it (17% error at ``sigma_1 / sigma_2 ~ 1e8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, final

import torch

from sharpdim.checks import check_betas, check_count, check_number, real_tensor
from sharpdim.curvature.operator import LinearOperator
from sharpdim.errors import SharpdimError

LOG_EPS = 1e-12
"""Default guard ``eps`` in the exponents ``ln(sigma + eps)`` (see the module docstring)."""

Optimizer = Literal["sgd", "momentum", "nesterov", "adam", "adamw"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "nesterov", "adam", "adamw")
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")
"""The optimizers whose step uses ``momentum``."""
ADAPTIVE_OPTIMIZERS = ("adam", "adamw")
"""The optimizers whose step uses ``betas``, Adam's ``eps`` and its step count."""
_ALIASES = {"gd": "sgd", "heavy_ball": "momentum"}
"""Names :func:`sharpdim.training.optimizers.make_optimizer` (and ``TrainConfig``,
``EoSRecord.optimizer``) use for the same updates."""


def optimizer_kind(name: object) -> str:
    """``name`` as one of :data:`OPTIMIZERS` (``"gd"`` is ``"sgd"``, ``"heavy_ball"`` is
    ``"momentum"``, the training side's names), else a one-line error."""
    kind = _ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(kind, str) or kind not in OPTIMIZERS:
        accepted = ", ".join([*OPTIMIZERS, *_ALIASES])
        raise SharpdimError(f"unknown optimizer {name!r}: use one of {accepted}")
    return kind


@dataclass(frozen=True)
class StepSpectrumConfig:
    """Hyperparameters that turn Hessian eigenvalues into one-step Jacobian singular values.

    Attributes:
        optimizer: ``"sgd"``, ``"momentum"`` (heavy ball), ``"nesterov"``, ``"adam"``,
            ``"adamw"`` (the last two with a frozen preconditioner).
        lr: step size ``eta`` (> 0).
        momentum: ``mu`` for heavy ball / Nesterov (torch convention ``v <- mu v + g``).
        betas: Adam's ``(b1, b2)``; only ``b1`` enters the frozen-preconditioner blocks.
        weight_decay: L2 decay (SGD, Adam) or decoupled decay (AdamW).
        step: Adam's step count ``t`` for the bias correction ``c1 = 1 - b1^t``; ``None``
            means late in training (``c1 = 1``).
        eps: the guard in ``ln(sigma + eps)``.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    step: int | None = None
    eps: float = LOG_EPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", optimizer_kind(self.optimizer))
        checked = {  # stored as Python numbers (torch and numpy scalars are accepted)
            "lr": check_number(self.lr, "lr", "> 0", "0.1"),
            "momentum": check_number(self.momentum, "momentum", "in [0, 1)", "0.9"),
            "betas": check_betas(self.betas),
            "weight_decay": check_number(self.weight_decay, "weight_decay", ">= 0", "0.0"),
            "eps": check_number(self.eps, "eps", ">= 0", "1e-12"),
        }
        if self.optimizer in ("momentum", "nesterov") and checked["momentum"] == 0:
            raise SharpdimError(
                f"optimizer={self.optimizer!r} with momentum 0 is plain SGD (torch.optim keeps no "
                "buffer): use optimizer='sgd', or a momentum in (0, 1)"
            )
        if self.step is not None:
            hint = "Adam's step count, or None late in training"
            checked["step"] = check_count(self.step, "step", hint=hint)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def states_per_param(self) -> int:
        """1 for SGD (state ``w``), 2 for momentum and Adam (state ``(w, lr v)``, or Adam's
        ``(w, m)``; the second in parameter units)."""
        return 1 if self.optimizer == "sgd" else 2

    @property
    def is_adam(self) -> bool:
        return self.optimizer in ("adam", "adamw")

    @property
    def hessian_shift(self) -> float:
        """``A = H + shift * I``: the L2 weight decay (0 for AdamW's decoupled decay)."""
        return 0.0 if self.optimizer == "adamw" else self.weight_decay


def singular_values_2x2(
    p: torch.Tensor,
    q: torch.Tensor | float,
    r: torch.Tensor,
    s: torch.Tensor | float,
    det: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values ``(sigma_1 >= sigma_2)`` of the blocks ``[[p, q], [r, s]]`` elementwise.

    ``det``: the blocks' determinant ``ps - qr`` in closed form where the caller knows one
    (default: computed, which can cancel); ``sigma_2 = |det| / sigma_1`` (0 where
    ``sigma_1 = 0``).
    """
    p, r = torch.as_tensor(p), torch.as_tensor(r)
    q = torch.as_tensor(q, dtype=p.dtype)
    s = torch.as_tensor(s, dtype=p.dtype)
    sigma_1 = (torch.hypot(p + s, q - r) + torch.hypot(p - s, q + r)) / 2
    det = p * s - q * r if det is None else torch.as_tensor(det, dtype=p.dtype)
    safe = torch.where(sigma_1 > 0, sigma_1, torch.ones_like(sigma_1))
    sigma_2 = torch.where(sigma_1 > 0, det.abs() / safe, torch.zeros_like(sigma_1))
    return sigma_1, torch.minimum(sigma_2, sigma_1)


def block_singular_values(a: torch.Tensor, config: StepSpectrumConfig) -> torch.Tensor:
    """Singular values of the one-step Jacobian for the eigenvalues ``a`` of ``A``.

    Args:
        a: eigenvalues of the symmetric step matrix ``A`` (see :func:`step_matrix`):
            ``H_B + wd I`` for SGD and momentum, ``D^{1/2} (H_B + wd I) D^{1/2}`` for Adam
            (``wd = 0`` for AdamW).
        config: the optimizer and its hyperparameters.

    Returns:
        Float64 singular values, shape ``(n,)`` for SGD and ``(2n,)`` otherwise (unsorted:
        the two of each block side by side).
    """
    a = _real(a, "the eigenvalues a", "the eigenvalues of the symmetric A (eigvalsh)").reshape(-1)
    lr, mu = config.lr, config.momentum
    if config.optimizer == "sgd":
        return (1 - lr * a).abs()
    # second state in parameter units (module docstring): each block is a function of lr a
    if config.optimizer == "momentum":
        s1, s2 = singular_values_2x2(1 - lr * a, -mu, lr * a, mu, det=mu)
    elif config.optimizer == "nesterov":
        det = mu * (1 - lr * a)
        s1, s2 = singular_values_2x2(1 - lr * (1 + mu) * a, -mu * mu, lr * a, mu, det=det)
    else:  # adam / adamw, frozen preconditioner, preconditioned coordinates
        b1 = config.betas[0]
        c1 = 1.0 if config.step is None else 1 - b1**config.step
        decay = lr * config.weight_decay if config.optimizer == "adamw" else 0.0
        r = (lr / c1) * (1 - b1) * a
        s1, s2 = singular_values_2x2(1 - decay - r, -b1, r, b1, det=b1 * (1 - decay))
    return torch.stack([s1, s2], dim=1).reshape(-1)


def _real(values: Any, name: str, hint: str) -> torch.Tensor:
    """``values`` as float64 (a tensor keeps its device; lists and arrays are read as
    :func:`~sharpdim.checks.real_tensor` reads them); complex and bool data are refused: a cast
    would drop an imaginary part (with only a warning) or read ``True`` as 1."""
    if not isinstance(values, torch.Tensor):
        return real_tensor(values, name)
    if values.is_complex() or values.dtype == torch.bool:
        raise SharpdimError(f"{name} must be real, got a {values.dtype} tensor: pass {hint}")
    return values.detach().to(torch.float64)


def _check_preconditioner(
    config: StepSpectrumConfig, preconditioner: Any, n: int
) -> torch.Tensor | None:
    """Adam's preconditioner as a checked tensor (lists, arrays: float64); ``None`` otherwise."""
    if config.is_adam and preconditioner is None:
        raise SharpdimError(
            f"optimizer {config.optimizer!r} needs the preconditioner P = sqrt(v_hat) + eps: "
            "pass `preconditioner` (a flat tensor of the model's parameter count)"
        )
    if not config.is_adam:
        if preconditioner is not None:
            raise SharpdimError(
                f"a preconditioner is Adam's; optimizer {config.optimizer!r} does not use it: "
                "drop it or use optimizer 'adam' or 'adamw'"
            )
        return None
    if isinstance(preconditioner, torch.Tensor) and (
        preconditioner.is_complex() or preconditioner.dtype == torch.bool
    ):
        raise SharpdimError(
            f"the preconditioner must be real, got a {preconditioner.dtype} tensor: pass "
            "sqrt(v_hat) + eps, a flat float tensor"
        )
    if not isinstance(preconditioner, torch.Tensor):
        try:  # (complex and bool arrays and lists are refused there, in one line)
            preconditioner = real_tensor(preconditioner, "the preconditioner", word_errors=False)
        except SharpdimError:
            raise
        except (TypeError, ValueError, RuntimeError):
            raise SharpdimError(
                f"preconditioner of type {type(preconditioner).__name__} is not numeric: "
                f"pass a flat tensor of shape ({n},)"
            ) from None
    if preconditioner.shape != (n,):
        raise SharpdimError(
            f"preconditioner of shape {tuple(preconditioner.shape)} does not match {n} "
            f"parameters: pass a flat tensor of shape ({n},)"
        )
    if not bool((preconditioner > 0).all() and torch.isfinite(preconditioner).all()):
        raise SharpdimError(
            "the preconditioner must be positive and finite: pass sqrt(v_hat) + eps, eps > 0"
        )
    return preconditioner


def step_matrix(
    hessian: torch.Tensor, config: StepSpectrumConfig, preconditioner: torch.Tensor | None = None
) -> torch.Tensor:
    """The symmetric step matrix ``A`` (float64) whose eigenvalues feed :func:`block_singular_values`.

    ``A = H + wd I`` (SGD, momentum, Nesterov; L2 decay), ``A = P^{-1/2} (H + wd I) P^{-1/2}``
    (Adam; ``wd = 0`` for AdamW) with ``P = preconditioner = sqrt(v_hat) + eps_adam``.
    """
    if not isinstance(hessian, torch.Tensor) or hessian.ndim != 2:
        got = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise SharpdimError(f"the Hessian must be a square 2-D tensor, got {got}: pass (n, n)")
    if hessian.shape[0] != hessian.shape[1]:
        raise SharpdimError(
            f"the Hessian must be square, got shape {tuple(hessian.shape)}: pass an (n, n) matrix"
        )
    a = _real(hessian, "the Hessian", "a real symmetric (n, n) matrix")
    n = a.shape[0]
    preconditioner = _check_preconditioner(config, preconditioner, n)
    shift = config.hessian_shift
    if shift:
        a = a + shift * torch.eye(n, dtype=a.dtype, device=a.device)
    if config.is_adam and preconditioner is not None:
        r = preconditioner.detach().to(a.dtype).rsqrt()
        a = r[:, None] * a * r[None, :]
    return a


@final
class StepMatrixOperator(LinearOperator):
    """The step matrix ``A`` of :func:`step_matrix` as an operator, from a Hessian operator."""

    def __init__(
        self,
        hessian: LinearOperator,
        config: StepSpectrumConfig,
        preconditioner: torch.Tensor | None = None,
    ) -> None:
        preconditioner = _check_preconditioner(config, preconditioner, hessian.num_params)
        self.hessian, self.config = hessian, config
        self.shift = config.hessian_shift
        self.scale = (
            preconditioner.detach().to(hessian.dtype).rsqrt()
            if config.is_adam and preconditioner is not None
            else None
        )

    @property
    def num_params(self) -> int:
        return self.hessian.num_params

    @property
    def dtype(self) -> torch.dtype:
        return self.hessian.dtype

    @property
    def device(self) -> torch.device:
        return self.hessian.device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            out = self.hessian @ block
            return out + self.shift * block if self.shift else out
        z = self.scale[:, None] * block
        out = self.hessian @ z
        if self.shift:
            out = out + self.shift * z
        return self.scale[:, None] * out


def step_log_singular_values(a: torch.Tensor, config: StepSpectrumConfig) -> torch.Tensor:
    """Sorted (descending) exponents ``ln(sigma_k + eps)`` of one step, from eigenvalues ``a``."""
    sigma = block_singular_values(a, config)
    return torch.sort(torch.log(sigma + config.eps), descending=True).values


def sgd_exponent(alpha: torch.Tensor, lr: float, eps: float = LOG_EPS) -> torch.Tensor:
    """The SGD push-forward ``g(alpha) = ln(|1 - lr * alpha| + eps)`` elementwise (float64)."""
    a = _real(alpha, "alpha", "real Hessian eigenvalues (eigvalsh)")
    return torch.log((1 - lr * a).abs() + eps)
