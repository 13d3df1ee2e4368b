"""``FEMDiffraction2D``: a stack of nanobeam diffraction patterns (4D-STEM)."""

import copy
import functools
import math
import types
import warnings

import numpy as np
from hyperspy._signals.lazy import LazySignal
from hyperspy._signals.signal2d import Signal2D
from hyperspy.defaults_parser import preferences
from hyperspy.signal import BaseSignal
from hyperspy.signals import LazySignal1D, Signal1D

from femlib import groups as _groups
from femlib import integration
from femlib import moments as _moments
from femlib import thickness as _thickness
from femlib import variance as _variance
from femlib.calibration import Calibration, azimuth_fraction_on_detector
from femlib.signals import _screening as _screen
from femlib.signals._state import CalibrationStateMixin, take_positions
from femlib.signals.polar import FEMPolar2D, LazyFEMPolar2D
from femlib.signals.variance import FEMVariance1D, LazyFEMVariance1D

__all__ = ["FEMDiffraction2D", "LazyFEMDiffraction2D"]

# Eager work runs as dask tasks over blocks of about this many bytes of input: enough tasks
# to keep every core busy, small enough to bound each task's temporaries.
_BLOCK_BYTES = 64 * 2**20


def _integrate_rows(frames, weights, mean, dtype, out):
    """Integrate a block into its rows of ``out``; the number of non-finite frames."""
    return int(integration._apply(frames, weights, mean=mean, dtype=dtype, out=out)[1].sum())


def _integrate_descan_rows(frames, weights, geometry, mean, dtype, out):
    """:func:`_integrate_rows` with every frame at its own centre (descan)."""
    _, bad = integration._apply_descan(frames, weights, geometry, mean=mean, dtype=dtype,
                                       out=out)
    return int(bad.sum())


def _descan_metadata(w):
    """What a result records of the per-position centres it was computed with."""
    c = w.centers
    mean = c.mean(axis=0)
    err_max, err_rms = w.rounding_error
    return {
        "per_position_centres": True,
        "mean_center": mean,
        "max_displacement": float(np.hypot(*(c - mean).T).max()),
        "subpixel": int(w.subpixel),
        "rounding_error_max": err_max,
        "rounding_error_rms": err_rms,
        "n_tables": len(w.tables),
    }


