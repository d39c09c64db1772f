"""Cost of the sharpness dimension against its unavoidable kernels (issue 3).

* exact SD of the 784-16-16-10 ReLU MLP without biases (12,960 parameters): time per minibatch
  of ``sharpness_dimension(method="exact")`` (dense Hessian from 12,960 HVPs, float64
  ``eigvalsh``, closed-form exponents) against ``torch.linalg.eigvalsh`` alone on that
  Hessian (target <= 1.3x);
* SD-SLQ on the 5-layer width-200 ReLU MLP without biases, 784-200-200-200-200-10
  (784*200 + 3*200*200 + 200*10 = 278,800 parameters): time per Lanczos run of
  ``sharpness_dimension(method="slq")`` against ``num_steps`` Hessian-vector products alone on
  a fresh minibatch (graph build included in both; target <= 1.3x), with the paper's full
  reorthogonalization and with partial reorthogonalization (``--reorth``).

Inputs are scikit-learn's 8x8 handwritten digits (1,797 images) upsampled bilinearly to 28x28
(784 features) and standardised; models are float32 at their seeded initialisation. Both
measurements of a ratio are taken in the same run, alternating, so machine load cancels.

    python benchmarks/bench_sd.py --out bench_sd.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from _common import ce_loss, dump_json, machine
from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.dimension.sharpness_dimension import sharpness_dimension


def digits_784(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn digits upsampled from 8x8 to 28x28, standardised."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float64)[:, None]
    x = nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = x.reshape(x.shape[0], -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return x.to(dtype), torch.tensor(d.target, dtype=torch.int64)


def relu_mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        lin = nn.Linear(a, b, bias=False)
        with torch.no_grad():
            lin.weight.copy_((2 * torch.rand(b, a, generator=gen) - 1) / a**0.5)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@contextlib.contextmanager
def timing_eigvalsh(seconds: list[float]) -> Iterator[None]:
    """Append the wall time of every ``torch.linalg.eigvalsh`` call inside the block."""
    real = torch.linalg.eigvalsh

    def timed_eigvalsh(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = real(*args, **kwargs)
        seconds.append(time.perf_counter() - t0)
        return out

    torch.linalg.eigvalsh = timed_eigvalsh
    try:
        yield
    finally:
        torch.linalg.eigvalsh = real


def bench_exact(batch_size: int, repeats: int) -> dict[str, Any]:
    """The exact SD of one minibatch against ``eigvalsh`` alone on its Hessian; the two
    alternate which runs first, and the SD's own ``eigvalsh`` is timed too, since the SD is
    by construction the Hessian build plus that ``eigvalsh`` plus the closed-form rest."""
    model = relu_mlp([784, 16, 16, 10])
    d = sum(p.numel() for p in model.parameters())
    x, y = digits_784()
    sd_times, eig_times, build_times, sds, inner = [], [], [], [], []
    sd_cpu, eig_cpu = [], []
    Batch = tuple[torch.Tensor, torch.Tensor]

    def alone(batch: Batch) -> None:
        t0 = time.perf_counter()
        hess = dense_hessian(model, ce_loss, batch, max_params=None).to(torch.float64)
        build_times.append(time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        torch.linalg.eigvalsh(hess)
        eig_times.append(time.perf_counter() - t0)
        eig_cpu.append(time.process_time() - c0)

    def sd(batch: Batch) -> None:
        inside: list[float] = []
        t0, c0 = time.perf_counter(), time.process_time()
        with timing_eigvalsh(inside):
            res = sharpness_dimension(
                model,
                ce_loss,
                batch,
                0.1,
                method="exact",
                num_batches=1,
                batch_size=batch_size,
                max_params=None,
                num_bootstrap=0,
            )
        sd_times.append(time.perf_counter() - t0)
        sd_cpu.append(time.process_time() - c0)
        sds.append(res.sd)
        inner.append(sum(inside))

    for r in range(repeats):
        # one minibatch; the SD is asked for exactly this batch (data = the batch itself)
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(r))[:batch_size]
        for part in (alone, sd) if r % 2 == 0 else (sd, alone):
            part((x[idx], y[idx]))
    ratios = [s / e for s, e in zip(sd_times, eig_times, strict=True)]
    return {
        "model": "784-16-16-10 ReLU, no bias",
        "num_params": d,
        "batch_size": batch_size,
        "repeats": repeats,
        "sd_per_batch_s": min(sd_times),
        "eigvalsh_s": min(eig_times),
        "hessian_build_s": min(build_times),
        "ratio_of_minima": min(sd_times) / min(eig_times),
        "ratio_per_repeat": ratios,
        "cpu_ratio_of_minima": min(sd_cpu) / min(eig_cpu),
        "sd_cpu_s": sd_cpu,
        "eigvalsh_cpu_s": eig_cpu,
        "eigvalsh_inside_sd_s": inner,
        "all_build_s": build_times,
        "sd_minus_its_eigvalsh_s": [s - e for s, e in zip(sd_times, inner, strict=True)],
        "target": 1.3,
        "sd_values": sds,
        "all_sd_s": sd_times,
        "all_eigvalsh_s": eig_times,
    }


def bench_slq(
    batch_size: int, num_runs: int, num_steps: int, repeats: int, reorths: list[str]
) -> dict[str, Any]:
    """Per run: ``num_steps`` HVPs alone vs SD-SLQ with each reorthogonalization, interleaved."""
    model = relu_mlp([784, 200, 200, 200, 200, 10])
    d = sum(p.numel() for p in model.parameters())
    assert d == 278_800, d
    data = digits_784()
    hvp_times: list[float] = []
    hvp_cpu: list[float] = []
    sd_times: dict[str, list[float]] = {k: [] for k in reorths}
    sd_cpu: dict[str, list[float]] = {k: [] for k in reorths}
    sds: dict[str, float] = {}

    def hvps(r: int) -> None:
        gen = torch.Generator().manual_seed(200 + r)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(num_runs):  # num_steps HVPs on a fresh minibatch, graph build included
            idx = torch.randperm(data[0].shape[0], generator=gen)[:batch_size]
            op = HessianOperator(model, ce_loss, (data[0][idx], data[1][idx]))
            v = torch.randn(d, generator=gen)
            for _ in range(num_steps):
                v = op @ v
                v = v / v.norm()
        hvp_times.append((time.perf_counter() - t0) / num_runs)
        hvp_cpu.append((time.process_time() - c0) / num_runs)

    def sd_slq(r: int, reorth: str, runs: int = num_runs) -> Any:
        return sharpness_dimension(
            model,
            ce_loss,
            data,
            0.1,
            method="slq",
            num_runs=runs,
            num_steps=num_steps,
            batch_size=batch_size,
            num_bootstrap=0,
            reorthogonalization=reorth,
            generator=torch.Generator().manual_seed(300 + r),
        )

    def timed_sd(r: int, reorth: str) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        res = sd_slq(r, reorth)
        sd_times[reorth].append((time.perf_counter() - t0) / num_runs)
        sd_cpu[reorth].append((time.process_time() - c0) / num_runs)
        sds[reorth] = res.sd

    hvps(-1)  # untimed warm-up of every variant (the first run pays start-up)
    hvp_times.clear()
    hvp_cpu.clear()
    for reorth in reorths:
        sd_slq(-1, reorth, runs=1)
    variants = [hvps, *(functools.partial(timed_sd, reorth=k) for k in reorths)]
    for r in range(repeats):  # alternate the order, so no variant always runs first
        for variant in variants if r % 2 == 0 else variants[::-1]:
            variant(r)
    hvp_t = min(hvp_times)
    return {
        "model": "784-200-200-200-200-10 ReLU, no bias",
        "num_params": d,
        "batch_size": batch_size,
        "num_runs": num_runs,
        "num_steps": num_steps,
        "repeats": repeats,
        "hvps_per_run_s": hvp_t,
        "target": 1.3,
        "all_hvps_per_run_s": hvp_times,
        "all_hvps_cpu_s": hvp_cpu,
        "sd_slq": {
            reorth: {
                "per_run_s": min(sd_times[reorth]),
                "ratio": min(sd_times[reorth]) / hvp_t,
                "cpu_ratio": min(sd_cpu[reorth]) / min(hvp_cpu),
                "sd": sds[reorth],
                "all_per_run_s": sd_times[reorth],
                "all_cpu_s": sd_cpu[reorth],
            }
            for reorth in reorths
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["exact", "slq", "all"], default="all")
    parser.add_argument("--batch-size", type=int, default=128, help="minibatch of the exact SD")
    parser.add_argument("--slq-batch-size", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--num-runs", type=int, default=5)
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reorth",
        nargs="+",
        choices=["full", "partial", "none"],
        default=["full", "partial", "none"],
    )
    parser.add_argument("--out", type=str, default=None, help="JSON output file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": machine(),
    }
    if args.part in ("exact", "all"):
        out["exact"] = bench_exact(args.batch_size, args.repeats)
        print(json.dumps(out["exact"], indent=1))
    if args.part in ("slq", "all"):
        out["slq"] = [
            bench_slq(b, args.num_runs, args.num_steps, args.repeats, args.reorth)
            for b in args.slq_batch_size
        ]
        print(json.dumps(out["slq"], indent=1))
    dump_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
