"""The ``femlib`` command line: argument parsing and exit codes, ``femlib fem [INPUT]``.

The work is :func:`femlib.workflow.run_fem` (load, screen, calibrate, V(k), peaks) and the
writing :func:`femlib.report.write_outputs` (atomic: a temporary folder renamed into
place); this module parses the options, checks ``--out`` before any work, and turns every
outcome into one exit status:

* 0 -- success (also ``--help`` and ``--version``);
* 2 -- anything the user can fix: bad options, an unreadable, incomplete or unsupported
  file, an ellipse that cannot be fitted, an unwritable or non-empty ``--out``, a full
  disk, another run writing the same ``--out``; one line ``femlib: error: ...``;
* 130 -- interrupted (SIGINT, Ctrl-C): ``femlib: interrupted``;
* 143 -- terminated (SIGTERM): ``femlib: terminated``.

No failure leaves an output folder or a partial one. The summary is the only text on
stdout; progress (dask's bars when stderr is a terminal, one line per finished step
otherwise) and warnings (one line each, ``femlib: warning: ...``) go to stderr.
"""

import argparse
import contextlib
import math
import signal
import sys
import time
import warnings

# Only the standard library at import: SIGINT and SIGTERM are handled from main() on, and
# everything heavy (numpy, HyperSpy, the workflow) is imported inside it.
from femlib._errors import UsageError

