"""``sharpdim eos ...``: the edge-of-stability reproductions, each writing a PNG and a JSON summary.

* ``sharpening``: progressive sharpening and EoS under full-batch GD (Cohen et al., ICLR 2021);
* ``minimalist``: GD on ``0.5 (1 - xyzw)^2`` (Zhu et al., ICLR 2023): EoS ratios and a
  bifurcation diagram;
* ``thresholds``: heavy-ball momentum and Adam at their stability thresholds;
* ``fractal``: the toy fractal attractor of Tuci et al. (arXiv 2604.19740, Fig. 6).

The defaults are the sizes of ``docs/reproductions.md``; every size can be shrunk for a quick
look (the tests run each command at a tiny size).

``sharpening`` and ``thresholds`` are sweeps of independent runs (one per step size /
optimizer). Each finished run, diverged ones included, is stored at once in
``<out>/runs.sqlite`` (a :class:`~sharpdim.runner.ResultsStore`) keyed by its full config, so
rerunning a sweep (after a crash or a kill) trains only the runs that are missing. Sweeps
into the same folder accumulate runs there; the JSON and PNG of a sweep hold exactly the runs
of its own options.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import typer
from rich.table import Table

from sharpdim.commands._common import (
    check_at_least,
    check_finite,
    check_finite_threshold,
    check_fraction,
    check_mlp_size,
    check_n_train,
    check_positive_lr,
    depth_option,
    float64_option,
    kv_table,
    open_run_store,
    output_errors,
    parse_floats,
    parse_output_folder,
    prepare_output_dir,
    prepare_store_path,
    print_report,
    print_reuse,
    progress_bar,
    seed_option,
    width_option,
    write_json,
)
from sharpdim.errors import SharpdimError

app = typer.Typer(
    help="Edge-of-stability reproductions: sharpening, minimalist, thresholds, fractal.",
    no_args_is_help=True,
)

# --out of the sweeps (sharpening, thresholds), which keep runs.sqlite there, and of the
# other two; then the options of the two tanh-MLP sweeps
_OUT = typer.Option(
    Path("eos_results"),
    "--out",
    help="folder for the PNG, the JSON summary and runs.sqlite (the stored runs)",
    parser=parse_output_folder,
)
_OUT_FIGURE = typer.Option(
    Path("eos_results"),
    "--out",
    help="folder for the PNG and the JSON summary",
    parser=parse_output_folder,
)
_DATASET = typer.Option("digits", help="digits | mnist1d | modular | teacher_student")
STORE_NAME = "runs.sqlite"
MAX_GRID = 100_000  # step sizes per minimalist grid (each a vectorised GD run)
MAX_LATE_ITERATES = 4_000_000  # minimalist late iterates over both grids (4 factors each)
MAX_PLOTTED_LR = 1e307  # the minimalist figure draws step sizes on linear axes; their ticks
# overflow above this (matplotlib: "arange: cannot compute length")
MAX_PARTICLES = 1_000_000  # fractal particles (each scattered into the figure)
_WIDTH = width_option(100, help="tanh MLP hidden width")
_DEPTH = depth_option(2, help="tanh MLP hidden layers")
_N_TRAIN = typer.Option(1000, help="training examples (the first of the split)")
_EVERY = typer.Option(10, help="measure the sharpness every this many steps")
_LATE_FRACTION = typer.Option(0.3, help="final share of training summarised")
_FLOAT64 = float64_option()
_SEED = seed_option("seed of data and initialisation")


def _save(
    out: Path,
    name: str,
    result: Any,
    plot: Callable[[Any, Path], Path],
    settings: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json``, then ``<out>/<name>.png`` (by ``plot``); return (png, json).

    The results first: a failing figure leaves them written (an earlier figure is removed
    before). ``settings``: the command's options, recorded in the JSON as ``"settings"``.
    """
    png = out / f"{name}.png"
    payload = {"settings": settings, **result.to_dict()}
    js = write_json(out / f"{name}.json", payload, "--out folder", replaces=[png])
    with output_errors(png, "--out folder"):
        plot(result, png)
    return png, js


def _outputs(name: str) -> tuple[str, str]:
    """The files :func:`_save` writes for ``name`` (checked before anything is computed)."""
    return f"{name}.json", f"{name}.png"


