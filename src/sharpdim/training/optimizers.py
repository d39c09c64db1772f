"""Optimizers by name, and the edge-of-stability threshold of each.

The optimizers are ``torch.optim`` ones (PyTorch's conventions: heavy-ball ``v <- mu v + g``,
``w <- w - eta v``); "gd" is SGD used with full batches (the loop decides the batch).

Stability thresholds (largest curvature for which the update, linearised on a quadratic with
that curvature, does not diverge):

* GD / SGD: ``lambda_max(H) < 2 / eta``;
* heavy-ball momentum ``mu``: ``lambda_max(H) < (2 + 2 mu) / eta``;
* Nesterov momentum ``mu``: ``lambda_max(H) < (2 + 2 mu) / (eta (1 + 2 mu))``
  (Cohen et al., ICLR 2021, appendix on momentum);
* Adam / AdamW with a frozen preconditioner ``P``: the *preconditioned* sharpness
  ``lambda_max(P^-1 H) < (2 + 2 beta1) / (eta (1 - beta1))`` with
  ``P = (1 - beta1^t) (sqrt(v_t / (1 - beta2^t)) + eps)`` (Cohen et al. 2022, "Adaptive gradient
  methods at the edge of stability"). AdamW's decoupled decay is ignored by this threshold.

Param groups with different learning rates ``eta_i`` are exact too: the thresholds, taken at
the largest ``eta`` (:func:`reference_lr`), then bound ``lambda_max(L P^-1 H)`` with
``L = diag(eta_i / eta)`` (:func:`lr_scaling`; ``P = I`` without Adam). The groups must agree
on the other settings in the threshold (momentum, dampening, nesterov, beta1); weight decay
may differ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from sharpdim.checks import check_betas, check_flag, check_number, described, plain_scalar
from sharpdim.errors import SharpdimError

OPTIMIZERS = ("gd", "sgd", "momentum", "heavy_ball", "nesterov", "adam", "adamw")
ADAPTIVE = ("adam", "adamw")


def check_optimizer_options(
    name: str,
    lr: float,
    momentum: float,
    betas: Sequence[float],
    *,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    """Raise a :class:`SharpdimError` for hyperparameters ``torch.optim`` would reject.

    Each setting the optimizer uses must be a real number (a 0-dim tensor or numpy scalar of
    one too; text, ``None`` and bools are refused); ``momentum`` is looked at for the
    momentum optimizers only, ``betas`` and ``eps`` for Adam/AdamW only.
    """
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise SharpdimError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    lr = _real(lr, "lr", "0.01")
    weight_decay = _real(weight_decay, "weight_decay", "0 or 1e-4")
    if name in ("momentum", "heavy_ball", "nesterov"):
        momentum = _real(momentum, "momentum", "0.9")
    if name in ADAPTIVE:
        eps = _real(eps, "eps", "1e-8")
    if not (lr > 0 and math.isfinite(lr)):
        raise SharpdimError(f"learning rate {lr} must be a finite number > 0: pass a positive lr")
    if name in ("momentum", "heavy_ball") and not 0 <= momentum < 1:
        raise SharpdimError(f"momentum {momentum} must lie in [0, 1): e.g. 0.9")
    if name == "nesterov" and not 0 < momentum < 1:
        raise SharpdimError(
            f"momentum {momentum} must lie in (0, 1) for nesterov: e.g. 0.9 (or use 'gd')"
        )
    if name in ADAPTIVE:
        check_betas(betas)
    if name in ADAPTIVE and not eps >= 0:
        raise SharpdimError(f"eps {eps} must be >= 0: e.g. 1e-8")
    if not weight_decay >= 0:
        raise SharpdimError(f"weight_decay {weight_decay} must be >= 0: e.g. 0 or 1e-4")


def _real(value: Any, name: str, example: str) -> float:
    """``value`` as a Python number for the range checks of :func:`check_optimizer_options`
    (which word a non-finite or out-of-range one); anything but a real number is refused."""
    value = plain_scalar(value)
    try:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    except OverflowError:  # (an int beyond float's range)
        pass
    return check_number(value, name, "any", example)  # (here it raises, in one line)


def make_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """A ``torch.optim`` optimizer by name.

    Args:
        name: ``"gd"``/``"sgd"`` (no momentum), ``"momentum"``/``"heavy_ball"``,
            ``"nesterov"``, ``"adam"`` (L2 weight decay added to the gradient) or ``"adamw"``
            (decoupled weight decay).
        params: the parameters to optimise.
        lr: step size ``eta``.
        momentum: ``mu`` for heavy-ball and Nesterov (ignored otherwise).
        betas: ``(beta1, beta2)`` for Adam/AdamW (ignored otherwise).
        eps: Adam's ``eps``.
        weight_decay: L2 coefficient (decoupled for AdamW).
    """
    check_optimizer_options(name, lr, momentum, betas, eps=eps, weight_decay=weight_decay)
    groups: list[Any] = [
        _checked_group(name, g, lr, momentum, betas, eps, weight_decay)
        if isinstance(g, dict)
        else g
        for g in _parameter_list(params)
    ]
    if all(isinstance(g, dict) and not g["params"] for g in groups):
        raise SharpdimError(
            "every param group is empty: pass the parameters to optimise, e.g. "
            "[{'params': model.parameters()}]"
        )
    if name in ("gd", "sgd"):
        return torch.optim.SGD(groups, lr=lr, momentum=0.0, weight_decay=weight_decay)
    if name in ("momentum", "heavy_ball", "nesterov"):
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=name == "nesterov"
        )
    beta_pair = (float(betas[0]), float(betas[1]))
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=beta_pair, eps=eps, weight_decay=weight_decay)


def _parameter_list(params: Any) -> list[Any]:
    """``params`` (``model.parameters()``, ``model.named_parameters()``, a list of tensors or
    of param-group dicts) as a list; anything else, and an empty one, is refused in one line (torch raised a TypeError
    or ValueError)."""
    if isinstance(params, (torch.Tensor, str, bytes, dict)) or not isinstance(params, Iterable):
        raise SharpdimError(
            f"params must be an iterable of parameters, got {type(params).__name__}: pass "
            "e.g. model.parameters()"
        )
    params = list(params)
    kinds = {"dict" if isinstance(p, dict) else "named" if _named(p) else "tensor" for p in params}
    if len(kinds) > 1:
        raise SharpdimError(
            f"params mixes {' and '.join(sorted(kinds))} entries, which torch refuses: pass one "
            "kind, e.g. model.parameters() or model.named_parameters()"
        )
    if not params or not all(isinstance(p, (torch.Tensor, dict)) or _named(p) for p in params):
        got = "nothing" if not params else ", ".join(sorted({type(p).__name__ for p in params}))
        raise SharpdimError(
            f"params must hold parameters (tensors or param-group dicts), got {got}: pass "
            "e.g. model.parameters()"
        )
    tensors = [p[1] if _named(p) else p for p in params if not isinstance(p, dict)]
    if any(not t.is_leaf for t in tensors):  # (torch: "can't optimize a non-leaf Tensor")
        raise SharpdimError(
            "params holds a tensor computed from others (not a leaf), which no optimizer can "
            "update: pass the model's parameters (model.parameters())"
        )
    return params


def _own_rule(name: str) -> dict[str, Any]:
    """The values of torch's rule keys that ``make_optimizer(name, ...)`` builds with: a group
    may repeat them (groups copied from a torch optimizer's ``param_groups`` carry them all),
    not change them ("gd" with a group's momentum would be heavy ball)."""
    if name in ADAPTIVE:
        return {
            "amsgrad": False,
            "maximize": False,
            "decoupled_weight_decay": name == "adamw",
            "momentum": 0,
        }
    own: dict[str, Any] = {"dampening": 0, "nesterov": name == "nesterov", "maximize": False}
    if name in ("gd", "sgd"):
        own["momentum"] = 0
    return own


def _checked_group(
    name: str,
    group: dict[str, Any],
    lr: float,
    momentum: float,
    betas: Sequence[float],
    eps: float,
    weight_decay: float,
) -> dict[str, Any]:
    """``group`` (its ``"params"`` now a list, the caller's dict kept, as torch keeps it) after
    the checks of the keyword settings: leaf tensors (none is fine: torch takes an empty
    group), its own ``lr >= 0`` (0 freezes the group) and ``weight_decay`` (and ``momentum``,
    ``betas``, ``eps`` where the optimizer has them) in range, and no key that changes the
    update rule."""
    if "params" not in group:
        raise SharpdimError(
            f"a param group has no 'params' entry (keys {sorted(group)}): pass e.g. "
            "{'params': layer.parameters(), 'lr': 0.1}"
        )
    inner = group["params"]
    if isinstance(inner, torch.Tensor):  # (torch takes a single tensor here)
        inner = [inner]
    elif isinstance(inner, (str, bytes, dict)) or not isinstance(inner, Iterable):
        inner = _parameter_list(inner)  # (refuses it in one line, naming its type)
    inner = list(inner)
    if inner:  # (an empty group is fine: torch takes it)
        inner = _parameter_list(inner)
    if any(isinstance(p, dict) for p in inner):
        raise SharpdimError("a param group's 'params' holds dicts: pass tensors")
    own = _own_rule(name)
    changes = sorted(k for k, v in own.items() if k in group and not _same(group[k], v))
    if changes:
        raise SharpdimError(
            f"a param group sets {', '.join(f'{k}={described(group[k])}' for k in changes)}, which "
            f"{name} does not use (it would change the update rule): drop it, or pick the "
            "optimizer that has it"
        )
    group_lr = group.get("lr", lr)
    check_optimizer_options(
        name,
        lr if _real(group_lr, "lr", "0.01") == 0 else group_lr,  # (a frozen group: lr 0)
        group.get("momentum", momentum),
        group.get("betas", betas),
        eps=group.get("eps", eps),
        weight_decay=group.get("weight_decay", weight_decay),
    )
    group["params"] = inner
    return group


def _same(value: Any, own: Any) -> bool:
    """Whether a group's ``value`` is the optimizer's own setting ``own`` (an array or a
    tensor of several values is not: its comparison has no truth value)."""
    try:
        return bool(plain_scalar(value) == own)
    except (TypeError, ValueError, RuntimeError):
        return False


def _named(item: Any) -> bool:
    """Whether ``item`` is a ``(name, tensor)`` pair, as ``named_parameters()`` yields."""
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )


def stability_threshold(
    name: str,
    lr: float,
    *,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.999),
) -> float:
    """The EoS threshold of an optimizer (see the module docstring for the formulas).

    For ``"adam"``/``"adamw"`` it bounds the preconditioned sharpness ``lambda_max(P^-1 H)``,
    for the others the sharpness ``lambda_max(H)``.

    Example:
        >>> stability_threshold("gd", 0.01), stability_threshold("momentum", 0.01, momentum=0.9)
        (200.0, 380.0)
    """
    check_optimizer_options(name, lr, momentum, betas)
    lr = _real(lr, "lr", "0.01")  # (plain floats: a 0-dim tensor lr gave a tensor threshold)
    if name in ("gd", "sgd"):
        return 2.0 / lr
    if name in ("momentum", "heavy_ball", "nesterov"):
        momentum = _real(momentum, "momentum", "0.9")
    if name in ("momentum", "heavy_ball"):
        return (2.0 + 2.0 * momentum) / lr
    if name == "nesterov":
        return (2.0 + 2.0 * momentum) / (lr * (1.0 + 2.0 * momentum))
    beta1 = float(betas[0])
    return (2.0 + 2.0 * beta1) / (lr * (1.0 - beta1))


