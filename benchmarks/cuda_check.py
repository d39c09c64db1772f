"""Check the GPU path: every estimator on ``--device cuda`` against the same call on the CPU.

Not a benchmark and not part of the test suite (CI has no GPU): run it on a machine with a
GPU, ``python benchmarks/cuda_check.py`` (``--device cpu`` runs the same checks CPU against CPU).
Each line is one check: the largest difference from the CPU reference and the tolerance it
must meet; the exit status is 1 if any check fails or raises. float64 throughout, so that
differences are rounding, not precision. Randomness comes from CPU generators (probes are
drawn on the CPU), so stochastic estimates must agree across devices too.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import sharpdim as sd
from sharpdim.curvature.params import get_flat_params
from sharpdim.training.checkpoint import checkpoint_path

F64 = torch.float64
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, diff: float, tol: float) -> None:
    ok = math.isfinite(diff) and diff <= tol
    RESULTS.append((name, ok, f"max diff {diff:.3g} (tol {tol:.0e})"))


def run(name: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a check that raises is a failed check, reported with its traceback
        RESULTS.append((name, False, "raised: " + traceback.format_exc(limit=3).strip()))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ln_mlp() -> nn.Module:
    """A small MLP with LayerNorm and GELU (the layer-norm double backward is the known trap)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.LayerNorm(9), nn.GELU(), nn.Linear(9, 4)).to(F64)


def data(n: int = 40, d: int = 6, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(1)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randint(0, classes, (n,), generator=g)


def ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def on(device: str, model: nn.Module, batch: Any) -> tuple[nn.Module, Any]:
    import copy

    return copy.deepcopy(model).to(device), tuple(t.to(device) for t in batch)


def hessian_checks(device: str) -> None:
    model, batch = ln_mlp(), data()
    h_cpu = sd.HessianOperator(model, ce, batch)
    m_dev, b_dev = on(device, model, batch)
    h_dev = sd.HessianOperator(m_dev, ce, b_dev)
    v = torch.randn(h_cpu.num_params, 3, generator=gen(2), dtype=F64)
    ref = torch.autograd.functional.hessian(
        lambda w: _loss_at(model, w, batch), get_flat_params(list(model.parameters()))
    )
    check(
        "H @ v (block of 3) vs CPU",
        float((h_dev @ v.to(device)).cpu().sub(h_cpu @ v).abs().max()),
        1e-12,
    )
    check(
        "dense() vs autograd.functional.hessian",
        float((h_dev.dense().cpu() - ref).abs().max()),
        1e-12,
    )
    sub = [m_dev[0].weight]
    h_sub = sd.HessianOperator(m_dev, ce, b_dev, params=sub)
    k = m_dev[0].weight.numel()
    check(
        "dense() of a parameter subset",
        float((h_sub.dense().cpu() - ref[:k, :k]).abs().max()),
        1e-12,
    )
    top_dev = sd.lanczos_eigenvalues(h_dev, k=5, which="both", tol=1e-10)
    exact = torch.linalg.eigvalsh(ref)
    want = torch.cat([exact[-5:].flip(0), exact[:5]])
    got = torch.as_tensor(top_dev.eigenvalues).cpu()
    check(
        "lanczos_eigenvalues both ends vs eigvalsh",
        float((got.sort().values - want.sort().values).abs().max()),
        1e-8,
    )


def _loss_at(model: nn.Module, w: torch.Tensor, batch: Any) -> torch.Tensor:
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    parts = torch.split(w, [math.prod(s) for s in shapes])
    params = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
    return nn.functional.cross_entropy(functional_call(model, params, (batch[0],)), batch[1])


def estimator_checks(device: str) -> None:
    model, batch = ln_mlp(), data()
    m_dev, b_dev = on(device, model, batch)
    h_cpu, h_dev = sd.HessianOperator(model, ce, batch), sd.HessianOperator(m_dev, ce, b_dev)
    for name, fn in (
        ("hutchinson_trace", sd.hutchinson_trace),
        ("hutchpp_trace", sd.hutchpp_trace),
    ):
        a = fn(h_cpu, num_matvecs=30, generator=gen(3)).estimate
        b = fn(h_dev, num_matvecs=30, generator=gen(3)).estimate
        check(f"{name}, same generator", abs(float(a) - float(b)), 1e-10)
    a = sd.slq_spectrum(h_cpu, num_runs=3, num_steps=12, generator=gen(4))
    b = sd.slq_spectrum(h_dev, num_runs=3, num_steps=12, generator=gen(4))
    check("slq_spectrum nodes, same generator", float((a.nodes - b.nodes.cpu()).abs().max()), 1e-9)
    for method in ("exact", "slq"):
        opts: dict[str, Any] = {"num_runs": 4, "num_steps": 20} if method == "slq" else {}
        ra = sd.sharpness_dimension(model, ce, batch, 0.5, method=method, batch_size=20,
                                    num_bootstrap=0, generator=gen(5), **opts)  # fmt: skip
        rb = sd.sharpness_dimension(m_dev, ce, b_dev, 0.5, method=method, batch_size=20,
                                    num_bootstrap=0, generator=gen(5), **opts)  # fmt: skip
        check(f"sharpness_dimension({method!r}) vs CPU", abs(ra.sd - rb.sd), 1e-7)


class DropoutMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.2), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def training_checks(device: str) -> None:
    digits = sd.load_dataset("digits", seed=0, n_train=200, n_test=50, dtype=F64).to(device=device)
    with tempfile.TemporaryDirectory() as folder:
        config = sd.TrainConfig(optimizer="momentum", lr=0.05, batch_size=32, steps=12,
                                checkpoint_steps=(5,), checkpoint_dir=folder, seed=3)  # fmt: skip
        whole = DropoutMLP().to(device, F64)
        sd.train(whole, digits, config)
        resumed = DropoutMLP().to(device, F64)
        plain = sd.TrainConfig(
            **{**config.to_dict(), "checkpoint_steps": (), "checkpoint_dir": None}
        )
        sd.train(resumed, digits, plain, resume_from=checkpoint_path(folder, 5))
        diff = get_flat_params(list(whole.parameters())) - get_flat_params(
            list(resumed.parameters())
        )
        check("train: resume with dropout, bit-identical", float(diff.abs().max()), 0.0)
    for kind in ("foreach", "fused"):
        if device == "cpu" and kind == "fused":
            continue
        monitor_check(device, kind, digits)


