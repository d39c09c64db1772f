"""Dimensions (pure): Kaplan–Yorke / sharpness dimension, SD estimators, PH0 dimension, E_alpha."""

from sharpdim.dimension.kaplan_yorke import (
    KaplanYorkeResult,
    kaplan_yorke_dimension,
    kaplan_yorke_measure,
)
from sharpdim.dimension.lifetime_sum import LifetimeSumResult, alpha_weighted_lifetime_sum
from sharpdim.dimension.mst import mst_edge_lengths
from sharpdim.dimension.ph_dimension import PHDimensionResult, ph_dimension
from sharpdim.dimension.rds_sharpness import RDSSharpnessResult, rds_exponents, rds_sharpness
from sharpdim.dimension.sharpness_dimension import SDResult, sharpness_dimension

__all__ = [
    "KaplanYorkeResult",
    "LifetimeSumResult",
    "PHDimensionResult",
    "RDSSharpnessResult",
    "SDResult",
    "alpha_weighted_lifetime_sum",
    "kaplan_yorke_dimension",
    "kaplan_yorke_measure",
    "mst_edge_lengths",
    "ph_dimension",
    "rds_exponents",
    "rds_sharpness",
    "sharpness_dimension",
]
