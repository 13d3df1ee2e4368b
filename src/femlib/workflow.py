"""The ``femlib fem`` workflow as a library function: load, screen, calibrate, V(k), peaks.

:func:`run_fem` runs the steps the command line runs and returns one :class:`FEMResult`;
it writes nothing (:func:`femlib.report.write_outputs` does, atomically). A notebook calls
it as the command does::

    result = femlib.workflow.run_fem("scan.zspy", gain=4.2, radial_range=(3.0, 5.75))
    result.variance.plot()

The steps, each a function of its own so that a further step slots in between:

1. :func:`load` -- read the file (any reader of RosettaSciIO, lazily where it can), pick
   its 4D-STEM signal, refuse a zarr store with missing chunks (:func:`missing_chunks`);
2. screening -- patterns with NaN or infinite values are left out (and counted) of the
   summed pattern and of V(k);
3. calibration -- the summed pattern, its mask, the ring ellipse (centre and affine) or the
   centre given by the user;
4. V(k) in one pass (per thickness bin, with the shot-noise correction);
5. the peaks of V(k).

Errors the user can fix are :class:`UsageError` (a ``ValueError``) whose message names the
command-line options that fix them (``--radial-range``, ``--center``, ...), the names the
keyword arguments of :func:`run_fem` carry with ``_`` for ``-``.
"""

import contextlib
import dataclasses
import re
import time
import warnings
from pathlib import Path

import numpy as np

from femlib._files import (  # noqa: F401 - public here: the workflow's load step
    MissingChunks,
    UsageError,
    _hs_load,
    _is_4dstem,
    _name,
    _read_array,
    _read_frames,
    _readable_extensions,
    _reason,
    _silenced_loggers,
    check_reader,
    load,
    missing_chunks,
)

__all__ = ["DESCAN_MIN_PX", "MIN_SCREEN_PATTERNS", "FEMOptions", "FEMResult", "MissingChunks",
           "Screening", "UsageError", "check_reader", "load", "missing_chunks", "run_fem"]

# A thickness bin with fewer than two patterns has no variance; the workflow reports
# those bins in one warning of its own instead of the library's, which names every bin.
_LEFT_OUT_BINS = r"thickness bin\(s\) with fewer than 2 patterns are left out"
# get_variance's and the integrals' warning for a radial range mostly off the detector:
# shown only for a range the user gave, never for one the workflow chose itself.
_PARTIAL_RING = r"only \d+% of the azimuths of the radial range"
_DEFAULT_SHAPE = (40, 40)
_NAN_PATTERNS = r"pattern\(s\) have NaN or infinite values in unmasked pixels"


@dataclasses.dataclass
class FEMOptions:
    """The settings of :func:`run_fem`: one field per ``femlib fem`` option.

    The fields are the command-line options with ``_`` for ``-`` (``--radial-range A B``
    is ``radial_range=(A, B)``); see :doc:`/user_guide/cli` for their meaning. Options
    given alone or with two radii (``--thickness-from-pattern``, ``--noise-from-scan``)
    are ``()`` alone and ``(A, B)`` with radii, None when absent. ``mask`` and ``haadf``
    take a file name or an array; ``scale`` is ``(value,)`` or ``(value, units)``.

    Examples
    --------
    >>> FEMOptions(npt=20).npt
    20
    """

    gain: float | None = None
    npt: int = 50
    radial_range: tuple | None = None
    mask_below: float | None = None
    mask: object = None
    center: tuple | None = None
    scale: tuple | None = None
    haadf: object = None
    thickness_bins: int | None = None
    black_level: float | None = None
    slope: float | None = None
    thickness_from_pattern: tuple | None = None
    flat_field: str | None = None
    dark: str | None = None
    offset: float | None = None
    noise_from_scan: tuple | None = None
    method: str = "Omega"
    num_points: int = 500
    seed: int | None = None
    synthetic_shape: tuple | None = None
    reader: str | None = None
    signal: int | None = None
    bad_pixels: object = "auto"
    outliers: str = "auto"
    descan: str = "auto"


@dataclasses.dataclass
class FEMResult:
    """Everything a :func:`run_fem` run found, for a notebook or the report.

    Attributes
    ----------
    source : str
        ``"synthetic dataset"``, the file name, or ``"signal"`` for a signal given.
    options : FEMOptions
        The settings used.
    n_total, n_used, n_nonfinite : int
        Patterns in the input, used in V(k), and left out for NaN or infinite values.
    summed : hyperspy.signals.Signal2D
        The summed pattern (of the patterns without NaN), calibrated.
    mask : (rows, cols) ndarray of bool
        The detector mask used (True = left out).
    threshold : float or None
        The ``mask_below`` threshold used (None when the mask came from a file only).
    center : (2,) ndarray
        The centre, (row, col) in pixels.
    affine : (3, 3) ndarray
        The affine correcting the elliptical distortion (identity with ``center=``).
    ellipse, points : ndarray or None
        The fitted ellipse parameters and the ring points fitted (None with ``center=``).
    radial_range : (float, float)
        The radial range of V(k), in calibrated units.
    gain : float or None
        The gain of the counting model (None with a noise kernel or no correction).
    noise : femlib.noise.DetectorNoise or None
        The measured noise kernel, if any.
    annulus : (float, float) or None
        The annulus of the relative thickness from the patterns, if used.
    variance : FEMVariance1D
        V(k) (per thickness bin with ``thickness_bins``).
    curve : FEMVariance1D
        The main curve(s): the combination over thickness bins, or ``variance``.
    polar : FEMPolar2D
        The polar transform of the summed pattern.
    peaks, peak_table : femlib.signals._peaks.PeakTable
        The fitted peaks of ``curve``, and of every curve (``peaks.csv``).
    bins_line : str or None
        How many thickness bins hold 2 or more patterns.
    truth : dict
        The synthetic dataset's ground truth (empty for a file).
    signal_units : str
        The units of the detector axes (``"px"`` when uncalibrated).
    detector_scale : float
        The detector's pixel size in ``signal_units``.
    input_path : str or None
        The absolute path of the input file.
    warnings : list of str
        The warnings of the run, in order.
    timings : dict
        Seconds per step.
    signal : FEMDiffraction2D or LazyFEMDiffraction2D
        The dataset the workflow ran on, with the calibration (centre, affine, mask) set:
        for further calls such as ``result.signal.get_variance(...)``. A copy of a signal
        given (sharing its data); lazy for a file its reader streams.
    screening : Screening
        What the screening steps found and left out (bad pixels, outlier patterns,
        descan).
    """

    source: str
    options: FEMOptions
    n_total: int
    n_used: int
    n_nonfinite: int
    summed: object
    mask: np.ndarray
    threshold: float | None
    center: np.ndarray
    affine: np.ndarray
    ellipse: np.ndarray | None
    points: np.ndarray | None
    radial_range: tuple
    gain: float | None
    noise: object
    annulus: tuple | None
    variance: object
    curve: object
    polar: object
    peaks: object
    peak_table: object
    bins_line: str | None
    truth: dict
    signal_units: str
    detector_scale: float
    input_path: str | None
    warnings: list
    timings: dict
    signal: object = None
    screening: object = None

    @property
    def binned(self):
        """True when V(k) was computed per thickness bin."""
        return self.options.thickness_bins is not None

    def summary(self):
        """The command's summary (without the line naming the files written).

        Examples
        --------
        >>> r = run_fem(synthetic_shape=(6, 6), npt=12, seed=1)
        >>> r.summary().splitlines()[1]
        '  patterns used: 36 of 36'
        """
        from femlib import report

        return "\n".join(report.summary_lines(self))


