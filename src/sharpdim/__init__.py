"""sharpdim: training at the edge of stability.

Implements the sharpness dimension of Tuci, Korkmaz, Şimşekli & Birdal, "Generalization at
the Edge of Stability" (arXiv 2604.19740), with the Hessian machinery, edge-of-stability
tools, Lyapunov exponents and trajectory measures around it.
"""

from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.operator import DenseOperator, LinearOperator, as_operator
from sharpdim.errors import SharpdimError, TooLargeError

__version__ = "0.1.0"

__all__ = [
    "DenseOperator",
    "HessianOperator",
    "LinearOperator",
    "SharpdimError",
    "TooLargeError",
    "__version__",
    "as_operator",
    "dense_hessian",
]
