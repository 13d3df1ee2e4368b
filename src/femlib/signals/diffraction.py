"""``FEMDiffraction2D``: a stack of nanobeam diffraction patterns (4D-STEM)."""

from hyperspy._signals.lazy import LazySignal
from hyperspy._signals.signal2d import Signal2D

from femlib.calibration import Calibration

__all__ = ["FEMDiffraction2D", "LazyFEMDiffraction2D"]


class FEMDiffraction2D(Signal2D):
    """Nanobeam diffraction patterns of an amorphous sample, indexed by probe position.

    Navigation axes are the probe positions, signal axes the detector (x = columns,
    y = rows), calibrated in reciprocal-space units (e.g. ``nm^-1``).
    ``s.calibration`` holds the centre, the elliptical-distortion affine and the mask.
    """

    _signal_type = "fem_diffraction"

    @property
    def calibration(self):
        """:class:`femlib.calibration.Calibration` of this signal (centre, affine, mask)."""
        cal = self.__dict__.get("_femlib_calibration")
        if cal is None or cal._signal is not self:
            cal = Calibration(self)
            self.__dict__["_femlib_calibration"] = cal
        return cal


class LazyFEMDiffraction2D(LazySignal, FEMDiffraction2D):
    """Lazy (dask-backed) :class:`FEMDiffraction2D`; every method streams over chunks."""