#: A fitted descan whose largest shift from the mean centre is below this (px) is left
#: uncorrected by ``descan="auto"``: the engine rounds per-position centres to 0.1 px
#: (:data:`femlib.integration.DESCAN_SUBPIXEL`), so a smaller field changes no weight, and
#: one centre keeps VImage and the results of a clean scan exactly as they are.
DESCAN_MIN_PX = 0.1
#: The automatic screening judges pixels and patterns against the scan's own statistics
#: (temporal variances, medians and MADs over the positions, tile fits): with fewer
#: patterns than this they are noise, and ``auto`` leaves the step out (the summary says
#: so).
MIN_SCREEN_PATTERNS = 100


@dataclasses.dataclass
class Screening:
    """What the screening steps of :func:`run_fem` found and left out.

    Attributes
    ----------
    bad_pixel_source : str
        ``"auto"`` (searched with ``find_bad_pixels``), ``"none"``, or the file (or
        ``"an array"``) the bad pixels came from.
    bad_pixels : hyperspy.signals.Signal2D or None
        The result of ``find_bad_pixels`` (reasons and scores in
        ``metadata.Screening.bad_pixels``); None unless searched.
    bad_pixel_mask : (rows, cols) ndarray of bool or None
        The bad pixels added to the detector mask (None with ``"none"``).
    outliers : hyperspy signal or None
        The result of ``find_outlier_patterns`` (navigation shaped, True = outlier,
        reasons and scores in ``metadata.Screening.outliers``); None with ``"none"``.
    centers : hyperspy.signals.Signal1D or None
        The result of ``find_centers`` (one (x, y) per position, the tile fits in
        ``metadata.Screening.descan``); None unless searched.
    descan : float or None
        Largest distance (px) of a position's fitted centre from their mean.
    descan_applied : bool
        Whether the per-position centres were used (a descan of at least
        :data:`DESCAN_MIN_PX`, and an estimator that takes them).
    descan_note : str
        Why the descan was not searched or not corrected ("" when it was applied).
    navigation_mask : ndarray of bool or None
        The positions left out of V(k) (outliers and patterns with NaN or inf).
    nonfinite : ndarray of bool or None
        The patterns with NaN or inf (left out whatever ``outliers`` is).
    skipped : dict
        ``{"bad_pixels" or "outliers": why}`` for an ``auto`` step left out (a scan of
        fewer than :data:`MIN_SCREEN_PATTERNS` patterns).

    Examples
    --------
    >>> Screening().left_out_line(n_total=100)
    'left out: no bad pixels, no positions'
    """

    bad_pixel_source: str = "none"
    bad_pixels: object = None
    bad_pixel_mask: np.ndarray | None = None
    outliers: object = None
    centers: object = None
    descan: float | None = None
    descan_applied: bool = False
    descan_note: str = ""
    navigation_mask: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    skipped: dict = dataclasses.field(default_factory=dict)

    @property
    def n_bad_pixels(self):
        """The number of bad pixels added to the mask."""
        return 0 if self.bad_pixel_mask is None else int(self.bad_pixel_mask.sum())

    def pixel_reasons(self):
        """``{reason: count}`` of the bad pixels, each pixel counted once under its
        reasons joined by ``+`` (``{"from file": n}`` for a file)."""
        if self.bad_pixels is not None:
            md = self.bad_pixels.metadata.Screening.bad_pixels
            return _count_codes(md.reason_map[self.bad_pixel_mask], md.reason_bits)
        return {"from file": self.n_bad_pixels} if self.n_bad_pixels else {}

    def position_reasons(self):
        """``{reason: count}`` of the positions left out of V(k), each counted once under
        its reasons joined by ``+``."""
        if self.navigation_mask is None:
            return {}
        from femlib.screening import REASONS_PATTERN

        codes = np.zeros(self.navigation_mask.shape, np.int64)
        if self.outliers is not None:
            codes |= np.asarray(self.outliers.metadata.Screening.outliers.reason)
        if self.nonfinite is not None:  # also where the NaN lies in masked pixels only
            codes[self.nonfinite] |= REASONS_PATTERN["nonfinite"]
        return _count_codes(codes[self.navigation_mask], REASONS_PATTERN)

    @property
    def n_positions(self):
        """The number of positions left out of V(k)."""
        return 0 if self.navigation_mask is None else int(self.navigation_mask.sum())

    def pixels_text(self):
        """``"12 bad pixels (2 dead, 10 noisy)"`` or ``"no bad pixels"``."""
        if "bad_pixels" in self.skipped:
            return f"bad pixels not searched ({self.skipped['bad_pixels']})"
        if not self.n_bad_pixels:
            return "no bad pixels"
        return f"{self.n_bad_pixels} bad pixels ({_why(self.pixel_reasons())})"

    def positions_text(self, n_total):
        """``"32 of 1600 positions (32 crystalline)"`` or ``"no positions"``."""
        if not self.n_positions:
            return ("no positions" if "outliers" not in self.skipped else
                    f"outliers not searched ({self.skipped['outliers']})")
        why = _why(self.position_reasons())
        return f"{self.n_positions} of {n_total} positions ({why})"

    def left_out_line(self, n_total):
        """The summary's line: how many pixels and positions were left out, and why."""
        return f"left out: {self.pixels_text()}, {self.positions_text(n_total)}"

    def descan_line(self):
        """The summary's line on the descan."""
        if self.descan_applied:
            return (f"descan: corrected, per-position centres up to {self.descan:.2f} px "
                    "from their mean")
        return f"descan: {self.descan_note}"


