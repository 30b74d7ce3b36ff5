"""Analyses over scored labels (captured concepts, comparisons, categories, calibration)."""