def _setup(
    dataset: str,
    n_train: int,
    width: int,
    depth: int,
    seed: int,
    float64: bool,
    lrs: Sequence[tuple[str, str, float]] = (),
    **hyper: Any,
) -> Any:
    """The checked MLP setup; ``lrs`` (``(flag, optimizer, step size)``) must fit the dtype
    and put the optimizer's stability threshold (with ``hyper``) at a finite number."""
    from sharpdim.training.eos_setup import MLPSetup

    largest = torch.finfo(torch.float32).max  # (a finite float64 step size always fits)
    for flag, name, lr in lrs:
        if not float64 and lr > largest:
            raise SharpdimError(
                f"{flag} {lr:g} does not fit in float32 (largest {largest:.3g}): pass a "
                "smaller step size or --float64"
            )
        check_finite_threshold(flag, name, lr, **hyper)  # (before --out is written)

    check_at_least(n_train, 1, "--n-train")
    check_n_train(dataset, n_train)
    check_at_least(width, 1, "--width")
    check_at_least(depth, 0, "--depth")
    setup = MLPSetup(
        dataset=dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        seed=seed,
        dtype="float64" if float64 else "float32",
    )
    data = setup.data()  # cheap; refuses too large an n_train before anything is written
    check_mlp_size(data.input_dim, data.num_outputs, width, depth)
    return setup


def _late_title(quantity: str, late_fraction: float) -> str:
    """``"<quantity>, last 30% of training"`` for ``late_fraction=0.3``."""
    return f"{quantity}, last {100 * late_fraction:g}% of training"


def _runs_table(title: str, result: Any) -> Table:
    table = Table(title=title)
    for col in ("optimizer", "lr", "threshold", "late median ratio", "late min..max", "status"):
        table.add_column(col, justify="right")
    for r in result.runs:
        low, high = r.late_ratio_range
        table.add_row(
            r.optimizer,
            f"{r.lr:g}",
            f"{r.threshold:.4g}",
            f"{r.late_median_ratio:.4f}",
            f"{low:.3f}..{high:.3f}",
            r.status if r.diverged_at is None else f"{r.status}@{r.diverged_at}",  # its step
        )
    return table


def _runs_command(
    kind: str,
    runner: Callable[..., Any],
    num_runs: int,
    title: str,
    out: Path,
    *,
    steps: int,
    settings: dict[str, Any],
    **kwargs: Any,
) -> None:
    """Run ``runner`` (``num_runs`` monitored runs) under a progress bar, save and print it.

    Runs go through a :class:`~sharpdim.runner.ResumableRuns` on ``<out>/runs.sqlite``:
    stored runs of the same config are reused, new ones stored as each finishes.
    ``settings``: the command's options, recorded in the JSON.
    """
    from sharpdim.report.eos_figures import plot_eos_runs
    from sharpdim.runner import ResumableRuns
    from sharpdim.training.eos_experiments import EoSRun

    start = time.perf_counter()
    prepare_output_dir(out, "--out folder", files=_outputs(kind))
    with open_run_store(prepare_store_path(out, STORE_NAME)) as store:
        runs: ResumableRuns[EoSRun] = ResumableRuns(
            store,
            encode=EoSRun.to_dict,
            decode=EoSRun.from_dict,
            status=lambda run: "diverged" if run.status == "diverged" else "done",
        )
        with progress_bar(kind, num_runs * steps) as update:
            result = runner(
                progress=lambda i, s, t: update(i * t + s), execute=runs, steps=steps, **kwargs
            )
    print_reuse(runs, num_runs, "runs", out / STORE_NAME)
    png, js = _save(out, kind, result, plot_eos_runs, settings)
    # this command's time (the JSON's wall_time_s also counts the training of reused runs)
    print_report(_runs_table(title, result), png, js, seconds=time.perf_counter() - start)


def _check_run_options(steps: int, every: int, late_fraction: float) -> None:
    """The options of a monitored run, checked before anything is written or trained."""
    check_at_least(steps, 1, "--steps")
    check_at_least(every, 1, "--every")
    if not 0 < late_fraction <= 1:
        raise SharpdimError(
            f"--late-fraction must be in (0, 1], got {late_fraction}: pass e.g. --late-fraction 0.3"
        )