def _count_codes(codes, bits):
    """``{"hot+noisy": 2, ...}``: how often each combination of reason bits occurs."""
    bits = bits.as_dictionary() if hasattr(bits, "as_dictionary") else dict(bits)
    values, counts = np.unique(np.asarray(codes, dtype=np.int64), return_counts=True)
    return {"+".join(k for k, b in bits.items() if v & b): int(n)
            for v, n in zip(values, counts, strict=True) if v}


def _why(reasons):
    names = {"nonfinite": "NaN or inf", "from file": "from --bad-pixels"}
    return ", ".join(f"{n} {names.get(k, k)}" for k, n in reasons.items())


class _Steps:
    """Times the steps and reports each finished one to ``progress`` (if any)."""

    def __init__(self, progress):
        self.progress, self.timings = progress, {}

    @contextlib.contextmanager
    def __call__(self, key, done):
        start = time.perf_counter()
        ctx = self.progress.step(done) if self.progress is not None else (
            contextlib.nullcontext())
        with ctx:
            yield
        self.timings[key] = time.perf_counter() - start


def run_fem(source=None, *, progress=None, **options):
    """Run the ``femlib fem`` workflow and return its results; nothing is written.

    Parameters
    ----------
    source : str, pathlib.Path, FEMDiffraction2D or None
        A file HyperSpy reads (loaded lazily where the reader can), a 4D-STEM signal (not
        modified), or None for the offline synthetic dataset
        (:func:`femlib.data.synthetic_fem`, with its truth).
    progress : object or None
        Progress reporter with a ``step(done_text)`` context manager (the CLI's); None:
        silent.
    **options
        The fields of :class:`FEMOptions` (the command-line options).

    Returns
    -------
    FEMResult

    Raises
    ------
    UsageError
        Bad or contradicting options, an unreadable or incomplete file, a ring ellipse that
        cannot be fitted, ...: the message names the options that help.
    ValueError
        Bad input found by the computation (a radial range outside the detector, a mask
        that leaves a radial bin empty, ...).

    Examples
    --------
    >>> r = run_fem(synthetic_shape=(6, 6), npt=12, seed=1)
    >>> r.n_used, r.variance.data.shape
    (36, (12,))
    """
    import femlib
    from femlib.noise import DetectorNoise

    opts = options if isinstance(options, FEMOptions) else FEMOptions(**options)
    steps = _Steps(progress)
    caught = []
    previous_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        caught.append(" ".join(str(message).split()))
        previous_show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LEFT_OUT_BINS, category=UserWarning)
        warnings.showwarning = show
        # 1. load: options first, then the data and every file an option names.
        _check_options(opts, source)
        path = None if source is None or not isinstance(source, str | Path) else Path(source)
        if source is None:
            s, truth = _synthetic(opts)
            name = "synthetic dataset"
        elif path is not None:
            s = load(path, reader=opts.reader, signal=opts.signal)
            truth, name = {}, str(source)
        else:
            s, truth, name = _own_signal(source), {}, "signal"
        _apply_scale(s, opts)
        _apply_haadf(s, opts)
        thickness = _thickness(opts, s, truth)
        _check_radial_range(opts.radial_range, s)
        _check_radial_range(opts.thickness_from_pattern, s, "--thickness-from-pattern")
        _check_radial_range(opts.noise_from_scan, s, "--noise-from-scan")
        detector = _detector_shape(s)
        file_mask = _read_mask(opts.mask, detector) if opts.mask is not None else None
        _check_center(opts.center, detector)
        flat = dark = None
        if opts.flat_field is not None:
            flat = _read_frames(opts.flat_field, "--flat-field", detector, series=True)
            if opts.dark is not None:
                dark = _read_frames(opts.dark, "--dark", detector, series=False)
        _odd_input_warnings(opts, s)
        n_total = int(s.axes_manager.navigation_size)
        noise = None
        if flat is not None:
            n_flat = int(np.prod(flat.shape[:-2]))
            with steps("noise", f"noise kernel from {n_flat} flat-field frames"):
                noise = _noise_from_flat_field(opts, flat, dark)
        gain = None if noise is not None or opts.noise_from_scan is not None else (
            opts.gain if opts.gain is not None else truth.get("gain"))

        # 2. screen: patterns with NaN/inf are left out of the sum and of V(k). A further
        # screening step (bad pixels, outlier patterns, per-position centres) adds its
        # flags to ``navigation_mask`` (True = left out) and its pixels to the mask here.
        with steps("sum", f"summed {n_total} patterns"):
            summed, bad_frames = _reading(path, lambda: _sum_finite(s))
        n_nonfinite = int(bad_frames.sum()) if bad_frames is not None else 0
        if n_nonfinite:
            if n_nonfinite >= n_total - 1:
                raise UsageError(f"{n_nonfinite} of {n_total} patterns hold NaN or infinite "
                                 "values: fewer than 2 patterns are left for V(k)")
            warnings.warn(f"{n_nonfinite} of {n_total} patterns hold NaN or infinite values "
                          "and are left out of the summed pattern and of V(k)", UserWarning,
                          stacklevel=2)
        if not np.any(summed.data):
            raise UsageError(f"{name} holds only zero counts in its {n_total - n_nonfinite} "
                             "patterns: nothing to measure")
        navigation_mask = bad_frames if n_nonfinite else None
        mask, threshold = _mask(summed.data, opts, file_mask)
        screen = Screening(navigation_mask=navigation_mask, nonfinite=navigation_mask)
        # Bad pixels before the ellipse fit: a hot pixel on the ring pulls the fit.
        mask = _screen_pixels(opts, s, mask, gain, noise, bad_frames, path, steps, screen)

        # 3. calibrate: centre and affine (the ring ellipse, or the centre given).

        with steps("ellipse", "fitted the ring ellipse" if opts.center is None
                   else "used the given centre"):
            center, affine, params, pos = _calibrate(summed.data, mask, opts)
        for sig in (s, summed):
            sig.calibration.center = center[::-1]
            sig.calibration.affine = affine
            sig.calibration.mask = mask

        radial_range = opts.radial_range
        if radial_range is None:
            radial_range = (3.0, 5.75) if source is None and opts.scale is None else (
                _default_radial_range(s, mask, opts.npt))
        radial_range = tuple(float(r) for r in radial_range)
        # Descan before the outliers: the outlier test integrates around each centre.
        _screen_descan(opts, s, mask, navigation_mask, path, steps, screen)
        navigation_mask = _screen_outliers(opts, s, radial_range, mask, path, steps, screen,
                                           n_total)
        units = _units(s.axes_manager.signal_axes[0])
        annulus = None
        if opts.thickness_from_pattern is not None:
            annulus = tuple(opts.thickness_from_pattern) or _outer_annulus(s)
            with steps("thickness", f"relative thickness from the patterns ({annulus[0]:.4g}-"
                       f"{annulus[1]:.4g} {units})"):
                try:
                    with warnings.catch_warnings():
                        # The annulus reaches into the detector corners on purpose: the
                        # mean over the pixels it covers is the measure, not a full ring.
                        warnings.filterwarnings("ignore", message=_PARTIAL_RING,
                                                category=UserWarning)
                        thickness = _reading(path, lambda: femlib.thickness.
                                             thickness_from_pattern(s, annulus, mask=mask))
                except ValueError as exc:
                    raise UsageError(f"--thickness-from-pattern: {exc}") from None
        if opts.noise_from_scan is not None:
            with steps("noise", "noise kernel from the scan"):
                try:
                    noise = _reading(path, lambda: DetectorNoise.from_scan(
                        s, mask=mask, radial_range=tuple(opts.noise_from_scan) or None,
                        navigation_mask=navigation_mask))
                except ValueError as exc:
                    raise UsageError(f"--noise-from-scan: {exc}") from None
        # 4. V(k) in one pass. gain= is the counting model; a measured kernel replaces it
        # (get_variance takes one).
        correction = {"gain": gain} if noise is None else {"noise": noise}
        with steps("variance", f"V(k) from {n_total} patterns"):
            var = _reading(path, lambda: _computed(s.get_variance(
                npt=opts.npt, method=opts.method, radial_range=radial_range, mask=mask,
                thickness=thickness, bins=opts.thickness_bins, show_progressbar=False,
                navigation_mask=navigation_mask, **correction,
            )))
        if annulus is not None:
            _relabel_relative_bins(var)
        # The transform is linear: transforming the summed pattern once gives the sum of
        # the transformed patterns at 1/N of the cost. Its range is the workflow's choice:
        # no warning about it.
        with steps("polar", "polar transform of the summed pattern"), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_PARTIAL_RING, category=UserWarning)
            polar = summed.get_azimuthal_integral2d(
                npt=100, npt_azim=180, mean=True, show_progressbar=False
            )
        binned = opts.thickness_bins is not None
        main_curve = var.combined() if binned else var
        fem = var.metadata.FEM
        n_used = int(fem.number_of_patterns)
        bins_line = None
        if binned:
            counts = np.asarray(fem.counts)
            n_bins, n_kept = counts.size, len(fem.labels)
            bins_line = f"thickness bins: {n_kept} of {n_bins} hold 2 or more patterns"
            if n_kept < n_bins:
                left_out = int(counts.sum()) - n_used
                warnings.warn(
                    f"{n_bins - n_kept} of {n_bins} thickness bins hold fewer than 2 "
                    f"patterns and are left out ({left_out} patterns); use fewer bins",
                    UserWarning, stacklevel=2,
                )
        # 5. peaks.
        with steps("peaks", "fitted the peaks of V(k)"):
            main_peaks, all_peaks = _peak_tables(var, main_curve, binned)
    return FEMResult(
        source=name, options=opts, n_total=n_total, n_used=n_used, n_nonfinite=n_nonfinite,
        summed=summed, mask=mask, threshold=threshold, center=center, affine=affine,
        ellipse=params, points=pos, radial_range=radial_range, gain=gain, noise=noise,
        annulus=annulus, variance=var, curve=main_curve, polar=polar, peaks=main_peaks,
        peak_table=all_peaks, bins_line=bins_line, truth=truth, signal_units=units,
        detector_scale=float(s.calibration.scale), input_path=None if path is None else
        str(path.resolve()), warnings=caught, timings=steps.timings, signal=s,
        screening=screen,
    )


