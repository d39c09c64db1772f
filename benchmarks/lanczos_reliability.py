"""How often ``lanczos_eigenvalues`` returns a wrong list that it marks converged.

Krylov methods cannot certify multiplicities (docs/curvature.md), so this counts, against
float64 ``eigvalsh``, the results that are wrong by more than ``1e-6 max(1, m)`` (float64;
``1e-3`` in float32; ``m`` the largest magnitude among the wanted exact eigenvalues, at most
``||A||``, so the limit is the stricter one) while ``all_converged`` is true, and the results left unconverged, on
three seeded families:

* ``least_squares``: ``(2/N) X^T X`` with 3-14 examples and 20-49 weights (a 6- to 46-fold
  zero eigenvalue), ``which`` in ``"SA"``/``"both"``, ``k = 1..4``, ``tol=1e-8``;
* ``dense``: random, shifted log-normal, uniform and half-zero spectra of size 3-59, float64
  and float32, ``"LA"``/``"SA"``/``"both"``, ``k`` in ``{1, 2, n/2, n-1, n}``, block sizes 1-2,
  ``tol=1e-8``;
* ``few_values``: values in ``{-2, ..., 2}``, rank-deficient spectra and 1e-3-wide top
  clusters of size 2-60, float64 (``tol=1e-8``) and float32 (``tol=1e-5``), block sizes 1-3;
* ``narrow_bulk``: float32 Hessian-like spectra, 1-5 outliers of 0.3-100 over a bulk of
  width 1e-5 to 1e-1 (30% of it negative), n 60-299, ``"LA"``/``"SA"``/``"both"``, ``k``
  1-5, ``tol=1e-5``; here a value is wrong when it is off by more than twice the solver's own
  floor, ``2 max(tol |lambda|, 8 eps ||A||)``, since the bulk lies near that floor.

    python benchmarks/lanczos_reliability.py --out lanczos_reliability.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import torch

from _common import dump_json
from sharpdim.curvature.lanczos import lanczos_eigenvalues

F64 = torch.float64
Case = tuple[torch.Tensor, int, str, int, float]  # matrix, k, which, block size, tol


def with_spectrum(values: torch.Tensor, seed: int) -> torch.Tensor:
    """``Q diag(values) Q^T`` with a seeded random orthogonal ``Q``."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=F64))
    return (q * values) @ q.T


def wanted(a: torch.Tensor, k: int, which: str) -> torch.Tensor:
    """The exact eigenvalues ``lanczos_eigenvalues`` should return, in its order."""
    ev = torch.linalg.eigvalsh(a.double())
    if which == "LA":
        return ev.flip(0)[:k]
    if which == "SA":
        return ev[:k]
    return ev.flip(0) if 2 * k >= len(ev) else torch.cat([ev.flip(0)[:k], ev[:k].flip(0)])


def least_squares(seeds: int) -> Iterator[Case]:
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        n_ex = int(torch.randint(3, 15, (1,), generator=g))
        d = int(torch.randint(20, 50, (1,), generator=g))
        x = torch.randn(n_ex, d, generator=g, dtype=F64)
        a = 2 / n_ex * x.T @ x
        for k in (1, 2, 3, 4):
            for which in ("SA", "both"):
                yield a, k, which, 1, 1e-8


