"""Dynamics (pure): optimizer step maps and their Jacobians, Lyapunov spectra, chaos tests."""

from sharpdim.dynamics.divergence import DivergenceResult, trajectory_divergence
from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig, step_log_singular_values
from sharpdim.dynamics.lyapunov import LyapunovResult, StepMap, lyapunov_spectrum
from sharpdim.dynamics.step_maps import TrainingMap

__all__ = [
    "DivergenceResult",
    "LyapunovResult",
    "StepMap",
    "StepSpectrumConfig",
    "TrainingMap",
    "lyapunov_spectrum",
    "step_log_singular_values",
    "trajectory_divergence",
]