# --- checks that need no data ---------------------------------------------------------


def _check_options(opts, source=None):
    """The checks that need no data: option combinations, INPUT's existence and type, the
    files of --mask, --haadf, --bad-pixels, --flat-field and --dark. Value ranges of the
    command line are checked by its parser.

    Raises
    ------
    UsageError
    """
    if opts.radial_range is not None and opts.radial_range[0] >= opts.radial_range[1]:
        a, b = opts.radial_range
        raise UsageError(f"--radial-range must be increasing (A < B), got {a:g} {b:g}")
    if source is not None:
        for option, value in (("--seed", opts.seed),
                              ("--synthetic-shape", opts.synthetic_shape)):
            if value is not None:
                raise UsageError(f"{option} only applies to the synthetic dataset (no INPUT)")
    else:
        for option, value in (("--reader", opts.reader), ("--signal", opts.signal)):
            if value is not None:
                raise UsageError(f"{option} only applies with INPUT (a file)")
    if opts.reader is not None:
        check_reader(opts.reader)
    if opts.signal is not None and opts.signal < 0:
        raise UsageError(f"--signal must be >= 0, got {opts.signal}")
    if opts.scale is not None:
        if len(opts.scale) not in (1, 2):
            raise UsageError(f"--scale takes VALUE [UNITS], got {len(opts.scale)} values")
        value = opts.scale[0]
        if not (np.isfinite(value) and value > 0):
            raise UsageError(f"--scale must be a finite number > 0, got {value}")
    haadf = [o for o, v in (("--black-level", opts.black_level), ("--slope", opts.slope))
             if v is not None]
    verb = "apply" if len(haadf) > 1 else "applies"
    if opts.thickness_bins is None:
        if haadf:
            raise UsageError(f"{' and '.join(haadf)} only {verb} with --thickness-bins")
        if opts.thickness_from_pattern is not None:
            raise UsageError("--thickness-from-pattern only applies with --thickness-bins")
        if opts.haadf is not None:
            raise UsageError("--haadf only applies with --thickness-bins")
    _check_pair(opts.thickness_from_pattern, "--thickness-from-pattern")
    if opts.thickness_from_pattern is not None and (haadf or opts.haadf is not None):
        # The pattern gives a relative thickness: for equal-width bins any linear
        # calibration gives the same bins, and the HAADF's L and S mean nothing for it.
        if opts.haadf is not None and not haadf:
            raise UsageError("--haadf and --thickness-from-pattern are two thickness "
                             "sources: give one")
        what = "calibrate the HAADF image and do not" if len(haadf) > 1 else (
            "calibrates the HAADF image and does not")
        raise UsageError(
            f"{' and '.join(haadf)} {what} apply with --thickness-from-pattern (its bins "
            "are in relative thickness)"
        )
    _check_noise_args(opts)
    for option, value in (("--outliers", opts.outliers), ("--descan", opts.descan)):
        if value not in ("auto", "none"):
            raise UsageError(f"{option} takes auto or none, got {value!r}")
    bad_pixels = None if opts.bad_pixels in ("auto", "none") else opts.bad_pixels
    for option, value in (("--mask", opts.mask), ("--haadf", opts.haadf),
                          ("--bad-pixels", bad_pixels)):
        if isinstance(value, str | Path):
            _check_file(value, option, extra=("npy", "tif", "tiff"))
    if source is None or not isinstance(source, str | Path):
        return
    path = Path(source)
    if not path.exists():
        raise UsageError(f"INPUT {path} does not exist")
    ext = path.suffix.lower().lstrip(".")
    if ext not in _readable_extensions():
        raise UsageError(
            f"INPUT {path}: unsupported file type {path.suffix or '(no extension)'}; "
            "give a 4D-STEM file that HyperSpy reads (.zspy, .hspy, .mib, .blo, .dm4, ...)"
        )


