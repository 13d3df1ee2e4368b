"""The ``femlib`` command line: batch FEM runs, ``femlib fem [INPUT] [options]``.

Without INPUT the command runs the whole workflow on the offline synthetic dataset (the
README's "main job"); with INPUT, any 4D-STEM file HyperSpy reads is loaded lazily and
streamed. The thickness bins come from the HAADF image or from the patterns themselves
(``--thickness-from-pattern``); the shot-noise correction from ``--gain`` or a measured
detector noise kernel (``--flat-field``, ``--noise-from-scan``); the peaks of V(k) are
fitted (``peaks.csv``).

Every option is checked before any computation and before the output folder is
created: bad input ends the command with one line on stderr (``femlib: error: ...``) and
exit status 2, and leaves no output folder behind. The summary is the only text on stdout;
progress (dask's bars when stderr is a terminal, one line per finished step otherwise) and
warnings (one line each, ``femlib: warning: ...``) go to stderr.
"""

import argparse
import contextlib
import datetime
import html
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["UsageError", "main", "run_fem", "write_report"]

FIGURES = {
    "summed_ellipse.png": "Summed pattern (log scale) with the fitted ring ellipse, the "
    "points it was fitted to and its centre; masked pixels in grey.",
    "polar.png": "Polar transform of the summed pattern with the calibration applied: "
    "the rings must be straight lines. Dashed: the radial range of V(k).",
    "variance.png": "V(k) with its ±1 standard-error band.",
    "variance_bins.png": "V(k) in every thickness bin that holds 2 or more patterns.",
    "noise_kernel.png": "The detector noise kernel K(Δ) used for the shot-noise "
    "correction (its sum is the gain, its centre K(0) the per-pixel variance-to-mean ratio).",
}

# A thickness bin with fewer than two patterns has no variance; the CLI reports those bins
# in one line of its own instead of the library's warning, which names every bin.
_LEFT_OUT_BINS = r"thickness bin\(s\) with fewer than 2 patterns are left out"
# get_variance's and the integrals' warning for a radial range mostly off the detector.
_PARTIAL_RING = r"only \d+% of the azimuths of the radial range"


class UsageError(ValueError):
    """Bad command-line input: reported in one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised (one line, no usage block) instead of printed."""

    def error(self, message):
        raise UsageError(message)


class _Formatter(argparse.HelpFormatter):
    """Shows an option with an optional pair of values as ``[A B]`` (argparse would write
    ``[A [B ...]]`` for ``nargs="*"``, whose count the CLI checks itself)."""

    def _format_args(self, action, default_metavar):
        if getattr(action, "optional_pair", False):
            return "[A B]"
        return super()._format_args(action, default_metavar)


def _optional_pair(parser, *names, help):
    """An option given alone or with two radii ``A B`` (``[]`` or ``[A, B]``; None if
    absent); the count and order are checked by ``_check_args``."""
    action = parser.add_argument(*names, nargs="*", type=_number(float, "radius", minimum=0),
                                 help=help)
    action.optional_pair = True
    return action


def _number(kind, name, positive=False, nonzero=False, minimum=None):
    """An argparse ``type`` that accepts finite numbers with the stated bounds only."""

    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not np.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if nonzero and value == 0:
            raise argparse.ArgumentTypeError("must not be 0")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def _parser():
    from femlib import __version__
    from femlib.variance import METHODS

    p = _Parser(prog="femlib", description="Fluctuation electron microscopy of 4D-STEM data.")
    p.add_argument("--version", action="version", version=f"femlib {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    f = sub.add_parser(
        "fem", formatter_class=_Formatter,
        help="compute V(k) of a 4D-STEM dataset (the synthetic one when INPUT is omitted)",
        description=(
            "Find the centre and elliptical distortion, mask the beam stop, compute the "
            "normalized variance V(k) (optionally per thickness bin, from the HAADF image "
            "or the patterns; shot noise from --gain or a measured noise kernel), fit its "
            "peaks and write CSV (V(k), peaks), .hspy, PNG files and report.html into --out."
        ),
    )
    f.add_argument("input", nargs="?", metavar="INPUT",
                   help="dataset file HyperSpy reads (omit: the synthetic dataset)")
    f.add_argument("--gain", type=_number(float, "gain", positive=True),
                   help="detector units per electron (shot-noise correction); default: the "
                   "synthetic truth, or no correction for a file")
    f.add_argument("--npt", type=_number(int, "npt", positive=True), default=50,
                   help="radial bins of V(k) (default 50)")
    f.add_argument("--radial-range", nargs=2, type=_number(float, "radius", minimum=0),
                   metavar=("A", "B"), help="radial range of V(k) in calibrated units "
                   "(default: synthetic 3.0 5.75; files: the widest half-unmasked annulus)")
    f.add_argument("--mask-below", type=_number(float, "threshold", positive=True),
                   metavar="VALUE", help="mask pixels whose summed intensity is below VALUE "
                   "(default: 5 %% of the median of the summed pattern)")
    f.add_argument("--thickness-bins", type=_number(int, "bins", positive=True), metavar="B",
                   help="V(k) in B equal thickness bins from metadata.HAADF.intensity")
    f.add_argument("--black-level", type=_number(float, "black_level"), metavar="L",
                   help="HAADF black level (with --thickness-bins; required for a file)")
    f.add_argument("--slope", type=_number(float, "slope", nonzero=True), metavar="S",
                   help="HAADF units per nm of thickness (with --thickness-bins; required "
                   "for a file)")
    _optional_pair(f, "--thickness-from-pattern",
                   help="with --thickness-bins: bin by the relative thickness from the mean "
                   "intensity of the patterns in the annulus A-B (calibrated units; default: "
                   "from 0.9 of the largest circle on the detector to its corners) instead "
                   "of the HAADF image; not with --black-level/--slope")
    f.add_argument("--flat-field", metavar="FILE",
                   help="flat-field series (.npy or a file HyperSpy reads, frames of the "
                   "detector's shape): shot-noise correction with the detector noise kernel "
                   "measured from it instead of --gain")
    f.add_argument("--dark", metavar="FILE",
                   help="dark frame or series (.npy or HyperSpy file) subtracted from the "
                   "--flat-field frames")
    f.add_argument("--offset", type=_number(float, "offset"), metavar="X",
                   help="constant dark level subtracted from the --flat-field frames")
    _optional_pair(f, "--noise-from-scan",
                   help="shot-noise correction with the detector noise kernel estimated "
                   "from the scan itself (differences of neighbouring patterns in the "
                   "annulus A-B; default: from 0.9 of the largest circle on the detector "
                   "to its corners) instead of --gain")
    f.add_argument("--method", default="Omega", choices=[*METHODS, "all"],
                   help="FEM estimator (default Omega)")
    f.add_argument("--num-points", type=_number(int, "num_points", minimum=5), default=500,
                   help="ring points picked for the ellipse fit (default 500)")
    f.add_argument("--out", default="femlib_out", metavar="DIR",
                   help="output folder, created at the end (default femlib_out)")
    f.add_argument("--seed", type=_number(int, "seed", minimum=0),
                   help="seed of the synthetic dataset (default 0; not with INPUT)")
    f.add_argument("--synthetic-shape", nargs=2, type=_number(int, "rows", minimum=2),
                   metavar=("ROWS", "COLS"), help="scan shape of the synthetic dataset "
                   "(default 40 40; not with INPUT)")
    f.add_argument("--quiet", action="store_true",
                   help="no progress output on stderr (warnings and errors only)")
    return p