@app.command("sharpening")
def sharpening(
    lrs: str = typer.Option("0.2,0.3,0.5", help="GD step sizes, comma separated"),
    steps: int = typer.Option(2000, help="GD steps per step size"),
    every: int = _EVERY,
    dataset: str = _DATASET,
    n_train: int = _N_TRAIN,
    width: int = _WIDTH,
    depth: int = _DEPTH,
    late_fraction: float = _LATE_FRACTION,
    float64: bool = _FLOAT64,
    seed: int = _SEED,
    out: Path = _OUT,
) -> None:
    """Progressive sharpening and EoS: GD on a tanh MLP with MSE (Cohen et al. 2021)."""
    from sharpdim.training.eos_experiments import progressive_sharpening

    grid = parse_floats(lrs, "--lrs")
    for i, lr in enumerate(grid):
        check_positive_lr(lr, "--lrs", "0.2,0.3,0.5")
        if lr in grid[:i]:
            raise SharpdimError(f"--lrs lists {lr:g} twice: give each step size once")
    _check_run_options(steps, every, late_fraction)
    setup = _setup(
        dataset, n_train, width, depth, seed, float64, lrs=[("--lrs", "gd", lr) for lr in grid]
    )
    settings = dict(
        lrs=grid, steps=steps, every=every, dataset=dataset, n_train=n_train, width=width,
        depth=depth, late_fraction=late_fraction, float64=float64, seed=seed,
    )  # fmt: skip
    _runs_command(
        "sharpening",
        progressive_sharpening,
        len(grid),
        _late_title("sharpness / (2/eta)", late_fraction),
        out,
        lrs=grid,
        setup=setup,
        steps=steps,
        settings=settings,
        every=every,
        late_fraction=late_fraction,
    )


@app.command("thresholds")
def thresholds(
    momentum_lr: float = typer.Option(0.2, help="heavy-ball step size (0 = skip)"),
    adam_lr: float = typer.Option(0.001, help="Adam step size (0 = skip)"),
    momentum: float | None = typer.Option(
        None, help="heavy-ball momentum mu \\[default: 0.9]", show_default=False
    ),
    beta1: float | None = typer.Option(
        None, help="Adam beta1 \\[default: 0.9]", show_default=False
    ),
    beta2: float | None = typer.Option(
        None, help="Adam beta2 \\[default: 0.999]", show_default=False
    ),
    steps: int = typer.Option(2000, help="steps per run"),
    every: int = _EVERY,
    dataset: str = _DATASET,
    n_train: int = _N_TRAIN,
    width: int = _WIDTH,
    depth: int = _DEPTH,
    late_fraction: float = _LATE_FRACTION,
    float64: bool = _FLOAT64,
    seed: int = _SEED,
    out: Path = _OUT,
) -> None:
    """Heavy-ball momentum and Adam at their EoS thresholds (full batch, tanh MLP, MSE)."""
    from sharpdim.training.eos_experiments import optimizer_thresholds

    for flag, lr in (("--momentum-lr", momentum_lr), ("--adam-lr", adam_lr)):
        if not (math.isfinite(lr) and lr >= 0):
            raise SharpdimError(
                f"{flag} {lr} is not a step size: give a positive number, or 0 to skip this "
                "optimizer"
            )
    runs = [(n, lr) for n, lr in (("momentum", momentum_lr), ("adam", adam_lr)) if lr > 0]
    if not runs:
        raise SharpdimError("both step sizes are 0: give --momentum-lr or --adam-lr > 0")
    for flag, value, skipped in (
        ("--momentum", momentum, momentum_lr == 0),
        ("--beta1", beta1, adam_lr == 0),
        ("--beta2", beta2, adam_lr == 0),
    ):
        if value is not None and skipped:
            owner = "--momentum-lr" if flag == "--momentum" else "--adam-lr"
            raise SharpdimError(
                f"{flag} {value:g} would be ignored: {owner} is 0 (that optimizer is "
                f"skipped): drop {flag}, or give {owner} > 0"
            )
    momentum = 0.9 if momentum is None else momentum
    beta1 = 0.9 if beta1 is None else beta1
    beta2 = 0.999 if beta2 is None else beta2
    check_fraction(momentum, "--momentum", "0.9")
    check_fraction(beta1, "--beta1", "0.9")
    check_fraction(beta2, "--beta2", "0.999")
    _check_run_options(steps, every, late_fraction)
    flags = {"momentum": "--momentum-lr", "adam": "--adam-lr"}
    setup = _setup(
        dataset,
        n_train,
        width,
        depth,
        seed,
        float64,
        lrs=[(flags[n], n, lr) for n, lr in runs],
        momentum=momentum,
        betas=(beta1, beta2),
    )
    settings = dict(
        momentum_lr=momentum_lr, adam_lr=adam_lr,
        **({"momentum": momentum} if momentum_lr > 0 else {}),  # (only what a run used)
        **({"beta1": beta1, "beta2": beta2} if adam_lr > 0 else {}),
        steps=steps, every=every, dataset=dataset, n_train=n_train, width=width, depth=depth,
        late_fraction=late_fraction, float64=float64, seed=seed,
    )  # fmt: skip
    _runs_command(
        "thresholds",
        optimizer_thresholds,
        len(runs),
        _late_title("(preconditioned) sharpness / threshold", late_fraction),
        out,
        runs=runs,
        momentum=momentum,
        betas=(beta1, beta2),
        setup=setup,
        steps=steps,
        settings=settings,
        every=every,
        late_fraction=late_fraction,
    )