__all__ = ["UsageError", "main"]

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 2, 130, 143


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised (one line, no usage block) instead of printed."""

    def error(self, message):
        raise UsageError(message)


class _Formatter(argparse.HelpFormatter):
    """Shows an option with an optional pair of values as ``[A B]`` (argparse would write
    ``[A [B ...]]`` for ``nargs="*"``, whose count the CLI checks itself)."""

    def _format_args(self, action, default_metavar):
        if getattr(action, "shown_as", None):
            return action.shown_as
        return super()._format_args(action, default_metavar)


def _optional_pair(parser, *names, help):
    """An option given alone or with two radii ``A B`` (``[]`` or ``[A, B]``; None if
    absent); the count and order are checked by the workflow."""
    action = parser.add_argument(*names, nargs="*", type=_number(float, "radius", minimum=0),
                                 help=help)
    action.shown_as = "[A B]"
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
        if not math.isfinite(value):
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
        epilog="exit status: 0 success; 2 bad input, unreadable file, unwritable or "
        "non-empty --out, full disk (one line on stderr, nothing written); 130 "
        "interrupted (SIGINT); 143 terminated (SIGTERM).",
    )
    f.add_argument("input", nargs="?", metavar="INPUT",
                   help="dataset file HyperSpy reads (omit: the synthetic dataset)")
    f.add_argument("--reader", metavar="NAME",
                   help="RosettaSciIO reader of INPUT where its extension is ambiguous "
                   "(e.g. arina for a DECTRIS Arina master .h5)")
    f.add_argument("--signal", type=_number(int, "index", minimum=0), metavar="INDEX",
                   help="which signal of a file that holds several (default: the only "
                   "4D-STEM one; an error lists them)")
    f.add_argument("--center", nargs=2, type=_number(float, "pixel"), metavar=("X", "Y"),
                   help="pattern centre in pixels (column, row): no ellipse fit, no "
                   "elliptical correction")
    f.add_argument("--mask", metavar="FILE",
                   help="detector mask (.npy, .tif or a HyperSpy file; True or 1 = "
                   "masked); replaces the default --mask-below mask")
    scale = f.add_argument("--scale", nargs="+", metavar="VALUE",
                           help="detector pixel size in calibrated units, optionally with "
                           "the units (e.g. 0.0125 nm^-1); default: the file's calibration")
    scale.shown_as = "VALUE [UNITS]"
    f.add_argument("--haadf", metavar="FILE",
                   help="HAADF image of the scan (.npy, .tif or HyperSpy file, "
                   "navigation-shaped) for --thickness-bins, instead of "
                   "metadata.HAADF.intensity")
    f.add_argument("--bad-pixels", default="auto", metavar="auto|none|FILE",
                   help="dead, hot and noisy detector pixels left out of everything: auto "
                   "(default) finds them from the scan (find_bad_pixels), none keeps every "
                   "pixel, FILE reads them (.npy, .tif or HyperSpy file; True or 1 = bad)")
    f.add_argument("--outliers", default="auto", choices=["auto", "none"],
                   help="patterns left out of V(k): auto (default) finds crystalline "
                   "patterns, dose jumps and NaN frames (find_outlier_patterns)")
    f.add_argument("--descan", default="auto", choices=["auto", "none"],
                   help="auto (default): find the pattern centre of every position "
                   "(find_centers) and integrate each pattern around its own centre when it "
                   "moves by 0.1 px or more; none: one centre for the whole scan")
    f.add_argument("--gain", type=_number(float, "gain", positive=True),
                   help="detector units per electron (shot-noise correction); default: the "
                   "synthetic truth, or no correction for a file")
    f.add_argument("--npt", type=_number(int, "npt", positive=True), default=50,
                   help="radial bins of V(k) (default 50)")
    f.add_argument("--radial-range", nargs=2, type=_number(float, "radius", minimum=0),
                   metavar=("A", "B"), help="radial range of V(k) in calibrated units "
                   "(default: synthetic 3.0 5.75; files: the widest annulus at least half "
                   "unmasked)")
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
                   help="output folder (default femlib_out), written into a temporary "
                   "folder beside it and renamed into place when complete")
    f.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --out whole (default: refuse it)")
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
        Exit status: 0 on success (also for ``--help`` and ``--version``), 2 on anything
        the user can fix (one line ``femlib: error: ...`` on stderr, no traceback, no
        output folder), 130 when interrupted (SIGINT), 143 when terminated (SIGTERM).

    Examples
    --------
    >>> main(["--version"])  # doctest: +ELLIPSIS
    femlib ...
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    previous = _on_sigterm()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("femlib: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except _Terminated:
        print("femlib: terminated", file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm():
    """Make SIGTERM an exception in the main thread (the temporary output folder is then
    removed on the way out); the previous handler, or None when not in the main thread."""

    def handler(signum, frame):
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _main(argv):
    from femlib import report, workflow

    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _fail(exc)
    except SystemExit as exc:  # --help, --version
        return exc.code or 0
    progress = _Progress(bars=not args.quiet and _isatty(sys.stderr), lines=not args.quiet)
    try:
        with _one_line_warnings():
            options = _options(args)
            report.check_out(args.out, overwrite=args.overwrite)  # before any work
            result = workflow.run_fem(args.input, progress=progress, **options)
            with progress.step("wrote the outputs"):
                summary = report.write_outputs(result, args.out, overwrite=args.overwrite,
                                               command=["femlib", *argv])
    except (ValueError, TypeError, OSError) as exc:
        return _fail(exc)
    print(summary, flush=True)
    return EXIT_OK


def _options(args):
    """The workflow's options (:class:`femlib.workflow.FEMOptions`) from parsed arguments."""
    skip = {"command", "input", "out", "overwrite", "quiet"}
    options = {k: v for k, v in vars(args).items() if k not in skip}
    for key in ("radial_range", "center", "synthetic_shape", "thickness_from_pattern",
                "noise_from_scan"):
        if options[key] is not None:
            options[key] = tuple(options[key])
    if options["scale"] is not None:
        options["scale"] = _scale(options["scale"])
    return options


def _scale(values):
    if len(values) > 2:
        raise UsageError(f"--scale takes VALUE [UNITS], got {len(values)} values")
    try:
        value = float(values[0])
    except ValueError:
        raise UsageError(f"argument --scale: expected a number, got {values[0]!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"argument --scale: must be a finite number > 0, got {values[0]}")
    return (value, *values[1:])


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
        warnings.showwarning = show
        yield


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
