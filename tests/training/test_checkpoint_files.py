"""Checkpoints and IDX files are written atomically: a failed write keeps the old file."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.training.checkpoint import (
    load_checkpoint,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from sharpdim.training.data_idx import read_idx, write_idx


def test_a_failed_checkpoint_write_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path, 5, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)

    def full_disk(self: Path, data: Any) -> int:  # half the bytes fit
        with open(self, "wb") as f:
            f.write(bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    # torch.save writing to a file reports a full disk as a RuntimeError ("unexpected pos"),
    # which escaped as a traceback: the checkpoint is serialised in memory, then written
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(SharpdimError, match=r"^cannot write checkpoint .* \(No space left"):
        save_checkpoint(tmp_path, 5, model)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    fresh = torch.nn.Linear(3, 2)
    load_checkpoint(path, fresh)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, before[name])


def test_a_failed_idx_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "labels.idx.gz"
    old = np.arange(7, dtype=np.uint8)
    write_idx(path, old)

    def failing_write(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:  # half the bytes, then the process is interrupted
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(KeyboardInterrupt):
        write_idx(path, np.zeros(3, dtype=np.uint8))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    np.testing.assert_array_equal(read_idx(path), old)


def test_the_state_of_another_optimizer_type_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    adam.step()
    path = save_checkpoint(tmp_path, 1, model, adam)
    old = torch.load(path, weights_only=True)
    del (
        old["optimizer_class"],
        old["sha256"],
        old["optimizer_params"],
    )  # as written by earlier versions
    torch.save(old, tmp_path / "old.pt")
    fresh = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    sgd = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(SharpdimError, match=r"holds Adam optimizer state but the optimizer is SGD"):
        load_checkpoint(path, fresh, sgd)
    with pytest.raises(
        SharpdimError,
        match=r"holds the state of another optimizer type than SGD \(its parameter groups "
        r"differ in amsgrad, betas, dampening, momentum, nesterov\)",
    ):
        load_checkpoint(tmp_path / "old.pt", fresh, sgd)
    with pytest.raises(SharpdimError, match=r"differ in decoupled_weight_decay \(Adam vs AdamW\)"):
        load_checkpoint(tmp_path / "old.pt", fresh, torch.optim.AdamW(fresh.parameters()))
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())
    assert "momentum_buffer" not in str(sgd.state_dict()) and sgd.param_groups[0]["momentum"] == 0.9
    for source in (path, tmp_path / "old.pt"):  # the same type loads
        assert load_checkpoint(source, fresh, torch.optim.Adam(fresh.parameters())) == 1


def test_old_checkpoints_with_extra_or_missing_group_keys_load(tmp_path: Path) -> None:
    """Before ``optimizer_class`` was saved, only keys that name an update rule decide: a
    scheduler's ``initial_lr`` or a key a newer torch added are not another optimizer type."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.StepLR(adam, step_size=10)  # adds initial_lr to the groups
    model(torch.ones(1, 3)).sum().backward()
    adam.step()
    old = torch.load(save_checkpoint(tmp_path, 1, model, adam), weights_only=True)
    del old["optimizer_class"], old["sha256"], old["optimizer_params"]
    del old["optimizer"]["param_groups"][0]["decoupled_weight_decay"]  # as an older torch
    torch.save(old, tmp_path / "old.pt")
    fresh = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    assert load_checkpoint(tmp_path / "old.pt", fresh, opt) == 1
    assert torch.equal(
        opt.state_dict()["state"][0]["exp_avg"], adam.state_dict()["state"][0]["exp_avg"]
    )


