"""Accuracy of SD-SLQ, SD-KDE and SD-PS against the exact sharpness dimension (issue 3).

Three small tanh/ReLU MLPs on scikit-learn digits (64 features, 10 classes, MSE loss on one-hot
targets, float64), each trained briefly by full-batch gradient descent. For each model:

* ``K`` minibatches of ``batch_size`` examples are drawn once; the exact SD uses the dense
  Hessian of each (float64 ``eigvalsh``) and Def. 4.2 on the mean sorted exponents;
* stochastic Lanczos quadrature (``num_steps`` steps, Rademacher probes, full
  reorthogonalization unless ``--reorth partial|none``) runs ``R_max`` times, run ``r`` on batch ``r mod K`` — the same
  batches as the exact SD, so the comparison isolates the estimator's own error (quadrature,
  probes, pooling) from minibatch sampling, which both methods share;
* the learning rates are ``eta = 1/lambda_max`` (below the edge of stability) and
  ``2/lambda_max`` (at it), ``lambda_max`` the top eigenvalue of the full-batch Hessian.

The Hessian spectra do not depend on ``eta``: one set of spectra per model serves both
learning rates and all three estimators. Reported: ``|SD_est - SD_exact| / d`` per method,
setting and number of runs ``R``: the mean over the ``R_max / R`` disjoint blocks of ``R``
consecutive runs (each block uses every batch ``R / K`` times), so the decay with ``R`` is not
one noisy draw. Every ``R`` must divide ``R_max`` and be a multiple of ``K``.

    python benchmarks/sd_accuracy.py --out sd_accuracy.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn

from _common import dump_json
from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.slq import REORTHOGONALIZATIONS, slq_spectrum
from sharpdim.dimension.kaplan_yorke import kaplan_yorke_dimension
from sharpdim.dimension.sd_estimators import exponent_measure, sd_from_measure
from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig, step_log_singular_values
from sharpdim.training.datasets import load_dataset
from sharpdim.training.losses import mse_loss
from sharpdim.training.models import build_mlp

MODELS = [  # (name, width, depth, activation)
    ("64-16-10 tanh", 16, 1, "tanh"),
    ("64-32-32-10 tanh", 32, 2, "tanh"),
    ("64-40-40-10 relu", 40, 2, "relu"),
]


def train_gd(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], lr: float, steps: int
) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = mse_loss(model, data)
        loss.backward()
        opt.step()
    return float(loss.detach())


def study_model(
    name: str, width: int, depth: int, activation: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    ds = load_dataset("digits", seed=0, dtype=torch.float64)
    full = ds.train_batch()
    model = build_mlp(
        ds.input_dim,
        ds.num_outputs,
        width=width,
        depth=depth,
        activation=activation,
        seed=0,
        dtype=torch.float64,
    )
    d = sum(p.numel() for p in model.parameters())
    train_loss = train_gd(model, full, args.train_lr, args.train_steps)
    lam_max = float(
        torch.linalg.eigvalsh(dense_hessian(model, mse_loss, full, max_params=None))[-1]
    )
    gen = torch.Generator().manual_seed(1)
    n = full[0].shape[0]
    batches = []
    for _ in range(args.num_batches):
        idx = torch.randperm(n, generator=gen)[: args.batch_size]
        batches.append((full[0][idx], full[1][idx]))
    t0 = time.perf_counter()
    alphas = [
        torch.linalg.eigvalsh(dense_hessian(model, mse_loss, b, max_params=None)) for b in batches
    ]
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slq = slq_spectrum(
        lambda r, _g: HessianOperator(model, mse_loss, batches[r % len(batches)]),
        num_runs=max(args.runs),
        num_steps=args.num_steps,
        generator=torch.Generator().manual_seed(2),
        reorthogonalization=args.reorth,
    )
    slq_s = time.perf_counter() - t0
    rows = []
    for label, lr in (("1/lambda_max", 1 / lam_max), ("2/lambda_max", 2 / lam_max)):
        config = StepSpectrumConfig(lr=lr)
        exact = kaplan_yorke_dimension(
            torch.stack([step_log_singular_values(a, config) for a in alphas]).mean(0)
        ).dimension
        for runs in args.runs:
            blocks = [(b, b + runs) for b in range(0, max(args.runs), runs)]
            ests: dict[str, list[float]] = {"slq": [], "kde": [], "ps": []}
            for lo, hi in blocks:
                values, masses = exponent_measure(slq.nodes[lo:hi], slq.weights[lo:hi], d, config)
                for method in ests:
                    ests[method].append(sd_from_measure(method, values, masses).dimension)
            for method, vals in ests.items():
                errs = [abs(e - exact) / d for e in vals]
                est = vals[0]
                rows.append(
                    {
                        "model": name,
                        "num_params": d,
                        "setting": label,
                        "lr": lr,
                        "lambda_max": lam_max,
                        "runs": runs,
                        "num_steps": args.num_steps,
                        "reorthogonalization": args.reorth,
                        "method": method,
                        "sd_exact": exact,
                        "sd_est": est,
                        "rel_error": sum(errs) / len(errs),
                        "rel_error_first_block": errs[0],
                        "rel_error_max": max(errs),
                        "num_blocks": len(errs),
                        "train_loss": train_loss,
                        "exact_spectra_s": exact_s,
                        "slq_s": slq_s,
                    }
                )
    return rows


def table(rows: list[dict[str, Any]], runs: list[int]) -> str:
    lines = [
        "| model (d) | eta | SD exact / d | method | " + " | ".join(f"R={r}" for r in runs) + " |",
        "|---|---|---|---|" + "---|" * len(runs),
    ]
    keys = sorted(
        {(r["model"], r["num_params"], r["setting"]) for r in rows}, key=lambda k: (k[1], k[2])
    )
    for model, d, setting in keys:
        for method in ("slq", "kde", "ps"):
            sel = {
                r["runs"]: r
                for r in rows
                if r["model"] == model and r["setting"] == setting and r["method"] == method
            }
            exact = next(iter(sel.values()))["sd_exact"]
            errs = " | ".join(f"{100 * sel[r]['rel_error']:.2f}%" for r in runs)
            lines.append(
                f"| {model} ({d}) | {setting} | {exact / d:.4f} | SD-{method.upper()} | {errs} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[25, 50, 100, 250, 500])
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument(
        "--num-batches", type=int, default=5, help="K: minibatches shared by exact and SLQ"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-lr", type=float, default=0.1)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reorth", choices=REORTHOGONALIZATIONS, default="full")
    parser.add_argument("--models", type=int, nargs="+", default=[0, 1, 2], help="MODELS indices")
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if any(r % args.num_batches or max(args.runs) % r for r in args.runs):
        parser.error("every --runs value must divide the largest and be a multiple of K")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for spec in [MODELS[i] for i in args.models]:
        rows += study_model(*spec, args)
        print(f"done {spec[0]} after {time.perf_counter() - start:.0f} s", flush=True)
        # partial results survive an interruption
        dump_json(args.out, {"args": vars(args), "rows": rows, "partial": True})
    md = table(rows, args.runs)
    print(md)
    out = {
        "args": vars(args),
        "rows": rows,
        "table": md,
        "wall_time_s": time.perf_counter() - start,
    }
    dump_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
