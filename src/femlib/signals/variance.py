"""``FEMVariance1D``: the normalized variance V(k) with its standard error."""

import warnings

import numpy as np
from hyperspy._signals.lazy import LazySignal
from hyperspy._signals.signal1d import Signal1D

__all__ = ["FEMVariance1D", "LazyFEMVariance1D"]

_VAR_KEY = "Signal.Noise_properties.variance"


def _radial_label(axis):
    """``"k (nm^-1)"`` for a calibrated radial axis, ``"radius (px)"`` for pixels."""
    units = getattr(axis, "units", None)
    units = "" if units is None else str(units).strip()
    if units.lower() in ("", "<undefined>", "undefined", "px", "pixel", "pixels"):
        return "radius (px)"
    return f"k ({units})"


class FEMVariance1D(Signal1D):
    """Normalized variance ``V(k)`` over the ``k`` (radius) axis, with its standard error.

    ``metadata.FEM`` holds the method, gain, npt, radial range, number of patterns and
    ``standard_error`` (same shape as the data). The squared standard error is also kept as
    ``metadata.Signal.Noise_properties.variance`` (a signal), so it follows ``inav``
    slicing and :meth:`split`; :attr:`standard_error` always matches the data's shape.
    Arithmetic on the signal (``v * 2``, ``v - w``) does not propagate it: the error then
    still describes the original ``V(k)``.
    Navigation axes, when present: ``Thickness`` (bin centres, nm) and ``Method``.
    """

    _signal_type = "fem_variance"

    @property
    def standard_error(self):
        """ndarray, shape of the data: one standard error of every ``V(k)`` value."""
        if self.metadata.has_item(_VAR_KEY):
            var = self.metadata.get_item(_VAR_KEY)
            var = getattr(var, "data", var)
            if np.shape(var) == self.data.shape:
                return np.sqrt(np.asarray(var))
        se = self.metadata.get_item("FEM.standard_error")
        if se is not None and np.shape(se) == self.data.shape:
            return np.asarray(se)
        raise ValueError("this signal holds no standard error matching its data")

    def _set_standard_error(self, se):
        se = np.asarray(se, dtype=float)
        self.metadata.set_item("FEM.standard_error", se)
        var = self._deepcopy_with_new_data(se**2, copy_variance=False)
        self.metadata.set_item(_VAR_KEY, var)

    def split(self, axis="auto", number_of_parts="auto", step_sizes="auto"):
        """Split as :meth:`hyperspy.signal.BaseSignal.split`, keeping each part's error.

        Parameters
        ----------
        axis, number_of_parts, step_sizes
            As for HyperSpy's ``split``.

        Returns
        -------
        list of FEMVariance1D
        """
        parts = super().split(axis, number_of_parts, step_sizes)
        if self.metadata.has_item(_VAR_KEY):
            var = self.metadata.get_item(_VAR_KEY)
            var_parts = var.split(axis, number_of_parts, step_sizes)
            labels = self.curve_labels()
            for i, (p, v) in enumerate(zip(parts, var_parts, strict=True)):
                p.metadata.set_item(_VAR_KEY, v)
                p.metadata.set_item("FEM.standard_error", np.sqrt(v.data))
                if len(labels) == len(parts):
                    p.metadata.General.title = labels[i]
        return parts

    def _fem(self):
        return self.metadata.FEM.as_dictionary() if self.metadata.has_item("FEM") else {}

    def curve_labels(self):
        """Legend labels of the curves, in navigation order (flattened).

        Returns
        -------
        list of str
            Thickness-bin labels like ``"17.0–18.0 nm (n=812)"``, method names, or both.
        """
        names = [ax.name for ax in self.axes_manager.navigation_axes]
        fem = self._fem()
        per_axis = []
        for ax in self.axes_manager.navigation_axes:
            if ax.name in ("Thickness", "Group") and fem.get("labels") is not None:
                labs = list(fem["labels"])
            elif ax.name == "Method" and fem.get("methods") is not None:
                labs = list(fem["methods"])
            else:
                labs = [f"{ax.name}={v:.4g}" for v in ax.axis]
            if len(labs) != ax.size:
                labs = [f"{ax.name}={v:.4g}" for v in ax.axis]
            per_axis.append(labs)
        if not names:
            return [str(fem.get("method", self.metadata.General.title))]
        # navigation_axes[0] varies fastest in the flattened array order.
        grids = np.meshgrid(*[np.arange(len(p)) for p in per_axis[::-1]], indexing="ij")
        flat = [g.ravel() for g in grids][::-1]
        return [
            ", ".join(per_axis[a][flat[a][i]] for a in range(len(per_axis)))
            for i in range(flat[0].size)
        ]

    def combined(self):
        """Frame-weighted mean of the per-thickness-bin (or per-group) ``V(k)`` with its
        standard error.

        Returns
        -------
        FEMVariance1D
            Navigation axes other than ``Thickness``/``Group`` are kept (e.g. ``Method``,
            or the tile axes of a map binned by thickness: one combined V per tile).

        Raises
        ------
        ValueError
            If this result was not computed with thickness bins.
        """
        fem = self._fem()
        if fem.get("combined") is None:
            raise ValueError("no thickness bins: get_variance(..., thickness=t, bins=b) first")
        axes = [
            ax.get_axis_dictionary()
            for ax in self.axes_manager._axes
            if ax.name not in ("Thickness", "Group")
        ]
        md = self.metadata.as_dictionary()
        what = "group" if "Group" in [ax.name for ax in self.axes_manager._axes] else (
            "thickness-bin"
        )
        md["General"]["title"] = f"{self.metadata.General.title} ({what} average)"
        md.get("Signal", {}).pop("Noise_properties", None)
        for key in ("labels", "combined", "combined_standard_error", "standard_error",
                    "jackknife", "combined_jackknife"):
            md["FEM"].pop(key, None)
        if fem.get("combined_jackknife") is not None:
            md["FEM"]["jackknife"] = np.asarray(fem["combined_jackknife"])
        out = type(self)(np.asarray(fem["combined"]), axes=axes, metadata=md)
        out._set_standard_error(fem["combined_standard_error"])
        return out

    def plot(self, *args, error_band=True, **kwargs):
        """Plot ``V(k)`` as HyperSpy does, with a shaded ±1 standard-error band.

        This is :meth:`hyperspy.signal.BaseSignal.plot`: every HyperSpy argument works
        (``navigator="slider"``, ``navigator=None``, ``axes_manager=...``, ``color`` ...).
        With navigation axes (thickness bins, methods, scan tiles) the navigator browses
        the curves and the band follows the curve shown. The axes are labelled as by
        :meth:`plot_curves` (``k (nm^-1)``, ``V(k)``), under the signal's title. The band
        is drawn with the same step style as the line (``steps-mid``: flat across each
        radial bin). To draw all curves on one axes with a legend, use :meth:`plot_curves`.

        Parameters
        ----------
        *args, **kwargs
            Passed to HyperSpy's ``plot``.
        error_band : bool
            Shade ±1 standard error around the curve shown (nothing is shaded when the
            signal holds no standard error).

        Returns
        -------
        None

        Examples
        --------
        >>> import femlib
        >>> s = femlib.data.synthetic_fem(navigation_shape=(8, 8))
        >>> s.calibration.center = s.metadata.Simulation.center
        >>> t = s.metadata.HAADF.intensity
        >>> per_bin = s.get_variance(npt=20, gain=4.2, radial_range=(3.0, 5.5),
        ...                          thickness=t, bins=2, show_progressbar=False)
        >>> per_bin.plot(navigator="slider")
        >>> per_bin.axes_manager.indices = (1,)  # the band follows to the second bin
        """
        super().plot(*args, **kwargs)
        signal_plot = self._plot.signal_plot
        ax = signal_plot.ax
        # HyperSpy would say "k axis (nm^-1)" under "<title> Signal".
        ax.set_xlabel(_radial_label(self.axes_manager.signal_axes[0]))
        ax.set_title(self.metadata.General.title)
        if not self.metadata.has_item("Signal.quantity"):
            ax.set_ylabel(self._quantity())  # HyperSpy would say "Intensity"
        se = self._se_or_none() if error_band else None
        if se is None:
            return None
        line = signal_plot.ax_lines[0].line
        axes_manager = self._plot.axes_manager
        state = {"band": None}

        def draw_band(*_args, **_kwargs):
            if state["band"] is not None:
                state["band"].remove()
            # HyperSpy's indices are in navigation-axis order, the array's are reversed.
            index = tuple(axes_manager.indices[::-1])
            v = np.asarray(self.data[index], dtype=float)
            state["band"] = self._band(
                ax, v, se[index], line.get_color(), line.get_drawstyle()
            )
            ax.figure.canvas.draw_idle()

        draw_band()
        if axes_manager.navigation_dimension:
            axes_manager.events.indices_changed.connect(draw_band, [])

            def disconnect():
                axes_manager.events.indices_changed.disconnect(draw_band)

            signal_plot.events.closed.connect(disconnect, [])
        return None

    def _se_or_none(self):
        try:
            return self.standard_error
        except ValueError:
            return None

    def _band(self, ax, v, se, color, drawstyle="steps-mid"):
        """Shade ``v ± se`` on ``ax`` with the step style of a line of ``drawstyle``."""
        if se is None:
            return None
        # fill_between's step names: a "steps-mid" line has its jumps halfway between
        # points, which is step="mid"; "steps"/"steps-pre" is "pre"; "default" is linear.
        step = {
            "steps-mid": "mid",
            "steps-pre": "pre",
            "steps": "pre",
            "steps-post": "post",
        }.get(drawstyle)
        k = self.axes_manager.signal_axes[0].axis
        return ax.fill_between(
            k, v - se, v + se, color=color, alpha=0.25, lw=0, step=step,
            label="_±1 standard error",
        )

    def plot_curves(self, ax=None, error_band=True, legend="auto"):
        """Draw every curve with its error band on one matplotlib axes, with a legend.

        Each curve is drawn as HyperSpy draws a spectrum (``steps-mid``: flat across each
        radial bin) and its ±1 standard-error band with the same steps. The x axis is
        labelled with the radial axis' units (``px`` when the data are uncalibrated),
        the y axis ``V(k)``.

        Parameters
        ----------
        ax : matplotlib.axes.Axes or None
            Axes to draw on; a new figure when None.
        error_band : bool
            Shade ±1 standard error around every curve.
        legend : "auto", bool
            Show a legend of :meth:`curve_labels` (placed where it hides the fewest data
            points). ``"auto"``: when there are at most 12 curves.

        Returns
        -------
        matplotlib.axes.Axes

        Examples
        --------
        >>> import femlib
        >>> s = femlib.data.synthetic_fem(navigation_shape=(8, 8))
        >>> s.calibration.center = s.metadata.Simulation.center
        >>> v = s.get_variance(npt=20, gain=4.2, radial_range=(3.0, 5.5),
        ...                    show_progressbar=False)
        >>> ax = v.plot_curves()
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('k (nm^-1)', 'V(k)')
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 4.2))
        k_axis = self.axes_manager.signal_axes[0]
        v = np.asarray(self.data, dtype=float).reshape(-1, k_axis.size)
        se = self._se_or_none()
        se = None if se is None else se.reshape(v.shape)
        labels = self.curve_labels()
        for i, label in enumerate(labels):
            color = f"C{i % 10}"
            ax.plot(k_axis.axis, v[i], color=color, label=label or f"curve {i}",
                    drawstyle="steps-mid")
            if error_band and se is not None:
                self._band(ax, v[i], se[i], color, "steps-mid")
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(_radial_label(k_axis))
        ax.set_ylabel(self._quantity())
        ax.set_title(self.metadata.General.title)
        if legend is True or (legend == "auto" and len(labels) <= 12 and any(labels)):
            ax.legend(fontsize="small", loc="best")
        return ax

    def _quantity(self):
        return self.metadata.get_item("Signal.quantity") or "V(k)"


class LazyFEMVariance1D(LazySignal, FEMVariance1D):
    """Lazy (dask-backed) :class:`FEMVariance1D`.

    :meth:`FEMDiffraction2D.get_variance` of lazy data returns one: nothing is read until
    :meth:`compute`, which runs the single pass and fills the standard error and the
    metadata that need it. ``dask.compute(v1, v2, ...)`` of several such results returns
    their computed :class:`FEMVariance1D` and reads the data once for all of them.
    """

    def _pending(self):
        pending = self.__dict__.get("_femlib_pending")
        return pending if pending is not None and pending["data"] is self.data else None

    def compute(self, close_file=False, show_progressbar=None, **kwargs):
        """Run the pass and turn this signal into the computed :class:`FEMVariance1D`.

        As HyperSpy's :meth:`~hyperspy._signals.lazy.LazySignal.compute` (in place,
        returns None). For the result of ``get_variance`` the pass gives the data, the
        standard error and the metadata that need the moments (counts, jackknife,
        combined curves), and its warnings are issued here.

        Parameters
        ----------
        close_file : bool
            As HyperSpy's.
        show_progressbar : bool or None
            Default: HyperSpy's preference.
        **kwargs
            Passed to ``dask.compute`` (e.g. ``scheduler``).

        Returns
        -------
        None

        Examples
        --------
        >>> import femlib
        >>> s = femlib.data.synthetic_fem(navigation_shape=(8, 8), lazy=True)
        >>> s.calibration.center = s.metadata.Simulation.center
        >>> v = s.get_variance(npt=10, gain=4.2, radial_range=(3.0, 5.5))
        >>> type(v).__name__
        'LazyFEMVariance1D'
        >>> v.compute(show_progressbar=False)
        >>> type(v).__name__, v.standard_error.shape
        ('FEMVariance1D', (10,))
        """
        pending = self._pending()
        if pending is None:
            return super().compute(close_file=close_file, show_progressbar=show_progressbar,
                                   **kwargs)
        result = pending["finish"](pending["run"](pending["work"], show_progressbar,
                                                  **kwargs))
        self._become(result)
        if close_file:
            self.close_file()
        return None

    def _become(self, result):
        self.__dict__.pop("_femlib_pending", None)
        self.data = result.data
        self._metadata = result.metadata
        self._lazy = False
        # The eager result's class (HyperSpy's _assign_subclass would take a one-bin V(k),
        # whose signal dimension it counts as 0, for a BaseSignal).
        self.__class__ = type(result)

    # dask's collection protocol: dask.compute(v1, v2) merges the graphs (one read of
    # the data) and returns the computed signals.
    def __dask_graph__(self):
        pending = self._pending()
        return None if pending is None else pending["work"].__dask_graph__()

    def __dask_keys__(self):
        return self._pending()["work"].__dask_keys__()

    def __dask_layers__(self):
        return self._pending()["work"].__dask_layers__()

    def __dask_tokenize__(self):
        return self._pending()["work"].key

    def __dask_postcompute__(self):
        return _computed_variance, (self._pending()["finish"],)

    def __dask_postpersist__(self):
        raise NotImplementedError("persist() a lazy V(k): compute() it (a few numbers)")

    @staticmethod
    def __dask_optimize__(dsk, keys, **kwargs):
        return dsk

    @staticmethod
    def __dask_scheduler__(*args, **kwargs):
        from dask.threaded import get

        return get(*args, **kwargs)


def _computed_variance(results, finish):
    return finish(results[0])


# find_peaks is defined here and attached below (not inside the class body) to keep this
# addition apart from the plotting methods; it is an ordinary method of FEMVariance1D.
def _find_peaks(self, n_peaks=None, positions=None, k_range=None, background_order=1,
                errors="auto", min_significance=3.0):
    """Fit the peaks of every ``V(k)`` curve: positions, heights and widths with errors.

    Each curve (every thickness bin, group, tile and method of this result) is fitted with
    Gaussian peaks on a polynomial background, ``V(k) = b(k) + sum_i h_i exp(-4 ln2
    (k - k_i)^2 / f_i^2)``, by HyperSpy's least-squares model fitting weighted by the stored
    standard errors (``metadata.Signal.Noise_properties.variance``), using HyperSpy's
    ``GaussianHF`` and ``Offset``/``Polynomial`` components.

    Parameters
    ----------
    n_peaks : int or None
        Number of peaks per curve when ``positions`` is None: the ``n_peaks`` most prominent
        local maxima. None keeps every maximum more prominent than ``min_significance``
        standard errors.
    positions : sequence of float or None
        Starting positions of the peaks (calibrated units, e.g. ``nm^-1``), the same for
        every curve; overrides the automatic search.
    k_range : (float, float) or None
        Fit only inside this radial range.
    background_order : int
        0 = constant offset, 1 = linear (default), ... polynomial background.
    errors : {"auto", "jackknife", "fit"}
        ``"jackknife"`` refits every leave-one-block-out curve stored by
        :meth:`FEMDiffraction2D.get_variance` (``metadata.FEM.jackknife``) and takes the
        spread of the parameters: this accounts for V(k) errors that are correlated across
        k (the structural fluctuations are) and is calibrated on synthetic data.
        ``"fit"`` uses HyperSpy's parameter errors (weighted-fit covariance times the
        reduced chi-square), which treat the points as independent and come out too small
        when they are not. ``"auto"``: jackknife when the replicates match the data.
    min_significance : float
        Prominence, in standard errors, for an automatically found peak.

    Returns
    -------
    PeakTable
        A list of dicts, one per peak and curve, with keys ``curve`` (flat index in
        navigation order), ``label`` (:meth:`curve_labels`), ``peak`` (0, 1, ... by
        position), ``position``, ``height``, ``fwhm`` (calibrated units; height in V units)
        and their standard errors ``position_se``, ``height_se``, ``fwhm_se``, and
        ``converged`` (bool) with ``message``. A curve whose fit fails (or that has no
        peak, ``peak = -1``) keeps its rows with ``converged=False``, NaN values and the
        reason, and a warning names it. ``print(table)`` shows it aligned,
        ``table.to_csv(path)`` writes CSV; ``table.errors`` tells which errors were used.

    Raises
    ------
    ValueError
        For bad ``errors``, ``n_peaks``, ``background_order`` or ``positions``, or
        ``errors="jackknife"`` without stored replicates.

    Examples
    --------
    >>> import femlib
    >>> s = femlib.data.synthetic_fem(navigation_shape=(12, 12), detector_shape=(64, 64),
    ...                               scale=0.28, seed=2, thickness_gradient=False)
    >>> s.calibration.center = s.metadata.Simulation.center
    >>> s.calibration.affine = s.metadata.Simulation.affine
    >>> v = s.get_variance(npt=40, gain=4.2, radial_range=(3.0, 8.0),
    ...                    mask=s.metadata.Simulation.beam_stop_mask,
    ...                    show_progressbar=False)
    >>> table = v.find_peaks(positions=[3.7, 4.6, 7.0])
    >>> [round(row["position"], 1) for row in table]
    [3.7, 4.6, 7.0]
    """
    from femlib.signals import _peaks

    if errors not in ("auto", "jackknife", "fit"):
        raise ValueError(f"errors must be 'auto', 'jackknife' or 'fit', got {errors!r}")
    if n_peaks is not None and (
        isinstance(n_peaks, bool) or not isinstance(n_peaks, (int, np.integer)) or n_peaks < 1
    ):
        raise ValueError(f"n_peaks must be a positive integer or None, got {n_peaks!r}")
    if isinstance(background_order, bool) or not isinstance(
        background_order, (int, np.integer)
    ) or background_order < 0:
        raise ValueError(
            f"background_order must be a non-negative integer, got {background_order!r}"
        )
    k_axis = self.axes_manager.signal_axes[0]
    k = k_axis.axis
    if positions is not None:
        try:
            positions = np.asarray(positions, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError(
                f"positions must be a sequence of radii, got {positions!r}"
            ) from None
        if positions.size == 0 or not np.all(np.isfinite(positions)) or (
            positions.min() < k[0] or positions.max() > k[-1]
        ):
            raise ValueError(
                f"positions must be finite radii within [{k[0]:.4g}, {k[-1]:.4g}], "
                f"got {positions.tolist()}"
            )
    v = np.asarray(self.data, dtype=float).reshape(-1, k.size)
    se = self.standard_error.reshape(v.shape)
    jack = self.metadata.get_item("FEM.jackknife")
    has_jack = jack is not None and np.shape(jack)[1:] == self.data.shape
    if errors == "jackknife" and not has_jack:
        raise ValueError(
            "errors='jackknife' needs metadata.FEM.jackknife matching the data (the "
            "result of get_variance or combined(), not a slice or split part)"
        )
    use_jack = has_jack and errors != "fit"
    reps = np.asarray(jack, dtype=float).reshape(-1, *v.shape) if use_jack else None
    labels = self.curve_labels()
    if len(labels) != v.shape[0]:
        labels = [str(i) for i in range(v.shape[0])]
    axis = k_axis.get_axis_dictionary()
    table = _peaks.PeakTable()
    table.errors = "jackknife" if use_jack else "fit"
    failed = []
    for i in range(v.shape[0]):
        if positions is None:
            guesses = _peaks.guess_peaks(k, v[i], se[i], n_peaks, min_significance)
        else:
            guesses = _peaks.guess_at_positions(k, v[i], positions)
        if not guesses:
            rows = [dict(_peaks.empty_row(), message="no significant peak found")]
            peak_ids = [-1]
        else:
            rows = _peaks.fit_peaks(
                axis, v[i], se[i], guesses, background_order, k_range,
                None if reps is None else reps[:, i],
            )
            peak_ids = range(len(rows))
        for j, row in zip(peak_ids, rows, strict=True):
            table.append({"curve": i, "label": labels[i], "peak": j, **row})
        if not all(r["converged"] for r in rows):
            failed.append(f"{labels[i]} ({rows[0]['message'] or 'see table'})")
    if failed:
        warnings.warn(
            f"peak fit failed for {len(failed)} curve(s), flagged converged=False in the "
            "table: " + "; ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""),
            UserWarning,
            stacklevel=2,
        )
    return table


FEMVariance1D.find_peaks = _find_peaks