def test_adam_with_decoupled_decay_and_adamw_share_checkpoints(tmp_path: Path) -> None:
    """torch's Adam(decoupled_weight_decay=True) is AdamW's update: their states are
    interchangeable, but not with plain (L2) Adam, whose flag loading would flip."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    adam = torch.optim.Adam(model.parameters(), weight_decay=0.1, decoupled_weight_decay=True)
    model(torch.ones(1, 3)).sum().backward()
    adam.step()
    path = save_checkpoint(tmp_path, 1, model, adam)
    fresh = torch.nn.Linear(3, 2)
    assert load_checkpoint(path, fresh, torch.optim.AdamW(fresh.parameters())) == 1
    with pytest.raises(
        SharpdimError, match=r"holds AdamW optimizer state but the optimizer is Adam"
    ):
        load_checkpoint(path, fresh, torch.optim.Adam(fresh.parameters()))
    adamw = torch.optim.AdamW(fresh.parameters())
    path = save_checkpoint(tmp_path / "w", 1, fresh, adamw)
    again = torch.optim.Adam(fresh.parameters(), decoupled_weight_decay=True)
    assert load_checkpoint(path, fresh, again) == 1


def test_a_refused_checkpoint_leaves_model_and_optimizer_as_they_were(tmp_path: Path) -> None:
    """``load_state_dict`` copies the tensors that fit before refusing one that does not; the
    refusal must not leave a half-loaded model (or a model loaded for a refused optimizer)."""
    torch.manual_seed(0)
    saved = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    adam = torch.optim.Adam(saved.parameters(), lr=1e-3)
    saved(torch.ones(1, 3)).sum().backward()
    adam.step()
    path = save_checkpoint(tmp_path, 1, saved, adam)

    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 5))  # layer 0 fits
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(SharpdimError, match=r"does not fit this model"):
        load_checkpoint(path, other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())

    same = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    one_group = torch.optim.Adam(same[0].parameters(), lr=1e-3)  # another parameter layout
    same(torch.ones(1, 3)).sum().backward()
    one_group.step()
    before = {k: v.clone() for k, v in same.state_dict().items()}
    moments = one_group.state_dict()["state"][0]["exp_avg"].clone()
    with pytest.raises(SharpdimError, match=r"group 0: 4 parameters, the optimizer has 2"):
        load_checkpoint(path, same, one_group)
    # a file without the layout (older versions) is refused by torch's loading, rolled back
    legacy = {k: v for k, v in read_checkpoint(path).items() if k != "optimizer_params"}
    with pytest.raises(SharpdimError, match=r"different optimizer or parameter layout"):
        restore_checkpoint(legacy, path, same, one_group)
    assert all(torch.equal(v, before[k]) for k, v in same.state_dict().items())
    assert torch.equal(one_group.state_dict()["state"][0]["exp_avg"], moments)
    assert load_checkpoint(path, same) == 1  # the model alone fits


@pytest.mark.parametrize("step", [np.int64(3), torch.tensor(3), 3.0])
def test_a_numpy_tensor_or_whole_float_step_is_saved_as_an_int(tmp_path: Path, step: Any) -> None:
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path, step, model)
    assert path.name == "step_000003.pt"
    assert load_checkpoint(path, torch.nn.Linear(3, 2)) == 3


@pytest.mark.parametrize("step", [-1, 2.5, "3", True])
def test_a_bad_checkpoint_step_is_refused(tmp_path: Path, step: Any) -> None:
    with pytest.raises(SharpdimError, match=r"step must be an integer >= 0"):
        save_checkpoint(tmp_path, step, torch.nn.Linear(3, 2))
    assert list(tmp_path.iterdir()) == []


def test_a_model_with_non_tensor_extra_state_still_loads(tmp_path: Path) -> None:
    """The copy kept for a refused load cloned every state_dict value: a module whose
    get_extra_state() returns a dict could no longer be loaded at all."""

    class WithExtra(torch.nn.Linear):
        def __init__(self) -> None:
            super().__init__(3, 2)
            self.note = {"calls": 0}

        def get_extra_state(self) -> dict:
            return dict(self.note)

        def set_extra_state(self, state: dict) -> None:
            self.note = dict(state)

    torch.manual_seed(0)
    saved = WithExtra()
    saved.note["calls"] = 7
    path = save_checkpoint(tmp_path, 3, saved)
    fresh = WithExtra()
    assert load_checkpoint(path, fresh) == 3 and fresh.note == {"calls": 7}
    assert torch.equal(fresh.weight, saved.weight)
    other = torch.nn.Sequential(WithExtra())  # other names: refused, nothing changed
    before = {k: v for k, v in other.state_dict().items()}
    with pytest.raises(SharpdimError, match=r"does not fit this model"):
        load_checkpoint(path, other)
    assert other[0].note == {"calls": 0} and torch.equal(other[0].weight, before["0.weight"])


class _ScaledLinear(torch.nn.Linear):
    """A module whose extra state holds a numpy scalar (a value from ``np.logspace``)."""

    def __init__(self) -> None:
        super().__init__(3, 2)
        self.scale: Any = np.float64(0.5)

    def get_extra_state(self) -> dict:
        return {"scale": self.scale}

    def set_extra_state(self, state: dict) -> None:
        self.scale = state["scale"]


def test_numpy_scalars_in_a_modules_extra_state_give_a_readable_checkpoint(tmp_path: Path) -> None:
    """The model's state was saved as it was: the file was written without complaint, and every
    later load (weights_only) refused it, so the run could not be resumed."""
    saved = _ScaledLinear()
    saved.scale = np.float64(0.125)
    path = save_checkpoint(tmp_path, 3, saved)
    fresh = _ScaledLinear()
    assert load_checkpoint(path, fresh) == 3 and fresh.scale == 0.125


class Opaque:
    """An object ``torch.load(weights_only=True)`` refuses."""


class _WithObject(torch.nn.Linear):
    def __init__(self, thing: Any) -> None:
        super().__init__(3, 2)
        self.thing = thing

    def get_extra_state(self) -> dict:
        return {"thing": self.thing}

    def set_extra_state(self, state: dict) -> None:
        self.thing = state["thing"]


def test_a_state_that_cannot_be_read_back_is_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(SharpdimError, match=r"could not read it back \(Unsupported global") as err:
        save_checkpoint(tmp_path, 1, _WithObject(Opaque()))
    assert "\n" not in str(err.value) and "Opaque" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no file that no run could resume from

    class Local:  # not even picklable: torch.save's own error was raised as it was
        pass

    with pytest.raises(SharpdimError, match=r"its state cannot be pickled \(Can't pickle") as err:
        save_checkpoint(tmp_path, 1, _WithObject(Local()))
    assert "\n" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_a_checkpoint_damaged_on_disk_is_refused(tmp_path: Path) -> None:
    """torch.load does not check the bytes of tensor data: a flipped byte loaded as a wrong
    weight. The SHA-256 saved with the contents catches it."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4, dtype=torch.float64)
    path = save_checkpoint(tmp_path, 2, model)
    raw = bytearray(path.read_bytes())
    weights = model.weight.detach().numpy().tobytes()
    at = bytes(raw).index(weights) + len(weights) // 2  # (stored uncompressed in the zip)
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["weight"], model.weight)
    fresh = torch.nn.Linear(8, 4, dtype=torch.float64)
    before = fresh.weight.detach().clone()
    with pytest.raises(
        SharpdimError, match=r"step_000002.pt is damaged: its contents do not"
    ) as err:
        load_checkpoint(path, fresh)
    assert "\n" not in str(err.value) and torch.equal(fresh.weight, before)
    # a checkpoint of an older version, without the digest, still loads
    state = torch.load(path, weights_only=True)
    state["model"]["weight"] = model.weight.detach().clone()
    del state["sha256"]
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt", fresh) == 2 and torch.equal(
        fresh.weight, model.weight
    )


