"""Dimensions (pure): Kaplan–Yorke / sharpness dimension, SD estimators, PH0 dimension, E_alpha."""
