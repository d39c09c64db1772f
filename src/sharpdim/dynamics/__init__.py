"""Dynamics (pure): optimizer step maps and their Jacobians, Lyapunov spectra, chaos tests."""