def dense(seeds: int) -> Iterator[Case]:
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(3, 60, (1,), generator=g))
        kind = seed % 4
        if kind == 0:
            ev = torch.randn(n, generator=g, dtype=F64)
        elif kind == 1:
            ev = torch.randn(n, generator=g, dtype=F64).exp() - 1
        elif kind == 2:
            ev = torch.linspace(-1, 5, n, dtype=F64)
        else:
            half = torch.rand(n - n // 2, generator=g, dtype=F64) * 3 + 0.5
            ev = torch.cat([torch.zeros(n // 2, dtype=F64), half])
        for dtype in (F64, torch.float32):
            a = with_spectrum(ev, seed).to(dtype)
            for which in ("LA", "SA", "both"):
                for k in sorted({1, 2, n // 2 or 1, n - 1 or 1, n}):
                    for block in (1, 2):
                        yield a, k, which, block, 1e-8


def few_values(trials: int) -> Iterator[Case]:
    for trial in range(trials):
        g = torch.Generator().manual_seed(10_000 + trial)
        n = int(torch.randint(2, 61, (1,), generator=g))
        if trial % 3 == 0:
            values = torch.randint(-2, 3, (n,), generator=g).to(F64)
        elif trial % 3 == 1:
            values = torch.zeros(n, dtype=F64)
            rank = int(torch.randint(1, max(2, n // 3), (1,), generator=g))
            values[:rank] = 3 * torch.randn(rank, generator=g, dtype=F64)
        else:
            top = 3 + 1e-3 * torch.rand(min(n, 5), generator=g, dtype=F64)
            values = torch.cat([top, torch.randn(max(0, n - 5), generator=g, dtype=F64)])
        which = ("LA", "SA", "both")[(trial // 3) % 3]  # every spectrum type with every which
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        block = int(torch.randint(1, min(n, 3) + 1, (1,), generator=g))
        for dtype, tol in ((F64, 1e-8), (torch.float32, 1e-5)):
            yield with_spectrum(values, trial).to(dtype), k, which, block, tol


def narrow_bulk(seeds: int) -> Iterator[Case]:
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(60, 300, (1,), generator=g))
        width = float(10 ** torch.empty(1).uniform_(-5, -1, generator=g))
        top = float(10 ** torch.empty(1).uniform_(0, 2, generator=g))
        num_outliers = int(torch.randint(1, 6, (1,), generator=g))
        bulk = (torch.rand(n - num_outliers, generator=g, dtype=F64) - 0.3) * width
        outliers = top * (0.3 + 0.7 * torch.rand(num_outliers, generator=g, dtype=F64))
        a = with_spectrum(torch.cat([bulk, outliers]), seed).float()
        a = (a + a.T) / 2
        for which in ("LA", "SA", "both"):
            yield a, int(torch.randint(1, 6, (1,), generator=g)), which, 1, 1e-5


def within_floor(a: torch.Tensor, exact: torch.Tensor, tol: float) -> torch.Tensor:
    """Twice the solver's floor per value: ``2 max(tol |lambda|, 8 eps ||A||)``."""
    floor = 8 * torch.finfo(a.dtype).eps * float(torch.linalg.eigvalsh(a.double()).abs().max())
    return 2 * torch.clamp(tol * exact.abs(), min=floor)


def relative(a: torch.Tensor, exact: torch.Tensor, tol: float) -> torch.Tensor:
    """``1e-6 max(1, m)`` (``1e-3`` in float32), ``m`` the largest wanted magnitude."""
    scale = max(1.0, float(exact.abs().max()))
    return torch.full_like(exact, (1e-6 if a.dtype == F64 else 1e-3) * scale)


def count(cases: Iterator[Case], limit: Any = relative) -> dict[str, Any]:
    """Cases, wrong-but-converged results, unconverged results, products, seconds."""
    total = wrong = unconverged = products = 0
    start = time.perf_counter()
    for a, k, which, block, tol in cases:
        res = lanczos_eigenvalues(a, k=k, which=which, block_size=block, tol=tol)
        exact = wanted(a, k, which)
        off = bool(((res.eigenvalues - exact).abs() > limit(a, exact, tol)).any())
        total += 1
        products += res.num_matvecs
        wrong += int(res.all_converged and off)
        unconverged += int(not res.all_converged)
    seconds = time.perf_counter() - start
    return dict(
        cases=total, wrong_but_converged=wrong, unconverged=unconverged, products=products,
        seconds=round(seconds, 1),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=80, help="dense-spectrum seeds")
    parser.add_argument("--ls-seeds", type=int, default=30, help="least-squares seeds")
    parser.add_argument("--trials", type=int, default=750, help="few-value trials")
    parser.add_argument("--bulk-seeds", type=int, default=150, help="narrow-bulk seeds")
    parser.add_argument("--out", default=None, help="write the counts as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    families = {
        "least_squares": least_squares(args.ls_seeds),
        "dense": dense(args.seeds),
        "few_values": few_values(args.trials),
    }
    results = {}
    for name, cases in families.items():
        results[name] = count(cases)
        print(name, results[name], flush=True)
    results["narrow_bulk"] = count(narrow_bulk(args.bulk_seeds), within_floor)
    print("narrow_bulk", results["narrow_bulk"], flush=True)
    if args.out:
        dump_json(args.out, results)


if __name__ == "__main__":
    main()
