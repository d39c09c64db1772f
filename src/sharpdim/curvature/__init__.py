"""Curvature engine (pure): Hessian operators, dense Hessians, Lanczos, SLQ and traces."""

from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.density import histogram_density, kde_density
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.lanczos import LanczosResult, lanczos_eigenvalues, lanczos_tridiagonal
from sharpdim.curvature.operator import DenseOperator, LinearOperator, as_operator
from sharpdim.curvature.params import get_flat_params, set_flat_params, trainable_parameters
from sharpdim.curvature.slq import SLQResult, slq_spectrum
from sharpdim.curvature.summary import SpectrumSummary, spectrum_summary
from sharpdim.curvature.trace import TraceResult, hutchinson_trace, hutchpp_trace

__all__ = [
    "DenseOperator",
    "HessianOperator",
    "LanczosResult",
    "LinearOperator",
    "SLQResult",
    "SpectrumSummary",
    "TraceResult",
    "as_operator",
    "dense_hessian",
    "get_flat_params",
    "histogram_density",
    "hutchinson_trace",
    "hutchpp_trace",
    "kde_density",
    "lanczos_eigenvalues",
    "lanczos_tridiagonal",
    "set_flat_params",
    "slq_spectrum",
    "spectrum_summary",
    "trainable_parameters",
]
