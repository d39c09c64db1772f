"""`sharpdim eos ...` at tiny sizes: each command writes its figure and JSON summary."""

import json

from sharpdim.cli import main

TINY_MLP = ["--n-train", "60", "--width", "8", "--depth", "1", "--steps", "12", "--every", "4"]


def _summary(path):
    assert (path.with_suffix(".png")).stat().st_size > 1000
    return json.loads(path.read_text())


def test_sharpening(tmp_path, capsys):
    code = main(["eos", "sharpening", "--lrs", "0.2,0.5", *TINY_MLP, "--out", str(tmp_path)])
    assert code == 0
    summary = _summary(tmp_path / "sharpening.json")
    assert summary["kind"] == "sharpening" and summary["steps"] == 12
    assert [r["lr"] for r in summary["runs"]] == [0.2, 0.5]
    assert summary["runs"][0]["steps"] == [0, 4, 8, 12]  # + the final parameters
    assert summary["runs"][1]["threshold"] == 4.0
    assert set(summary["ratios"]) == {"gd lr=0.2", "gd lr=0.5"}
    assert "late median ratio" in capsys.readouterr().out


def test_thresholds(tmp_path):
    code = main(["eos", "thresholds", "--momentum-lr", "0.1", "--adam-lr", "0.01", *TINY_MLP,
                 "--float32", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = _summary(tmp_path / "thresholds.json")
    momentum, adam = summary["runs"]
    assert momentum["optimizer"] == "momentum" and adam["optimizer"] == "adam"
    assert abs(momentum["threshold"] - 38.0) < 1e-9
    assert abs(adam["threshold"] - 3.8 / (0.01 * 0.1)) < 1e-6
    assert adam["late_median_ratio"] is not None


def test_minimalist(tmp_path, capsys):
    code = main(["eos", "minimalist", "--num-lrs", "6", "--bif-num", "8", "--steps", "400",
                 "--late", "50", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = _summary(tmp_path / "minimalist.json")
    assert summary["ratio_steps"] == 400 and summary["bifurcation_num_lrs"] == 8
    assert summary["ratio_init"] == [2.0, 0.3, 2.0, 0.3]
    assert all(0.9 < r < 1.0 for r in summary["ratios"]["eos_ratios"])
    assert "final sharpness / (2/eta)" in capsys.readouterr().out


def test_fractal(tmp_path):
    code = main(["eos", "fractal", "--particles", "300", "--steps", "20", "--out", str(tmp_path)])
    assert code == 0
    summary = _summary(tmp_path / "fractal.json")
    assert summary["num_particles"] == 300 and summary["steps"] == 20
    assert 0.0 <= summary["eos_fraction"] <= 1.0


def test_bad_input_exits_with_code_2(tmp_path, capsys):
    assert main(["eos", "sharpening", "--lrs", "abc", "--out", str(tmp_path)]) == 2
    assert main(["eos", "thresholds", "--momentum-lr", "0", "--adam-lr", "0"]) == 2
    assert main(["eos", "minimalist", "--lr-min", "0.5", "--lr-max", "0.1"]) == 2
    assert main(["eos", "fractal", "--particles", "0", "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
