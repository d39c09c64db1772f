"""``sharpdim chaos`` commands at tiny sizes."""

import json
from pathlib import Path

from sharpdim.commands.chaos import app


def _run(args: list[str]) -> int:
    # the chaos sub-app directly (sharpdim.cli.main routes `chaos ...` to it)
    try:
        app(args=args, prog_name="sharpdim chaos", standalone_mode=False)
    except SystemExit as ex:  # pragma: no cover
        return int(ex.code or 0)
    return 0


def test_compare_writes_json_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code = _run(
        [
            "compare",
            "--lr-eos", "0.5",
            "--lr-below", "0.05",
            "--n-train", "48",
            "--width", "4",
            "--depth", "1",
            "--train-steps", "30",
            "--k", "2",
            "--lyap-steps", "10",
            "--warmup", "2",
            "--num-iterates", "30",
            "--seeds", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    payload = json.loads((out / "chaos_compare.json").read_text())
    for case in payload["cases"].values():
        assert len(case["lyapunov"]["exponents"]) == 2
        per_seed = case["largest_lyapunov_per_seed"]
        assert len(per_seed) == 2 and per_seed[0] == case["largest_lyapunov"]
        assert abs(case["largest_lyapunov_seed_mean"] - sum(per_seed) / 2) < 1e-12
        assert (
            abs(case["largest_lyapunov_seed_stderr"] - abs(per_seed[0] - per_seed[1]) / 2) < 1e-12
        )
        assert case["ph0_dimension"] is None or case["ph0_dimension"] > 0
        assert case["sd"] >= 0
    assert (out / "chaos_compare.png").stat().st_size > 1000


def test_lyapunov_json(tmp_path: Path) -> None:
    out = tmp_path / "l.json"
    args = ["lyapunov", "--n-train", "32", "--width", "4", "--depth", "1"]
    args += ["--train-steps", "5", "--k", "3", "--steps", "5", "--warmup", "0"]
    assert _run([*args, "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["result"]["exponents"]) == 3


def test_bad_lrs_is_an_error(tmp_path: Path) -> None:
    import pytest

    from sharpdim.errors import SharpdimError

    with pytest.raises(SharpdimError):
        _run(["compare", "--lr-eos", "0.01", "--lr-below", "0.1", "--out", str(tmp_path)])