_SAVE_TAGGED = """
import sys, torch
from sharpdim.training.checkpoint import save_checkpoint
class Tagged(torch.nn.Linear):
    def get_extra_state(self):
        return {"tags": {"w0", "w1", "bias", "frozen", "a", "b", "c", "d"}}
    def set_extra_state(self, state):
        self.tags = state["tags"]
torch.manual_seed(0)
save_checkpoint(sys.argv[1], 0, Tagged(2, 2))
"""


class _Tagged(torch.nn.Linear):
    def get_extra_state(self) -> dict:
        return {"tags": set()}

    def set_extra_state(self, state: dict) -> None:
        self.tags = state["tags"]


@pytest.mark.parametrize("seed", ["0", "1", "2", "4"])
def test_a_set_in_the_state_reads_back_under_another_hash_seed(tmp_path: Path, seed: str) -> None:
    """The digest took a set's members in iteration order, which depends on the hash seed: a
    good checkpoint written by one process was 'damaged' for the next (or refused when saved)."""
    env = {**os.environ, "PYTHONHASHSEED": seed}
    subprocess.run([sys.executable, "-c", _SAVE_TAGGED, str(tmp_path)], check=True, env=env)
    model = _Tagged(2, 2)
    assert load_checkpoint(tmp_path / "step_000000.pt", model) == 0
    assert model.tags == {"w0", "w1", "bias", "frozen", "a", "b", "c", "d"}


