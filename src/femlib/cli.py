"""The ``femlib`` command line: batch FEM runs (``femlib fem [INPUT] ...``).

With no INPUT it runs the whole workflow on the offline synthetic dataset, which is the
README's "main job". With INPUT, any file HyperSpy reads (.zspy, .hspy, .mib, ...) is
loaded lazily and streamed.
"""

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import numpy as np

__all__ = ["main", "run_fem"]


class UsageError(ValueError):
    """Bad command-line input: reported in one line, exit status 2."""


def _parser():
    p = argparse.ArgumentParser(
        prog="femlib",
        description="Fluctuation electron microscopy of 4D-STEM data.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser(
        "fem",
        help="compute V(k) of a 4D-STEM dataset (the synthetic one when INPUT is omitted)",
        description=(
            "Find the centre and elliptical distortion, mask the beam stop, compute the "
            "normalized variance V(k) (optionally per thickness bin) and write CSV, "
            ".hspy and PNG files into --out."
        ),
    )
    f.add_argument("input", nargs="?", help="dataset file (omit: synthetic dataset)")
    f.add_argument("--gain", type=float, help="detector units per electron (shot-noise "
                   "correction); default: the synthetic truth, or none for files")
    f.add_argument("--npt", type=int, default=50, help="radial bins (default 50)")
    f.add_argument("--radial-range", nargs=2, type=float, metavar=("A", "B"),
                   help="radial range in calibrated units (default: synthetic 3.0 5.75; "
                   "files: the fully covered annulus)")
    f.add_argument("--mask-below", type=float, help="mask pixels whose summed intensity is "
                   "below VALUE (default: 5 %% of the median of the summed pattern)")
    f.add_argument("--thickness-bins", type=int, metavar="B",
                   help="V(k) per thickness bin from metadata.HAADF.intensity")
    f.add_argument("--black-level", type=float, help="HAADF black level")
    f.add_argument("--slope", type=float, help="HAADF units per nm of thickness")
    f.add_argument("--method", default="Omega",
                   help="Omega (default), r, re, VImage or all")
    f.add_argument("--num-points", type=int, default=500,
                   help="brightest pixels used for the ellipse fit (default 500)")
    f.add_argument("--out", default="femlib_out", help="output directory (default femlib_out)")
    f.add_argument("--seed", type=int, default=0, help="seed of the synthetic dataset")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    """Entry point of the ``femlib`` console script.

    Parameters
    ----------
    argv : list of str or None
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback).
    """
    args = _parser().parse_args(argv)
    try:
        summary = run_fem(args)
    except (UsageError, ValueError, TypeError, OSError) as exc:
        print(f"femlib: error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def _load(args):
    import hyperspy.api as hs

    import femlib

    if args.input is None:
        return femlib.data.synthetic_fem(seed=args.seed)
    path = Path(args.input)
    if not path.exists():
        raise UsageError(f"INPUT {path} does not exist")
    try:
        s = hs.load(str(path), lazy=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input here
        raise UsageError(f"cannot read {path}: {exc}") from None
    if isinstance(s, list):
        s = next((x for x in s if x.axes_manager.signal_dimension == 2), s[0])
    if s.axes_manager.signal_dimension != 2 or s.axes_manager.navigation_dimension < 1:
        raise UsageError(
            f"{path} holds a {s.axes_manager.navigation_dimension}+"
            f"{s.axes_manager.signal_dimension}D signal; a 4D-STEM stack (probe positions x "
            "2D patterns) is needed"
        )
    s.set_signal_type("fem_diffraction")
    return s


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


def _peaks(v, se, k, count=3):
    from scipy.signal import find_peaks

    idx, props = find_peaks(v, prominence=3 * np.nanmedian(se))
    order = np.argsort(v[idx])[::-1][:count]
    return [(float(k[i]), float(v[i]), float(se[i])) for i in idx[order]]


def run_fem(args):
    """Run the FEM workflow for parsed command-line arguments; write outputs.

    Parameters
    ----------
    args : argparse.Namespace
        As produced by the ``femlib fem`` parser.

    Returns
    -------
    str
        The summary printed by the command.

    Raises
    ------
    UsageError, ValueError
        Bad input (missing file, not 4D, gain <= 0, ranges outside the data...).
    """
    import matplotlib

    matplotlib.use("Agg")
    from hyperspy.defaults_parser import preferences

    import femlib
    from femlib.variance import check_gain, check_method

    if args.npt < 1:
        raise UsageError(f"--npt must be a positive integer, got {args.npt}")
    check_method(args.method if args.method != "all" else "all")
    gain = check_gain(args.gain) if args.gain is not None else None
    out = Path(args.out)
    preferences.General.show_progressbar = not args.quiet
    logging.getLogger("femlib").setLevel(logging.WARNING if args.quiet else logging.INFO)

    s = _load(args)
    synthetic = args.input is None
    truth = s.metadata.Simulation.as_dictionary() if synthetic else {}
    if synthetic and gain is None:
        gain = float(truth["gain"])
    out.mkdir(parents=True, exist_ok=True)
    progress = _progress(not args.quiet)
    with progress:
        summed = s.sum()
        if summed._lazy:
            summed.compute()
    threshold = args.mask_below
    if threshold is None:
        threshold = 0.05 * float(np.median(summed.data))
    mask = summed.data < threshold

    # RANSAC keeps the ring with most points (the bright rim around a beam stop can hold
    # many of the brightest pixels too); refining then removes the pixel-picking bias.
    center, affine, params, pos, _ = femlib.ellipse.determine_ellipse(
        summed.data, mask=mask, num_points=args.num_points, return_params=True,
        use_ransac=True,
    )
    center, affine = femlib.ellipse.refine_center_affine(summed.data, center, affine, mask=mask)
    s.calibration.center = center[::-1]
    s.calibration.affine = affine
    s.calibration.mask = mask
    ratio, _ = femlib.ellipse.affine_to_ellipse(affine)

    radial_range = args.radial_range
    if radial_range is None:
        radial_range = (3.0, 5.75) if synthetic else _default_radial_range(s, mask, args.npt)
    with progress:
        polar = s.get_azimuthal_integral2d(npt=100, npt_azim=180, mean=True).sum()
        if polar._lazy:
            polar.compute()
    thickness = bins = None
    if args.thickness_bins is not None:
        if not s.metadata.has_item("HAADF.intensity"):
            raise UsageError("--thickness-bins needs a HAADF image in metadata.HAADF.intensity")
        black = args.black_level if args.black_level is not None else truth.get("black_level")
        slope = args.slope if args.slope is not None else truth.get("slope")
        if black is None or slope is None:
            raise UsageError("--thickness-bins needs --black-level and --slope")
        thickness = femlib.thickness.thickness_from_haadf(
            s.metadata.HAADF.intensity, black_level=black, slope=slope
        )
        bins = args.thickness_bins
    var = s.get_variance(
        npt=args.npt, method=args.method, gain=gain, radial_range=tuple(radial_range),
        mask=mask, thickness=thickness, bins=bins, show_progressbar=not args.quiet,
    )
    main_curve = var.combined() if bins is not None else var

    _write_csv(out / "variance.csv", var)
    var.save(out / "variance.hspy", overwrite=True)
    _figures(out, summed.data, mask, params, pos, polar, main_curve, var if bins else None,
             truth if synthetic else None)

    k = main_curve.axes_manager.signal_axes[0].axis
    v0 = main_curve.data.reshape(-1, k.size)[0]
    se0 = main_curve.standard_error.reshape(-1, k.size)[0]
    lines = [
        f"femlib fem: {'synthetic dataset' if synthetic else args.input} "
        f"({var.metadata.FEM.number_of_patterns} patterns)",
        f"  centre (x, y): ({center[1]:.3f}, {center[0]:.3f}) px",
        f"  ellipticity: {ratio - 1:.4%} (axis ratio {ratio:.5f})",
        f"  radial range: {radial_range[0]:.4g}-{radial_range[1]:.4g}, gain: {gain}",
    ]
    if synthetic:
        tc = truth["center"]
        lines.append(f"  true centre (x, y): ({tc[0]:.3f}, {tc[1]:.3f}) px")
    label = "combined over thickness bins" if bins else str(var.metadata.FEM.methods[0])
    lines.append(f"  V(k) peaks ({label}):")
    for kk, vv, ss in _peaks(v0, se0, k):
        lines.append(f"    k = {kk:.3f}: V = {vv:.5f} +/- {ss:.5f}")
    lines.append(f"  wrote {out}/variance.csv, variance.hspy and PNG figures")
    return "\n".join(lines)


def _progress(show):
    if not show:
        return contextlib.nullcontext()
    from dask.diagnostics import ProgressBar

    return ProgressBar()


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


def _figures(out, summed, mask, params, pos, polar, curve, per_bin, truth=None):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    fig, ax = plt.subplots(figsize=(5, 5))
    shown = np.where(mask, np.nan, summed)
    ax.imshow(np.log10(np.clip(shown, 1, None)), cmap="magma")
    ax.plot(pos[:, 1], pos[:, 0], ".", ms=1.5, color="c", label="fit points")
    ax.add_patch(Ellipse((params[1], params[0]), 2 * params[2], 2 * params[3],
                         angle=np.degrees(params[4]), fill=False, color="lime", lw=1.2))
    ax.plot(params[1], params[0], "+", color="lime", ms=10)
    ax.set_title("Summed pattern (log), fitted ellipse")
    fig.savefig(out / "summed_ellipse.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    r_ax, a_ax = polar.axes_manager.signal_axes[1], polar.axes_manager.signal_axes[0]
    extent = [a_ax.axis[0], a_ax.axis[-1], r_ax.axis[-1], r_ax.axis[0]]
    ax.imshow(polar.data, aspect="auto", extent=extent, cmap="magma",
              vmax=np.nanpercentile(polar.data, 99.5))
    ax.set_xlabel("azimuth (rad)")
    ax.set_ylabel(f"k ({r_ax.units})")
    ax.set_title("Polar transform (sum over positions): rings are straight")
    fig.savefig(out / "polar.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    ax = curve.plot_curves()
    if truth is not None:
        k = curve.axes_manager.signal_axes[0].axis
        sel = (truth["k"] >= k[0]) & (truth["k"] <= k[-1])
        ax.plot(truth["k"][sel], truth["variance"][sel], "k--", lw=1, label="true V(k)")
        ax.legend(fontsize="small")
    ax.figure.savefig(out / "variance.png", dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    if per_bin is not None:
        ax = per_bin.plot_curves()
        ax.figure.savefig(out / "variance_bins.png", dpi=120, bbox_inches="tight")
        plt.close(ax.figure)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
