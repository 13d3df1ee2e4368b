"""Datasets: an offline synthetic FEM dataset with ground truth, and the real ZrCuAl data."""

from femlib.data._real import zrcual_1, zrcual_2, zrcual_3
from femlib.data._synthetic import synthetic_fem, synthetic_flat_field

__all__ = ["synthetic_fem", "synthetic_flat_field", "zrcual_1", "zrcual_2", "zrcual_3"]