class Schedule:
    """A user's type, allow-listed for ``torch.load(weights_only=True)``."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup


def test_allow_listed_objects_and_nested_tensors_are_saved(tmp_path: Path) -> None:
    """An allow-listed object's repr holds its address (a new one after loading: saving was
    refused as 'contents change'); a nested-tensor buffer crashed the digest with torch's raw
    RuntimeError."""
    with torch.serialization.safe_globals([Schedule]):
        saved = _WithObject(Schedule(7))
        fresh = _WithObject(Schedule())
        assert load_checkpoint(save_checkpoint(tmp_path / "a", 1, saved), fresh) == 1
    assert fresh.thing.warmup == 7

    class Ragged(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with warnings.catch_warnings():  # (the strided layout is a "prototype")
                warnings.simplefilter("ignore", UserWarning)
                parts = torch.nested.as_nested_tensor([torch.ones(2), torch.ones(3)])
            self.register_buffer("parts", parts)

    path = save_checkpoint(tmp_path / "b", 1, Ragged())
    state = torch.load(path, weights_only=True)
    assert [t.tolist() for t in state["model"]["parts"].unbind()] == [[1.0, 1.0], [1.0, 1.0, 1.0]]


def _net(frozen: int) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(*(torch.nn.Linear(3, 3) for _ in range(3)))
    net[frozen].requires_grad_(False)
    return net


def _momentum_checkpoint(tmp_path: Path, net: torch.nn.Module) -> Path:
    sgd = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    net(torch.ones(2, 3)).sum().backward()
    sgd.step()
    return save_checkpoint(tmp_path, 1, net, sgd)


def test_optimizer_state_of_other_parameters_is_refused_before_loading(tmp_path: Path) -> None:
    """torch's ``load_state_dict`` matches optimizer state to parameters by position only: with
    another layer frozen (same shapes) the resume was accepted and layer 1 got layer 2's
    momentum; with other shapes it crashed at the first step, the model already overwritten."""
    path = _momentum_checkpoint(tmp_path, _net(frozen=1))  # trains layers 0 and 2
    other = _net(frozen=2)  # trains layers 0 and 1: the same count and shapes
    other[1].weight.data.fill_(7.0)
    sgd = torch.optim.SGD([p for p in other.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    with pytest.raises(SharpdimError, match=r"parameter 2: 2.weight, the optimizer has 1.weight"):
        load_checkpoint(path, other, sgd)
    assert bool((other[1].weight == 7.0).all()) and not sgd.state  # nothing was touched
    same = _net(frozen=1)
    two_groups = torch.optim.SGD(
        [{"params": [same[2].weight, same[2].bias]}, {"params": [same[0].weight, same[0].bias]}],
        lr=0.1,
        momentum=0.9,
    )
    with pytest.raises(SharpdimError, match=r"1 param groups, the optimizer has 2"):
        load_checkpoint(path, same, two_groups)
    fits = torch.optim.SGD([p for p in same.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    assert load_checkpoint(path, same, fits) == 1


def test_older_files_are_checked_by_the_shapes_of_the_optimizer_buffers(tmp_path: Path) -> None:
    """Files written before the layout was saved: a momentum buffer of another shape is refused
    before anything is loaded (it was a raw RuntimeError at the first step)."""
    torch.manual_seed(0)
    saved = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    sgd = torch.optim.SGD(saved[1].parameters(), lr=0.1, momentum=0.9)
    saved(torch.ones(2, 3)).sum().backward()
    sgd.step()
    path = save_checkpoint(tmp_path, 1, saved, sgd)
    legacy = {k: v for k, v in read_checkpoint(path).items() if k != "optimizer_params"}
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    model[0].weight.data.fill_(7.0)
    wrong = torch.optim.SGD(model[0].parameters(), lr=0.1, momentum=0.9)  # (5, 3) vs (2, 5)
    with pytest.raises(SharpdimError, match=r"momentum_buffer\) of shape \(2, 5\) for a param"):
        restore_checkpoint(legacy, path, model, wrong)
    assert bool((model[0].weight == 7.0).all()) and not wrong.state


def test_another_architecture_with_an_optimizer_is_named_as_such(tmp_path: Path) -> None:
    """The layout check ran first and blamed the param groups of a deeper model."""
    path = _momentum_checkpoint(tmp_path, _net(frozen=1))
    deeper = torch.nn.Sequential(*(torch.nn.Linear(3, 3) for _ in range(4)))
    sgd = torch.optim.SGD(deeper.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(SharpdimError, match=r"does not fit this model \(its parameter names"):
        load_checkpoint(path, deeper, sgd)


def test_state_of_parameters_outside_the_model_is_checked_by_shape(tmp_path: Path) -> None:
    """Parameters outside the model all have the name '?': two of them swapped between runs
    passed the name check and crashed at the first step."""
    net = _net(frozen=1)
    extra = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(5))]

    def step(params: list[torch.Tensor]) -> torch.optim.SGD:
        sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        (net(torch.ones(2, 3)).sum() + sum(p.sum() for p in extra)).backward()
        sgd.step()
        return sgd

    trained = [p for p in net.parameters() if p.requires_grad]
    path = save_checkpoint(tmp_path, 1, net, step(trained + extra))
    swapped = torch.optim.SGD(trained + extra[::-1], lr=0.1, momentum=0.9)
    with pytest.raises(SharpdimError, match=r"\(momentum_buffer\) of shape \(3,\) for a param"):
        load_checkpoint(path, net, swapped)
    same = torch.optim.SGD(trained + extra, lr=0.1, momentum=0.9)
    assert load_checkpoint(path, net, same) == 1


def test_a_flipped_byte_in_the_digest_key_is_refused_as_damage(tmp_path: Path) -> None:
    """The pickle stores the string "sha256" once: one flipped bit renames the key, and the
    file read as one from before the digest, accepted unchecked (review)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for with_optimizer in (True, False):
        path = save_checkpoint(tmp_path / str(with_optimizer), 1, model,
                               optimizer if with_optimizer else None)  # fmt: skip
        raw = path.read_bytes()
        at = raw.index(b"sha256")  # (the pickle comes first in the zip, uncompressed)
        path.write_bytes(raw[:at] + b"rha256" + raw[at + 6 :])
        with pytest.raises(SharpdimError, match=r"is damaged: it holds unknown entries 'rha256'"):
            read_checkpoint(path)
    state = torch.load(path, weights_only=True)  # the optimizer's names came after the digest
    state.pop("rha256")
    state["optimizer_params"] = [["weight", "bias"]]
    torch.save(state, tmp_path / "no_digest.pt")
    with pytest.raises(SharpdimError, match=r"no_digest.pt is damaged: it holds no SHA-256"):
        read_checkpoint(tmp_path / "no_digest.pt")


def test_a_container_damaged_into_holding_itself_is_refused_as_damage(tmp_path: Path) -> None:
    """One flipped bit can turn a pickled container into one that holds itself: the digest
    then recursed until a raw RecursionError (review)."""
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    path = save_checkpoint(tmp_path, 1, model, torch.optim.SGD(model.parameters(), lr=0.1))
    state = torch.load(path, weights_only=True)
    state["optimizer"]["state"]["itself"] = state["optimizer"]["state"]
    torch.save(state, tmp_path / "looped.pt")
    with pytest.raises(SharpdimError, match=r"looped.pt is damaged: its contents do not match"):
        read_checkpoint(tmp_path / "looped.pt")
