"""Lanczos solver cost by the memory layout of the operator's output (side by side, one run).

``lanczos_eigenvalues`` stores each product ``H x`` (an ``(n, b)`` block) as rows of its basis.
A matrix-free operator may return that block contiguous ``(n, b)`` or as the transposed view of
a ``(b, n)`` tensor; both hold the same numbers. This script times the same top-5 solve with
both layouts on a diagonal operator whose products cost almost nothing, so the times are the
solver's own work, and reports their ratio (1.0 when the layout does not matter).

    python benchmarks/bench_lanczos_layout.py [--n 200000] [--rounds 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import dump_json, machine
from sharpdim.curvature.lanczos import lanczos_eigenvalues
from sharpdim.curvature.operator import LinearOperator


class DiagonalOperator(LinearOperator):
    """``diag(d)``, returning its product contiguous ``(n, b)`` or as a transposed view."""

    def __init__(self, d: torch.Tensor, contiguous: bool) -> None:
        self.d, self.contiguous = d, contiguous

    @property
    def num_params(self) -> int:
        return self.d.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.d.dtype

    @property
    def device(self) -> torch.device:
        return self.d.device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        if self.contiguous:
            return (self.d[:, None] * block).contiguous()
        return (self.d[None, :] * block.T).T


def spectrum(n: int) -> torch.Tensor:
    """Five separated top eigenvalues above a uniform bulk in [0, 20] (float32, seeded)."""
    gen = torch.Generator().manual_seed(0)
    top = torch.tensor([50.0, 40.0, 30.0, 29.0, 28.0, 27.0])
    return torch.cat([top, 20 * torch.rand(n - top.numel(), generator=gen)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    d = spectrum(args.n)
    times: dict[str, list[float]] = {"contiguous": [], "transposed view": []}
    matvecs = 0
    for r in range(args.rounds):  # alternate the order so CPU load hits both alike
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            op = DiagonalOperator(d, contiguous=name == "contiguous")
            t0 = time.perf_counter()
            res = lanczos_eigenvalues(op, k=5, which="LA", tol=1e-6)
            times[name].append(time.perf_counter() - t0)
            assert res.all_converged and torch.allclose(res.eigenvalues, d[:5].double())
            matvecs = res.num_matvecs
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = med["contiguous"] / med["transposed view"]
    print(f"n = {args.n}, {matvecs} products, median of {args.rounds} alternated rounds")
    for name, sec in med.items():
        print(f"    {name:16s} {sec * 1e3:7.1f} ms  ({sec / matvecs * 1e3:.2f} ms per step)")
    print(f"    contiguous / transposed view: {ratio:.2f}")
    dump_json(
        args.out,
        {"machine": machine(), "n": args.n, "matvecs": matvecs, "median_s": med, "ratio": ratio},
    )


if __name__ == "__main__":
    main()