def _check_file(name, option, extra=("npy",)):
    path = Path(name)
    if not path.exists():
        raise UsageError(f"{option} {path} does not exist")
    ext = path.suffix.lower().lstrip(".")
    if ext not in extra and ext not in _readable_extensions():
        raise UsageError(
            f"{option} {path}: unsupported file type {path.suffix or '(no extension)'}; "
            "give a .npy file or a file that HyperSpy reads (.hspy, .zspy, ...)"
        )


def _check_pair(values, option):
    """An option given alone (``()``) or with two increasing radii."""
    if values is None or len(values) == 0:
        return
    if len(values) != 2:
        raise UsageError(f"{option} takes no value or two radii A B, got {len(values)} values")
    if values[0] >= values[1]:
        raise UsageError(
            f"{option} must be increasing (A < B), got {values[0]:g} {values[1]:g}"
        )


def _check_noise_args(opts):
    """--gain, --flat-field (with --dark or --offset) and --noise-from-scan: one noise
    model, and the flat-field files exist and have a readable type."""
    models = [o for o, v in (("--gain", opts.gain), ("--flat-field", opts.flat_field),
                             ("--noise-from-scan", opts.noise_from_scan)) if v is not None]
    if len(models) > 1:
        raise UsageError(
            f"give one of --gain (counting detector), --flat-field or --noise-from-scan "
            f"(measured noise kernel), got {' and '.join(models)}"
        )
    _check_pair(opts.noise_from_scan, "--noise-from-scan")
    if opts.flat_field is None:
        for option, value in (("--dark", opts.dark), ("--offset", opts.offset)):
            if value is not None:
                raise UsageError(f"{option} only applies with --flat-field")
        return
    if opts.dark is not None and opts.offset is not None:
        raise UsageError("give --dark (a frame) or --offset (a number), not both")
    for option, name in (("--flat-field", opts.flat_field), ("--dark", opts.dark)):
        if name is not None:
            _check_file(name, option)


def _synthetic(opts):
    import femlib

    seed = 0 if opts.seed is None else opts.seed
    shape = _DEFAULT_SHAPE if opts.synthetic_shape is None else tuple(opts.synthetic_shape)
    s = femlib.data.synthetic_fem(navigation_shape=shape, seed=seed)
    return s, s.metadata.Simulation.as_dictionary()


def _own_signal(source):
    """A signal given by the caller: a copy of its metadata and axes on the same data (the
    workflow sets its calibration, the caller's signal stays as it was)."""
    if not hasattr(source, "axes_manager") or not _is_4dstem(source):
        raise UsageError("source must be a file name, None (the synthetic dataset) or a "
                         "4D-STEM signal (probe positions x 2D patterns)")
    s = source._deepcopy_with_new_data(source.data)
    s.set_signal_type("fem_diffraction")
    return s


def _apply_scale(s, opts):
    if opts.scale is None:
        return
    value = float(opts.scale[0])
    units = opts.scale[1] if len(opts.scale) > 1 else None
    for ax in s.axes_manager.signal_axes:
        ax.scale = value
        if units is not None:
            ax.units = units


def _read_mask(value, detector, option="--mask"):
    mask = _read_array(value, option)
    if mask.shape != tuple(detector):
        raise UsageError(f"{option} {_name(value)} has shape {mask.shape} but the detector is "
                         f"{tuple(detector)} (rows, cols)")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise UsageError(f"{option} {_name(value)} must be boolean (True or 1 = masked), got "
                             f"{mask.dtype} values other than 0 and 1")
        mask = mask.astype(bool)
    if mask.all():
        raise UsageError(f"{option} {_name(value)} masks every pixel")
    return mask


def _screen_pixels(opts, s, mask, gain, noise, bad_frames, path, steps, screen):
    """--bad-pixels: search (``auto``), read a file, or nothing; the mask with them added.

    Patterns with NaN or inf are searched as zero patterns (one in the scan shifts no
    pixel's statistics noticeably); without this every pixel would be non-finite."""
    source = opts.bad_pixels
    if isinstance(source, str) and source in ("none", "auto"):
        screen.bad_pixel_source = source
        if source == "none":
            return mask
        if s.axes_manager.navigation_size < MIN_SCREEN_PATTERNS:
            screen.skipped["bad_pixels"] = _too_few(s)
            return mask
        target = _finite_frames(s, bad_frames)
        with steps("bad_pixels", "searched for bad pixels"):
            found = _reading(path, lambda: target.find_bad_pixels(
                gain=gain, noise=noise, mask=mask, show_progressbar=False))
        screen.bad_pixels = found
        bad = np.asarray(found.data, dtype=bool)
    else:
        screen.bad_pixel_source = _name(source)
        bad = _read_mask(source, mask.shape, "--bad-pixels")
    screen.bad_pixel_mask = bad
    union = mask | bad
    if union.all():
        raise UsageError("the mask and the bad pixels leave no pixel: give --bad-pixels none "
                         "or a smaller --mask / --mask-below")
    return union


def _too_few(s):
    return f"{int(s.axes_manager.navigation_size)} patterns, fewer than {MIN_SCREEN_PATTERNS}"


def _finite_frames(s, bad_frames):
    """``s``, or a lazy view of it with the patterns flagged in ``bad_frames`` set to 0."""
    if bad_frames is None or not bad_frames.any():
        return s
    import dask.array as da

    view = s if s._lazy else s.as_lazy()
    data = view.data
    flags = da.from_array(bad_frames, chunks=data.chunksize[: bad_frames.ndim])
    view = view._deepcopy_with_new_data(da.where(flags[..., None, None], 0, data))
    return view