@app.command("minimalist")
def minimalist(
    lr_min: float = typer.Option(0.02, help="smallest step size of the ratio sweep"),
    lr_max: float = typer.Option(0.54, help="largest step size of the ratio sweep"),
    num_lrs: int = typer.Option(53, help="step sizes in the ratio sweep"),
    bif_min: float = typer.Option(0.2, help="smallest step size of the bifurcation diagram"),
    bif_max: float = typer.Option(1.1, help="largest step size of the bifurcation diagram"),
    bif_num: int = typer.Option(451, help="step sizes in the bifurcation diagram"),
    steps: int = typer.Option(20_000, help="GD steps"),
    late: int = typer.Option(300, help="late iterates kept per step size (at most --steps)"),
    out: Path = _OUT_FIGURE,
) -> None:
    """GD on 0.5 (1 - xyzw)^2: EoS ratios and a bifurcation diagram (Zhu et al. 2023)."""
    from sharpdim.report.eos_figures import plot_minimalist
    from sharpdim.training.eos_minimalist_experiment import minimalist_experiment

    for flag, value, example in (
        ("--lr-min", lr_min, "0.02"),
        ("--lr-max", lr_max, "0.54"),
        ("--bif-min", bif_min, "0.2"),
        ("--bif-max", bif_max, "1.1"),
    ):
        check_positive_lr(value, flag, example)
        if value > MAX_PLOTTED_LR:  # (matplotlib's linear ticks overflow: a raw ValueError)
            raise SharpdimError(
                f"{flag} {value!r} is too large for the figure's step-size axis (at most "
                f"{MAX_PLOTTED_LR:g}): pass e.g. {flag} {example}"
            )
    for flag, count in (("--num-lrs", num_lrs), ("--bif-num", bif_num)):
        check_at_least(count, 1, flag)
        if count > MAX_GRID:
            raise SharpdimError(f"{flag} {count} exceeds {MAX_GRID:,}: use a coarser grid")
    check_at_least(steps, 1, "--steps")
    check_at_least(late, 1, "--late")
    if late > steps:
        raise SharpdimError(f"--late {late} exceeds --steps {steps}: pass --late <= --steps")
    if (num_lrs + bif_num) * late > MAX_LATE_ITERATES:  # (kept in memory; the JSON: summaries)
        raise SharpdimError(
            f"(--num-lrs {num_lrs} + --bif-num {bif_num}) x --late {late} = "
            f"{(num_lrs + bif_num) * late:,} late iterates exceed {MAX_LATE_ITERATES:,}: use "
            "coarser grids or a smaller --late"
        )
    if not (lr_min <= lr_max and bif_min <= bif_max):
        raise SharpdimError(
            "step-size grids need min <= max: check --lr-min/--lr-max and --bif-min/--bif-max"
        )
    for low, high, count, flags in (
        (lr_min, lr_max, num_lrs, ("--lr-min", "--lr-max", "--num-lrs")),
        (bif_min, bif_max, bif_num, ("--bif-min", "--bif-max", "--bif-num")),
    ):
        if low == high and count > 1:  # (the same run, count times)
            raise SharpdimError(
                f"{flags[0]} = {flags[1]} = {low:g} with {flags[2]} {count} repeats one step "
                f"size: pass {flags[2]} 1 or a wider range"
            )
        if low < high and count == 1:  # linspace would keep the minimum only
            raise SharpdimError(
                f"{flags[2]} 1 runs one step size, but {flags[0]} {low:g} < {flags[1]} "
                f"{high:g}: pass {flags[2]} 2 or more, or {flags[0]} = {flags[1]}"
            )
    ratio_lrs = torch.linspace(lr_min, lr_max, num_lrs, dtype=torch.float64).tolist()
    bif_lrs = torch.linspace(bif_min, bif_max, bif_num, dtype=torch.float64).tolist()
    trace = [lr for lr in (0.05, 0.3, 0.45) if lr_min <= lr <= lr_max] or [lr_max]
    prepare_output_dir(out, "--out folder", files=_outputs("minimalist"))
    with progress_bar("minimalist", 2 * steps) as update:
        result = minimalist_experiment(
            ratio_lrs=ratio_lrs,
            bifurcation_lrs=bif_lrs,
            steps=steps,
            late=late,
            trace_lrs=trace,
            progress=lambda done, _total: update(done),
        )
    settings = dict(
        lr_min=lr_min, lr_max=lr_max, num_lrs=num_lrs, bif_min=bif_min, bif_max=bif_max,
        bif_num=bif_num, steps=steps, late=late, trace_lrs=trace,
    )  # fmt: skip
    png, js = _save(out, "minimalist", result, plot_minimalist, settings)
    rs, bs = result.ratio_summary, result.bifurcation_summary
    stats = rs.ratio_stats()
    rows = [
        ("reference sharpness (smallest eta)", f"{rs.reference_sharpness:.4f}"),
        ("EoS step sizes", f"{len(rs.eos_lrs)}"),
        ("final sharpness / (2/eta): min", f"{stats['min']:.4f}"),
        ("                            median", f"{stats['median']:.4f}"),
        ("                            max", f"{stats['max']:.4f}"),
        (
            "first eta with period P",
            ", ".join(f"P={k}: {v:.4g}" for k, v in bs.first_period.items()),
        ),
        ("first chaotic eta", f"{bs.first_chaotic:.4g}"),
        ("largest Lyapunov exponent", f"{bs.max_lyapunov:.3f}"),
        ("first diverged eta", f"{bs.first_diverged:.4g}"),
    ]
    print_report(kv_table("minimalist example", rows), png, js, seconds=result.wall_time_s)