def monitor_check(device: str, kind: str, digits: Any) -> None:
    """EoSMonitor with Adam(foreach/fused) on the device against Adam on the CPU, same steps."""
    x, y = digits.x_train[:64], digits.y_train[:64]
    records = {}
    for where in ("cpu", device):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).to(where, F64)
        flag = {kind: True} if where != "cpu" else {}
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, **flag)
        monitor = sd.EoSMonitor("ce", (x.to(where), y.to(where)), every=1, tol=1e-10)
        for step in range(4):
            opt.zero_grad()
            loss = ce(model, (x.to(where), y.to(where)))
            loss.backward()
            monitor.on_step(step, model, float(loss.detach()), opt)
            opt.step()
        records[where] = [r.bounded for r in monitor.records]
    diff = max(abs(a - b) / abs(a) for a, b in zip(records["cpu"], records[device], strict=True))
    check(f"EoSMonitor, Adam({kind}=True) preconditioned sharpness vs CPU (rel)", diff, 1e-8)
    # a fused step does not bump version counters: the operator must still see new values
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).to(device, F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, **({kind: True}))
    b = (x.to(device), y.to(device))
    h = sd.HessianOperator(model, ce, b)
    v = torch.randn(h.num_params, generator=gen(6), dtype=F64).to(device)
    _ = h @ v
    opt.zero_grad()
    ce(model, b).backward()
    opt.step()
    fresh = sd.HessianOperator(model, ce, b) @ v
    try:
        diff = float((h @ v - fresh).abs().max())
    except sd.SharpdimError:
        diff = 0.0  # refused with a one-line error: as good as right
    check(f"HessianOperator after an SGD({kind}=True) step", diff, 1e-12)


def lyapunov_check(device: str) -> None:
    model, batch = ln_mlp(), data()
    exps = []
    for where in ("cpu", device):
        m, b = on(where, model, batch)
        phi = sd.TrainingMap(m, ce, [b], lr=0.5)
        res = sd.lyapunov_spectrum(phi, phi.initial_state(), 3, 20, generator=gen(7))
        exps.append(torch.as_tensor(res.exponents).cpu())
    check("lyapunov_spectrum of a GD map vs CPU", float((exps[0] - exps[1]).abs().max()), 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: pass --device cpu to run the checks on the CPU", file=sys.stderr)
        return 2
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    for name, fn in (("hessian", hessian_checks), ("estimators", estimator_checks),
                     ("training", training_checks), ("lyapunov", lyapunov_check)):  # fmt: skip
        run(name, lambda fn=fn: fn(args.device))
    for name, ok, detail in RESULTS:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    failed = sum(not ok for _, ok, _ in RESULTS)
    print(f"{len(RESULTS) - failed} of {len(RESULTS)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