def _screen_descan(opts, s, mask, navigation_mask, path, steps, screen):
    """--descan: find the per-position centres and set them as ``s.calibration.center``
    when the descan reaches :data:`DESCAN_MIN_PX` and the estimator takes them."""
    from femlib.variance import METHODS

    if opts.descan == "none":
        screen.descan_note = "not searched (--descan none)"
        return
    if opts.center is not None:
        screen.descan_note = "not searched (--center gives one centre)"
        return
    if s.axes_manager.navigation_size < MIN_SCREEN_PATTERNS:
        screen.descan_note = f"not searched ({_too_few(s)})"
        return
    try:
        with steps("descan", "found the pattern centres over the scan (descan)"):
            centers = _reading(path, lambda: s.find_centers(
                mask=mask, navigation_mask=navigation_mask, show_progressbar=False))
    except UsageError:
        raise
    except ValueError as exc:
        screen.descan_note = "not corrected: the centre search failed"
        warnings.warn(f"descan not corrected: {exc}; give --descan none to skip the search",
                      UserWarning, stacklevel=3)
        return
    screen.centers = centers
    c = np.asarray(centers.data, dtype=float).reshape(-1, 2)
    used = np.ones(len(c), bool) if navigation_mask is None else ~navigation_mask.ravel()
    shift = float(np.hypot(*(c[used] - c[used].mean(axis=0)).T).max())
    screen.descan = shift
    methods = METHODS if opts.method == "all" else (opts.method,)
    # The model's own uncertainty: the tile fits' scatter about it, over the square root of
    # the tiles per coefficient. A shift within 5 of those is the fit's noise.
    md = centers.metadata.Screening.descan
    n_ok = max(int(np.sum(md.tile_ok)), 1)
    noise = 5.0 * float(md.rms_residual) * np.sqrt(np.size(md.coefficients) / 2 / n_ok)
    if shift < max(DESCAN_MIN_PX, noise):
        limit = (f"below {DESCAN_MIN_PX:g} px" if noise <= DESCAN_MIN_PX else
                 f"within the fit's noise ({noise:.2f} px)")
        screen.descan_note = (f"{shift:.3f} px at most, {limit}: one centre for every "
                              "position")
    elif "VImage" in methods:
        screen.descan_note = (f"{shift:.2f} px, not corrected: VImage needs one centre for "
                              "every position")
        warnings.warn(
            f"the pattern centre moves by up to {shift:.2f} px over the scan (descan), not "
            "corrected: VImage needs one centre for every position; use --method Omega, r "
            "or re to correct it (or --descan none)", UserWarning, stacklevel=3)
    else:
        s.calibration.center = np.asarray(centers.data, dtype=float)
        screen.descan_applied = True


def _screen_outliers(opts, s, radial_range, mask, path, steps, screen, n_total):
    """--outliers: the positions left out of V(k) (outliers, and NaN or inf patterns)."""
    navigation_mask = screen.navigation_mask
    if opts.outliers == "none":
        return navigation_mask
    if n_total < MIN_SCREEN_PATTERNS:
        screen.skipped["outliers"] = _too_few(s)
        return navigation_mask
    with steps("outliers", "searched for outlier patterns"), warnings.catch_warnings():
        # Patterns with NaN are flagged here and were counted by the sum step's warning.
        warnings.filterwarnings("ignore", message=_NAN_PATTERNS, category=UserWarning)
        flags = _reading(path, lambda: s.find_outlier_patterns(
            radial_range=radial_range, mask=mask, show_progressbar=False))
    screen.outliers = flags
    found = np.asarray(flags.data, dtype=bool)
    navigation_mask = found if navigation_mask is None else navigation_mask | found
    n_left = n_total - int(navigation_mask.sum())
    if n_left < 2:
        raise UsageError(f"{int(navigation_mask.sum())} of {n_total} patterns are outliers "
                         "or hold NaN: fewer than 2 patterns are left for V(k); give "
                         "--outliers none to keep them")
    screen.navigation_mask = navigation_mask if navigation_mask.any() else None
    return screen.navigation_mask


def _apply_haadf(s, opts):
    if opts.haadf is None:
        return
    image = _read_array(opts.haadf, "--haadf").astype(float)
    nav_shape = tuple(s.axes_manager._navigation_shape_in_array)
    if image.shape != nav_shape:
        raise UsageError(f"--haadf {_name(opts.haadf)} has shape {image.shape} but the scan is "
                         f"{nav_shape} (rows, cols)")
    s.metadata.set_item("HAADF.intensity", image)


def _check_center(center, detector):
    if center is None:
        return
    x, y = center
    rows, cols = detector
    if not (0 <= x <= cols - 1 and 0 <= y <= rows - 1):
        raise UsageError(f"--center {x:g} {y:g} lies outside the detector (x in 0-{cols - 1}, "
                         f"y in 0-{rows - 1} px)")


def _odd_input_warnings(opts, s):
    """Inputs that run but give a meaningless V(k): one warning each, naming what the user
    gave."""
    if opts.npt == 1:
        warnings.warn("--npt 1 gives a single radial bin: V(k) is one number, with no curve "
                      "and no peaks to fit", UserWarning, stacklevel=3)
    if opts.radial_range is not None:
        a, b = opts.radial_range
        pixel = min(abs(ax.scale) for ax in s.axes_manager.signal_axes)
        if b - a < pixel:
            units = _units(s.axes_manager.signal_axes[0])
            warnings.warn(
                f"--radial-range {a:g} {b:g} is narrower than one detector pixel "
                f"({pixel:.4g} {units}): V(k) of so thin an annulus is meaningless",
                UserWarning, stacklevel=3,
            )


def _raised_by_femlib(exc):
    """Whether the innermost frame of the exception's traceback is femlib's own code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith(
        "femlib")


def _computed(var):
    """A lazy input gives a lazy V(k): its pass runs here, inside :func:`_reading`, so that a
    reader's error during the pass is reported as one about the file."""
    if var._lazy:
        var.compute(show_progressbar=False)
    return var


def _reading(path, compute):
    """Run a pass over the data; an exception of the reader (a codec's RuntimeError or
    ValueError, a corrupt HDF5 chunk) found only now is bad input for a file, reported in
    one line. femlib's own ValueError/TypeError (a diagnosis of the input) pass as they
    are."""
    if path is None:
        return compute()
    try:
        return compute()
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:
        if _raised_by_femlib(exc):
            raise
        raise UsageError(f"cannot read the patterns in {path} ({_reason(exc)})") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reader failing in the middle of the pass
        raise UsageError(f"cannot read the patterns in {path} ({_reason(exc)})") from None


