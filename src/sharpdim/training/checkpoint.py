"""Checkpoints: ``torch.save`` of a model's and an optimizer's state dicts at a step.

A checkpoint written by :func:`~sharpdim.training.loop.train` also holds the loop's state
(``"loop"``: the batch-order generator at the start of the current epoch and the batches of
that epoch already taken, the global RNG that dropout draws from, the divergence limit; and,
to refuse a resume that would train differently, the config fields, the training set's
digest, the loss and the model's modules), so ``train(..., resume_from=path)`` continues the
run bit-identically. Files are written to a
temporary name and then renamed, so a killed process never leaves a half-written checkpoint;
each holds a SHA-256 of its contents (``"sha256"``), checked on reading, so a file damaged
on disk is refused instead of loading wrong weights.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sharpdim.atomic import atomic_path
from sharpdim.checks import check_count
from sharpdim.errors import SharpdimError
from sharpdim.training.content_digest import content_digest


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """The file of step ``step`` in ``directory``: ``step_000123.pt``."""
    return Path(directory) / f"step_{step:06d}.pt"


def prepare_checkpoint_dir(directory: str | Path) -> Path:
    """Create ``directory`` (and its parents) and check that it is writable."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SharpdimError(
            f"cannot create checkpoint directory {directory} ({exc.strerror or exc}): "
            "pass a writable checkpoint_dir"
        ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SharpdimError(
            f"checkpoint directory {directory} is not writable: pass a writable checkpoint_dir"
        )
    return directory


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loop_state: dict[str, Any] | None = None,
) -> Path:
    """Save ``{"step", "model", "optimizer", "optimizer_class", "optimizer_params"[, "loop"],
    "sha256"}`` to ``directory/step_XXXXXX.pt``.

    ``optimizer_class`` is the optimizer's class name (``"Adam"``) and ``optimizer_params``
    the model's names of the parameters in each param group (:func:`optimizer_layout`), both
    checked on loading: torch's ``load_state_dict`` matches the state to parameters by
    position only, so another frozen layer or group order would put one layer's momentum on
    another.
    ``loop_state`` is the training loop's own state (see the module docstring); it is stored
    only when given. ``step`` is a whole number ``>= 0`` (a numpy integer or 0-dim tensor is
    stored as a Python ``int``, which loading checks). ``sha256`` is :func:`content_digest` of
    the rest. The file is read back before it is written: a state ``torch.load(weights_only=
    True)`` refuses (a module's extra state holding an arbitrary object) is a one-line error
    here, not a checkpoint no run can resume from.
    """
    step = check_count(step, "step", 0, "the training step, e.g. step=100")
    path = checkpoint_path(prepare_checkpoint_dir(directory), step)
    weights = model.state_dict()
    for name in [k for k in weights if k.endswith("_extra_state")]:
        weights[name] = _plain_numbers(weights[name])  # (numpy scalars kept by a module)
    state: dict[str, Any] = {
        "step": step,
        "model": weights,
        "optimizer": None if optimizer is None else _plain_numbers(optimizer.state_dict()),
        "optimizer_class": None if optimizer is None else type(optimizer).__name__,
    }
    if optimizer is not None:
        state["optimizer_params"] = optimizer_layout(model, optimizer)
    if loop_state is not None:
        state["loop"] = _plain_numbers(loop_state)
    state["sha256"] = content_digest(state)
    buffer = io.BytesIO()  # torch.save into a file reports a full disk as a RuntimeError
    try:
        torch.save(state, buffer)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise SharpdimError(
            f"cannot save checkpoint {path}: its state cannot be pickled ({exc}): keep the "
            "model's extra state and the optimizer state to tensors and plain Python values"
        ) from exc
    _check_reads_back(buffer, state["sha256"], path)
    try:
        with atomic_path(path) as partial:
            partial.write_bytes(buffer.getbuffer())
    except OSError as exc:
        raise SharpdimError(
            f"cannot write checkpoint {path} ({exc.strerror or exc}): "
            "pass a writable checkpoint_dir with free space"
        ) from exc
    return path


