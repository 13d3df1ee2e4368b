"""Datasets: an offline synthetic FEM dataset with ground truth, and the real ZrCuAl data."""

from femlib.data._real import zrcual_1, zrcual_2, zrcual_3
from femlib.data._speckle import speckle_truth, synthetic_speckle
from femlib.data._synthetic import synthetic_fem, synthetic_flat_field

__all__ = [
    "synthetic_fem",
    "synthetic_flat_field",
    "synthetic_speckle",
    "speckle_truth",
    "zrcual_1",
    "zrcual_2",
    "zrcual_3",
]