def _sum_finite(s):
    """The summed pattern of the patterns without NaN or inf, and the navigation-shaped
    flags of those left out (None for integer data, which cannot hold NaN), in one pass."""
    import dask

    data = s.data
    axes = tuple(range(s.axes_manager.navigation_dimension))
    floating = not np.issubdtype(data.dtype, np.integer)
    summed = s.sum()  # eager: the sum; lazy: its graph (for the axes and metadata)
    bad = None
    if not summed._lazy:
        if floating:
            bad = ~np.isfinite(data).all(axis=(-2, -1))
            if bad.any():
                summed.data = np.where(bad[..., None, None], 0, data).sum(axis=axes)
        return summed, bad
    if floating:
        import dask.array as da

        flags = ~da.isfinite(data).all(axis=(-2, -1))
        total, bad = dask.compute(da.where(flags[..., None, None], 0, data).sum(axis=axes),
                                  flags)
        summed.data = total
    summed.compute(show_progressbar=False)
    return summed, bad


def _detector_shape(s):
    return tuple(int(n) for n in s.axes_manager._signal_shape_in_array)


def _units(axis):
    units = getattr(axis, "units", None)
    units = "" if units is None else str(units).strip()
    return "px" if units.lower() in ("", "<undefined>", "undefined") else units


def _thickness(opts, s, truth):
    """Thickness per position (or None) from the HAADF metadata; checked before any work.
    None as well with --thickness-from-pattern: that thickness needs the calibration."""
    import femlib

    if opts.thickness_bins is None or opts.thickness_from_pattern is not None:
        return None
    if not s.metadata.has_item("HAADF.intensity"):
        raise UsageError("--thickness-bins needs a HAADF image: in metadata.HAADF.intensity "
                         "or from --haadf FILE")
    black = opts.black_level if opts.black_level is not None else truth.get("black_level")
    slope = opts.slope if opts.slope is not None else truth.get("slope")
    if black is None or slope is None:
        raise UsageError("--thickness-bins with a file needs --black-level and --slope")
    t = femlib.thickness.thickness_from_haadf(
        s.metadata.HAADF.intensity, black_level=black, slope=slope
    )
    t = np.asarray(getattr(t, "data", t))
    nav_shape = tuple(s.axes_manager._navigation_shape_in_array)
    if t.shape != nav_shape:
        raise UsageError(
            f"metadata.HAADF.intensity has shape {t.shape} but the scan is {nav_shape}"
        )
    return t


def _check_radial_range(radial_range, s, option="--radial-range"):
    """Reject a range far beyond the detector before any work (the exact check, which
    needs the centre, is get_variance's)."""
    if not radial_range:
        return
    axes = s.axes_manager.signal_axes
    diagonal = float(np.hypot(*[ax.size * abs(ax.scale) for ax in axes]))
    # No pixel is further than the diagonal from a centre on the detector; the margin
    # allows for the affine's rescaling (a few per cent).
    if radial_range[1] > 1.5 * diagonal:
        raise UsageError(
            f"{option} {radial_range[0]:g} {radial_range[1]:g} lies outside the "
            f"detector (its diagonal is {diagonal:.4g} {_units(axes[0])})"
        )


def _mask(summed, opts, file_mask):
    """The detector mask: --mask, --mask-below, or their union; by default the pixels below
    5 % of the median of the summed pattern."""
    threshold = opts.mask_below
    if threshold is None and file_mask is None:
        threshold = 0.05 * float(np.median(summed))
    mask = np.zeros(summed.shape, bool) if file_mask is None else file_mask.copy()
    if threshold is not None:
        mask |= summed < threshold
    if mask.all():
        if threshold is None:
            raise UsageError(f"--mask {_name(opts.mask)} masks every pixel")
        raise UsageError(
            f"--mask-below {threshold:g} masks every pixel (the summed pattern's largest "
            f"value is {float(np.max(summed)):g})"
        )
    return mask, threshold


def _default_radial_range(s, mask, npt):
    """The widest run of radial bins that are at least half covered (unmasked, on detector),
    in 4 * npt bins from the centre to the farthest pixel."""
    with warnings.catch_warnings():
        # This range is the workflow's choice, not the user's: no partial-ring warning.
        warnings.filterwarnings("ignore", message=_PARTIAL_RING, category=UserWarning)
        w = s._weights(4 * npt, mask=mask)
    ok = w.coverage >= 0.5
    best, start = (0, 0), None
    for i, good in enumerate(np.append(ok, False)):
        if good and start is None:
            start = i
        elif not good and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    if best[1] - best[0] < 2:
        raise UsageError("no annulus of the detector is more than half unmasked: give "
                         "--radial-range A B (or a smaller --mask-below / --mask)")
    return float(w.radial_edges[best[0]]), float(w.radial_edges[best[1]])