@app.command("fractal")
def fractal(
    particles: int = typer.Option(20_000, help="particles moved together"),
    steps: int = typer.Option(250, help="noisy GD steps"),
    lr: float = typer.Option(0.15, help="step size eta"),
    amplitude: float = typer.Option(2.0, help="A"),
    frequency: float = typer.Option(4.0, help="k"),
    noise_std: float = typer.Option(0.1, help="sigma of the additive Gaussian noise"),
    init_range: float = typer.Option(3.0, help="initial points uniform in [-r, r]^2"),
    seed: int = seed_option("seed of the initial points and the noise"),
    out: Path = _OUT_FIGURE,
) -> None:
    """The toy fractal attractor: noisy GD on 0.5|x|^2 - A cos(k x1) cos(k x2) (paper Fig. 6)."""
    from sharpdim.report.eos_figures import plot_fractal
    from sharpdim.training.eos_fractal import DIVERGENCE_FACTOR, fractal_attractor

    check_positive_lr(lr, "--lr", "0.15")
    check_at_least(particles, 1, "--particles")
    if particles > MAX_PARTICLES:
        raise SharpdimError(
            f"--particles {particles:,} exceeds {MAX_PARTICLES:,}: pass --particles "
            f"<= {MAX_PARTICLES:,} (the default 20,000 shows the attractor)"
        )
    check_at_least(steps, 1, "--steps")
    check_finite(amplitude, "--amplitude", low=0.0, example="2.0")
    check_finite(frequency, "--frequency", example="4.0")
    check_finite(noise_std, "--noise-std", low=0.0, example="0.1")
    check_positive_lr(init_range, "--init-range", "3.0")
    if not math.isfinite(amplitude * frequency * frequency):
        raise SharpdimError(
            f"--amplitude {amplitude:g} with --frequency {frequency:g} gives an infinite "
            "sharpness 1 + A k^2: pass smaller values (the paper's are 2 and 4)"
        )
    prepare_output_dir(out, "--out folder", files=_outputs("fractal"))
    result = fractal_attractor(
        particles,
        steps=steps,
        lr=lr,
        amplitude=amplitude,
        frequency=frequency,
        noise_std=noise_std,
        init_range=init_range,
        generator=torch.Generator().manual_seed(seed),
    )
    settings = dict(
        particles=particles, steps=steps, lr=lr, amplitude=amplitude, frequency=frequency,
        noise_std=noise_std, init_range=init_range, seed=seed,
    )  # fmt: skip
    png, js = _save(out, "fractal", result, plot_fractal, settings)
    if result.status == "diverged":
        shown = (
            f"diverged: {result.num_diverged:,} of {result.final.shape[0]:,} particles ran away "
            f"(loss above {DIVERGENCE_FACTOR:,.0f} x its start, or not finite): the measures are "
            "not computed (null in the JSON); pass a smaller --lr (below 2 keeps the particles "
            "bounded), --noise-std, --amplitude or --init-range"
        )
    else:
        shown = (
            f"2/eta = {result.threshold:.4g}; share of particles with sharpness above it: "
            f"{result.eos_fraction:.3f}; median sharpness {result.median_sharpness:.3f}; "
            f"box-counting slope {result.box_dimension:.3f}"
        )
    print_report(shown, png, js)
