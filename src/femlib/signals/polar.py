"""``FEMPolar2D``: diffraction patterns in polar coordinates (azimuth x radius)."""

import numpy as np
from hyperspy._signals.lazy import LazySignal
from hyperspy._signals.signal2d import Signal2D

from femlib.signals.variance import _radial_label

__all__ = ["FEMPolar2D", "LazyFEMPolar2D"]


class FEMPolar2D(Signal2D):
    """Polar transform of diffraction patterns.

    Signal axes: ``Radians`` (x, azimuth as in pyxem: 0 along +x of the detector,
    counter-clockwise on screen; bin centres in the ``azimuth_range`` asked for) and
    ``Radius`` (y, in the detector's calibrated units, bin centres). ``s.isig[:, 2.0:8.0]``
    therefore selects a radial range.
    """

    _signal_type = "fem_polar"

    def plot(self, *args, **kwargs):
        """Plot as HyperSpy does, with the axes named as femlib names them, and the bins
        that no unmasked detector pixel reaches in grey.

        This is :meth:`hyperspy.signal.BaseSignal.plot` (every HyperSpy argument works:
        ``cmap``, ``norm``, ``navigator`` ...). The x axis is labelled ``azimuth (rad)``,
        the y axis ``k (nm^-1)`` (the signal's own radial units; ``radius (px)`` when
        uncalibrated) and the title is the signal's title. Bins whose coverage
        (``metadata.FEM.coverage``) is 0, behind the mask or off the detector, are drawn
        grey, not as a value of the colour map: their 0 is no measurement. This needs the
        coverage of the bins shown; a signal cropped with ``isig`` no longer matches it and
        is drawn without the grey (crop with ``radial_range``/``azimuth_range`` instead).

        Parameters
        ----------
        *args, **kwargs
            Passed to HyperSpy's ``plot``.

        Returns
        -------
        None

        Examples
        --------
        >>> import femlib
        >>> s = femlib.data.synthetic_fem(navigation_shape=(4, 4))
        >>> sim = s.metadata.Simulation
        >>> s.calibration.center = sim.center
        >>> polar = s.get_azimuthal_integral2d(npt=40, npt_azim=90, mean=True,
        ...                                    mask=sim.beam_stop_mask, show_progressbar=False)
        >>> image = polar.sum()
        >>> image.plot(cmap="magma")
        >>> ax = image._plot.signal_plot.ax
        >>> ax.get_xlabel(), ax.get_ylabel(), len(ax.images)  # data, grey beam-stop bins
        ('azimuth (rad)', 'k (nm^-1)', 2)
        """
        super().plot(*args, **kwargs)
        signal_plot = self._plot.signal_plot
        ax = signal_plot.ax
        azimuth, radius = self.axes_manager.signal_axes
        ax.set_xlabel(f"azimuth ({azimuth.units})")
        ax.set_ylabel(_radial_label(radius))
        ax.set_title(self.metadata.General.title)  # HyperSpy appends " Signal"
        coverage = self.metadata.get_item("FEM.coverage")
        if coverage is None or np.shape(coverage) != self.axes_manager._signal_shape_in_array:
            return None
        uncovered = np.asarray(coverage) == 0
        if not uncovered.any() or not ax.images:
            return None
        image = ax.images[0]
        from matplotlib.colors import ListedColormap

        # Drawn above the data (and animated like it, so that blitting keeps it on top).
        ax.imshow(
            np.ma.masked_array(np.ones(uncovered.shape), mask=~uncovered),
            cmap=ListedColormap(["0.6"]), vmin=0, vmax=1, extent=image.get_extent(),
            aspect=ax.get_aspect(), interpolation="nearest", zorder=image.get_zorder() + 0.5,
            animated=image.get_animated(),
        )
        return None


class LazyFEMPolar2D(LazySignal, FEMPolar2D):
    """Lazy (dask-backed) :class:`FEMPolar2D`."""
