"""HyperSpy signal classes of femlib: thin shells over the numerical modules."""

from femlib.signals.diffraction import FEMDiffraction2D, LazyFEMDiffraction2D
from femlib.signals.polar import FEMPolar2D, LazyFEMPolar2D
from femlib.signals.variance import FEMVariance1D, LazyFEMVariance1D

__all__ = [
    "FEMDiffraction2D",
    "LazyFEMDiffraction2D",
    "FEMPolar2D",
    "LazyFEMPolar2D",
    "FEMVariance1D",
    "LazyFEMVariance1D",
]
