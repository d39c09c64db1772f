"""``sharpdim demo``: train a small model and summarise its curvature."""

from __future__ import annotations


def demo() -> None:
    """Train a small MLP on scikit-learn digits and print its Hessian spectrum summary."""
    raise NotImplementedError("demo is being written")