def _outer_annulus(s):
    """The default annulus of --thickness-from-pattern: from 0.9 of the radius of the
    largest circle on the detector (around the calibrated centre) to the farthest pixel
    centre, in calibrated units; also DetectorNoise.from_scan's default. With per-position
    centres (descan) the outer radius is the farthest pixel centre of the position whose
    farthest pixel is nearest, so that the annulus stays on the detector everywhere."""
    geo = s.calibration.geometry()
    rows, cols = geo["detector_shape"]
    a = np.eye(2) if geo["affine"] is None else np.asarray(geo["affine"])[:2, :2]
    sx, sy = (abs(v) for v in geo["scale"])

    def radius(x, y, center):
        dx, dy = x - center[..., 0], y - center[..., 1]
        return np.hypot((a[0, 0] * dx + a[0, 1] * dy) * sx, (a[1, 0] * dx + a[1, 1] * dy) * sy)

    y, x = np.mgrid[0:rows, 0:cols].astype(float)
    r = radius(x, y, np.asarray(geo["center"], dtype=float))
    edge = np.zeros(r.shape, bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    outer = float(r.max())
    if geo["centers"] is not None:  # the farthest pixel centre is a corner (convexity)
        cx, cy = np.array([0.0, cols - 1.0]), np.array([0.0, rows - 1.0])
        corners = np.array([(u, v) for u in cx for v in cy])
        c = np.asarray(geo["centers"], dtype=float)[:, None, :]
        outer = float(radius(corners[:, 0], corners[:, 1], c).max(axis=1).min())
    return 0.9 * float(r[edge].min()), outer


def _ellipse_advice(exc):
    """The ellipse step's error for a CLI user: the diagnosis, without the library's advice
    in Python argument names (``pos=``, ``max_trials``), and the options that help."""
    text = " ".join(str(exc).split()).replace("radial_range=None but ", "")
    for cut in ("; give", "; try", "; at least", ": check", ". check", ". The brightest"):
        text = text.split(cut)[0]
    text = text.replace("radial_range=", "radii ")
    # Parentheses naming the fit's Python arguments (center_tolerance, ...).
    text = re.sub(r"\s*\([^()]*\b[a-z]+_[a-z_]+\b[^()]*\)", "", text).rstrip(".")
    return (f"cannot fit the ring ellipse: {text}; give the pattern centre with --center X Y "
            "(no ellipse fit), or change --num-points or the mask (--mask-below, --mask)")


def _calibrate(summed, mask, opts):
    """Centre (row, col), affine, ellipse parameters and fitted points of the first ring
    (no fit with --center: the given centre and the identity affine)."""
    import femlib
    from femlib.ellipse import EllipseFitError

    if opts.center is not None:
        x, y = (float(v) for v in opts.center)
        return np.array([y, x]), np.eye(3), None, None
    # RANSAC keeps the ring with most points (the bright rim around a beam stop can hold
    # many of the brightest pixels too); refining then removes the pixel-picking bias.
    try:
        center, affine, params, pos, _ = femlib.ellipse.determine_ellipse(
            summed, mask=mask, num_points=opts.num_points, return_params=True,
            use_ransac=True,
        )
        center, affine = femlib.ellipse.refine_center_affine(summed, center, affine,
                                                             mask=mask)
    except EllipseFitError as exc:
        raise UsageError(_ellipse_advice(exc)) from None
    except ValueError as exc:
        if "num_points" in str(exc) or "pos" in str(exc):
            raise UsageError(_ellipse_advice(exc)) from None
        raise
    return center, affine, params, pos


def _noise_from_flat_field(opts, flat, dark):
    """DetectorNoise.from_flat_field, its errors reported as bad --flat-field input."""
    from femlib.noise import DetectorNoise

    try:
        return DetectorNoise.from_flat_field(flat, dark=dark, offset=opts.offset)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--flat-field {opts.flat_field}: {exc}") from None


def _relabel_relative_bins(var):
    """Bin labels in relative thickness (get_variance writes nm, the HAADF's unit)."""
    fem = var.metadata.FEM
    edges, counts = np.asarray(fem.thickness_edges), np.asarray(fem.counts)
    labels = [f"{a:.3f}\u2013{b:.3f} × mean (n={int(n)})"
              for a, b, n in zip(edges[:-1], edges[1:], counts, strict=True)]
    fem.labels = [lab for lab, n in zip(labels, counts, strict=True) if n >= 2]
    fem.empty_bins = [lab for lab, n in zip(labels, counts, strict=True) if n < 2]
    for ax in var.axes_manager.navigation_axes:
        if ax.name == "Thickness":
            ax.units = "relative"


# A V(k) from fewer patterns than the jackknife's blocks (femlib.moments.N_BLOCKS) has no
# usable error on a fitted peak: such bins are listed in peaks.csv, not fitted (fitting
# hundreds of nearly empty bins would also take most of the run).
MIN_PEAK_PATTERNS = 20


def _peak_tables(var, main_curve, binned):
    """Fitted peaks (``FEMVariance1D.find_peaks``) of the main curve(s), and the table of
    every curve for peaks.csv: each thickness bin with at least ``MIN_PEAK_PATTERNS``
    patterns, fitted at the peaks of the combined curve so that the rows of a peak line up
    across bins, then the combined curve(s)."""
    import femlib.signals._peaks as _pk

    main = main_curve.find_peaks()
    if not binned:
        return main, main
    # One method: the bins are fitted at the combined curve's peaks (rows line up across
    # bins). Several methods peak at different k: each curve then finds its own peaks.
    positions = None
    if len(main_curve.curve_labels()) == 1:
        positions = sorted({round(r["position"], 6) for r in main
                            if r["converged"] and r["peak"] >= 0}) or None
    n_per_curve = _patterns_per_curve(var)
    fit = n_per_curve >= MIN_PEAK_PATTERNS
    table = _pk.PeakTable()
    if fit.all():
        table.extend(var.find_peaks(positions=positions))
    elif fit.any():
        sub, index = _curves_subset(var, fit)
        for row in sub.find_peaks(positions=positions):
            table.append(dict(row, curve=int(index[row["curve"]])))
    labels = var.curve_labels()
    for i in np.flatnonzero(~fit):
        table.append({"curve": int(i), "label": labels[i], "peak": -1, **_pk.empty_row(),
                      "message": f"not fitted: {n_per_curve[i]} patterns, fewer than "
                      f"{MIN_PEAK_PATTERNS}"})
    table.sort(key=lambda r: (r["curve"], r["peak"]))
    for row in main:
        label = "combined" if len(main_curve.curve_labels()) == 1 else f"combined, {row['label']}"
        table.append(dict(row, curve="combined", label=label))
    table.errors = main.errors
    return main, table


def _patterns_per_curve(var):
    """The number of patterns behind every curve of a binned result, flattened as
    ``curve_labels``."""
    fem = var.metadata.FEM
    counts = np.asarray(fem.counts)
    kept = counts[counts >= 2]
    axes = var.axes_manager.navigation_axes  # [0] varies fastest in the flat order
    shape = [ax.size for ax in axes][::-1]
    where = [ax.name for ax in axes][::-1].index("Thickness")
    index = np.indices(shape)[where]
    return kept[index].ravel()


def _curves_subset(var, keep):
    """The curves ``keep`` (flat, as ``curve_labels``) of ``var`` as a one-axis
    FEMVariance1D with their labels, standard errors and jackknife replicates, for
    ``find_peaks``; and their flat indices in ``var``."""
    k_axis = var.axes_manager.signal_axes[0]
    index = np.flatnonzero(keep)
    v = np.asarray(var.data, dtype=float).reshape(-1, k_axis.size)[index]
    se = var.standard_error.reshape(-1, k_axis.size)[index]
    md = {"General": {"title": var.metadata.General.title},
          "Signal": {"signal_type": "fem_variance", "quantity": "V(k)"},
          "FEM": {"labels": [var.curve_labels()[i] for i in index]}}
    jack = var.metadata.get_item("FEM.jackknife")
    if jack is not None and np.shape(jack)[1:] == var.data.shape:
        jack = np.asarray(jack, dtype=float)
        md["FEM"]["jackknife"] = jack.reshape(jack.shape[0], -1, k_axis.size)[:, index]
    axes = [{"name": "Thickness", "size": index.size, "navigate": True},
            k_axis.get_axis_dictionary()]
    sub = type(var)(v, axes=axes, metadata=md)
    sub._set_standard_error(se)
    return sub, index
