"""Figure formats are checked before the work: by name and by saving a tiny figure."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sharpdim.errors import SharpdimError
from sharpdim.report import figure_file
from sharpdim.report.figure_file import check_figure_format


@pytest.mark.parametrize("name", ["a.png", "a.svg", "a.pdf", "a.eps", "noext"])
def test_formats_matplotlib_writes_here_pass(name: str) -> None:
    assert check_figure_format(name, "--png path") == Path(name)


@pytest.mark.skipif(shutil.which("xelatex") is not None, reason="a LaTeX engine is installed")
def test_pgf_without_latex_is_a_one_line_error_before_the_work() -> None:
    """pgf passed the name check and then raised RuntimeError('xelatex' not found) after the
    whole computation (exit 1 with a traceback, the JSON already written)."""
    with pytest.raises(SharpdimError, match=r"^--png path x.pgf: matplotlib cannot write 'pgf'"):
        check_figure_format("x.pgf", "--png path")


def test_a_failing_backend_is_reported_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    figure_file._cannot_render.cache_clear()
    monkeypatch.setattr(
        figure_file.Figure,
        "savefig",
        lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("no\nengine")),
    )
    try:
        with pytest.raises(SharpdimError, match=r"\(RuntimeError: no engine\): end it in .png"):
            check_figure_format("f.svg", "--png path")
    finally:
        figure_file._cannot_render.cache_clear()


def test_a_failing_plot_writes_no_file(tmp_path: Path) -> None:
    """A plot failing in its layout (a warning made an error) or on its format leaves no
    file, partial or temporary. (Figures are pyplot-free: nothing stays open.)"""
    import warnings

    import torch

    from sharpdim.report.spectrum_figures import plot_spectrum_density

    grid, density = torch.linspace(0, 1, 5), torch.ones(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match=r"[Tt]ight"):  # a title taller than the figure
            plot_spectrum_density(grid, density, tmp_path / "a.png", title="line\n" * 30)
    with pytest.raises(SharpdimError, match="cannot write 'xyz'"):  # (raw ValueError before)
        plot_spectrum_density(grid, density, tmp_path / "a.xyz")
    assert not list(tmp_path.iterdir())


def test_the_report_modules_leave_the_users_backend_alone(tmp_path: Path) -> None:
    """Each report module called matplotlib.use('Agg') on import, which switched a user's
    backend (an IPython session's inline figures stopped showing); figures are plain
    Figure objects now, saved without pyplot."""
    import subprocess
    import sys

    script = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
        "import torch, sharpdim.report as r\n"
        "import sharpdim.report.eos_figures, sharpdim.report.chaos_figures\n"
        f"r.plot_spectrum_density(torch.linspace(0, 1, 5), torch.ones(5), {str(tmp_path / 'd.png')!r})\n"
        "print(matplotlib.get_backend(), plt.get_fignums())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["svg", "[]"]
    assert (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")
