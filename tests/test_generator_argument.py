"""Every estimator draws randomness from a ``torch.Generator``; anything else passed as
``generator`` is a one-line error (it used to be a raw torch TypeError deep inside)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from sharpdim.curvature.lanczos import lanczos_eigenvalues
from sharpdim.curvature.slq import slq_spectrum
from sharpdim.curvature.trace import hutchinson_trace, hutchpp_trace
from sharpdim.dimension.ph_dimension import ph_dimension
from sharpdim.dynamics.divergence import trajectory_divergence
from sharpdim.dynamics.lyapunov import lyapunov_spectrum
from sharpdim.errors import SharpdimError
from sharpdim.training.losses import mse_loss
from sharpdim.training.monitor import EoSMonitor

A = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
X0 = torch.ones(6, dtype=torch.float64)

CALLS: dict[str, Callable[[Any], Any]] = {
    "hutchinson_trace": lambda g: hutchinson_trace(A, 4, generator=g),
    "hutchpp_trace": lambda g: hutchpp_trace(A, 6, generator=g),
    "lanczos_eigenvalues": lambda g: lanczos_eigenvalues(A, k=1, generator=g),
    "slq_spectrum": lambda g: slq_spectrum(A, num_runs=2, num_steps=3, generator=g),
    "ph_dimension": lambda g: ph_dimension(torch.rand(40, 2), generator=g),
    "lyapunov_spectrum": lambda g: lyapunov_spectrum(lambda x: 0.5 * x, X0, 2, 5, generator=g),
    "trajectory_divergence": lambda g: trajectory_divergence(lambda x: 2 * x, X0, 5, generator=g),
    "EoSMonitor": lambda g: EoSMonitor(mse_loss, (torch.ones(4, 2), torch.ones(4, 1)), generator=g),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("bad", [0, "seed", torch.Generator])
def test_a_generator_that_is_not_one_is_refused(name: str, bad: Any) -> None:
    with pytest.raises(SharpdimError, match=r"^generator must be a torch.Generator, got \w+"):
        CALLS[name](bad)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_seeded_generator_is_accepted(name: str) -> None:
    CALLS[name](torch.Generator().manual_seed(3))


class _CudaLooking(torch.Generator):
    """A CPU generator that reports a CUDA device (a stand-in where no GPU is present)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda")


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_generator_of_another_device_is_refused(name: str) -> None:
    # probes are drawn on the CPU: a CUDA generator used to fail inside torch
    with pytest.raises(SharpdimError, match=r"^generator is on cuda, but random draws are made "):
        CALLS[name](_CudaLooking().manual_seed(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["hutchinson_trace", "hutchpp_trace", "slq_spectrum"])
def test_a_cuda_generator_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(
        SharpdimError, match=r"^generator is on cuda(:\d+)?, .* torch.Generator\(\)"
    ):
        CALLS[name](torch.Generator(device="cuda").manual_seed(0))
