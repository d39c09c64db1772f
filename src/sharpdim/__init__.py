"""sharpdim: training at the edge of stability.

Implements the sharpness dimension of Tuci, Korkmaz, Şimşekli & Birdal, "Generalization at
the Edge of Stability" (arXiv 2604.19740), with the Hessian machinery, edge-of-stability
tools, Lyapunov exponents and trajectory measures around it.

The public names below are imported on first use (PEP 562): ``import sharpdim`` itself is
cheap, and the command line can answer Ctrl-C while torch is still loading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sharpdim.allocator import tune_allocator
    from sharpdim.curvature.dense import dense_hessian
    from sharpdim.curvature.density import histogram_density, kde_density
    from sharpdim.curvature.hessian import HessianOperator
    from sharpdim.curvature.lanczos import LanczosResult, lanczos_eigenvalues
    from sharpdim.curvature.operator import DenseOperator, LinearOperator, as_operator
    from sharpdim.curvature.slq import SLQResult, slq_spectrum
    from sharpdim.curvature.summary import SpectrumSummary, spectrum_summary
    from sharpdim.curvature.trace import TraceResult, hutchinson_trace, hutchpp_trace
    from sharpdim.dimension.kaplan_yorke import (
        KaplanYorkeResult,
        kaplan_yorke_dimension,
        kaplan_yorke_measure,
    )
    from sharpdim.dimension.lifetime_sum import LifetimeSumResult, alpha_weighted_lifetime_sum
    from sharpdim.dimension.ph_dimension import PHDimensionResult, ph_dimension
    from sharpdim.dimension.rds_sharpness import RDSSharpnessResult, rds_exponents, rds_sharpness
    from sharpdim.dimension.sharpness_dimension import SDResult, sharpness_dimension
    from sharpdim.dynamics.divergence import DivergenceResult, trajectory_divergence
    from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig
    from sharpdim.dynamics.lyapunov import LyapunovResult, lyapunov_spectrum
    from sharpdim.dynamics.step_maps import TrainingMap
    from sharpdim.errors import SharpdimError, TooLargeError
    from sharpdim.training.datasets import Dataset, load_dataset
    from sharpdim.training.loop import TrainConfig, TrainResult, train
    from sharpdim.training.losses import cross_entropy_loss, get_loss, mse_loss
    from sharpdim.training.models import DeepScalarLinear, build_mlp, build_transformer
    from sharpdim.training.monitor import EoSMonitor, EoSRecord
    from sharpdim.training.optimizers import make_optimizer, stability_threshold

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "dense_hessian": "sharpdim.curvature.dense",
    "histogram_density": "sharpdim.curvature.density",
    "kde_density": "sharpdim.curvature.density",
    "HessianOperator": "sharpdim.curvature.hessian",
    "LanczosResult": "sharpdim.curvature.lanczos",
    "lanczos_eigenvalues": "sharpdim.curvature.lanczos",
    "DenseOperator": "sharpdim.curvature.operator",
    "LinearOperator": "sharpdim.curvature.operator",
    "as_operator": "sharpdim.curvature.operator",
    "SLQResult": "sharpdim.curvature.slq",
    "slq_spectrum": "sharpdim.curvature.slq",
    "SpectrumSummary": "sharpdim.curvature.summary",
    "spectrum_summary": "sharpdim.curvature.summary",
    "TraceResult": "sharpdim.curvature.trace",
    "hutchinson_trace": "sharpdim.curvature.trace",
    "hutchpp_trace": "sharpdim.curvature.trace",
    "KaplanYorkeResult": "sharpdim.dimension.kaplan_yorke",
    "kaplan_yorke_dimension": "sharpdim.dimension.kaplan_yorke",
    "kaplan_yorke_measure": "sharpdim.dimension.kaplan_yorke",
    "LifetimeSumResult": "sharpdim.dimension.lifetime_sum",
    "alpha_weighted_lifetime_sum": "sharpdim.dimension.lifetime_sum",
    "PHDimensionResult": "sharpdim.dimension.ph_dimension",
    "ph_dimension": "sharpdim.dimension.ph_dimension",
    "RDSSharpnessResult": "sharpdim.dimension.rds_sharpness",
    "rds_exponents": "sharpdim.dimension.rds_sharpness",
    "rds_sharpness": "sharpdim.dimension.rds_sharpness",
    "SDResult": "sharpdim.dimension.sharpness_dimension",
    "sharpness_dimension": "sharpdim.dimension.sharpness_dimension",
    "DivergenceResult": "sharpdim.dynamics.divergence",
    "trajectory_divergence": "sharpdim.dynamics.divergence",
    "StepSpectrumConfig": "sharpdim.dynamics.jacobian_spectra",
    "LyapunovResult": "sharpdim.dynamics.lyapunov",
    "lyapunov_spectrum": "sharpdim.dynamics.lyapunov",
    "TrainingMap": "sharpdim.dynamics.step_maps",
    "tune_allocator": "sharpdim.allocator",
    "SharpdimError": "sharpdim.errors",
    "TooLargeError": "sharpdim.errors",
    "Dataset": "sharpdim.training.datasets",
    "load_dataset": "sharpdim.training.datasets",
    "TrainConfig": "sharpdim.training.loop",
    "TrainResult": "sharpdim.training.loop",
    "train": "sharpdim.training.loop",
    "cross_entropy_loss": "sharpdim.training.losses",
    "get_loss": "sharpdim.training.losses",
    "mse_loss": "sharpdim.training.losses",
    "DeepScalarLinear": "sharpdim.training.models",
    "build_mlp": "sharpdim.training.models",
    "build_transformer": "sharpdim.training.models",
    "EoSMonitor": "sharpdim.training.monitor",
    "EoSRecord": "sharpdim.training.monitor",
    "make_optimizer": "sharpdim.training.optimizers",
    "stability_threshold": "sharpdim.training.optimizers",
}
"""Public name -> the module that defines it."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sharpdim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Dataset",
    "DeepScalarLinear",
    "DenseOperator",
    "DivergenceResult",
    "EoSMonitor",
    "EoSRecord",
    "HessianOperator",
    "KaplanYorkeResult",
    "LanczosResult",
    "LifetimeSumResult",
    "LinearOperator",
    "LyapunovResult",
    "PHDimensionResult",
    "RDSSharpnessResult",
    "SDResult",
    "SLQResult",
    "SharpdimError",
    "SpectrumSummary",
    "StepSpectrumConfig",
    "TooLargeError",
    "TraceResult",
    "TrainConfig",
    "TrainResult",
    "TrainingMap",
    "__version__",
    "alpha_weighted_lifetime_sum",
    "as_operator",
    "build_mlp",
    "build_transformer",
    "cross_entropy_loss",
    "dense_hessian",
    "get_loss",
    "histogram_density",
    "hutchinson_trace",
    "hutchpp_trace",
    "kaplan_yorke_dimension",
    "kaplan_yorke_measure",
    "kde_density",
    "lanczos_eigenvalues",
    "load_dataset",
    "lyapunov_spectrum",
    "make_optimizer",
    "mse_loss",
    "ph_dimension",
    "rds_exponents",
    "rds_sharpness",
    "sharpness_dimension",
    "slq_spectrum",
    "spectrum_summary",
    "stability_threshold",
    "train",
    "trajectory_divergence",
    "tune_allocator",
]
