"""The *real* torch.optim step as a differentiable function of a flat state (test reference).

``torch.optim`` optimizers built with ``differentiable=True`` run their update with autograd
enabled, so ``torch.autograd.functional.jacobian`` can differentiate the library's own code
path: the brute-force reference for every closed-form Jacobian spectrum. The state layout is
that of :class:`sharpdim.dynamics.step_maps.TrainingMap`: ``w``, ``[w, v]`` (momentum buffer)
or ``[w, m, v]`` (Adam's ``exp_avg``, ``exp_avg_sq``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sharpdim.curvature.params import trainable_parameters, unflatten

BLOCKS = {"sgd": 1, "momentum": 2, "nesterov": 2, "adam": 3, "adamw": 3}


def real_step_fn(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    optimizer: str,
    *,
    lr: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    step_number: int = 1,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z -> z'``: one step of the torch.optim optimizer (``differentiable=True``) with ``batch``.

    ``step_number`` is Adam's step count ``s`` of this call (bias corrections ``1 - b^s``).
    The model is evaluated in eval mode through ``torch.func.functional_call``; it is not changed.
    """
    params = trainable_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    d = sum(p.numel() for p in params)
    nb = BLOCKS[optimizer]

    class _Loss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, b: Any) -> torch.Tensor:
            return loss_fn(self.model, b)

    wrapper = _Loss()

    def fn(z: torch.Tensor) -> torch.Tensor:
        if not z.requires_grad:  # a plain call: differentiate w.r.t. a fresh leaf
            z = z.detach().requires_grad_(True)
        chunks = [z[i * d : (i + 1) * d] for i in range(nb)]
        ws = [c.clone() for c in unflatten(chunks[0], params)]  # the loss sees these
        ps = [c.clone() for c in ws]  # the optimizer updates these in place
        was_training = model.training
        model.eval()
        try:
            named = dict(zip(["model." + n for n in names], ws, strict=True))
            loss = torch.func.functional_call(wrapper, named, (batch,))
        finally:
            model.train(was_training)
        grads = torch.autograd.grad(loss, ws, create_graph=True)
        for p, g in zip(ps, grads, strict=True):
            p.grad = g
        if optimizer in ("sgd", "momentum", "nesterov"):
            opt: torch.optim.Optimizer = torch.optim.SGD(
                ps,
                lr=lr,
                momentum=0.0 if optimizer == "sgd" else momentum,
                nesterov=optimizer == "nesterov",
                weight_decay=weight_decay,
                differentiable=True,
            )
            if nb == 2:
                for p, b in zip(ps, unflatten(chunks[1], params), strict=True):
                    opt.state[p]["momentum_buffer"] = b.clone()
        else:
            cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
            opt = cls(
                ps, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, differentiable=True
            )
            ms, vs = unflatten(chunks[1], params), unflatten(chunks[2], params)
            for p, m, v in zip(ps, ms, vs, strict=True):
                opt.state[p].update(
                    step=torch.tensor(float(step_number - 1), dtype=torch.float64),
                    exp_avg=m.clone(),
                    exp_avg_sq=v.clone(),
                )
        opt.step()
        out = [p.reshape(-1) for p in ps]
        if nb == 2:
            out += [opt.state[p]["momentum_buffer"].reshape(-1) for p in ps]
        if nb == 3:
            out += [opt.state[p]["exp_avg"].reshape(-1) for p in ps]
            out += [opt.state[p]["exp_avg_sq"].reshape(-1) for p in ps]
        return torch.cat(out)

    return fn


def real_step_jacobian(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch: Any,
    optimizer: str,
    z: torch.Tensor,
    **hyper: Any,
) -> torch.Tensor:
    """Dense Jacobian of :func:`real_step_fn` at ``z`` by ``torch.autograd.functional.jacobian``."""
    fn = real_step_fn(model, loss_fn, batch, optimizer, **hyper)
    return torch.autograd.functional.jacobian(fn, z.detach(), vectorize=False)


def in_parameter_units(jac: torch.Tensor, num_params: int, scale: float) -> torch.Tensor:
    """``S J S^-1`` with ``S = diag(I_d, scale I)``: a Jacobian on torch's state ``(w, v)`` in
    the coordinates ``(w, scale v)`` whose singular values the package reports (``scale = lr``
    for heavy ball and Nesterov: ``lr v`` is the last step)."""
    s = torch.ones(jac.shape[0], dtype=jac.dtype)
    s[num_params:] = scale
    return jac * s[:, None] / s[None, :]
