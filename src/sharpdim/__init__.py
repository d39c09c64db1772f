"""sharpdim: training at the edge of stability.

Implements the sharpness dimension of Tuci, Korkmaz, Şimşekli & Birdal, "Generalization at
the Edge of Stability" (arXiv 2604.19740), with the Hessian machinery, edge-of-stability
tools, Lyapunov exponents and trajectory measures around it.
"""

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
]