def main(argv=None):
    """Entry point of the ``femlib`` console script and of ``python -m femlib``.

    Parameters
    ----------
    argv : list of str or None
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success (also for ``--help`` and ``--version``), 2 on bad input
        (one line ``femlib: error: ...`` on stderr, no traceback, no output folder), 130
        when interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _fail(exc)
    except SystemExit as exc:  # --help, --version
        return exc.code or 0
    progress = _Progress(bars=not args.quiet and _isatty(sys.stderr), lines=not args.quiet)
    try:
        with _one_line_warnings():
            summary = run_fem(args, progress=progress, command=["femlib", *argv])
    except (ValueError, TypeError, OSError) as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("femlib: interrupted", file=sys.stderr)
        return 130
    print(summary)
    return 0


def _fail(exc):
    text = " ".join(str(exc).split()) or type(exc).__name__
    print(f"femlib: error: {text}", file=sys.stderr)
    return 2


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """Progress on stderr: dask's bars (``bars``) and/or one line per finished step."""

    def __init__(self, bars=False, lines=False):
        self.bars, self.lines = bars, lines

    @contextlib.contextmanager
    def step(self, done):
        """Run a step; ``done`` is the line printed when it has finished."""
        start = time.perf_counter()
        if self.bars:
            from femlib._progress import ProgressBar

            # dask's bar writes to stdout unless told otherwise; stdout is the summary's.
            bar = ProgressBar(minimum=1.0, out=sys.stderr)
        else:
            bar = contextlib.nullcontext()
        with bar:
            yield
        if self.lines:
            print(f"femlib: {done} ({time.perf_counter() - start:.1f} s)", file=sys.stderr,
                  flush=True)


@contextlib.contextmanager
def _one_line_warnings():
    """Print every warning as one line ``femlib: warning: ...`` on stderr, no source line."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if len(text) > 300:
            text = text[:297] + "..."
        print(f"femlib: warning: {text}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        # Deprecations concern library code, not what a command-line user can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.filterwarnings("ignore", message=_LEFT_OUT_BINS, category=UserWarning)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _silenced_loggers(*names):
    """Keep HyperSpy's and RosettaSciIO's log lines off the terminal while reading a file:
    a read failure is reported by the CLI in one line of its own."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _readable_extensions():
    from rsciio import IO_PLUGINS

    return {ext.lower() for plugin in IO_PLUGINS for ext in plugin["file_extensions"]}


