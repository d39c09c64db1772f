"""Does a better start vector save Lanczos products on the reference MLP? (issue 2, part b)

Counts the products ``lanczos_eigenvalues(k=5, which="LA", tol=1e-6)`` needs on the
reference MLP of ``bench_curvature.py`` (100-256-256-10 tanh, batch 1000, float32), after 100
GD steps and at init, from

* random starts (seeds 0-2, the default),
* the gradient (free: the operator's graph holds it; after training it aligns with the top
  Hessian eigenvectors, Gur-Ari et al. 2018),
* a warm start from a subsampled Hessian: the top-5 Ritz vectors of the Hessian of every 4th
  or 10th example (to relative residual 1e-1, 1e-2, 1e-3), summed into one start vector or
  given as a block of 5; the subsampled products cost 1/4 or 1/10 of a full one.

Every result is checked against a float64 twin of the network (Lanczos at ``tol=1e-10``).
Product counts do not depend on machine load, so this script needs no quiet machine.

    python benchmarks/lanczos_start_vectors.py --out lanczos_start_vectors.json
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from _common import ce_loss, dump_json
from bench_curvature import reference_mlp
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.lanczos import lanczos_eigenvalues


def top5(op: Any, **kw: Any) -> Any:
    return lanczos_eigenvalues(op, k=5, which="LA", tol=1e-6, **kw)


def one_state(steps: int) -> list[dict[str, Any]]:
    model, batch = reference_mlp(steps)
    op = HessianOperator(model, ce_loss, batch)
    twin = copy.deepcopy(model).double()
    ref = lanczos_eigenvalues(
        HessianOperator(twin, ce_loss, (batch[0].double(), batch[1])),
        k=5,
        tol=1e-10,
        return_eigenvectors=True,
    )
    exact, vectors = ref.eigenvalues, ref.eigenvectors
    assert vectors is not None
    grad = op.loss_and_gradient()[1].double()
    share = (vectors.T @ grad).abs() / grad.norm()
    print(f"{steps:4d} steps  |u_i . g| / |g| on the top 5: {share.numpy().round(6).tolist()}")

    rows: list[dict[str, Any]] = []

    def record(start: str, res: Any, extra: float = 0.0) -> None:
        err = float(((res.eigenvalues - exact).abs() / exact.abs()).max())
        rows.append(
            {
                "train_steps": steps,
                "start": start,
                "products": res.num_matvecs,
                "subsampled_cost": extra,
                "max_rel_error": err,
                "converged": res.all_converged,
            }
        )
        print(
            f"{steps:4d} steps  {start:34s} {res.num_matvecs:4d} products"
            f" (+{extra:5.1f} full-product equivalents)  error {err:.1e}",
            flush=True,
        )

    for seed in range(3):
        record(f"random, seed {seed}", top5(op, generator=torch.Generator().manual_seed(seed)))
    record("gradient", top5(op, v0=grad))
    for every in (4, 10):
        sub = HessianOperator(model, ce_loss, (batch[0][::every], batch[1][::every]))
        for sub_tol in (1e-1, 1e-2, 1e-3):
            warm = lanczos_eigenvalues(sub, k=5, tol=sub_tol, return_eigenvectors=True)
            cost = warm.num_matvecs / every
            vecs = warm.eigenvectors
            assert vecs is not None
            name = f"1/{every} of the batch, tol {sub_tol:g}"
            record(f"{name}, sum", top5(op, v0=vecs.sum(1)), cost)
            record(f"{name}, block 5", top5(op, v0=vecs, block_size=5), cost)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = one_state(100) + one_state(0)
    dump_json(args.out, rows)
    return rows


if __name__ == "__main__":
    main()
