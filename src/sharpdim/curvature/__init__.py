"""Curvature engine (pure): Hessian operators, dense Hessians, Lanczos, SLQ and traces."""