def _frame_blocks(n_frames, frame_bytes):
    step = max(1, int(_BLOCK_BYTES // max(frame_bytes, 1)))
    return [slice(i, min(i + step, n_frames)) for i in range(0, n_frames, step)]


class FEMDiffraction2D(CalibrationStateMixin, Signal2D):
    """Nanobeam diffraction patterns of an amorphous sample, indexed by probe position.

    Navigation axes are the probe positions, signal axes the detector (x = columns,
    y = rows), calibrated in reciprocal-space units (e.g. ``nm^-1``).
    ``s.calibration`` holds the centre, the elliptical-distortion affine and the mask
    (in pyxem's keys). The mask follows ``isig``, ``crop``, ``rebin`` and ``transpose``;
    navigation-shaped metadata (e.g. ``metadata.HAADF.intensity``) follows ``inav``,
    navigation ``rebin``, ``transpose`` and :meth:`split_by_thickness`.
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

    # ------------------------------------------------------------------ helpers
    def _weights(self, npt, npt_azim=1, radial_range=None, azimuth_range=None, mask=None):
        """The cached weight matrix for this signal's calibration and the given bins.

        An explicit ``mask`` replaces the stored one (which is then not read). Warns once
        when the centre looks unset (pixel (0, 0), HyperSpy's default offsets) or when
        less than half of the azimuths of the radial range lie on the detector.
        """
        geo = self.calibration.geometry(mask=mask)
        if geo["centers"] is not None:
            # Descan: every pattern at its own centre, the mask fixed on the detector.
            weights = integration.build_descan_weights(
                geo["detector_shape"],
                geo["centers"],
                affine=geo["affine"],
                scale=geo["scale"],
                npt=npt,
                npt_azim=npt_azim,
                radial_range=radial_range,
                azimuth_range=azimuth_range,
                mask=geo["mask"],
            )
            _warn_off_detector(geo, weights.reference)
            return weights
        weights = integration.build_weights(
            geo["detector_shape"],
            geo["center"],
            affine=geo["affine"],
            scale=geo["scale"],
            npt=npt,
            npt_azim=npt_azim,
            radial_range=radial_range,
            azimuth_range=azimuth_range,
            mask=geo["mask"],
        )
        _warn_off_detector(geo, weights, radial_range)
        return weights

    def _radius_axis(self, weights):
        return {
            "name": "Radius",
            "units": self.calibration.units,
            "size": weights.npt,
            "offset": weights.radial_centers[0],
            "scale": weights.radial_edges[1] - weights.radial_edges[0],
        }

    def _new_signal(self, cls, data, signal_axes, title, fem=None):
        """A result signal with this signal's navigation axes and metadata."""
        axes = self.axes_manager._get_navigation_axes_dicts() + list(signal_axes)
        md = copy.deepcopy(self.metadata.as_dictionary())
        md.get("General", {}).pop("mask", None)
        md.get("General", {}).pop("affine_transformation", None)
        md.setdefault("General", {})["title"] = title
        md.setdefault("Signal", {})["signal_type"] = getattr(cls, "_signal_type", "")
        if fem:
            md["FEM"] = fem
        return cls(data, axes=axes, metadata=md, original_metadata={})

    def _integrate(self, weights, mean, dtype, show_progressbar):
        """Weighted sums (or means) of every frame: lazy for lazy data; for eager data one
        dask task per block on the threaded scheduler, each writing its rows of the output."""
        descan = isinstance(weights, integration.DescanWeights)
        if self._lazy:
            if descan:
                return integration.integrate_descan_dask(self.data, weights, mean=mean,
                                                         dtype=dtype)
            return integration.integrate_dask(self.data, weights, mean=mean, dtype=dtype)
        import dask

        nav = self.data.shape[:-2]
        frames = self.data.reshape((-1,) + self.data.shape[-2:])
        tail = (weights.npt,) if weights.npt_azim == 1 else (weights.npt, weights.npt_azim)
        out = np.empty((frames.shape[0], int(np.prod(tail))), dtype=dtype)
        blocks = _frame_blocks(frames.shape[0], frames[0].nbytes if len(frames) else 1)
        if descan:
            task = dask.delayed(_integrate_descan_rows, pure=False)
            shared = dask.delayed(weights, pure=True, traverse=False)
            tasks = [task(frames[b], shared, weights.frame_geometry[b], mean, dtype, out[b])
                     for b in blocks]
        else:
            task = dask.delayed(_integrate_rows, pure=False)
            tasks = [task(frames[b], weights, mean, dtype, out[b]) for b in blocks]
        n_bad = sum(_compute(tasks, show_progressbar, scheduler="threads"))
        if n_bad:
            warnings.warn(
                f"{n_bad} pattern(s) have NaN or infinite values in unmasked pixels; "
                "the bins they touch are NaN/inf in the result (mask those pixels)",
                UserWarning,
                stacklevel=3,
            )
        return out.reshape(nav + tail)

    def _replace_with(self, result):
        """Turn this signal into ``result`` (the ``inplace=True`` path)."""
        # Re-initialise as a plain signal first: Signal2D.__init__ would force two signal
        # dimensions onto a 1D result.
        self.__class__ = LazySignal if self._lazy else BaseSignal
        self.__init__(
            result.data,
            axes=result.axes_manager._get_axes_dicts(),
            metadata=result.metadata.as_dictionary(),
        )
        self.metadata.Signal.signal_type = result.metadata.Signal.signal_type
        self._assign_subclass()

    def _integral_signal(self, w, polar, mean, inplace, show_progressbar):
        """Integrate with ``w`` and wrap: a FEMPolar2D (float32) if ``polar``, else a
        Signal1D (float64) over Radius."""
        data = self._integrate(w, mean, np.float32 if polar else np.float64, show_progressbar)
        axes = [self._radius_axis(w)]
        fem = {
            "Integration": {
                "npt": w.npt,
                "npt_azim": w.npt_azim,
                "radial_range": tuple(w.radial_edges[[0, -1]].tolist()),
                "azimuth_range": tuple(w.azimuth_edges[[0, -1]].tolist()),
                "mean": bool(mean),
            },
            "coverage": w.coverage.reshape(w.npt, w.npt_azim) if polar else w.coverage.copy(),
        }
        if isinstance(w, integration.DescanWeights):
            fem["Integration"]["descan"] = _descan_metadata(w)
        if polar:
            axes.append(
                {
                    "name": "Radians",
                    "units": "rad",
                    "size": w.npt_azim,
                    "offset": w.azimuth_centers[0],
                    "scale": w.azimuth_edges[1] - w.azimuth_edges[0],
                }
            )
            cls = LazyFEMPolar2D if self._lazy else FEMPolar2D
            title = _title("Polar transform", self)
        else:
            cls = LazySignal1D if self._lazy else Signal1D
            title = _title("Azimuthal integral", self)
        result = self._new_signal(cls, data, axes, title, fem)
        if inplace:
            self._replace_with(result)
            return None
        return result

    # ------------------------------------------------------------------ API
    def get_azimuthal_integral2d(
        self,
        npt,
        npt_azim=360,
        radial_range=None,
        azimuth_range=None,
        mask=None,
        mean=False,
        inplace=False,
        show_progressbar=None,
    ):
        """Polar transform of every pattern with pixel splitting.

        Parameters
        ----------
        npt : int
            Number of radial bins.
        npt_azim : int
            Number of azimuthal bins over ``azimuth_range``.
        radial_range : (float, float) or None
            Radial range in the signal's calibrated units (e.g. ``nm^-1``); default from 0
            to the detector corner farthest from the centre.
        azimuth_range : (float, float) or None
            Azimuthal range in radians within ``[-pi, pi]`` or ``[0, 2pi]`` (pyxem's azimuth:
            0 along +x, counter-clockwise on screen); it restricts the integration
            itself, not only the axis. Default: the full circle.
        mask : bool array, boolean Signal2D or None
            True = excluded pixel (e.g. ``summed < 10000``). Default: ``calibration.mask``.
        mean : bool
            If True, each bin holds the mean intensity per pixel over the covered (on the
            detector, unmasked) part of the bin, so partly covered bins do not droop.
            If False (default), the pixel-split weighted sum.
        inplace : bool
            If True, replace this signal by the result and return None.
        show_progressbar : bool or None
            Default: HyperSpy's preference (``hs.preferences.General.show_progressbar``);
            eager data then draw the bar only for passes longer than a second.

        Returns
        -------
        FEMPolar2D or LazyFEMPolar2D
            Signal axes ``Radians`` (x, bin centres within ``azimuth_range``) and ``Radius`` (y, bin
            centres, calibrated units); float32 data. ``metadata.FEM.coverage`` holds the
            covered fraction of every bin (0 for bins off the detector, whose value is 0).

        Raises
        ------
        ValueError
            For ``npt < 1``, reversed or out-of-detector ranges, a mask of the wrong shape.

        Notes
        -----
        With per-position centres (descan) every pattern is transformed around its own
        centre (exact pixel splitting, the mask fixed on the detector);
        ``metadata.FEM.coverage`` is then that of the mean centre, and
        ``metadata.FEM.Integration.descan`` records the rounding of the centres.

        Examples
        --------
        >>> s = femlib.data.synthetic_fem(navigation_shape=(4, 4))
        >>> sim = s.metadata.Simulation
        >>> s.calibration.center, s.calibration.affine = sim.center, sim.affine
        >>> polar = s.get_azimuthal_integral2d(npt=100, show_progressbar=False)
        >>> polar.axes_manager.signal_shape  # (azimuth, radius)
        (360, 100)
        >>> # pixel splitting conserves the flux: every count lands in some bin
        >>> bool(np.isclose(polar.data.sum(dtype=float), s.data.sum(dtype=float), rtol=1e-6))
        True
        >>> polar.sum().isig[:, 2.0:8.0].plot()  # the rings are straight lines
        """
        w = self._weights(npt, npt_azim, radial_range, azimuth_range, mask)
        return self._integral_signal(w, True, mean, inplace, show_progressbar)

    def get_azimuthal_integral1d(
        self,
        npt,
        radial_range=None,
        mask=None,
        mean=False,
        azimuth_range=None,
        inplace=False,
        show_progressbar=None,
    ):
        """Azimuthal integral of every pattern over rings of constant radius.

        Parameters
        ----------
        npt : int
            Number of radial bins.
        radial_range : (float, float) or None
            Radial range in calibrated units; default 0 to the farthest detector corner.
        mask : bool array, boolean Signal2D or None
            True = excluded pixel. Default: ``calibration.mask``.
        mean : bool
            If True, the azimuthal mean per pixel over the covered part of each ring;
            else (default) the pixel-split weighted sum.
        azimuth_range : (float, float) or None
            Restrict the integration to this azimuthal sector (radians, within
            ``[-pi, pi]`` or ``[0, 2pi]``, pyxem's azimuth).
        inplace : bool
            If True, replace this signal by the result and return None.
        show_progressbar : bool or None
            Default: HyperSpy's preference (``hs.preferences.General.show_progressbar``);
            eager data then draw the bar only for passes longer than a second.

        Returns
        -------
        Signal1D or LazySignal1D
            Signal axis ``Radius`` (bin centres, calibrated units), float64.
            ``metadata.FEM.coverage`` holds each ring's covered fraction.

        Raises
        ------
        ValueError
            As :meth:`get_azimuthal_integral2d`, and for rings with no unmasked pixel
            (their radii are listed).
        """
        w = self._weights(npt, 1, radial_range, azimuth_range, mask)
        _check_no_empty_bins(w)
        return self._integral_signal(w, False, mean, inplace, show_progressbar)

    def _thickness_groups(self, thickness, bins, excluded=None):
        """Thickness bin of every probe position, checked against the navigation shape.
        Positions ``excluded`` (navigation_mask) get -1 and take no part in the binning:
        equal-width bins span the thickness of the positions used (an outlier of extreme
        intensity, left out, does not stretch them)."""
        if thickness is None:
            if bins is not None:
                raise ValueError("bins needs thickness: pass thickness=... (nm per position)")
            return None, None
        if bins is None:
            raise ValueError("thickness needs bins: an int (equal bins) or a list of edges")
        nav_shape = self.axes_manager._navigation_shape_in_array
        t = np.asarray(getattr(thickness, "data", thickness), dtype=float)
        if t.shape != tuple(nav_shape):
            raise ValueError(
                f"thickness has shape {t.shape} but the navigation shape is {tuple(nav_shape)}"
            )
        n_pos = int(np.prod(nav_shape))
        if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool) and bins > n_pos:
            # Refused before anything is allocated (the pass keeps moments per bin).
            raise ValueError(
                f"bins={int(bins)} asks for more thickness bins than there are probe "
                f"positions ({n_pos}); a bin needs 2 or more: use at most {max(n_pos // 2, 1)}"
            )
        if excluded is None or not excluded.any():
            return _thickness.bin_by_thickness(t, bins)
        index = np.full(t.shape, -1, dtype=np.int64)
        index[~excluded], edges = _thickness.bin_by_thickness(t[~excluded], bins)
        return index, edges

    def _navigation_mask(self, navigation_mask):
        nav_shape = tuple(self.axes_manager._navigation_shape_in_array)
        if navigation_mask is None:
            return np.zeros(nav_shape, bool)
        m = np.asarray(getattr(navigation_mask, "data", navigation_mask))
        if m.dtype != bool:
            raise TypeError(f"navigation_mask must be boolean (True = excluded), got {m.dtype}")
        if m.shape != nav_shape:
            raise ValueError(
                f"navigation_mask has shape {m.shape} but the navigation shape is {nav_shape}"
            )
        return m

    def split_by_thickness(self, thickness, bins):
        """Split the probe positions into thickness bins.

        Parameters
        ----------
        thickness : Signal2D or array_like
            Thickness per probe position (nm), navigation shaped, e.g. from
            :func:`femlib.thickness.thickness_from_haadf`.
        bins : int or sequence of float
            Number of equal-width bins (top edge inclusive) or explicit edges.

        Returns
        -------
        list of FEMDiffraction2D (or LazyFEMDiffraction2D)
            One signal per bin with a single navigation axis (the positions of that bin in
            scan order), the signal axes, calibration (centre, affine, mask) and metadata of
            this signal; ``metadata.FEM.thickness_range`` holds the bin's edges and
            navigation-shaped metadata (e.g. ``metadata.HAADF.intensity``) holds the
            values of the bin's positions. For eager
            input each result holds a copy of only its own frames (NumPy fancy indexing);
            lazy input stays lazy and copies nothing.

        Raises
        ------
        ValueError
            If ``thickness`` does not match the navigation shape, or ``bins`` is invalid.
        """
        index, edges = self._thickness_groups(thickness, bins)
        flat_index = index.ravel()
        frames = self.data.reshape((-1,) + self.data.shape[-2:])
        counts = np.bincount(flat_index[flat_index >= 0], minlength=edges.size - 1)
        labels = _thickness.bin_labels(edges, counts)
        if (counts == 0).any():
            warnings.warn(
                "empty thickness bin(s), returned with no position: "
                + ", ".join(lab for lab, n in zip(labels, counts, strict=True) if n == 0),
                UserWarning,
                stacklevel=2,
            )
        out = []
        for b in range(edges.size - 1):
            sel = np.flatnonzero(flat_index == b)
            axes = [
                {"name": "Position", "size": sel.size, "units": "", "navigate": True}
            ] + self.axes_manager._get_signal_axes_dicts()
            md = copy.deepcopy(self.metadata.as_dictionary())
            md.setdefault("FEM", {})["thickness_range"] = (float(edges[b]), float(edges[b + 1]))
            part = type(self)(frames[sel], axes=axes, metadata=md, original_metadata={})
            take_positions(self, part, sel)
            out.append(part)
        return out

    def get_variance(
        self,
        npt,
        method="Omega",
        gain=None,
        radial_range=None,
        mask=None,
        navigation_mask=None,
        thickness=None,
        bins=None,
        show_progressbar=None,
        subtract_nonuniformity=False,
        groups=None,
        tiles=None,
        noise=None,
    ):
        """Normalized variance ``V(k)`` of the diffracted intensity (FEM), in one pass.

        Parameters
        ----------
        npt : int
            Number of radial bins.
        method : {"Omega", "r", "re", "VImage", "all"} or list of them
            FEM estimator(s) (see :mod:`femlib.variance` for the formulas). ``"all"``
            computes the four together from the same pass.
        gain : float or None
            Detector units per electron of a counting detector (independent pixels). When
            given, the Poisson shot-noise term of each estimator is subtracted; None (and
            no ``noise``) = uncorrected.
        radial_range : (float, float) or None
            Radial range in calibrated units (e.g. ``nm^-1``).
        mask : bool array, boolean Signal2D or None
            Detector pixels to exclude (True). Default: ``calibration.mask``.
        navigation_mask : bool array or None
            Probe positions to exclude (True), e.g. holes or contamination.
        thickness : Signal2D or array_like, optional
            Thickness per probe position (nm); requires ``bins``.
        bins : int or sequence of float, optional
            Thickness bins: a count of equal-width bins (spanning the thickness of the
            positions not excluded by ``navigation_mask``) or explicit edges. ``V(k)`` is
            computed inside every bin in the same pass.
        show_progressbar : bool or None
            Default: HyperSpy's preference (``hs.preferences.General.show_progressbar``);
            eager data then draw the bar only for passes longer than a second.
        subtract_nonuniformity : bool
            Subtract the static within-ring non-uniformity of the mean pattern from ``r``
            and ``re`` (see :func:`femlib.variance.estimate`); other methods unchanged.
        groups : array_like of int, optional
            One label per probe position (navigation shaped; -1 = left out): one ``V(k)``
            per label from the same pass (see :mod:`femlib.groups`). Not together with
            ``thickness`` or ``tiles``.
        tiles : (int, int), optional
            ``(ty, tx)`` probe positions per scan tile: one ``V(k)`` per tile (a map), and
            per thickness bin inside each tile when ``thickness``/``bins`` are given. Edge
            tiles are smaller when the scan is not a multiple of the tile size.
        noise : noise model or None
            Detector noise model for the shot-noise correction, e.g. a
            ``femlib.noise.DetectorNoise``: any object with ``gain`` (sum of the noise
            kernel, detector units per electron), ``k0`` (the kernel at zero lag) and
            ``shot_weights(matrix)`` (the sparse matrix ``W * (K * W)`` of the weights'
            sparsity). ``gain=G`` is the counting model (shot weights ``G W**2``,
            ``k0 = G``). Give ``gain`` or ``noise``, not both.

        Returns
        -------
        FEMVariance1D
            Signal axis ``k`` (the radius, bin centres in the detector's calibrated
            units: plots label it ``k (nm^-1)``). Navigation axes, in array order: with
            ``tiles`` two axes named and calibrated like the scan's (rows, columns; values
            at the tile centres, non-uniform when the edge tiles are smaller); ``Group`` (the
            labels) with ``groups``; ``Thickness`` (bin centres, nm) when binned;
            ``Method`` when several methods are asked for. With ``groups`` or bins,
            ``metadata.FEM`` has ``counts`` per group and ``combined`` (with ``tiles``: per
            tile); with ``tiles``, ``tile_counts`` (patterns per tile). Groups or tiles
            with fewer than 2 patterns are left out (groups) or NaN in the map (tiles),
            with a warning. ``metadata.FEM.jackknife`` holds the leave-one-block-out
            curves (blocks first) used by :meth:`FEMVariance1D.find_peaks`. ``metadata.FEM`` holds
            ``method``, ``gain``, ``npt``, ``radial_range``, ``number_of_patterns``,
            ``Calibration`` (the centre and affine used),
            ``standard_error`` (jackknife, never below the shot noise's own, shape of the
            data), ``standard_error_trusted`` (False where ``V`` rests on too few counts
            for any error bar; a warning names them) and, when binned,
            ``thickness_edges``, ``counts``, ``labels``, ``combined`` and
            ``combined_standard_error`` (frame-weighted mean over the bins; also
            :meth:`FEMVariance1D.combined`). When ``r`` or ``re`` is asked for, also
            ``ring_nonuniformity`` and ``ring_nonuniformity_standard_error`` (per radial
            bin, and per thickness bin when binned, plus ``combined_ring_nonuniformity``)
            and ``subtract_nonuniformity``. When all-zero patterns were left out (see
            Warns), ``number_of_zero_patterns``.

            Lazy input gives a :class:`~femlib.signals.LazyFEMVariance1D`: nothing is read
            until its ``compute()``, which runs the one pass and fills the standard error
            and the metadata that need it (``number_of_patterns``, counts, jackknife,
            combined curves; before it, ``metadata.FEM`` holds what the call fixes) and
            issues the pass's warnings; its axes are known at once. ``dask.compute`` of
            several such results reads the data once for all of them.

        Warns
        -----
        UserWarning
            Patterns with NaN or infinite weighted pixels (left out, counted). Patterns
            exactly 0 in every radial bin while the others' mean dose makes that
            improbable (chance below 1e-6 under Poisson statistics with ``gain``, or with
            counts taken as electrons without one): left out as missing data (a missing
            chunk of a zarr store reads as zeros) and counted; where such zeros are
            plausible they are kept. ``npt=1`` or a radial range narrower than one pixel
            (V(k) means nothing there).

        Raises
        ------
        TypeError
            A ``noise`` without ``gain``, ``k0`` and ``shot_weights``.
        ValueError
            Unknown method, ``gain <= 0``, both ``gain`` and ``noise``, a mask or thickness
            of the wrong shape, a ring with no unmasked pixel, fewer than two usable
            patterns. With per-position centres (descan): ``VImage`` or
            ``subtract_nonuniformity``, a radial range that leaves the detector around some
            position's centre, a ring with no unmasked pixel around some position's centre.

        Notes
        -----
        With per-position centres (``s.calibration.center`` of shape navigation shape +
        ``(2,)``) every pattern is integrated around its own centre with the same exact
        pixel splitting, the mask fixed on the detector, and the estimators use each
        pattern's own ring areas; ``metadata.FEM.Calibration.descan`` records the rounding
        of the centres (see the geometry page of the user guide). ``VImage`` and the ring
        non-uniformity are then not available.

        References
        ----------
        Daulton et al., Ultramicroscopy 110 (2010) 1279; Li et al., Microsc. Microanal.
        20 (2014) 1605.

        Examples
        --------
        Pure Poisson counts (gain 1): the corrected ``Omega`` is 0 within its standard error.

        >>> import numpy as np
        >>> from femlib.signals import FEMDiffraction2D
        >>> rng = np.random.default_rng(0)
        >>> s = FEMDiffraction2D(rng.poisson(50.0, (8, 8, 32, 32)).astype("float32"))
        >>> s.calibration.center = (15.5, 15.5)
        >>> v = s.get_variance(npt=5, gain=1.0, radial_range=(4.0, 14.0),
        ...                    show_progressbar=False)
        >>> v.data.shape
        (5,)
        >>> bool(np.all(np.abs(v.data) < 3 * v.metadata.FEM.standard_error))
        True
        """
        methods = _variance.check_method(method)
        gain, noise = _check_noise(gain, noise)
        if not isinstance(subtract_nonuniformity, (bool, np.bool_)):
            raise TypeError(
                f"subtract_nonuniformity must be True or False, got {subtract_nonuniformity!r}"
            )
        w = self._weights(npt, 1, radial_range, None, mask)
        descan = isinstance(w, integration.DescanWeights)
        if descan:
            _check_descan_methods(methods, subtract_nonuniformity)
        _check_no_empty_bins(w)
        _warn_meaningless_bins(w, npt, radial_range, self.calibration.geometry(mask=mask))
        labels, n_groups, edges, layout = self._group_labels(
            thickness, bins, navigation_mask, groups, tiles
        )
        # The counting model accumulates Q = W^2 D and estimate() multiplies by the gain; a
        # noise model's shot weights are in detector units and its k0 enters the estimators.
        if gain is None and noise is None:
            shot = None
        elif descan:
            # Per sub-pixel table (unmasked): see deviations, descan and noise models.
            shot = w.squared if noise is None else w.pack_shot(
                [noise.shot_weights(t) for t in w.tables])
        else:
            shot = w.squared if noise is None else noise.shot_weights(w)
        work = _moments.accumulate_moments(
            self.data, w, labels, shot_weights=shot, methods=methods, n_groups=n_groups,
            compute=False, shot_scale=1.0 if gain is None else gain, leave_out_zero=True,
        )
        cal = self.calibration
        finish = functools.partial(
            self._finish_variance, w=w, methods=methods, method=method, gain=gain,
            noise=noise, n_groups=n_groups, edges=edges, layout=layout,
            subtract_nonuniformity=bool(subtract_nonuniformity),
            navigation_mask=navigation_mask,
            calibration={
                "center": cal._mean_center(),
                "affine": np.eye(3) if cal.affine is None else cal.affine,
            },
            detector_mask=None if descan else cal.geometry(mask=mask)["mask"],
        )
        if self._lazy:
            return _lazy_variance(work, finish, labels, n_groups, methods, shot is not None, w,
                                  shot_scale=1.0 if gain is None else gain)
        return finish(_compute(work, show_progressbar, scheduler="threads"))

    def _finish_variance(self, moments, w, methods, method, gain, noise, n_groups, edges,
                         layout, subtract_nonuniformity, calibration, navigation_mask=None,
                         quiet=False, detector_mask=None):
        """The FEMVariance1D of the moments of one pass (eager, or a lazy result's
        compute). ``quiet``: no warnings (the lazy result's template)."""
        n_zero = 0 if moments.zero_count is None else int(moments.zero_count.sum())
        if n_zero:
            moments = _zero_patterns(moments, n_zero, w, gain, noise, quiet)
        if moments.n_nonfinite and not quiet:
            warnings.warn(
                f"{moments.n_nonfinite} pattern(s) with NaN or infinite values in unmasked "
                "pixels of the radial range were left out (mask those pixels, or exclude the "
                "positions with navigation_mask)",
                UserWarning,
                stacklevel=3,
            )
        if moments.n_uncovered:
            raise ValueError(
                f"for {moments.n_uncovered} probe position(s) a radial bin has no unmasked "
                "pixel on the detector around the position's own centre (s.calibration."
                "center, per-position centres): narrow radial_range, use fewer bins (npt), "
                "check the mask, or leave those positions out with navigation_mask"
            )
        left_out = 0 if moments.zero_count is None else int(moments.zero_count.sum())
        if moments.n_frames < 2:
            raise ValueError(
                f"only {moments.n_frames} usable pattern(s) (after navigation_mask, thickness "
                + (f"edges, {moments.n_nonfinite} non-finite and {left_out} all-zero)"
                   if left_out else f"edges and {moments.n_nonfinite} non-finite)")
                + ": V(k) needs at least 2"
            )
        if edges is not None:
            counts = moments.count.reshape(n_groups, -1).sum(axis=1).astype(int)
            if counts.max() < 2:
                raise ValueError(
                    "no thickness bin holds 2 or more patterns (counts "
                    f"{_short_list(counts)}): "
                    "use fewer or wider bins"
                )
        # Descan moments hold per-frame ring means (each frame's own bin areas): the
        # estimators then take unit areas (femlib.moments, descan).
        # ring_geometry: the reference geometry's A and sum w^2, for r's and re's shot floor.
        est_w = types.SimpleNamespace(
            area=np.ones(w.npt), matrix=None, touched=None,
            ring_geometry=(w.area, np.asarray(w.reference.squared.sum(axis=1)).ravel()),
        ) if isinstance(w, integration.DescanWeights) else w
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            res = _variance.estimate(
                moments, est_w, methods, gain, k0=None if noise is None else float(noise.k0),
                subtract_nonuniformity=subtract_nonuniformity,
                curvature=None if noise is None else getattr(noise, "curvature", None),
                mask=detector_mask,
            )
            _variance.warn_undefined(res, w.radial_centers)
            result = self._variance_signal(
                res, w, methods, method, gain if noise is None else float(noise.gain), edges,
                layout, calibration=calibration,
            )
        # The trust flags in the layout of the data (the same path as V, quietly).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags = self._variance_signal(
                dict(res, variance=res["standard_error_trusted"].astype(float)), w, methods,
                method, gain, edges, layout, calibration=calibration,
            ).data
        result.metadata.FEM.standard_error_trusted = flags > 0.5
        if left_out:
            result.metadata.FEM.number_of_zero_patterns = left_out
        if noise is not None:
            result.metadata.FEM.noise_model = {
                "gain": float(noise.gain),
                "k0": float(noise.k0),
                "kernel": np.asarray(getattr(noise, "kernel", [[noise.k0]]), dtype=float),
            }
        binned = edges is not None or layout is not None
        _store_nonuniformity(result, res, binned, subtract_nonuniformity)
        if navigation_mask is not None:
            result.metadata.set_item("FEM.navigation_mask", _screen.left_out_summary(
                navigation_mask, self._navigation_mask(navigation_mask)))
        return result

    def _group_labels(self, thickness, bins, navigation_mask, groups=None, tiles=None):
        """Group label of every probe position (-1 = left out), the number of groups, the
        thickness edges (None when not binned) and the group/tile layout (None without
        ``groups``/``tiles``). The one place labels are made."""
        excluded = self._navigation_mask(navigation_mask)
        index, edges = self._thickness_groups(thickness, bins, excluded)
        layout = self._group_layout(groups, tiles, index, edges)
        n_groups = 1 if edges is None else edges.size - 1
        if layout is not None:
            index, n_groups = layout["labels"], layout["n_groups"]
        labels = np.zeros(excluded.shape, np.int64) if index is None else index.copy()
        labels[excluded] = -1
        return labels, n_groups, edges, layout

    def _group_layout(self, groups, tiles, index, edges):
        """Labels of the user's groups or of the scan tiles (x thickness bins), or None."""
        if groups is None and tiles is None:
            return None
        nav_shape = tuple(self.axes_manager._navigation_shape_in_array)
        if groups is not None:
            if tiles is not None or edges is not None:
                raise ValueError(
                    "groups cannot be combined with tiles or thickness bins: fold them into "
                    "the labels (e.g. region * n_bins + bin)"
                )
            labels, n = _groups.check_groups(groups, nav_shape)
            return {"kind": "groups", "labels": labels, "n_groups": n}
        labels, grid = _groups.tile_labels(nav_shape, tiles)
        n_bins = 1 if edges is None else edges.size - 1
        if edges is not None:
            labels = _groups.combine_labels(labels, index, n_bins)
        nav = self.axes_manager.navigation_axes  # x first; array order is y, x
        y, x = _groups.tile_centers(
            nav_shape, tiles, (nav[1].offset, nav[0].offset), (nav[1].scale, nav[0].scale)
        )
        return {
            "kind": "tiles",
            "labels": labels,
            "n_groups": grid[0] * grid[1] * n_bins,
            "grid": grid,
            "n_bins": n_bins,
            "tiles": tuple(int(t) for t in tiles),
            "centers": (y, x),
            "axes": [(ax.name, ax.units) for ax in (nav[1], nav[0])],
        }

    def _variance_signal(self, res, w, methods, method, gain, edges, layout=None,
                         calibration=None):
        single = len(methods) == 1
        fem = {
            "method": methods[0] if single else list(methods),
            "methods": list(methods),
            "gain": gain,
            "npt": w.npt,
            "radial_range": tuple(float(x) for x in w.radial_edges[[0, -1]]),
            "number_of_patterns": int(res["counts"][res["used_groups"]].sum()),
            "Calibration": dict(calibration) if calibration else {
                "center": self.calibration._mean_center(),
                "affine": np.eye(3) if self.calibration.affine is None else self.calibration.affine,
            },
        }
        if isinstance(w, integration.DescanWeights):
            fem["Calibration"]["descan"] = _descan_metadata(w)
        if layout is not None:
            return self._grouped_variance_signal(res, w, methods, fem, edges, layout)
        v, se = res["variance"], res["standard_error"]  # (G, M, K)
        # Leave-one-block-out estimates, blocks first: (B, G, M, K).
        jack = np.moveaxis(res["jackknife"], 1, 0) if "jackknife" in res else None
        axes = []
        if edges is None:
            v, se = v[0], se[0]
            jack = None if jack is None else jack[:, 0]
        else:
            used = res["used_groups"]
            empty = np.flatnonzero(~used)
            labels = _thickness.bin_labels(edges, res["counts"])
            if empty.size:
                warnings.warn(
                    "thickness bin(s) with fewer than 2 patterns are left out: "
                    + ", ".join(labels[i] for i in empty),
                    UserWarning,
                    stacklevel=3,
                )
            centres = 0.5 * (edges[1:] + edges[:-1])[used]
            v, se = v[used], se[used]
            jack = None if jack is None else jack[:, used]
            fem.update(
                thickness_edges=np.asarray(edges),
                counts=res["counts"],
                labels=[lab for lab, u in zip(labels, used, strict=True) if u],
                empty_bins=[labels[i] for i in empty],
                combined=res["combined"][0] if single else res["combined"],
                combined_standard_error=(
                    res["combined_standard_error"][0]
                    if single
                    else res["combined_standard_error"]
                ),
            )
            if "combined_jackknife" in res:
                cj = res["combined_jackknife"]
                fem["combined_jackknife"] = cj[:, 0] if single else cj
            axes.append(_nav_axis("Thickness", "nm", centres))
        if single:
            v, se = v[..., 0, :], se[..., 0, :]
            jack = None if jack is None else jack[..., 0, :]
        else:
            axes.append(
                {"name": "Method", "size": len(methods), "units": "", "navigate": True}
            )
        if jack is not None:
            fem["jackknife"] = jack
        return self._wrap_variance(v, se, axes, w, fem)

    def _wrap_variance(self, v, se, axes, w, fem):
        """A FEMVariance1D of ``v`` with its standard error, the navigation ``axes`` (in
        array order, as HyperSpy wants them) and the ``k`` signal axis (the radius)."""
        radius = self._radius_axis(w)
        radius.update(name="k", navigate=False)  # plots read "k (nm^-1)"
        what, source = "V(k), " + ", ".join(fem["methods"]), self.metadata.General.title
        md = {
            "General": {"title": f"{what}: {source}" if source else what},
            "Signal": {"signal_type": "fem_variance", "quantity": "V(k)"},
            "FEM": fem,
        }
        result = FEMVariance1D(v, axes=axes + [radius], metadata=md)
        result._set_standard_error(se)
        return result

    def _grouped_variance_signal(self, res, w, methods, fem, edges, layout):
        """Wrap per-group (``Group`` axis) or per-tile (map) estimates; see get_variance."""
        single = len(methods) == 1
        counts, used = res["counts"], res["used_groups"]
        v, se = res["variance"].copy(), res["standard_error"].copy()  # (G, M, K)
        jack = np.moveaxis(res["jackknife"], 1, 0)  # (B, G, M, K)
        axes = []
        extra = {}
        if layout["kind"] == "groups":
            names = [f"group {g} (n={int(n)})" for g, n in enumerate(counts)]
            empty = np.flatnonzero(~used)
            if empty.size:
                warnings.warn(
                    "group(s) with fewer than 2 patterns are left out: "
                    + ", ".join(names[g] for g in empty),
                    UserWarning,
                    stacklevel=4,
                )
            ids = np.flatnonzero(used)
            v, se, jack = v[used], se[used], jack[:, used]
            extra = {
                "groups": ids,
                "counts": counts,
                "labels": [names[g] for g in ids],
                "empty_groups": [names[g] for g in empty],
                "combined": res["combined"],
                "combined_standard_error": res["combined_standard_error"],
                "combined_jackknife": res["combined_jackknife"],
            }
            axes.append(_nav_axis("Group", "", ids))
        else:
            nty, ntx = layout["grid"]
            nb = layout["n_bins"]
            cell = (nty, ntx) if edges is None else (nty, ntx, nb)
            v[~used], se[~used], jack[:, ~used] = np.nan, np.nan, np.nan
            bad = np.argwhere(~used.reshape(cell))
            if bad.size:
                where = ", ".join(str(tuple(int(i) for i in b)) for b in bad[:8])
                warnings.warn(
                    f"{len(bad)} tile{'' if edges is None else ' x thickness bin'} cell(s) "
                    f"with fewer than 2 patterns are NaN in the map: {where}"
                    + (" ..." if len(bad) > 8 else ""),
                    UserWarning,
                    stacklevel=4,
                )
            v, se = v.reshape(cell + v.shape[1:]), se.reshape(cell + se.shape[1:])
            jack = jack.reshape((jack.shape[0],) + cell + jack.shape[2:])
            (yname, yunits), (xname, xunits) = layout["axes"]
            y, x = layout["centers"]
            axes.append(_nav_axis(_axis_name(yname, "y"), yunits, y))
            axes.append(_nav_axis(_axis_name(xname, "x"), xunits, x))
            extra = {
                "tiles": layout["tiles"],
                "tile_counts": counts.reshape(nty, ntx, nb).sum(-1),
                "counts": counts.reshape(cell),
            }
            if edges is not None:
                comb, comb_se, comb_j = _groups.combine_within(
                    res["variance"], res["jackknife"], counts, nty * ntx
                )
                shape = (nty, ntx) + comb.shape[1:]
                extra.update(
                    thickness_edges=np.asarray(edges),
                    labels=[f"{a:.1f}\u2013{b:.1f} nm" for a, b in zip(edges[:-1], edges[1:],
                                                                     strict=True)],
                    combined=comb.reshape(shape),
                    combined_standard_error=comb_se.reshape(shape),
                    combined_jackknife=comb_j.reshape((comb_j.shape[0],) + shape),
                )
                axes.append(_nav_axis("Thickness", "nm", 0.5 * (edges[1:] + edges[:-1])))
        if single:
            v, se, jack = v[..., 0, :], se[..., 0, :], jack[..., 0, :]
            for key in ("combined", "combined_standard_error", "combined_jackknife"):
                if key in extra:
                    extra[key] = extra[key][..., 0, :]
        else:
            axes.append({"name": "Method", "size": len(methods), "units": "", "navigate": True})
        fem.update(extra, jackknife=jack)
        return self._wrap_variance(v, se, axes, w, fem)

    # ------------------------------------------------------------------ screening
    def find_bad_pixels(self, gain=None, noise=None, mask=None, hot=3.0, noisy=2.0,
                        min_z=5.0, show_progressbar=None):
        """Dead, hot and noisy detector pixels, from one pass over the scan.

        Per pixel the pass keeps the temporal mean ``<D>`` and variance (float64 sums,
        merged across chunks); see :mod:`femlib.screening` for the tests. *Dead*: no counts
        (or a constant value) where the dimmer neighbours give at least 20 electrons over
        the scan. *Hot*: a mean ``hot`` times its neighbours'. *Noisy*: a temporal variance
        ``noisy`` times the noise model's prediction (``gain * <D>``, ``noise.k0 * <D>``,
        or the neighbours' when neither is given or when they show more), at ``min_z``
        standard errors at least. Combine with the beam-stop mask by ``mask | bad``.

        Parameters
        ----------
        gain : float or None
            Detector units per electron (counting detector).
        noise : noise model or None
            E.g. a :class:`femlib.noise.DetectorNoise`; its ``k0`` gives the prediction.
            Give ``gain`` or ``noise``, not both; with neither the prediction comes from
            the pixels themselves.
        mask : bool array, boolean Signal2D or None
            Pixels already excluded (beam stop): not flagged, not used as neighbours.
            Default: ``calibration.mask``.
        hot, noisy : float
            Factors above the neighbours' mean and above the predicted variance.
        min_z : float
            Significance required, in standard errors.
        show_progressbar : bool or None
            Default: HyperSpy's preference.

        Returns
        -------
        Signal2D
            Boolean, detector shaped (True = bad), computed for lazy input too.
            ``metadata.Screening.bad_pixels`` holds ``n_bad``, ``counts`` per reason,
            ``pixels`` ((M, 2) x, y), ``reasons`` (one string per pixel, e.g.
            ``"noisy"``), ``noise_score`` (variance over prediction) and ``hot_score``
            (mean over the neighbours') per pixel, the full ``reason_map``, the noise
            ``model``, ``gain_estimate`` and the thresholds.

        Raises
        ------
        ValueError
            Both ``gain`` and ``noise``, a non-positive gain, thresholds <= 1, a mask of the
            wrong shape.

        Examples
        --------
        >>> s = femlib.data.synthetic_fem(navigation_shape=(8, 8), detector_shape=(64, 64),
        ...                               hot_pixels=4)
        >>> sim = s.metadata.Simulation
        >>> bad = s.find_bad_pixels(gain=4.2, mask=sim.beam_stop_mask & ~sim.bad_pixels,
        ...                         show_progressbar=False)
        >>> counts = bad.metadata.Screening.bad_pixels.counts
        >>> counts["dead"], counts["noisy"]
        (10, 4)
        >>> bool((bad.data == sim.bad_pixels).all())  # the dead and the hot pixels
        True
        >>> mask = (s.sum() < 10000) | bad  # the mask for get_variance
        """
        return _screen.find_bad_pixels(self, gain, noise, mask, hot, noisy, min_z,
                                       show_progressbar)

    def find_outlier_patterns(self, radial_range=None, mask=None, npt=4, npt_azim=32,
                              crystal=6.0, dose=8.0, show_progressbar=None):
        """Patterns to leave out of ``V(k)``: crystalline, dose jumps, non-finite; one pass.

        One polar transform of every pattern over ``radial_range`` (``npt`` bands by
        ``npt_azim`` sectors, :meth:`get_azimuthal_integral2d` with ``mean=True``, so it
        uses the calibration, per-position centres included) gives two scores, judged
        against the scan's own distribution (median and MAD): the largest sector contrast
        (a Bragg spot puts a few sectors of a ring far above the ring's mean) and the
        intensity against the scan neighbours' (beam blanking, dose jumps). No test looks
        at how much a pattern's rings fluctuate as a whole, which is what ``V(k)``
        measures: see :mod:`femlib.screening`.

        Parameters
        ----------
        radial_range : (float, float) or None
            The range of :meth:`get_variance` (calibrated units). Default: the detector.
        mask : bool array, boolean Signal2D or None
            Detector pixels to exclude (beam stop, bad pixels). Default: ``calibration.mask``.
        npt, npt_azim : int
            Radial bands and azimuthal sectors of the polar transform.
        crystal, dose : float
            Thresholds, in robust standard deviations of the scan's scores.
        show_progressbar : bool or None
            Default: HyperSpy's preference.

        Returns
        -------
        Signal2D
            Boolean, navigation shaped (a Signal1D for a line scan), True = outlier; pass it
            as ``get_variance(..., navigation_mask=flags)``. ``metadata.Screening.outliers``
            holds ``n_outliers``, ``counts`` per reason, the per-pattern ``reason`` codes
            (bits ``reason_bits``), ``crystal_score``, ``dose_score``, ``contrast`` and
            ``intensity`` (navigation shaped) and the thresholds.

        Raises
        ------
        ValueError
            As :meth:`get_azimuthal_integral2d`; thresholds <= 0.

        Examples
        --------
        >>> s = femlib.data.synthetic_fem(navigation_shape=(10, 10), detector_shape=(64, 64),
        ...                               crystals=0.05)
        >>> sim = s.metadata.Simulation
        >>> s.calibration.center, s.calibration.affine = sim.center, sim.affine
        >>> flags = s.find_outlier_patterns(radial_range=(3.0, 5.75), mask=sim.beam_stop_mask,
        ...                                 show_progressbar=False)
        >>> bool((flags.data == sim.outliers).all())
        True
        >>> v = s.get_variance(npt=20, gain=4.2, radial_range=(3.0, 5.75),
        ...                    mask=sim.beam_stop_mask, navigation_mask=flags,
        ...                    show_progressbar=False)
        >>> v.metadata.FEM.navigation_mask.n_excluded
        5
        """
        return _screen.find_outlier_patterns(self, radial_range, mask, npt, npt_azim, crystal,
                                             dose, show_progressbar)

    def find_centers(self, mask=None, tiles=None, radial_range=None, model="plane",
                     navigation_mask=None, n_azimuth=90, show_progressbar=None):
        """The pattern centre of every probe position (descan), from the data; one pass.

        The pass sums the patterns of every scan tile. The scan's sum gives a starting
        centre and affine (:func:`femlib.ellipse.determine_ellipse`, then
        :func:`femlib.ellipse.refine_center_affine`); each tile's sum is then refined from
        there on the same ring, and the tile centres are fitted with a low-order model of
        the scan position (a plane by default: descan is linear), evaluated at every
        position. The counts are never moved: set the result as ``calibration.center`` and
        the integration moves the geometry instead.

        Parameters
        ----------
        mask : bool array, boolean Signal2D or None
            Beam stop and bad pixels (True = excluded). Default: ``calibration.mask``.
        tiles : (int, int) or None
            Positions per tile ``(ty, tx)``. Default: a 4 x 4 grid of tiles.
        radial_range : (float, float) or None
            The ring to fit, calibrated units. Default: the brightest ring of the sum.
        model : {"plane", "quadratic", "constant"}
            Model of the centre over the scan.
        navigation_mask : bool array or None
            Positions left out of the tile sums (e.g. outlier patterns).
        n_azimuth : int
            Azimuthal sectors of the ring fits.
        show_progressbar : bool or None
            Default: HyperSpy's preference.

        Returns
        -------
        Signal1D
            Navigation shaped, signal axis ``Centre`` of size 2: ``(x, y)`` px of every
            position (data of shape ``navigation shape + (2,)``, what
            ``calibration.center`` takes per position). ``metadata.Screening.descan``
            holds the raw per-tile fits (``tile_centers``, ``tile_positions`` in scan steps,
            ``tile_ok``), ``residual`` and ``rms_residual`` (px), the model
            ``coefficients`` and the global ``center`` and ``affine``;
            :func:`femlib.screening.plot_descan` draws them.

        Raises
        ------
        ValueError
            Too few positions or tiles for the model, no ring in the sum, or too few tile
            fits; the message says what to pass.

        Examples
        --------
        >>> s = femlib.data.synthetic_fem(navigation_shape=(16, 16), detector_shape=(64, 64),
        ...                               descan=(2.0, 1.0))
        >>> sim = s.metadata.Simulation
        >>> centers = s.find_centers(mask=sim.beam_stop_mask, show_progressbar=False)
        >>> centers.data.shape
        (16, 16, 2)
        >>> bool(np.sqrt(((centers.data - sim.centers) ** 2).sum(-1).mean()) < 0.1)
        True
        """
        return _screen.find_centers(self, mask, tiles, radial_range, model, navigation_mask,
                                    n_azimuth, show_progressbar)


def _short_list(values, most=10):
    """``[a, b, ...]`` with at most ``most`` items shown (messages stay short)."""
    values = [int(v) for v in np.ravel(values)[: most + 1]]
    more = len(values) > most
    return "[" + ", ".join(str(v) for v in values[:most]) + (", ...]" if more else "]")


def _axis_name(name, default):
    name = str(name)
    return default if not name or "undefined" in name else name


def _store_nonuniformity(result, res, binned, subtracted):
    """``metadata.FEM.ring_nonuniformity`` (and its error) when the estimate holds it."""
    if res["ring_nonuniformity"] is None:
        return
    used = res["used_groups"] if binned else [0]
    fem = result.metadata.FEM
    fem.ring_nonuniformity = res["ring_nonuniformity"][used]
    fem.ring_nonuniformity_standard_error = res["ring_nonuniformity_standard_error"][used]
    fem.subtract_nonuniformity = bool(subtracted)
    if binned:
        fem.combined_ring_nonuniformity = res["combined_ring_nonuniformity"]
    else:
        fem.ring_nonuniformity = fem.ring_nonuniformity[0]
        fem.ring_nonuniformity_standard_error = fem.ring_nonuniformity_standard_error[0]


def _check_descan_methods(methods, subtract_nonuniformity):
    """With per-position centres: VImage and the ring non-uniformity are unavailable."""
    if "VImage" in methods:
        raise ValueError(
            "method 'VImage' is not available with per-position centres (descan, "
            "s.calibration.center of shape navigation shape + (2,)): its per-pixel means "
            "over the scan would mix pixels at different distances from the centre. Use "
            "Omega, r or re, or set one centre (x, y)"
        )
    if subtract_nonuniformity and {"r", "re"} & set(methods):
        raise ValueError(
            "subtract_nonuniformity is not available with per-position centres (descan): "
            "the ring non-uniformity needs the per-pixel mean pattern, whose pixels move "
            "with the centre. Pass subtract_nonuniformity=False, or set one centre (x, y)"
        )


def _check_noise(gain, noise):
    """Validated ``gain`` and ``noise`` of get_variance (at most one of them)."""
    gain = _variance.check_gain(gain)
    if noise is None:
        return gain, None
    if gain is not None:
        raise ValueError(
            "give gain (counting detector) or noise (a noise model), not both: "
            f"got gain={gain!r} and noise={noise!r}"
        )
    missing = [a for a in ("gain", "k0", "shot_weights") if not hasattr(noise, a)]
    if missing:
        raise TypeError(
            "noise must be a noise model with gain, k0 and shot_weights(matrix) (e.g. "
            f"femlib.noise.DetectorNoise) or None; {type(noise).__name__} lacks "
            + ", ".join(missing)
        )
    _variance.check_gain(noise.gain, name="noise.gain")
    _variance.check_gain(noise.k0, name="noise.k0")
    return None, noise


#: An all-zero pattern less probable than this under Poisson statistics is taken for
#: missing data (and left out).
_ZERO_PROBABILITY = 1e-6


def _zero_patterns(moments, n_zero, w, gain, noise, quiet):
    """Leave out (with a warning) or put back the patterns that are exactly 0 in every
    radial bin: left out when the other patterns' dose makes a zero improbable (chance
    below :data:`_ZERO_PROBABILITY` under Poisson statistics), else put back."""
    n = moments.n_frames
    total = float((moments.count[:, None] * moments.mean[:, 0, :]).sum()) / max(n, 1)
    g = gain if gain is not None else float(noise.gain) if noise is not None else 1.0
    electrons = total / g
    assumed = "" if gain is not None or noise is not None else (
        " (detector units taken as electrons: no gain given)")
    chance = math.exp(-electrons) if n else 1.0
    if chance >= _ZERO_PROBABILITY:
        return _moments.with_zero_frames(moments)  # plausible shot noise at this dose
    if not quiet:
        r0, r1 = (float(r) for r in w.radial_edges[[0, -1]])
        warnings.warn(
            f"{n_zero} pattern(s) are exactly 0 in the whole radial range ({r0:.4g}, "
            f"{r1:.4g}) while the other {n} hold {electrons:.4g} electrons there on average"
            f"{assumed}"
            f" (chance of an empty pattern {chance:.2g}): left out as missing data (a "
            "missing chunk of a zarr store reads as zeros). metadata.FEM."
            "number_of_zero_patterns holds the count",
            UserWarning,
            stacklevel=4,
        )
    return moments


def _warn_meaningless_bins(w, npt, radial_range, geo):
    """One warning when the bins asked for cannot give a meaningful V(k): a single radial
    bin, or a radial range narrower than one detector pixel."""
    given = "the default radial range" if radial_range is None else (
        f"radial_range={tuple(radial_range)!r}")
    r0, r1 = (float(r) for r in w.radial_edges[[0, -1]])
    pixel = float(np.mean(np.abs(geo["scale"])))
    if r1 - r0 < pixel:
        warnings.warn(
            f"{given} is narrower ({r1 - r0:.4g}) than one detector pixel ({pixel:.4g} "
            "calibrated units): every bin holds fractions of the same few pixels and V(k) "
            "means nothing; widen the range",
            UserWarning,
            stacklevel=3,
        )
    elif npt == 1:
        warnings.warn(
            f"npt=1 gives a single radial bin over {given} ({r0:.4g}, {r1:.4g}): V is one "
            "number averaged over the rings, not a curve of k; use npt >= 2 (e.g. 50)",
            UserWarning,
            stacklevel=3,
        )


def _lazy_variance(work, finish, labels, n_groups, methods, shot, w, shot_scale=1.0):
    """A LazyFEMVariance1D of the pass ``work``: ``compute()`` runs it and ``finish``.

    Its axes are those of ``finish`` on stand-in moments with the frame counts the labels
    give (the pass's own unless frames turn out non-finite or all-zero); metadata that
    needs the pass (standard error, counts, jackknife, combined curves) and the warnings
    come with ``compute()``.
    """
    import dask
    import dask.array as da

    need = _moments.needs(methods, shot)
    descan = isinstance(w, integration.DescanWeights)
    if descan:  # per-position centres keep no per-pixel table (femlib.moments)
        need["pixel_means"] = need["pixel_squares"] = False
    nb = _moments.N_BLOCKS
    states = _moments.frame_states(labels.size, labels.ravel(), n_groups, nb)
    n_states = n_groups * nb
    count = np.bincount(states[states >= 0], minlength=n_states).astype(float)
    k = w.area.size
    p = 0 if descan else w.touched.size
    stand_in = _moments.Moments(
        count, np.ones((n_states, len(_moments.COLUMNS), k)), np.ones((n_states, k)),
        np.ones((n_states, p)) if need["pixel_means"] else None,
        np.ones((n_states, p)) if need["pixel_squares"] else None,
        n_groups, nb, 0, need["squares"], shot, need["ratio"], per_frame_area=descan,
        shot_scale=shot_scale, zero_count=np.zeros(n_states),
    )
    template = finish(stand_in, quiet=True)
    data = da.from_delayed(
        dask.delayed(_variance_data, pure=False)(work, finish), template.data.shape,
        dtype=template.data.dtype,
    )
    md = template.metadata.as_dictionary()
    md.get("Signal", {}).pop("Noise_properties", None)
    md["FEM"] = {key: value for key, value in md["FEM"].items() if key in _CALL_KEYS}
    result = LazyFEMVariance1D(data, axes=template.axes_manager._get_axes_dicts(),
                               metadata=md)
    result._femlib_pending = {"work": work, "finish": finish, "run": _compute, "data": data}
    return result


#: metadata.FEM keys of a lazy V(k) before compute(): those the call fixes.
_CALL_KEYS = ("method", "methods", "gain", "npt", "radial_range", "Calibration",
              "thickness_edges", "tiles", "noise_model", "subtract_nonuniformity")


def _variance_data(moments, finish):
    return finish(moments).data


def _warn_off_detector(geo, weights, radial_range=None):
    """One warning when the centre looks unset or the radial range mostly misses the
    detector (the integral would then be taken around the wrong point). The range is
    named as the user gave it (or as the default when ``radial_range`` is None)."""
    fraction = float(
        azimuth_fraction_on_detector(
            geo["detector_shape"], geo["center"], geo["affine"], geo["scale"],
            weights.radial_centers,
        ).mean()
    )
    unset = bool(np.all(geo["center"] == 0))
    if fraction >= 0.5 and not unset:
        return
    cx, cy = (float(c) + 0.0 for c in geo["center"])  # + 0.0: no "-0" in the message
    r0, r1 = (float(r) for r in weights.radial_edges[[0, -1]])
    given = f"the radial range ({r0:.4g}, {r1:.4g})" + (
        "" if radial_range is not None
        else " (the default of radial_range=None: 0 to the farthest detector corner)"
    )
    msg = (
        f"only {fraction:.0%} of the azimuths of {given} lie "
        f"on the detector around the centre ({cx:.4g}, {cy:.4g}) px"
    )
    if unset:
        msg += (
            "; the centre is at pixel (0, 0), HyperSpy's default axis offsets: it looks "
            "unset (set s.calibration.center = (x, y) in pixels)"
        )
    warnings.warn(msg, UserWarning, stacklevel=4)


def _title(what, signal):
    source = signal.metadata.General.title
    return f"{what} of {source}" if source else what


def _nav_axis(name, units, values):
    values = np.asarray(values, dtype=float)
    if values.size > 1 and np.allclose(np.diff(values), values[1] - values[0]):
        return {
            "name": name,
            "units": units,
            "size": values.size,
            "offset": values[0],
            "scale": values[1] - values[0],
            "navigate": True,
        }
    if values.size == 1:
        return {"name": name, "units": units, "size": 1, "offset": values[0], "navigate": True}
    return {"name": name, "units": units, "axis": values, "navigate": True}


def _compute(work, show_progressbar, scheduler=None, **kwargs):
    """Compute with dask (the active scheduler, or ``scheduler``; ``kwargs`` go to
    ``dask.compute``), with dask's progress bar on local schedulers when asked (default:
    HyperSpy's preference, ``hs.preferences.General.show_progressbar``; eager data then
    draw it only for passes longer than a second)."""
    import contextlib

    import dask

    # With the default (HyperSpy's preference), a pass over eager data draws its bar only
    # when it lasts over a second: most take a fraction of one, and a bar per call fills a
    # notebook or a script's output.
    minimum = 1.0 if show_progressbar is None and scheduler == "threads" else 0.0
    if show_progressbar is None:
        show_progressbar = preferences.General.show_progressbar
    ctx = contextlib.nullcontext()
    if show_progressbar:
        from femlib._progress import ProgressBar  # imports dask.diagnostics: only when drawn

        ctx = ProgressBar(minimum=minimum)
    if scheduler == "threads":
        # The threaded scheduler itself: named by its string, dask first imports
        # distributed (a second of the first call) to look for a client it then ignores.
        from dask.threaded import get as scheduler
    with ctx:
        (result,) = dask.compute(work, scheduler=scheduler, **kwargs)
    return result


def _check_no_empty_bins(weights):
    empty = np.flatnonzero(weights.area.reshape(weights.npt, weights.npt_azim).sum(1) <= 0)
    if empty.size:
        radii = ", ".join(f"{r:.4g}" for r in weights.radial_centers[empty][:10])
        more = "" if empty.size <= 10 else f" and {empty.size - 10} more"
        raise ValueError(
            f"{empty.size} radial bin(s) contain no unmasked pixel (radius {radii}{more}); "
            "narrow radial_range, use fewer bins (npt) or check the mask"
        )


class LazyFEMDiffraction2D(LazySignal, FEMDiffraction2D):
    """Lazy (dask-backed) :class:`FEMDiffraction2D`; every method streams over chunks."""