def optimizer_layout(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The model's names of the parameters in each of ``optimizer``'s param groups, in order
    (``"?"`` for a parameter that is not the model's)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names.get(id(p), "?") for p in group["params"]] for group in optimizer.param_groups]


def _check_optimizer_layout(
    state: dict[str, Any], path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Refuse optimizer state saved for other parameters: by the saved names when the file has
    them, then by the shapes of the per-parameter buffers torch.optim keeps."""
    saved = state.get("optimizer_params")
    if isinstance(saved, list):
        live = optimizer_layout(model, optimizer)
        if saved != live:
            where = _first_difference(saved, live)
            raise SharpdimError(
                f"{path} holds optimizer state for other parameters ({where}): freeze the same "
                "layers and build the param groups in the order of the run that wrote it"
            )
    # (all files: parameters outside the model are all named "?", and older files have no names)
    saved_state = state["optimizer"]
    groups = saved_state.get("param_groups") if isinstance(saved_state, dict) else None
    per_param = saved_state.get("state") if isinstance(saved_state, dict) else None
    if not (isinstance(groups, list) and isinstance(per_param, dict)):
        return  # malformed: torch's own loading reports it
    ids = [i for g in groups if isinstance(g, dict) for i in g.get("params", [])]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, param in zip(ids, params, strict=False):  # (torch reports other counts)
        for key, value in (per_param.get(index) or {}).items():
            shaped = key in _PARAM_SHAPED and isinstance(value, torch.Tensor)
            if shaped and value.shape != param.shape:
                raise SharpdimError(
                    f"{path} holds optimizer state ({key}) of shape {tuple(value.shape)} "
                    f"for a parameter of shape {tuple(param.shape)}: freeze the same layers "
                    "and build the param groups in the order of the run that wrote it"
                )


# torch.optim's buffers shaped like their parameter (Adafactor's factored ones are not)
_PARAM_SHAPED = frozenset({"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})


def _first_difference(saved: list[list[str]], live: list[list[str]]) -> str:
    """Where two layouts first differ, e.g. ``group 0, parameter 2: 4.weight, the optimizer
    has 2.weight``."""
    if len(saved) != len(live):
        return f"{len(saved)} param groups, the optimizer has {len(live)}"
    for i, (old, now) in enumerate(zip(saved, live, strict=True)):
        for j, (a, b) in enumerate(zip(old, now, strict=False)):
            if a != b:
                a, b = (name if name != "?" else "a parameter not in the model" for name in (a, b))
                return f"group {i}, parameter {j}: {a}, the optimizer has {b}"
        if len(old) != len(now):
            return f"group {i}: {len(old)} parameters, the optimizer has {len(now)}"
    return "the same names"  # (unreachable: the layouts differ)


def _check_reads_back(buffer: io.BytesIO, digest: str, path: Path) -> None:
    """Refuse to write a checkpoint that :func:`read_checkpoint` would refuse."""
    buffer.seek(0)
    try:
        back = torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler names the type it refuses
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(exc))
        reason = found.group(1).split(" was not an allowed")[0] if found else type(exc).__name__
        raise SharpdimError(
            f"cannot save checkpoint {path}: torch.load(weights_only=True) could not read it "
            f"back ({reason[:200]}): keep the model's extra state and the optimizer state to "
            "tensors and plain Python values"
        ) from exc
    if content_digest({k: v for k, v in back.items() if k != "sha256"}) != digest:
        raise SharpdimError(
            f"cannot save checkpoint {path}: its contents change when read back (a value of a "
            "type torch.save does not keep): keep the model's extra state and the optimizer "
            "state to tensors and plain Python values"
        )


def _plain_numbers(value: Any) -> Any:
    """``value`` with numpy scalars (an lr from ``np.logspace`` in a param group) as Python
    numbers, which ``torch.load(weights_only=True)`` accepts; tensors are left as they are."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if type(value) in (list, tuple):  # (not a named tuple, whose fields stay as they are)
        return type(value)(_plain_numbers(v) for v in value)
    return value


CHECKPOINT_KEYS = frozenset(
    {"step", "model", "optimizer", "optimizer_class", "optimizer_params", "loop", "sha256"}
)
"""Every top-level entry :func:`save_checkpoint` writes (and every earlier version wrote)."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw contents of a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        raise SharpdimError(
            f"checkpoint {path} is a folder: pass the step_XXXXXX.pt file in it "
            "(checkpoint_path(directory, step))"
        )
    if not path.is_file():
        raise SharpdimError(f"checkpoint {path} does not exist: check the directory and step")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler fails in many ways (KeyError on text files, ...)
        raise SharpdimError(
            f"{path} is not a readable sharpdim checkpoint ({type(exc).__name__}): "
            "pass a step_XXXXXX.pt file written by train() or save_checkpoint()"
        ) from exc
    if not _is_checkpoint(state):
        raise SharpdimError(
            f"{path} is not a sharpdim checkpoint (its step, model or loop state is missing or "
            "malformed): pass a step_XXXXXX.pt file written by train() or save_checkpoint()"
        )
    unknown = sorted(repr(key) for key in state.keys() - CHECKPOINT_KEYS)
    if unknown or ("sha256" not in state and "optimizer_params" in state):
        # (a flipped byte can rename the "sha256" key; the parameter names came after it)
        what = f"unknown entries {', '.join(unknown)}" if unknown else "no SHA-256"
        raise SharpdimError(
            f"{path} is damaged: it holds {what}: resume from another checkpoint (an earlier "
            "step) or start the run again"
        )
    # (files of versions before the digest have none)
    if "sha256" in state:
        digest = state.pop("sha256")
        try:
            found = content_digest(state)
        except RecursionError:  # (a flipped byte can make a container hold itself)
            found = None
        if found != digest:
            raise SharpdimError(
                f"{path} is damaged: its contents do not match the SHA-256 written with it: "
                "resume from another checkpoint (an earlier step) or start the run again"
            )
    return state


def _is_checkpoint(state: Any) -> bool:
    """Whether ``state`` has the layout :func:`save_checkpoint` writes."""
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        return False
    if not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        return False
    if not isinstance(state.get("optimizer_class"), (str, type(None))):
        return False
    layout = state.get("optimizer_params", [])
    if not (isinstance(layout, list) and all(isinstance(g, list) for g in layout)):
        return False
    if not isinstance(state.get("sha256", ""), str):
        return False
    loop = state.get("loop")
    if loop is None:
        return True
    if not isinstance(loop, dict) or not {"batches", "rng", "limit"} <= loop.keys():
        return False
    if not all(isinstance(loop.get(k, {}), dict) for k in ("config", "data")):
        return False
    batches = loop["batches"]
    return (
        _is_rng_state(loop["rng"])
        and isinstance(loop["limit"], (int, float))
        and isinstance(batches, dict)
        and {"batch_size", "epoch_start", "taken"} <= batches.keys()
        and (batches["batch_size"] is None or _is_count(batches["batch_size"]))
        and (batches["epoch_start"] is None or _is_rng_state(batches["epoch_start"]))
        and _is_count(batches["taken"])
    )


def _is_rng_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 1


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def restore_checkpoint(
    state: dict[str, Any],
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Load the contents ``state`` of checkpoint ``path`` into ``model`` (and ``optimizer``);
    a checkpoint that does not fit leaves both as they were."""
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise SharpdimError(
                f"{path} holds no optimizer state: load only the model (load_checkpoint(path, "
                "model), no optimizer) and train from it without resume_from"
            )
        if not _fits(state["model"], model):  # (named as such, not as an optimizer layout)
            raise _does_not_fit(path)
        _check_optimizer_type(state, path, optimizer)
        _check_optimizer_layout(state, path, model, optimizer)
    # load_state_dict copies every tensor that fits before it refuses one that does not, so a
    # refused checkpoint would leave the model half overwritten: keep copies to put back
    model_before = {
        k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
        for k, v in model.state_dict().items()
    }  # (on the CPU: no second copy of a GPU model; non-tensor extra state copied as it is)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        model.load_state_dict(model_before)
        raise _does_not_fit(path) from exc
    if optimizer is not None:
        optimizer_before = copy.deepcopy(optimizer.state_dict())
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            model.load_state_dict(model_before)
            optimizer.load_state_dict(optimizer_before)
            raise SharpdimError(
                f"{path} holds the state of a different optimizer or parameter layout: "
                "use the optimizer the checkpoint was written with"
            ) from exc
    return int(state["step"])


def _fits(saved: Any, model: nn.Module) -> bool:
    """Whether the saved state dict has the model's keys and its tensors their shapes."""
    live = model.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(live):
        return False
    return all(
        not isinstance(v, torch.Tensor)
        or (isinstance(saved[k], torch.Tensor) and saved[k].shape == v.shape)
        for k, v in live.items()
    )


def _does_not_fit(path: str | Path) -> SharpdimError:
    return SharpdimError(
        f"{path} does not fit this model (its parameter names or shapes differ): "
        "build the model with the architecture the checkpoint was written from"
    )


def check_same_dtypes(state: dict[str, Any], path: str | Path, model: nn.Module) -> None:
    """Refuse to resume ``model`` from checkpoint ``path`` (contents ``state``) when a tensor's
    dtype differs: ``load_state_dict`` would cast silently, and the run would go on in
    another precision instead of continuing bit-identically."""
    saved = state.get("model")
    if not isinstance(saved, dict):
        return
    for name, value in model.state_dict().items():
        old = saved.get(name)
        if isinstance(old, torch.Tensor) and old.dtype != value.dtype:
            raise SharpdimError(
                f"{path} holds {name} as {old.dtype} but the model has {value.dtype}: resume "
                f"with the model in {old.dtype} (model.to({old.dtype})), or start a new run"
            )


# param-group keys that tell torch.optim's update rules apart (a scheduler's ``initial_lr`` or a
# key added by a newer torch does not; torch fills those in on loading)
_RULE_KEYS = frozenset(
    {"momentum", "dampening", "nesterov", "betas", "amsgrad", "rho", "centered", "lr_decay"}
    | {"initial_accumulator_value", "lambd", "etas", "step_sizes", "momentum_decay"}
)


def _update_rule(class_name: str, group: Any) -> str:
    """The class name, for the Adam family with its weight decay: ``Adam(decoupled_weight_decay
    =True)`` is AdamW's update, and loading a group sets that flag on the live optimizer."""
    if class_name not in ("Adam", "AdamW"):
        return class_name
    decoupled = class_name == "AdamW" or (
        isinstance(group, dict) and bool(group.get("decoupled_weight_decay", False))
    )
    return "AdamW" if decoupled else "Adam"


def _check_optimizer_type(
    state: dict[str, Any], path: str | Path, optimizer: torch.optim.Optimizer
) -> None:
    """Refuse the state of another update rule: by the saved class name (Adam's decoupled
    decay counted as AdamW), or (checkpoints written before it was saved) by the param-group
    keys that identify an update rule and ``decoupled_weight_decay``."""
    saved_state = state["optimizer"]
    groups = saved_state.get("param_groups") if isinstance(saved_state, dict) else None
    first = groups[0] if isinstance(groups, list) and groups else None
    now = optimizer.param_groups[0]
    live = _update_rule(type(optimizer).__name__, now)
    if state.get("optimizer_class") is not None:
        saved = _update_rule(state["optimizer_class"], first)
        if saved != live:
            raise SharpdimError(
                f"{path} holds {saved} optimizer state but the optimizer is {live}: pass the "
                "optimizer type the checkpoint was written with, or load the model only"
            )
        return
    if not isinstance(first, dict):
        return  # malformed: torch's own loading reports it
    differ = sorted((set(first) ^ set(now)) & _RULE_KEYS)
    flag = "decoupled_weight_decay"
    if not differ and flag in first and flag in now and bool(first[flag]) != bool(now[flag]):
        differ = ["decoupled_weight_decay (Adam vs AdamW)"]
    if differ:
        raise SharpdimError(
            f"{path} holds the state of another optimizer type than {live} (its parameter "
            f"groups differ in {', '.join(differ)}): pass the optimizer type the checkpoint was "
            "written with, or load the model only"
        )


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Returns:
        The step stored in the checkpoint.
    """
    return restore_checkpoint(read_checkpoint(path), path, model, optimizer)
