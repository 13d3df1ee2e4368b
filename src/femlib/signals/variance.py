"""``FEMVariance1D``: the normalized variance V(k) with its standard error."""

from hyperspy._signals.lazy import LazySignal
from hyperspy._signals.signal1d import Signal1D

__all__ = ["FEMVariance1D", "LazyFEMVariance1D"]


class FEMVariance1D(Signal1D):
    """Normalized variance ``V(k)`` over the ``Radius`` axis.

    ``metadata.FEM`` holds the method, gain, npt, radial range, number of patterns and
    ``standard_error`` (same shape as the data).
    """

    _signal_type = "fem_variance"


class LazyFEMVariance1D(LazySignal, FEMVariance1D):
    """Lazy (dask-backed) :class:`FEMVariance1D`."""
