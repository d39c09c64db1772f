"""Curvature engine against its peers (issue 2), side by side in one run.

* (a) Hessian-vector product time / gradient time on the reference MLP 100-256-256-10 (tanh,
  94,218 parameters, batch 1000, float32, cross-entropy): ``HessianOperator`` with
  ``reuse_graph=True`` (amortised product on the kept gradient graph; the first product, which
  builds the graph, is reported too). Target <= 2.0. Beside it, per vector, the other ways
  to take an exact product (``--part hvp``): the graph rebuilt for every product
  (``reuse_graph=False``, what hessian-eigenthings does), forward-over-reverse
  (``torch.func.jvp`` of ``torch.func.grad``), and for a block of ``--block`` vectors the
  kept-graph double backward batched by ``is_grads_batched`` and ``vmap``-ed
  forward-over-reverse. This is the measurement behind ``HessianOperator``'s design.
* (b) top-5 largest algebraic eigenvalues to relative residual 1e-6 on the same model/data:
  ``lanczos_eigenvalues`` vs hessian-eigenthings 1.0.0a5
  ``lanczos`` (full reorthogonalization, the smallest ``max_iter`` at which all five converge
  by its own flags, found by bracketing and bisection, only that setting timed; and, as an
  oracle no real run has, the smallest ``max_iter`` whose values are within 1e-6 of the
  float64 reference) vs
  curvlinops 3.0.1 ``HessianLinearOperator`` + ``scipy.sparse.linalg.eigsh`` (``tol=1e-6``,
  seeded start, at the ``ncv`` of 20/30/40/60 that needs the fewest products). Settings are
  searched first; then every method is timed once per round in ``--top-rounds`` rounds whose
  order rotates (after an untimed warm-up round), and each ratio is the median of the
  per-round ratios. Each timing includes building the operator. Eigenvalues are checked
  against a float64 reference: the same network in float64, scipy ``eigsh`` at ``tol=1e-12``,
  cross-checked by ``lanczos_eigenvalues`` at ``tol=1e-10``. Targets: >= 2x faster than
  hessian-eigenthings, >= 5x faster than curvlinops + eigsh.
* (c) dense Hessian build time vs ``torch.linalg.eigvalsh`` time for a 784-16-16-10 ReLU MLP
  without bias (12,960 parameters, batch 128, build in float32, ``eigvalsh`` in float64).

torch runs on ``--threads`` (2) threads; numpy/scipy's OpenBLAS, which only ``eigsh`` uses (its
vector work between products), on ``--blas-threads`` (1): its spinning threads next to
torch's would slow that method alone (2.4-3.2x measured at 2 BLAS threads).

``--malloc tuned`` (default) calls ``sharpdim.tune_allocator()`` first, as the ``sharpdim``
command does, so freed heap pages stay mapped for every method alike; ``--malloc default``
leaves glibc's malloc as a plain script has it (products then page-fault: see
``docs/curvature.md``).

Data are synthetic and seeded: inputs ``N(0, 1)``, labels from a random linear teacher
(``argmax x W``). The reference MLP is evaluated at states ``--train-steps`` (full-batch
gradient descent, lr 0.5, from the seeded PyTorch init; 0 = at init, where the top
eigenvalues are clustered and every method needs many more products).

    python benchmarks/bench_curvature.py --out bench_curvature.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

from _common import ce_loss, dump_json, machine
from sharpdim.allocator import tune_allocator
from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.lanczos import lanczos_eigenvalues

Batch = tuple[torch.Tensor, torch.Tensor]


def teacher_data(n: int, d_in: int, classes: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen)
    w = torch.randn(d_in, classes, generator=gen)
    return x, (x @ w).argmax(1)


def reference_mlp(train_steps: int, seed: int = 0) -> tuple[nn.Module, Batch]:
    """MLP 100-256-256-10 tanh (94,218 parameters) after ``train_steps`` GD steps."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(100, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)
        )
    batch = teacher_data(1000, 100, 10, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(train_steps):
        opt.zero_grad()
        ce_loss(model, batch).backward()
        opt.step()
    return model, batch


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_hvp(model: nn.Module, batch: Batch, repeats: int) -> dict[str, Any]:
    """(a) gradient vs reused-graph HVP, alternated so machine load cancels in the ratio."""
    params = list(model.parameters())
    op = HessianOperator(model, ce_loss, batch, reuse_graph=True)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.num_params, generator=gen)
    first_s, _ = timed(lambda: op @ v)

    def grad() -> Any:
        return torch.autograd.grad(ce_loss(model, batch), params)

    grad()
    grads, hvps = [], []
    for _ in range(repeats):
        grads.append(timed(grad)[0])
        hvps.append(timed(lambda: op @ v)[0])
    g, h = statistics.median(grads), statistics.median(hvps)
    return {
        "num_params": op.num_params,
        "gradient_s": g,
        "hvp_s": h,
        "hvp_over_gradient": h / g,
        "first_hvp_with_graph_build_s": first_s,
        "first_hvp_over_gradient": first_s / g,
        "repeats": repeats,
    }


