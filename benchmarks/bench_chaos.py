"""Costs of the chaos tools, as side-by-side ratios measured in one run.

1. Lyapunov step (``TrainingMap.jvp`` with ``k`` tangents + QR) vs a plain training step
   (``torch.optim.SGD``: forward, backward, update) on an MLP; reported per tangent vector
   (target <= 3x). Timed in interleaved rounds (best of each), so CPU load hits all alike.
2. PH0 dimension of 5,000 points in dimension 10,000 (a random walk, like SGD iterates):
   wall time and the resident-memory peak.

Run: ``python benchmarks/bench_chaos.py [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
from collections.abc import Callable

import torch

from sharpdim.curvature.params import get_flat_params, trainable_parameters
from sharpdim.dimension.ph_dimension import ph_dimension
from sharpdim.dynamics.lyapunov import _qr_positive
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.training.datasets import load_dataset
from sharpdim.training.losses import mse_loss
from sharpdim.training.models import build_mlp


def _interleaved_best(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` time of each function, measured in interleaved rounds.

    Each round times every function once, so slow phases of a shared CPU hit all of them
    alike and the ratios stay meaningful.
    """
    for fn in fns.values():
        fn()  # warm up
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def bench_lyapunov_step(repeats: int) -> None:
    data = load_dataset("digits", n_train=512, dtype=torch.float32)
    model = build_mlp(64, 10, width=128, depth=2)
    batch = data.train_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step() -> None:
        opt.zero_grad()
        mse_loss(model, batch).backward()
        opt.step()

    phi = TrainingMap(model, mse_loss, [batch], lr=0.01)
    x = get_flat_params(trainable_parameters(model))
    fns: dict[str, Callable[[], object]] = {"train": train_step}
    for k in (1, 4, 16):
        q = torch.linalg.qr(torch.randn(phi.num_params, k))[0]
        fns[f"k={k}"] = lambda q=q: _qr_positive(phi.jvp(x, 0, q)[1])
    best = _interleaved_best(fns, repeats)
    base = best["train"]
    print(
        f"MLP 64-128-128-10 ({phi.num_params} params), batch 512, float32, "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"plain training step: {base * 1e3:.2f} ms")
    for k in (1, 4, 16):
        t = best[f"k={k}"]
        print(
            f"Lyapunov step k={k:2d}: {t * 1e3:.2f} ms = {t / base:.2f}x a training step, "
            f"{t / base / k:.2f}x per tangent vector"
        )


def bench_ph_dimension(n: int, dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    points = torch.cumsum(torch.randn(n, dim, generator=g) * 1e-3, dim=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    r = ph_dimension(points, generator=g)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"PH0 dimension of {n} points in R^{dim} (float32 input): {wall:.1f} s, "
        f"dimension {r.dimension:.3f} (r^2 {r.r_squared:.3f}), "
        f"peak RSS {peak:.0f} MiB (was {before:.0f} MiB before; points {points.numel() * 4 / 2**20:.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    bench_lyapunov_step(3 if args.quick else 20)
    if args.quick:
        bench_ph_dimension(500, 1000)
    else:
        bench_ph_dimension(5000, 10_000)


if __name__ == "__main__":
    main()
