"""``FEMPolar2D``: diffraction patterns in polar coordinates (azimuth x radius)."""

from hyperspy._signals.lazy import LazySignal
from hyperspy._signals.signal2d import Signal2D

__all__ = ["FEMPolar2D", "LazyFEMPolar2D"]


class FEMPolar2D(Signal2D):
    """Polar transform of diffraction patterns.

    Signal axes: ``Radians`` (x, azimuth as in pyxem: 0 along +x of the detector,
    counter-clockwise on screen; bin centres in the ``azimuth_range`` asked for) and
    ``Radius`` (y, in the detector's calibrated units, bin centres). ``s.isig[:, 2.0:8.0]``
    therefore selects a radial range.
    """

    _signal_type = "fem_polar"


class LazyFEMPolar2D(LazySignal, FEMPolar2D):
    """Lazy (dask-backed) :class:`FEMPolar2D`."""