def bench_hvp_strategies(
    model: nn.Module, batch: Batch, repeats: int, block: int
) -> dict[str, Any]:
    """Per-vector time of five exact Hessian-vector products, as multiples of a gradient.

    Every variant is timed once per round, rounds alternate, medians are reported, so machine
    load hits all variants alike. Products are checked against ours to 1e-4 (float32).
    """
    from torch.func import functional_call, grad, jvp, vmap

    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    kept = HessianOperator(model, ce_loss, batch, reuse_graph=True)
    fresh = HessianOperator(model, ce_loss, batch, reuse_graph=False)
    gen = torch.Generator().manual_seed(1)
    vs = torch.randn(kept.num_params, block, generator=gen)
    sizes = [p.numel() for p in params]

    def split(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(c.view_as(p) for c, p in zip(v.split(sizes), params, strict=True))

    def loss_at(*ps: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, dict(zip(names, ps, strict=True)), (batch[0],))
        return nn.functional.cross_entropy(logits, batch[1])

    grad_fn = grad(loss_at, argnums=tuple(range(len(params))))
    detached = tuple(p.detach() for p in params)

    def fwd_rev(v: torch.Tensor) -> torch.Tensor:
        out = jvp(grad_fn, detached, split(v))[1]
        return torch.cat([t.reshape(-1) for t in out])

    loss = ce_loss(model, batch)
    gflat = torch.autograd.grad(loss, params, create_graph=True)

    def double_backward_batched(vb: torch.Tensor) -> torch.Tensor:
        pieces = [
            c.T.reshape(block, *p.shape) for c, p in zip(vb.split(sizes), params, strict=True)
        ]
        out = torch.autograd.grad(
            gflat, params, grad_outputs=pieces, retain_graph=True, is_grads_batched=True
        )
        return torch.cat([o.reshape(block, -1) for o in out], 1).T

    def gradient() -> Any:
        return torch.autograd.grad(ce_loss(model, batch), params)

    v = vs[:, 0].contiguous()
    variants: dict[str, tuple[Callable[[], Any], int]] = {
        "gradient": (gradient, 1),
        "kept graph, double backward (ours)": (lambda: kept @ v, 1),
        "graph rebuilt per product": (lambda: fresh @ v, 1),
        "forward-over-reverse (jvp of grad)": (lambda: fwd_rev(v), 1),
        f"kept graph, is_grads_batched, block {block}": (
            lambda: double_backward_batched(vs),
            block,
        ),
        f"vmap forward-over-reverse, block {block}": (
            lambda: vmap(fwd_rev, in_dims=1, out_dims=1)(vs),
            block,
        ),
    }
    reference = kept @ vs
    for name, (fn, cols) in variants.items():  # warm up and check every product
        out = fn()
        if name != "gradient":
            ref = reference if cols == block else reference[:, 0]
            err = float((out - ref).abs().max() / ref.abs().max())
            if err > 1e-4:
                raise RuntimeError(f"{name}: product differs from ours by {err:.1e}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (fn, cols) in variants.items():
            times[name].append(timed(fn)[0] / cols)
    g = statistics.median(times["gradient"])
    return {
        name: {"per_vector_s": statistics.median(t), "over_gradient": statistics.median(t) / g}
        for name, t in times.items()
    } | {"block": block, "repeats": repeats}


Eigenvalues = list[float]
Runner = Callable[[], tuple[Eigenvalues, int]]
"""One timed solve: the k values in descending order and the products it took."""


def ours_runner(model: nn.Module, batch: Batch, k: int, tol: float) -> tuple[dict, Runner]:
    def run() -> tuple[Eigenvalues, int]:
        op = HessianOperator(model, ce_loss, batch)
        res = lanczos_eigenvalues(op, k=k, which="LA", tol=tol)
        if not bool(res.converged.all()):
            raise RuntimeError("lanczos_eigenvalues did not converge")
        return res.eigenvalues.tolist(), res.num_matvecs

    return {"settings": f"lanczos_eigenvalues(k={k}, which='LA', tol={tol})"}, run


def eigenthings_runner(
    model: nn.Module,
    batch: Batch,
    k: int,
    tol: float,
    start: int,
    accurate_to: Eigenvalues | None = None,
) -> tuple[dict, Runner]:
    """hessian-eigenthings ``lanczos`` at the smallest ``max_iter`` whose k values converge.

    Its Lanczos runs exactly ``max_iter`` steps, so the fairest setting is the minimal one: a
    bracket is grown from ``start`` (down by 10% while it converges, up by 25% while it does
    not), then bisected to the smallest converging ``max_iter``; only that setting is timed.
    With ``accurate_to`` (reference values), "converges" means instead: all values within
    ``tol`` relative of the reference, whatever its own flags say (an oracle no real run has).
    """
    import hessian_eigenthings as he

    tries: list[dict[str, Any]] = []
    cache: dict[int, Any] = {}

    def solve(m: int) -> Any:
        op = he.HessianOperator(model, [batch], ce_loss)
        return he.lanczos(op, k=k, which="LA", tol=tol, max_iter=m, reorthogonalize=True, seed=0)

    def accepted(res: Any) -> bool:
        if accurate_to is None:
            return bool(res.converged.all())
        vals = sorted((float(e) for e in res.eigenvalues), reverse=True)
        return all(abs(a - b) <= tol * abs(b) for a, b in zip(vals, accurate_to, strict=True))

    def converges(m: int) -> bool:
        if m not in cache:
            sec, cache[m] = timed(lambda: solve(m))
            tries.append({"max_iter": m, "seconds": sec, "converged": accepted(cache[m])})
        return accepted(cache[m])

    hi = max(start, 2 * k)
    lo = 2 * k - 1  # assumed failing (too few steps for k values)
    if converges(hi):
        m = hi
        while m > 2 * k:
            m = max(2 * k, int(m * 0.9))
            if not converges(m):
                lo = m
                break
            hi = m
    else:
        lo = hi
        while hi < 1000:
            hi = int(hi * 1.25) + 1
            if converges(hi):
                break
            lo = hi
    while hi - lo > 1:  # invariant: lo fails, hi converges
        mid = (lo + hi) // 2
        if converges(mid):
            hi = mid
        else:
            lo = mid
    if not converges(hi):
        raise RuntimeError(f"hessian-eigenthings lanczos did not converge up to max_iter={hi}")

    def run() -> tuple[Eigenvalues, int]:
        res = solve(hi)
        return sorted((float(e) for e in res.eigenvalues), reverse=True), hi

    info = {
        "max_iter": hi,
        "settings": f"lanczos(k={k}, which='LA', tol={tol}, max_iter={hi}, "
        "reorthogonalize=True, seed=0)"
        + ("" if accurate_to is None else ", max_iter chosen against the float64 reference"),
        "tries": tries,
    }
    return info, run


def curvlinops_runner(
    model: nn.Module,
    batch: Batch,
    k: int,
    tol: float,
    ncvs: tuple[int, ...] = (20, 30, 40, 60),
) -> tuple[dict, Runner]:
    """curvlinops ``HessianLinearOperator`` + scipy ``eigsh`` at its best Krylov size.

    As hessian-eigenthings gets its smallest ``max_iter``, ARPACK gets the ``ncv`` among
    ``ncvs`` (its default 20 first) that needs the fewest products, every run from the same
    seeded start vector; only that setting is timed.
    """
    import numpy as np
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator, eigsh

    params = [p for p in model.parameters() if p.requires_grad]
    v0 = np.random.default_rng(0).standard_normal(sum(p.numel() for p in params))

    def solve(ncv: int) -> tuple[Eigenvalues, int]:
        count = [0]
        hop = HessianLinearOperator(
            model, nn.CrossEntropyLoss(), params, [batch], check_deterministic=False
        ).to_scipy()

        def mv(x: Any) -> Any:
            count[0] += 1
            return hop @ x

        counted = LinearOperator(hop.shape, matvec=mv, rmatvec=mv, dtype=hop.dtype)
        vals = eigsh(
            counted,
            k=k,
            which="LA",
            tol=tol,
            ncv=ncv,
            v0=v0.astype(hop.dtype),
            return_eigenvectors=False,
        )  # fmt: skip  (eigsh raises ArpackNoConvergence when it does not converge)
        return sorted((float(e) for e in vals), reverse=True), count[0]

    tries = []
    for ncv in ncvs:
        sec, (_, products) = timed(lambda ncv=ncv: solve(ncv))
        tries.append({"ncv": ncv, "seconds": sec, "matvecs": products})
    best = min(tries, key=lambda t: (t["matvecs"], t["ncv"]))["ncv"]
    info = {
        "settings": f"eigsh(k={k}, which='LA', tol={tol}, ncv={best}, v0 seeded), "
        f"ncv the one of {list(ncvs)} with the fewest products",
        "tries": tries,
    }
    return info, lambda: solve(best)


def float64_reference(model: nn.Module, batch: Batch, k: int) -> dict[str, Any]:
    """Top-k of the network's float64 twin from ARPACK, cross-checked by our Lanczos.

    scipy ``eigsh`` (``tol=1e-12``) is the reference, a solver independent of the one under
    test; ``lanczos_eigenvalues`` at ``tol=1e-10`` must agree with it to 1e-9 relative, or the
    run stops (a value both Krylov solvers missed would still pass: see part (d)).
    """
    import copy

    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    twin = copy.deepcopy(model).double()
    op = HessianOperator(twin, ce_loss, (batch[0].double(), batch[1]))

    def mv(x: Any) -> Any:
        return (op @ torch.from_numpy(np.ascontiguousarray(x).reshape(-1))).numpy()

    lin = LinearOperator((op.num_params,) * 2, matvec=mv, rmatvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(1).standard_normal(op.num_params)
    arpack = eigsh(lin, k=k, which="LA", tol=1e-12, ncv=max(40, 2 * k + 1), v0=v0)[0]
    ref = sorted((float(e) for e in arpack), reverse=True)
    ours = lanczos_eigenvalues(op, k=k, which="LA", tol=1e-10).eigenvalues.tolist()
    gap = max(abs(a - b) / abs(b) for a, b in zip(ours, ref, strict=True))
    if gap > 1e-9:
        raise RuntimeError(f"float64 references disagree by {gap:.1e}: {ours} vs {ref}")
    return {"eigenvalues": ref, "method": "scipy eigsh, float64 twin, tol 1e-12",
            "lanczos_float64_rel_gap": gap}  # fmt: skip


TOP_ROWS = ("ours", "hessian_eigenthings", "hessian_eigenthings_oracle", "curvlinops_eigsh")
"""Rows of (b), in the order printed."""


def interleaved(runners: dict[str, Runner], rounds: int) -> dict[str, list[tuple[float, Any]]]:
    """``rounds`` timed calls of every runner, one of each per round, the order rotating.

    An untimed round first warms caches and allocators; rotating the order moves each method
    through every position (equally often when ``rounds`` is a multiple of the number of
    methods), so drift and load spread over all of them.
    """
    names = list(runners)
    for name in names:
        runners[name]()
    timings: dict[str, list[tuple[float, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            timings[name].append(timed(runners[name]))
    return timings


def bench_top(
    train_steps: int, k: int, tol: float, peers: list[str], reference: bool, rounds: int
) -> dict[str, Any]:
    """(b) top-k LA: settings searched first, then all methods timed in interleaved rounds.

    Each method's time is its median over the rounds; "ours faster by" is the median over the
    rounds of that round's ratio (peer seconds / our seconds), so load that lasts a round
    cancels. A row counts only when its values are within ``tol`` of the float64 reference.
    """
    model, batch = reference_mlp(train_steps)
    out: dict[str, Any] = {"train_steps": train_steps, "k": k, "tol": tol, "rounds": rounds}
    ref_info = float64_reference(model, batch, k) if reference else None
    ref = None if ref_info is None else ref_info["eigenvalues"]
    out["reference_float64"] = ref_info
    setups = {"ours": ours_runner(model, batch, k, tol)}
    if "eigenthings" in peers:
        start = 10 * (setups["ours"][1]()[1] // 10)
        setups["hessian_eigenthings"] = eigenthings_runner(model, batch, k, tol, start)
        if ref is not None:
            peer_steps = setups["hessian_eigenthings"][0]["max_iter"]  # (no solve to learn it)
            setups["hessian_eigenthings_oracle"] = eigenthings_runner(
                model, batch, k, tol, peer_steps, ref
            )
    if "curvlinops" in peers:
        setups["curvlinops_eigsh"] = curvlinops_runner(model, batch, k, tol)
    timings = interleaved({name: run for name, (_, run) in setups.items()}, rounds)
    ours_s = [sec for sec, _ in timings["ours"]]
    ref = ref if ref is not None else timings["ours"][-1][1][0]
    for name, (info, _) in setups.items():
        secs = [sec for sec, _ in timings[name]]
        vals, products = timings[name][-1][1]
        err = max(abs(a - b) / abs(b) for a, b in zip(vals, ref, strict=True))
        out[name] = info | {
            "seconds": statistics.median(secs),
            "round_seconds": secs,
            "eigenvalues": vals,
            "matvecs": products,
            "max_rel_err_vs_reference": err,
            "within_tol": err <= tol,  # a timing counts only for accurate values
            "speedup_of_ours": statistics.median(p / o for p, o in zip(secs, ours_s, strict=True)),
        }
    return out


def bench_dense(repeats: int) -> dict[str, Any]:
    """(c) dense Hessian of the 784-16-16-10 ReLU MLP without bias vs its eigvalsh."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Linear(784, 16, bias=False),
            nn.ReLU(),
            nn.Linear(16, 16, bias=False),
            nn.ReLU(),
            nn.Linear(16, 10, bias=False),
        )
    batch = teacher_data(128, 784, 10, seed=1)
    builds, eigs = [], []
    for _ in range(repeats):
        sec, h = timed(lambda: dense_hessian(model, ce_loss, batch))
        builds.append(sec)
        h64 = h.double()
        eigs.append(timed(lambda h64=h64: torch.linalg.eigvalsh(h64))[0])
        del h, h64
    b, e = statistics.median(builds), statistics.median(eigs)
    return {
        "num_params": sum(p.numel() for p in model.parameters()),
        "build_s": b,
        "eigvalsh_s": e,
        "build_over_eigvalsh": b / e,
        "repeats": repeats,
    }


PEER_MODULES = {
    "eigenthings": ("hessian_eigenthings", "pip install -c constraints.txt -e '.[bench]'"),
    "curvlinops": (
        "curvlinops",
        "pip install --no-deps curvlinops-for-pytorch==3.0.1 (after the bench extra)",
    ),
}
"""Peer name -> (module imported, the install line; --no-deps keeps torch's CPU pin)."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["hvp", "top", "dense", "all"], default="all")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="threads of numpy/scipy's OpenBLAS (eigsh's own vector work between products): "
        "more than 1 next to torch's threads oversubscribes the cores (their spinning slowed "
        "curvlinops + eigsh 2.4-3.2x at 2)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="repeats for (a)")
    parser.add_argument("--block", type=int, default=8, help="block size of batched HVPs in (a)")
    parser.add_argument(
        "--top-rounds", type=int, default=5, help="interleaved timing rounds for (b)"
    )
    parser.add_argument("--dense-repeats", type=int, default=1)
    parser.add_argument("--train-steps", type=int, nargs="+", default=[100, 0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument(
        "--peers", nargs="*", default=["eigenthings", "curvlinops"], help="peers to run"
    )
    parser.add_argument(
        "--malloc",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: sharpdim.tune_allocator() first (as the sharpdim command); default: glibc's",
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the float64 check")
    parser.add_argument("--out", default=None, help="JSON output path")
    args = parser.parse_args(argv)
    if args.top_rounds < 1:
        parser.error(f"--top-rounds must be at least 1, got {args.top_rounds}")
    if args.part in ("top", "all"):
        for peer in args.peers:
            if peer not in PEER_MODULES:
                parser.error(f"unknown peer {peer!r}; choose from {', '.join(PEER_MODULES)}")
            module, install = PEER_MODULES[peer]
            if importlib.util.find_spec(module) is None:
                parser.error(f"peer {peer!r} is not installed: {install} (or drop it from --peers)")
    args.malloc_tuned = args.malloc == "tuned" and tune_allocator()
    torch.set_num_threads(args.threads)
    import scipy.sparse.linalg  # noqa: F401  (loads scipy's OpenBLAS, so the limit reaches it)

    with threadpool_limits(limits=args.blas_threads, user_api="blas"):
        return _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{machine()}, torch {torch.__version__}, {args.threads} threads",
        "threadpools": [
            {k: info[k] for k in ("user_api", "internal_api", "num_threads", "filepath")}
            for info in threadpool_info()
        ],
        "command": "python benchmarks/bench_curvature.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "malloc_tuned": args.malloc_tuned,
    }
    print(f"malloc: {'tuned (sharpdim.tune_allocator)' if args.malloc_tuned else 'default'}")
    if args.part in ("hvp", "all"):
        model, batch = reference_mlp(args.train_steps[0])
        out["hvp"] = bench_hvp(model, batch, args.repeats)
        h = out["hvp"]
        print(
            f"(a) HVP {h['hvp_s'] * 1e3:.1f} ms / gradient {h['gradient_s'] * 1e3:.1f} ms = "
            f"{h['hvp_over_gradient']:.2f} (first HVP incl. graph build "
            f"{h['first_hvp_over_gradient']:.2f})"
        )
        out["hvp_strategies"] = bench_hvp_strategies(model, batch, args.repeats, args.block)
        print("    per vector, as multiples of a gradient (medians of alternated rounds):")
        for name, r in out["hvp_strategies"].items():
            if isinstance(r, dict):
                print(f"    {name:<44}{r['per_vector_s'] * 1e3:>8.2f} ms{r['over_gradient']:>7.2f}")
        dump_json(args.out, out, indent=1)  # each part saved as it ends
    if args.part in ("top", "all"):
        out["top"] = []
        for steps in args.train_steps:
            res = bench_top(
                steps, args.k, args.tol, args.peers, not args.no_reference, args.top_rounds
            )
            out["top"].append(res)
            dump_json(args.out, out, indent=1)
            print(f"(b) top-{args.k} LA, tol {args.tol}, state after {steps} GD steps")
            print(f"    {'method':<28}{'seconds':>9}{'matvecs':>9}{'rel.err':>10}{'ours x':>8}")
            for name in TOP_ROWS:
                if name in res:
                    r = res[name]
                    print(
                        f"    {name:<28}{r['seconds']:>9.2f}{r['matvecs']:>9d}"
                        f"{r['max_rel_err_vs_reference']:>10.1e}{r['speedup_of_ours']:>8.2f}"
                        + ("" if r["within_tol"] else "  (NOT within tol: timing void)")
                    )
    if args.part in ("dense", "all"):
        out["dense"] = bench_dense(args.dense_repeats)
        d = out["dense"]
        print(
            f"(c) dense Hessian ({d['num_params']} params) build {d['build_s']:.1f} s, "
            f"eigvalsh {d['eigvalsh_s']:.1f} s, ratio {d['build_over_eigvalsh']:.2f}"
        )
    dump_json(args.out, out, indent=1)
    return out


if __name__ == "__main__":
    main()