def same_in_all_groups(
    optimizer: torch.optim.Optimizer, keys: Iterable[str], why: str, prefix: str = ""
) -> None:
    """Raise a :class:`SharpdimError` unless every param group has the same value of each key."""
    for key in keys:
        values: list[Any] = []
        for group in optimizer.param_groups:
            value = _plain(group.get(key))
            if value not in values:
                values.append(value)
        if len(values) > 1:
            raise SharpdimError(
                f"{prefix}the optimizer's param groups differ in {key} ({values}): {why}"
            )


def _plain(value: Any) -> Any:
    """A group setting with tensors as floats (torch takes 0-dim tensor lr and betas)."""
    if isinstance(value, torch.Tensor):
        return float(value)
    return tuple(_plain(v) for v in value) if isinstance(value, (tuple, list)) else value


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The name (as in :func:`make_optimizer`) of a ``torch.optim`` optimizer's update rule.

    SGD with momentum 0 is ``"gd"``. The param groups must agree on the settings in the
    stability threshold (momentum, dampening, nesterov; Adam's beta1); lr may differ.
    """
    group = optimizer.param_groups[0]
    why = "their update has no common stability threshold; give all groups the same value"
    if any(g.get("maximize", False) for g in optimizer.param_groups):
        raise SharpdimError(
            "the optimizer has maximize=True (it ascends the loss, whose curvature is then -H): "
            "minimise the negated loss with maximize=False instead"
        )
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1 = sorted({float(g["betas"][0]) for g in optimizer.param_groups})
        if len(beta1) > 1:
            raise SharpdimError(f"the optimizer's param groups differ in beta1 ({beta1}): {why}")
        return "adamw" if decoupled_decay(optimizer, group) else "adam"
    if isinstance(optimizer, torch.optim.SGD):
        same_in_all_groups(optimizer, ["momentum", "dampening", "nesterov"], why)
        if group.get("momentum", 0.0) == 0.0:
            return "gd"
        if group.get("dampening", 0.0) != 0.0:
            raise SharpdimError("SGD with dampening has no threshold here: use dampening=0")
        return "nesterov" if group.get("nesterov", False) else "momentum"
    raise SharpdimError(
        f"no stability threshold known for {type(optimizer).__name__}: "
        "use SGD (with or without momentum), Adam or AdamW"
    )


def optimizer_stability_threshold(optimizer: torch.optim.Optimizer) -> tuple[str, float]:
    """``(name, threshold)`` read from a live ``torch.optim`` optimizer.

    The threshold is taken at :func:`reference_lr`; with groups of different lr it bounds
    ``lambda_max(L P^-1 H)``, ``L`` from :func:`lr_scaling`. At ``lr = 0`` (the first step of a
    warm-up schedule) nothing moves and every curvature is stable: ``inf``.
    """
    name = optimizer_name(optimizer)
    if reference_lr(optimizer) == 0:
        return name, math.inf
    group = optimizer.param_groups[0]
    value = stability_threshold(
        name,
        reference_lr(optimizer),
        momentum=float(group.get("momentum", 0.0)),
        betas=tuple(group.get("betas", (0.9, 0.999))),
    )
    return name, value


def reference_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size the thresholds are taken at: the largest ``lr`` of the param groups."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


def lr_scaling(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
) -> torch.Tensor | None:
    """Each parameter's ``lr / reference_lr(optimizer)``, flattened; ``None`` when all are 1.

    A parameter the optimizer does not hold (it does not move) gets 0.
    """
    eta = reference_lr(optimizer)
    if eta == 0:  # nothing moves (see optimizer_stability_threshold): no scaling to measure
        return None
    lr_of = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    scale = [lr_of.get(id(p), 0.0) / eta for p in params]
    if all(s == 1.0 for s in scale):
        return None
    return torch.cat(
        [
            torch.full((p.numel(),), s, dtype=p.dtype, device=p.device)
            for p, s in zip(params, scale, strict=True)
        ]
    )


def coupled_decay(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]
) -> torch.Tensor | None:
    """Each parameter's coupled L2 ``weight_decay`` (added to its gradient: SGD and its
    momentum variants, Adam without decoupling), flattened; ``None`` when all are 0.

    The update then sees the Hessian ``H + diag(decay)``. AdamW's decoupled decay (a shrink of
    ``w``, not a gradient term) and a parameter the optimizer does not hold give 0.
    """
    group_of = param_groups_by_id(optimizer)

    def decay(p: torch.Tensor) -> float:
        group = group_of.get(id(p))
        if group is None or (
            isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
            and decoupled_decay(optimizer, group)
        ):
            return 0.0
        return float(group.get("weight_decay", 0.0))

    values = [decay(p) for p in params]
    if not any(values):
        return None
    return torch.cat(
        [
            torch.full((p.numel(),), v, dtype=p.dtype, device=p.device)
            for p, v in zip(params, values, strict=True)
        ]
    )


@torch.no_grad()
def adam_preconditioner(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor] | None = None,
    *,
    bias_correction: bool = True,
) -> torch.Tensor:
    """The diagonal of Adam's preconditioner ``P_t`` as one flat vector.

    ``P_t = (1 - beta1^t) * (sqrt(v_t / (1 - beta2^t)) + eps)``, so that Adam's step is
    ``w <- w - eta * P_t^-1 m_t`` (Cohen et al. 2022): the matrix of the preconditioned
    sharpness ``lambda_max(P^-1 H)``. ``bias_correction=False`` leaves out ``1 - beta1^t``:
    ``sqrt(v_hat) + eps``, the ``preconditioner`` that
    :func:`~sharpdim.dimension.sharpness_dimension.sharpness_dimension` takes together with
    ``step=adam_step(optimizer)`` (folding the factor into ``P`` with ``step=None`` gives the
    same SD: its blocks depend on ``(lr/c1) a`` only). ``params`` fixes the order (default:
    the optimizer's parameters, group by group); each must have taken at least one step.
    """
    _check_adam(optimizer)
    bias_correction = check_flag(bias_correction, "bias_correction")
    group_of = param_groups_by_id(optimizer)
    pieces = []
    for p in _chosen(optimizer, params):
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state or id(p) not in group_of:
            raise SharpdimError(
                "the Adam optimizer has no state for a parameter yet: take at least one step "
                "(and pass parameters this optimizer owns) before asking for its preconditioner"
            )
        group, t = group_of[id(p)], float(state["step"])
        pieces.append(adam_diagonal(group, state["exp_avg_sq"], t, bias_correction))
    return torch.cat(pieces)


def adam_step(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor] | None = None,
    *,
    upcoming: bool = False,
) -> int:
    """Adam's step count ``t``, the one in the bias correction ``1 - beta1^t``.

    ``upcoming=True``: that of the update about to be taken (``t + 1`` for each parameter
    with a gradient in ``.grad``; the others do not step and are left out). The parameters
    (default: all of the optimizer's) must share one count.
    """
    _check_adam(optimizer)
    counts = set()
    for p in _chosen(optimizer, params):
        if upcoming and p.grad is None:
            continue
        t = int(float(optimizer.state.get(p, {}).get("step", 0)))
        counts.add(t + 1 if upcoming else t)
    if len(counts) != 1 or 0 in counts:
        found = ", ".join(str(t) for t in sorted(counts)) or "none"
        raise SharpdimError(
            f"Adam's parameters have no common step count (found: {found}): take a step with "
            "gradients for all of them, or pass the step count yourself"
        )
    return counts.pop()


def _check_adam(optimizer: torch.optim.Optimizer) -> None:
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise SharpdimError(
            f"{type(optimizer).__name__} has no Adam preconditioner: pass an Adam/AdamW optimizer"
        )


def _chosen(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor] | None
) -> list[torch.Tensor]:
    if params is not None:
        return list(params)
    return [p for g in optimizer.param_groups for p in g["params"]]


def decoupled_decay(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """Whether an Adam-family optimizer decays weights AdamW's way (``AdamW``, or torch's
    ``Adam(decoupled_weight_decay=True)``, the same update) rather than as L2 in the gradient."""
    return isinstance(optimizer, torch.optim.AdamW) or bool(
        group.get("decoupled_weight_decay", False)
    )


def param_groups_by_id(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    """``{id(parameter): its param group}`` over all of ``optimizer``'s groups."""
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def adam_diagonal(
    group: dict[str, Any], exp_avg_sq: torch.Tensor, step: float, bias_correction: bool = True
) -> torch.Tensor:
    """Adam's preconditioner ``P = (1 - beta1^t) (sqrt(v / (1 - beta2^t)) + eps)``, flattened.

    ``group`` is the parameter's param group (``betas``, ``eps``), ``exp_avg_sq`` its second
    moment ``v`` and ``step`` the step count ``t`` (Cohen et al. 2022);
    ``bias_correction=False`` drops the factor ``1 - beta1^t``.
    """
    if group.get("amsgrad", False):
        raise SharpdimError("amsgrad is not supported here: use amsgrad=False")
    beta1, beta2 = group["betas"]
    v_hat = exp_avg_sq / (1.0 - beta2**step)
    c1 = 1.0 - beta1**step if bias_correction else 1.0
    return (c1 * (v_hat.sqrt() + group["eps"])).reshape(-1)