def _check_args(args):
    """The checks that need no data: option combinations, INPUT's existence and type,
    --out. Value ranges are checked by the parser's types."""
    if args.radial_range is not None and args.radial_range[0] >= args.radial_range[1]:
        a, b = args.radial_range
        raise UsageError(f"--radial-range must be increasing (A < B), got {a:g} {b:g}")
    if args.input is not None:
        for option, value in (("--seed", args.seed), ("--synthetic-shape", args.synthetic_shape)):
            if value is not None:
                raise UsageError(f"{option} only applies to the synthetic dataset (no INPUT)")
    haadf = [o for o, v in (("--black-level", args.black_level), ("--slope", args.slope))
             if v is not None]
    verb = "apply" if len(haadf) > 1 else "applies"
    if args.thickness_bins is None:
        if haadf:
            raise UsageError(f"{' and '.join(haadf)} only {verb} with --thickness-bins")
        if args.thickness_from_pattern is not None:
            raise UsageError("--thickness-from-pattern only applies with --thickness-bins")
    _check_pair(args.thickness_from_pattern, "--thickness-from-pattern")
    if args.thickness_from_pattern is not None and haadf:
        # The pattern gives a relative thickness: for equal-width bins any linear
        # calibration gives the same bins, and the HAADF's L and S mean nothing for it.
        what = "calibrate the HAADF image and do not" if len(haadf) > 1 else (
            "calibrates the HAADF image and does not")
        raise UsageError(
            f"{' and '.join(haadf)} {what} apply with --thickness-from-pattern (its bins "
            "are in relative thickness)"
        )
    _check_noise_args(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if args.input is None:
        return
    path = Path(args.input)
    if not path.exists():
        raise UsageError(f"INPUT {path} does not exist")
    ext = path.suffix.lower().lstrip(".")
    if ext not in _readable_extensions():
        raise UsageError(
            f"INPUT {path}: unsupported file type {path.suffix or '(no extension)'}; "
            "give a 4D-STEM file that HyperSpy reads (.zspy, .hspy, .mib, .blo, .dm4, ...)"
        )


def _check_pair(values, option):
    """An option given alone (``[]``) or with two increasing radii."""
    if values is None or len(values) == 0:
        return
    if len(values) != 2:
        raise UsageError(f"{option} takes no value or two radii A B, got {len(values)} values")
    if values[0] >= values[1]:
        raise UsageError(
            f"{option} must be increasing (A < B), got {values[0]:g} {values[1]:g}"
        )


def _check_noise_args(args):
    """--gain, --flat-field (with --dark or --offset) and --noise-from-scan: one noise
    model, and the flat-field files exist and have a readable type."""
    models = [o for o, v in (("--gain", args.gain), ("--flat-field", args.flat_field),
                             ("--noise-from-scan", args.noise_from_scan)) if v is not None]
    if len(models) > 1:
        raise UsageError(
            f"give one of --gain (counting detector), --flat-field or --noise-from-scan "
            f"(measured noise kernel), got {' and '.join(models)}"
        )
    _check_pair(args.noise_from_scan, "--noise-from-scan")
    if args.flat_field is None:
        for option, value in (("--dark", args.dark), ("--offset", args.offset)):
            if value is not None:
                raise UsageError(f"{option} only applies with --flat-field")
        return
    if args.dark is not None and args.offset is not None:
        raise UsageError("give --dark (a frame) or --offset (a number), not both")
    for option, name in (("--flat-field", args.flat_field), ("--dark", args.dark)):
        if name is None:
            continue
        path = Path(name)
        if not path.exists():
            raise UsageError(f"{option} {path} does not exist")
        ext = path.suffix.lower().lstrip(".")
        if ext != "npy" and ext not in _readable_extensions():
            raise UsageError(
                f"{option} {path}: unsupported file type {path.suffix or '(no extension)'}; "
                "give a .npy file or a file that HyperSpy reads (.hspy, .zspy, ...)"
            )


def _load(args):
    """The dataset as a (lazy for files) FEMDiffraction2D and the synthetic truth (or {})."""
    import hyperspy.api as hs

    import femlib

    if args.input is None:
        seed = 0 if args.seed is None else args.seed
        shape = (40, 40) if args.synthetic_shape is None else tuple(args.synthetic_shape)
        s = femlib.data.synthetic_fem(navigation_shape=shape, seed=seed)
        return s, s.metadata.Simulation.as_dictionary()
    path = Path(args.input)
    fmt = path.suffix.lstrip(".")
    try:
        with _silenced_loggers("hyperspy", "rsciio"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = hs.load(str(path), lazy=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is unreadable input here
        raise UsageError(f"cannot read {path}: not a readable {fmt} file ({_reason(exc)})") \
            from None
    if isinstance(s, list):
        s = next((x for x in s if x.axes_manager.signal_dimension == 2), s[0])
    nav, sig = s.axes_manager.navigation_dimension, s.axes_manager.signal_dimension
    if sig != 2 or nav < 1:
        raise UsageError(
            f"{path} holds a {nav}+{sig}D signal; a 4D-STEM stack (probe positions x 2D "
            "patterns) is needed"
        )
    dtype = s.data.dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise UsageError(f"{path} holds {dtype} data; real-valued intensities are needed")
    try:  # a truncated or corrupt file often loads lazily and fails on the first read
        np.asarray(s.data[(0,) * nav])
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot read the patterns in {path} ({_reason(exc)})") from None
    s.set_signal_type("fem_diffraction")
    return s, {}


def _reason(exc):
    # Some readers leave an unformatted "%r" in their messages.
    text = " ".join(str(exc).replace(": %r", "").replace("%r", "").split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _read_frames(name, option, detector_shape, series):
    """The frames of a flat-field or dark file (numpy memory map or dask array), checked
    before any work: readable, real numbers, frames of the detector's shape."""
    import hyperspy.api as hs

    path = Path(name)
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with _silenced_loggers("hyperspy", "rsciio"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sig = hs.load(str(path), lazy=True)
            if isinstance(sig, list):
                sig = next((x for x in sig if x.axes_manager.signal_dimension == 2), sig[0])
            data = sig.data
    except Exception as exc:  # noqa: BLE001 - any reader failure is unreadable input here
        raise UsageError(f"cannot read {option} {path} ({_reason(exc)})") from None
    dtype = np.dtype(data.dtype)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise UsageError(f"{option} {path} holds {dtype} data; real-valued frames are needed")
    shape = tuple(int(n) for n in data.shape)
    needed = "(frames, rows, cols)" if series else "(rows, cols) or (frames, rows, cols)"
    if len(shape) < (3 if series else 2):
        raise UsageError(f"{option} {path} has shape {shape}; a series {needed} is needed"
                         if series else f"{option} {path} has shape {shape}; {needed} is needed")
    if shape[-2:] != tuple(detector_shape):
        raise UsageError(
            f"{option} {path} has frames of {shape[-2]} x {shape[-1]} px but the detector is "
            f"{detector_shape[0]} x {detector_shape[1]} px"
        )
    n_frames = int(np.prod(shape[:-2]))
    if series and n_frames < 2:
        raise UsageError(f"{option} {path} holds {n_frames} frame; the noise kernel needs "
                         "at least 2 (tens to hundreds give the gain to 1 %)")
    return data


def _detector_shape(s):
    return tuple(int(n) for n in s.axes_manager._signal_shape_in_array)


def _thickness(args, s, truth):
    """Thickness per position (or None) from the HAADF metadata; checked before any work.
    None as well with --thickness-from-pattern: that thickness needs the calibration."""
    import femlib

    if args.thickness_bins is None or args.thickness_from_pattern is not None:
        return None
    if not s.metadata.has_item("HAADF.intensity"):
        raise UsageError("--thickness-bins needs a HAADF image in metadata.HAADF.intensity")
    black = args.black_level if args.black_level is not None else truth.get("black_level")
    slope = args.slope if args.slope is not None else truth.get("slope")
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


def _default_radial_range(s, mask, npt):
    """The widest run of radial bins that are at least half covered (unmasked, on detector)."""
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
        raise UsageError("no annulus of the detector is more than half unmasked")
    return float(w.radial_edges[best[0]]), float(w.radial_edges[best[1]])


def _outer_annulus(s):
    """The default annulus of --thickness-from-pattern: from 0.9 of the radius of the
    largest circle on the detector (around the calibrated centre) to the farthest pixel
    centre, in calibrated units; also DetectorNoise.from_scan's default."""
    geo = s.calibration.geometry()
    rows, cols = geo["detector_shape"]
    y, x = np.mgrid[0:rows, 0:cols].astype(float)
    a = np.eye(2) if geo["affine"] is None else np.asarray(geo["affine"])[:2, :2]
    dx, dy = x - geo["center"][0], y - geo["center"][1]
    sx, sy = (abs(v) for v in geo["scale"])
    radius = np.hypot((a[0, 0] * dx + a[0, 1] * dy) * sx, (a[1, 0] * dx + a[1, 1] * dy) * sy)
    edge = np.zeros(radius.shape, bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    return 0.9 * float(radius[edge].min()), float(radius.max())


def _calibrate(summed, mask, num_points):
    """Centre (row, col), affine, ellipse parameters and fitted points of the first ring."""
    import femlib

    # RANSAC keeps the ring with most points (the bright rim around a beam stop can hold
    # many of the brightest pixels too); refining then removes the pixel-picking bias.
    center, affine, params, pos, _ = femlib.ellipse.determine_ellipse(
        summed, mask=mask, num_points=num_points, return_params=True,
        use_ransac=True,
    )
    center, affine = femlib.ellipse.refine_center_affine(summed, center, affine, mask=mask)
    return center, affine, params, pos


def _noise_from_flat_field(args, flat, dark):
    """DetectorNoise.from_flat_field, its errors reported as bad --flat-field input."""
    from femlib.noise import DetectorNoise

    try:
        return DetectorNoise.from_flat_field(flat, dark=dark, offset=args.offset)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--flat-field {args.flat_field}: {exc}") from None


def _noise_source(noise, args, units):
    """Where the noise kernel came from, for the summary and the report."""
    info = noise.info
    if info.get("method") == "flat_field":
        text = f"{info['n_frames']} flat-field frames in {args.flat_field}"
        if args.dark is not None:
            text += f", dark {args.dark}"
        elif args.offset is not None:
            text += f", offset {args.offset:g}"
        return text
    lo, hi = info["radial_range"]
    outer = "the corners" if not np.isfinite(hi) else f"{hi:.4g} {units}"
    return (f"the scan ({info['n_pairs']} pairs of neighbouring patterns, {lo:.4g} {units} "
            f"to {outer})")


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
_MIN_PEAK_PATTERNS = 20


def _peak_tables(var, main_curve, binned):
    """Fitted peaks (``FEMVariance1D.find_peaks``) of the main curve(s), and the table of
    every curve for peaks.csv: each thickness bin with at least ``_MIN_PEAK_PATTERNS``
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
    fit = n_per_curve >= _MIN_PEAK_PATTERNS
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
                      f"{_MIN_PEAK_PATTERNS}"})
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


def _pm(value, se):
    from femlib.signals._peaks import _pm as pm

    return pm(value, se)


def _peak_lines(table, label, units):
    """The summary's peak table: one line per fitted peak of the main curve(s), and one
    per curve with no peak."""
    errors = "jackknife" if table.errors == "jackknife" else "fit"
    lines = [f"  V(k) peaks ({label}; Gaussian fits, {errors} errors):"]
    several = len({r["curve"] for r in table}) > 1
    head = (["curve"] if several else []) + [f"k ({units})", "height", "FWHM"]
    cells = []
    for r in table:
        first = [str(r["label"])] if several else []
        if r["peak"] < 0:
            cells.append(first + [f"none ({r['message']})"])
            continue
        cells.append(first + [
            _pm(r["position"], r["position_se"]), _pm(r["height"], r["height_se"]),
            _pm(r["fwhm"], r["fwhm_se"]),
        ] + ([] if r["converged"] else [f"(not converged: {r['message']})"]))
    if not cells:
        return lines + ["    none"]
    rows = [head, *cells]
    width = [max([len(c[i]) for c in rows if i < len(c) - 1], default=0)
             for i in range(len(head))]
    for c in rows:
        text = "  ".join(x.ljust(w) for x, w in zip(c[:-1], width, strict=False))
        lines.append(f"    {text}  {c[-1]}".rstrip() if text else f"    {c[-1]}")
    return lines


def _peak_rows(table, units):
    """The report's peak table (every curve), one dict per row."""
    rows = []
    for r in table:
        rows.append({
            "curve": r["label"],
            "peak": r["peak"] if r["peak"] >= 0 else "",
            f"k ({units})": _pm(r["position"], r["position_se"]),
            "height": _pm(r["height"], r["height_se"]),
            "FWHM": _pm(r["fwhm"], r["fwhm_se"]),
            "converged": "yes" if r["converged"] else f"no: {r['message']}",
        })
    return rows


def _peaks_note(table, binned):
    errors = ("jackknife over blocks of probe positions" if table.errors == "jackknife"
              else "from the weighted fit")
    text = ("Gaussian peaks on a linear background fitted to every curve by "
            "FEMVariance1D.find_peaks, weighted by the standard errors of V(k); the errors "
            f"of the peak parameters are {errors}; height is above the background. "
            "All rows are in peaks.csv.")
    if binned:
        text += (" With one method, every thickness bin is fitted at the peaks found in the "
                 "combined curve, so that the rows of a peak line up across bins; bins with "
                 f"fewer than {_MIN_PEAK_PATTERNS} patterns are not fitted.")
    return text


def run_fem(args, progress=None, command=None):
    """Run the FEM workflow for parsed ``femlib fem`` arguments and write its outputs.

    Steps: check every option; load INPUT lazily (or make the synthetic dataset) and open
    the flat-field files; measure the flat field's noise kernel; sum the patterns; mask the
    pixels below ``--mask-below`` in the sum; fit and refine the ring ellipse (centre and
    affine); the relative thickness from the patterns and the noise kernel from the scan
    when asked; compute ``V(k)`` (per thickness bin with ``--thickness-bins``) in one
    pass; transform the summed pattern to polar coordinates; fit the peaks of ``V(k)``;
    then create ``--out`` and write ``variance.csv``, ``variance.hspy``, ``peaks.csv``,
    the PNG figures and ``report.html``. Nothing is written when any step before that
    fails.

    Parameters
    ----------
    args : argparse.Namespace
        As produced by the ``femlib fem`` parser.
    progress : object or None
        Progress reporter with a ``step(done_text)`` context manager; None: silent.
    command : list of str or None
        The command line, quoted in ``report.html``.

    Returns
    -------
    str
        The summary printed by the command.

    Raises
    ------
    UsageError
        Bad options or INPUT (missing, unsupported or unreadable file, not 4D-STEM),
        contradicting options, a flat-field or dark file that is unreadable or does not
        match the detector, a flat field or annulus the noise kernel or the thickness
        cannot be measured from.
    ValueError
        Bad input found by the computation (a radial range outside the detector, a mask
        that leaves a radial bin empty, an ellipse fit that fails, ...).
    """
    import matplotlib

    import femlib
    from femlib.noise import DetectorNoise

    matplotlib.use("Agg")  # the command writes files and never opens a window

    progress = progress or _Progress()
    _check_args(args)
    s, truth = _load(args)
    synthetic = args.input is None
    thickness = _thickness(args, s, truth)
    _check_radial_range(args.radial_range, s)
    _check_radial_range(args.thickness_from_pattern, s, "--thickness-from-pattern")
    _check_radial_range(args.noise_from_scan, s, "--noise-from-scan")
    detector = _detector_shape(s)
    flat = dark = None
    if args.flat_field is not None:
        flat = _read_frames(args.flat_field, "--flat-field", detector, series=True)
        if args.dark is not None:
            dark = _read_frames(args.dark, "--dark", detector, series=False)
    n_total = int(s.axes_manager.navigation_size)
    noise = None
    if flat is not None:
        n_flat = int(np.prod(flat.shape[:-2]))
        with progress.step(f"noise kernel from {n_flat} flat-field frames"):
            noise = _noise_from_flat_field(args, flat, dark)
    gain = None if noise is not None or args.noise_from_scan is not None else (
        args.gain if args.gain is not None else truth.get("gain"))

    with progress.step(f"summed {n_total} patterns"):
        summed = s.sum()
        if summed._lazy:
            summed.compute(show_progressbar=False)
    threshold = args.mask_below
    if threshold is None:
        threshold = 0.05 * float(np.median(summed.data))
    mask = summed.data < threshold
    if mask.all():
        raise UsageError(
            f"--mask-below {threshold:g} masks every pixel (the summed pattern's largest "
            f"value is {float(np.max(summed.data)):g})"
        )

    with progress.step("fitted the ring ellipse"):
        center, affine, params, pos = _calibrate(summed.data, mask, args.num_points)
    for sig in (s, summed):
        sig.calibration.center = center[::-1]
        sig.calibration.affine = affine
        sig.calibration.mask = mask

    radial_range = args.radial_range
    if radial_range is None:
        radial_range = (3.0, 5.75) if synthetic else _default_radial_range(s, mask, args.npt)
    radial_range = tuple(float(r) for r in radial_range)
    annulus = None
    if args.thickness_from_pattern is not None:
        annulus = tuple(args.thickness_from_pattern) or _outer_annulus(s)
        with progress.step(f"relative thickness from the patterns ({annulus[0]:.4g}-"
                           f"{annulus[1]:.4g} {_units(s.axes_manager.signal_axes[0])})"):
            try:
                with warnings.catch_warnings():
                    # The annulus reaches into the detector corners on purpose: the mean
                    # over the pixels it covers is the measure, not a full ring.
                    warnings.filterwarnings("ignore", message=_PARTIAL_RING,
                                            category=UserWarning)
                    thickness = femlib.thickness.thickness_from_pattern(s, annulus, mask=mask)
            except ValueError as exc:
                raise UsageError(f"--thickness-from-pattern: {exc}") from None
    if args.noise_from_scan is not None:
        with progress.step("noise kernel from the scan"):
            try:
                noise = DetectorNoise.from_scan(
                    s, mask=mask, radial_range=tuple(args.noise_from_scan) or None
                )
            except ValueError as exc:
                raise UsageError(f"--noise-from-scan: {exc}") from None
    # gain= is the counting model; a measured kernel replaces it (get_variance takes one).
    correction = {"gain": gain} if noise is None else {"noise": noise}
    with progress.step(f"V(k) from {n_total} patterns"):
        var = s.get_variance(
            npt=args.npt, method=args.method, radial_range=radial_range, mask=mask,
            thickness=thickness, bins=args.thickness_bins, show_progressbar=False,
            **correction,
        )
        if var._lazy:  # lazy input gives a lazy V(k): the pass runs here
            var.compute(show_progressbar=False)
    if annulus is not None:
        _relabel_relative_bins(var)
    # The transform is linear: transforming the summed pattern once gives the sum of the
    # transformed patterns at 1/N of the cost.
    with progress.step("polar transform of the summed pattern"):
        polar = summed.get_azimuthal_integral2d(
            npt=100, npt_azim=180, mean=True, show_progressbar=False
        )
    binned = args.thickness_bins is not None
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
            print(
                f"femlib: warning: {n_bins - n_kept} of {n_bins} thickness bins hold fewer "
                f"than 2 patterns and are left out ({left_out} patterns); use fewer bins",
                file=sys.stderr, flush=True,
            )

    with progress.step("fitted the peaks of V(k)"):
        main_peaks, all_peaks = _peak_tables(var, main_curve, binned)
    ratio, _ = _ellipse_ratio(affine)
    units = _units(main_curve.axes_manager.signal_axes[0])

    with progress.step("wrote the outputs"):
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "variance.csv", var)
        var.save(out / "variance.hspy", overwrite=True)
        # UTF-8 whatever the locale: the bin labels hold an en dash.
        (out / "peaks.csv").write_text(all_peaks.to_csv(), encoding="utf-8")
        figures = _figures(out, summed.data, mask, params, pos, center, polar, radial_range,
                           main_curve, var if binned else None, truth if synthetic else None,
                           noise)
        calibration = _calibration_rows(s, center, affine, threshold, mask, radial_range,
                                        args, gain, n_used, n_total, truth, annulus, noise)
        bin_rows = _bin_rows(var, relative=annulus is not None) if binned else None
        source = "synthetic dataset" if synthetic else str(args.input)
        lines = [
            f"femlib fem: {source} ({n_total} patterns)",
            f"  patterns used: {n_used} of {n_total}",
            f"  centre (x, y): ({center[1]:.3f}, {center[0]:.3f}) px",
        ]
        if synthetic:
            tc = truth["center"]
            lines.append(f"  true centre (x, y): ({tc[0]:.3f}, {tc[1]:.3f}) px")
        if noise is None:
            shot = f"gain: {'none (no shot-noise correction)' if gain is None else f'{gain:g}'}"
        else:
            shot = f"noise kernel: gain {noise.gain:.4g}, k0 {noise.k0:.4g}"
        lines += [
            f"  ellipticity: {ratio - 1:.4%} (axis ratio {ratio:.5f})",
            f"  mask: {int(mask.sum())} pixels below {threshold:.4g} in the summed pattern",
            f"  radial range: {radial_range[0]:.4g}-{radial_range[1]:.4g} {units}, {shot}",
        ]
        if noise is not None:
            lines.append(f"  noise kernel from {_noise_source(noise, args, units)}")
        if annulus is not None:
            lines.append(f"  thickness: relative, from the patterns' mean intensity in "
                         f"{annulus[0]:.4g}-{annulus[1]:.4g} {units}")
        if bins_line:
            lines.append(f"  {bins_line}")
        label = "combined over thickness bins" if binned else ", ".join(map(str, fem.methods))
        lines += _peak_lines(main_peaks, label, units)
        lines.append(f"  wrote {out}/: report.html, variance.csv, variance.hspy, peaks.csv "
                     f"and {len(figures)} PNG figures")
        summary = "\n".join(lines)
        write_report(out / "report.html", summary=summary, figures=figures,
                     calibration=calibration, bins=bin_rows,
                     peaks=_peak_rows(all_peaks, units),
                     peaks_note=_peaks_note(all_peaks, binned), command=command)
    return summary


def _ellipse_ratio(affine):
    import femlib

    return femlib.ellipse.affine_to_ellipse(affine)


def _units(axis):
    units = getattr(axis, "units", None)
    units = "" if units is None else str(units).strip()
    return "px" if units.lower() in ("", "<undefined>", "undefined") else units


def _curves(var):
    k = var.axes_manager.signal_axes[0].axis
    v = var.data.reshape(-1, k.size)
    se = var.standard_error.reshape(-1, k.size)
    return k, var.curve_labels(), v, se


def _write_csv(path, var):
    """One row per k: V and standard error of every curve (and the thickness combination)."""
    k, labels, v, se = _curves(var)
    cols, names = [k], ["k"]
    for lab, vi, si in zip(labels, v, se, strict=True):
        cols += [vi, si]
        names += [f"V[{lab}]", f"se[{lab}]"]
    if var.metadata.has_item("FEM.combined"):
        comb = var.combined()
        _, clabels, cv, cse = _curves(comb)
        for lab, vi, si in zip(clabels, cv, cse, strict=True):
            tag = "combined" if len(clabels) == 1 else f"combined {lab}"
            cols += [vi, si]
            names += [f"V[{tag}]", f"se[{tag}]"]
    header = ",".join(f'"{n}"' if "," in n else n for n in names)
    np.savetxt(path, np.column_stack(cols), delimiter=",", header=header, comments="",
               fmt="%.10g", encoding="utf-8")


def _figures(out, summed, mask, params, pos, center, polar, radial_range, curve, per_bin,
             truth=None, noise=None):
    """Write the PNG figures; return their file names in the order written."""
    import matplotlib.pyplot as plt

    import femlib
    from femlib.signals.variance import _radial_label

    written = []

    def save(fig, name):
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    shown = np.log10(np.clip(np.where(mask, np.nan, summed), 1, None))
    rows, cols = summed.shape
    im = ax.imshow(shown, cmap=cmap, extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
    fig.colorbar(im, ax=ax, label="log10(summed intensity)")
    ax.plot(pos[:, 1], pos[:, 0], ".", ms=2, color="c", label=f"picked points ({len(pos)})")
    ring = femlib.ellipse.ellipse_points(params, num=360)
    ax.plot(np.append(ring[:, 1], ring[0, 1]), np.append(ring[:, 0], ring[0, 0]), "-",
            color="lime", lw=1.2, label="fitted ellipse")
    ax.plot(params[1], params[0], "+", color="lime", ms=12, mew=2, label="ellipse centre")
    ax.plot(center[1], center[0], "x", color="w", ms=9, mew=1.5, label="refined centre")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title("Summed pattern and fitted ring ellipse")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    save(fig, "summed_ellipse.png")

    fig, ax = plt.subplots(figsize=(7, 4.2))
    r_ax, a_ax = polar.axes_manager.signal_axes[1], polar.axes_manager.signal_axes[0]
    half_r, half_a = r_ax.scale / 2, a_ax.scale / 2
    extent = (a_ax.axis[0] - half_a, a_ax.axis[-1] + half_a,
              r_ax.axis[-1] + half_r, r_ax.axis[0] - half_r)
    data = np.asarray(polar.data, dtype=float)
    im = ax.imshow(data, aspect="auto", extent=extent, cmap="magma",
                   vmax=np.nanpercentile(data, 99.5))
    fig.colorbar(im, ax=ax, label="mean intensity per pixel")
    for i, r in enumerate(radial_range):
        ax.axhline(r, color="c", ls="--", lw=1, label="V(k) radial range" if i == 0 else None)
    ax.set_xlabel(f"azimuth ({_units(a_ax) if _units(a_ax) != 'px' else 'rad'})")
    ax.set_ylabel(_radial_label(r_ax))
    ax.set_title("Polar transform of the summed pattern: rings are straight")
    ax.legend(loc="lower right", fontsize="small", framealpha=0.8)
    save(fig, "polar.png")

    ax = curve.plot_curves()
    if truth is not None:
        k = curve.axes_manager.signal_axes[0].axis
        sel = (truth["k"] >= k[0]) & (truth["k"] <= k[-1])
        ax.plot(truth["k"][sel], truth["variance"][sel], "k--", lw=1, label="true V(k)")
    ax.legend(fontsize="small", loc="best")
    save(ax.figure, "variance.png")
    if per_bin is not None:
        ax = per_bin.plot_curves()
        if ax.get_legend() is None:
            ax.set_title(f"{ax.get_title()}\n{len(per_bin.curve_labels())} thickness bins "
                         "(listed in report.html)", fontsize="medium")
        save(ax.figure, "variance_bins.png")
    if noise is not None:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        noise.plot(ax=ax)
        save(fig, "noise_kernel.png")
    return written


def _calibration_rows(s, center, affine, threshold, mask, radial_range, args, gain, n_used,
                      n_total, truth, annulus=None, noise=None):
    """(name, value) pairs of the calibration and settings used, for the report."""
    cal = s.calibration
    units = _units(s.axes_manager.signal_axes[0])
    ratio, rotation = _ellipse_ratio(affine)
    matrix = "\n".join("  ".join(f"{x: .6f}" for x in row) for row in np.asarray(affine))
    if args.input is None:
        shape = args.synthetic_shape or (40, 40)
        source = (f"synthetic dataset (femlib.data.synthetic_fem, seed {args.seed or 0}, "
                  f"scan {shape[0]} x {shape[1]})")
    else:
        source = str(Path(args.input).resolve())
    rows = [
        ("input", source),
        ("detector", f"{mask.shape[1]} x {mask.shape[0]} px, {cal.scale:.6g} {units} per px"),
        ("centre (x, y)", f"({center[1]:.3f}, {center[0]:.3f}) px"),
        ("ellipse", f"axis ratio {ratio:.5f} (ellipticity {ratio - 1:.4%}), major axis at "
         f"{np.degrees(rotation):.2f}° from +x"),
        ("affine", matrix),
        ("mask", f"{int(mask.sum())} of {mask.size} px ({mask.mean():.2%}) below {threshold:.6g} "
         "in the summed pattern"),
        ("radial range", f"{radial_range[0]:.6g} to {radial_range[1]:.6g} {units}, "
         f"{args.npt} bins"),
        ("method", str(args.method)),
    ]
    if noise is None:
        rows.append(("gain", "none (no shot-noise correction)" if gain is None else f"{gain:g}"))
    else:
        ny, nx = noise.size
        rows += [
            ("gain", f"{noise.gain:.6g} (sum of the noise kernel)"),
            ("noise kernel", f"K(0) = {noise.k0:.6g}, window {ny} x {nx} px, from "
             f"{_noise_source(noise, args, units)}"),
        ]
    if annulus is not None:
        rows.append(("thickness", "relative (mean 1), from the mean intensity of the patterns "
                     f"in {annulus[0]:.6g} to {annulus[1]:.6g} {units}"))
    elif args.thickness_bins is not None:
        black = args.black_level if args.black_level is not None else truth["black_level"]
        slope = args.slope if args.slope is not None else truth["slope"]
        rows.append(("thickness", f"from metadata.HAADF.intensity: (HAADF - {black:.6g}) / "
                     f"{slope:.6g} nm"))
    rows.append(("patterns used", f"{n_used} of {n_total}"))
    if truth:
        tc = truth["center"]
        rows.append(("true centre (x, y)", f"({tc[0]:.3f}, {tc[1]:.3f}) px"))
    return rows


def _bin_rows(var, relative=False):
    """One row per thickness bin: its edges, the number of patterns, whether it is used."""
    fem = var.metadata.FEM
    edges = np.asarray(fem.thickness_edges)
    counts = np.asarray(fem.counts)
    name, digits = ("relative thickness", 3) if relative else ("thickness (nm)", 2)
    return [
        {
            name: f"{edges[i]:.{digits}f}–{edges[i + 1]:.{digits}f}",
            "patterns": int(counts[i]),
            "used": "yes" if counts[i] >= 2 else "no (fewer than 2 patterns)",
        }
        for i in range(counts.size)
    ]


_CSS = """
body{font-family:system-ui,sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em;
color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;
overflow-x:auto}figure{display:inline-block;margin:.5em 1em .5em 0;max-width:29em}
figure img{max-width:100%}figcaption{font-size:.85em;color:#444}
"""


def write_report(path, summary, figures, calibration, bins=None, peaks=None,
                 peaks_note=None, command=None):
    """Write a one-page HTML report of a ``femlib fem`` run.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``.html`` file to write; figures are linked relative to its folder.
    summary : str
        The command's summary text.
    figures : list of str
        Figure file names (in the report's folder), shown with the captions of
        ``femlib.cli.FIGURES`` (unknown names get no caption).
    calibration : list of (str, str)
        Calibration and settings as name/value pairs.
    bins : list of dict or None
        The per-thickness-bin table, one dict (column name → value) per bin.
    peaks : list of dict or None
        A peak table, one dict (column name → value) per peak, e.g. from
        ``FEMVariance1D.find_peaks``; omitted when None or empty.
    peaks_note : str or None
        How the peaks were found, printed under the peak table.
    command : list of str or None
        The command line, quoted at the top.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> page = write_report(folder / "report.html", "femlib fem: ...", ["variance.png"],
    ...                     [("gain", "4.2")], peaks=[{"k": 4.62, "V": 0.0068}])
    >>> '<img src="variance.png"' in page.read_text(encoding="utf-8")
    True
    """
    from femlib import __version__

    esc = html.escape
    path = Path(path)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>femlib fem report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>femlib fem report</h1>",
        f"<p>femlib {esc(__version__)}, {esc(when)}"
        + (f"<br><code>{esc(' '.join(command))}</code>" if command else "") + "</p>",
        "<h2>Summary</h2>",
        f"<pre>{esc(summary)}</pre>",
        "<h2>Calibration and settings</h2>",
        _html_table([{"item": name, "value": value} for name, value in calibration],
                    pre_columns=("value",)),
        "<h2>Figures</h2>",
    ]
    for name in figures:
        caption = FIGURES.get(name, "")
        parts.append(
            f'<figure><a href="{esc(name)}"><img src="{esc(name)}" alt="{esc(name)}"></a>'
            f"<figcaption><b>{esc(name)}</b> {esc(caption)}</figcaption></figure>"
        )
    if bins:
        parts += ["<h2>Thickness bins</h2>", _html_table(bins)]
    if peaks:
        parts += ["<h2>Peaks</h2>", _html_table(peaks)]
        if peaks_note:
            parts.append(f"<p>{esc(peaks_note)}</p>")
    parts += [
        "<h2>Files</h2>",
        '<p><a href="variance.csv">variance.csv</a> (one row per k: V and standard error of '
        'every curve), <a href="variance.hspy">variance.hspy</a> (the result with its '
        'metadata, for <code>hs.load</code>), <a href="peaks.csv">peaks.csv</a> (the fitted '
        "peaks of every curve with their standard errors).</p>",
        "</body></html>",
    ]
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _html_table(rows, pre_columns=()):
    esc = html.escape
    columns = list(dict.fromkeys(c for row in rows for c in row))
    head = "".join(f"<th>{esc(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            text = esc(str(row.get(c, "")))
            if c in pre_columns and "\n" in text:
                text = f"<pre>{text}</pre>"
            cells.append(f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
