"""The helpers shared by the CLI commands (``sharpdim.commands._common``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sharpdim.commands._common import jsonable, kv_table, parse_floats, write_json, wrote_line
from sharpdim.errors import SharpdimError


def test_parse_floats_commas_and_spaces() -> None:
    assert parse_floats("0.2,0.3 0.5", "lrs") == [0.2, 0.3, 0.5]
    with pytest.raises(SharpdimError, match="lrs 'a,b' is not a list of numbers"):
        parse_floats("a,b", "lrs")
    with pytest.raises(SharpdimError, match="lrs is empty"):
        parse_floats(" , ", "lrs")


def test_jsonable_and_write_json_are_strict(tmp_path: Path) -> None:
    value = {1: (math.nan, 2.5), "t": torch.tensor([1.0, math.inf]), "s": "x"}
    assert jsonable(value) == {"1": [None, 2.5], "t": [1.0, None], "s": "x"}
    path = write_json(tmp_path / "a" / "b.json", value)
    text = path.read_text()
    assert path == tmp_path / "a" / "b.json" and text.endswith("}\n")
    assert json.loads(text) == {"1": [None, 2.5], "t": [1.0, None], "s": "x"}


def test_wrote_line_and_kv_table() -> None:
    assert wrote_line(Path("a.png"), Path("a.json")) == "wrote a.png and a.json"
    assert wrote_line(Path("x"), seconds=1.25) == "wrote x (1.2 s)"
    table = kv_table("t", [("k1", "v1"), ("k2", "v2")])
    assert [c.header for c in table.columns] == ["quantity", "value"]
    assert table.row_count == 2 and table.columns[1].justify == "right"
