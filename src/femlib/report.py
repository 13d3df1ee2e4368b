"""Writing the results of a ``femlib fem`` run: CSV, ``.hspy``, PNG figures, HTML report.

:func:`write_outputs` writes every file into a temporary folder beside the output folder
and renames it into place only when all of them are complete: an interrupted, failed or
concurrent run leaves no partial or mixed folder, and an existing folder is left as it was
unless the new one replaces it whole (``overwrite=True``).
"""

import contextlib
import datetime
import errno
import html
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np

from femlib.workflow import MIN_PEAK_PATTERNS, UsageError

__all__ = ["FIGURES", "check_out", "summary_lines", "write_outputs", "write_report"]

FIGURES = {
    "summed_ellipse.png": "Summed pattern (log scale) with the fitted ring ellipse, the "
    "points it was fitted to and its centre; masked pixels in grey.",
    "polar.png": "Polar transform of the summed pattern with the calibration applied: "
    "the rings must be straight lines. Dashed: the radial range of V(k).",
    "variance.png": "V(k) with its ±1 standard-error band.",
    "variance_bins.png": "V(k) in every thickness bin that holds 2 or more patterns.",
    "noise_kernel.png": "The detector noise kernel K(Δ) used for the shot-noise "
    "correction (its sum is the gain, its centre K(0) the per-pixel variance-to-mean ratio).",
    "bad_pixels.png": "The detector mask: pixels masked in the summed pattern (or by --mask) "
    "in grey, bad pixels coloured by their reason (dead, hot, noisy, from --bad-pixels).",
    "outliers.png": "The scan: positions left out of V(k) coloured by their reason "
    "(crystalline, dose, NaN or inf), beside the crystalline score of every position.",
    "descan.png": "The pattern centre over the scan minus its mean: tile fits (black) and "
    "the fitted model (orange), with the fit residuals.",
}

_TMP_SUFFIX = ".femlib-partial"
_OLD_SUFFIX = ".femlib-old"


def check_out(out, overwrite=False):
    """Check, before any work, that the output folder ``out`` can be created and written.

    Parameters
    ----------
    out : str or pathlib.Path
        The output folder.
    overwrite : bool
        Whether an existing non-empty ``out`` may be replaced (whole).

    Raises
    ------
    UsageError
        ``out`` is a file, a non-empty folder (without ``overwrite``), or its parent folder
        does not exist or cannot be written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> check_out(pathlib.Path(tempfile.mkdtemp()) / "results")
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise UsageError(f"--out {out} exists and is not empty: give --overwrite to "
                             "replace it whole, or another --out")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"--out {out}: its parent folder {parent} does not exist")
    try:  # the only sure test: create (and remove) a folder where the outputs will go
        with _signals_blocked():  # a signal in between would leave the probe behind
            probe = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".check", dir=parent)
            os.rmdir(probe)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write in {parent} "
                         f"({exc.strerror or exc})") from None


@contextlib.contextmanager
def _signals_blocked():
    """SIGINT and SIGTERM wait while the output folder is made or renamed into place (they
    are handled right after): these steps are never cut in the middle.

    The signals' Python handlers are swapped for one that notes the signal, and the noted
    signals are handed to the old handlers at the end. (Masking the signals with
    ``pthread_sigmask`` would not do: it masks them for the calling thread only, and with
    dask's worker threads running the kernel delivers a signal sent to the process to one
    of them, whose Python handler then runs in the main thread at once.) Outside the main
    thread signals cannot be handled there anyway: nothing is changed."""
    pending = []

    def note(signum, frame):
        pending.append(signum)

    sigs = (signal.SIGINT, signal.SIGTERM)
    try:
        old = {s: signal.signal(s, note) for s in sigs}
    except ValueError:  # not the main thread
        old = None
    try:
        yield
    finally:
        if old is not None:
            for s, handler in old.items():
                signal.signal(s, handler)
            for s in dict.fromkeys(pending):  # each signal once, in order
                handler = old[s]
                if callable(handler):
                    handler(s, None)
                elif handler == signal.SIG_DFL:
                    signal.raise_signal(s)


def _commit(tmp, out, overwrite):
    """Rename the complete folder ``tmp`` to ``out``; the rename decides between
    concurrent runs (it fails when ``out`` is non-empty)."""
    raced = UsageError(f"--out {out} was written by another run while this one ran: "
                       "nothing written (give another --out)")
    with _signals_blocked():
        old = None
        if overwrite and out.is_dir() and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=_OLD_SUFFIX,
                                        dir=tmp.parent))
            os.rename(out, old / "previous")
        try:
            os.rename(tmp, out)
        except OSError as exc:
            if old is not None and not out.exists():  # put the previous folder back
                os.rename(old / "previous", out)
                shutil.rmtree(old, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise raced from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_outputs(result, out, overwrite=False, command=None, label=None):
    """Write every output of a :func:`femlib.workflow.run_fem` result, atomically.

    The files (``report.html``, ``variance.csv``, ``variance.hspy``, ``peaks.csv`` and the
    PNG figures) are written into a temporary folder beside ``out``, which is renamed to
    ``out`` once all are complete. On any failure or signal the temporary folder is
    removed and an existing ``out`` is left as it was.

    Parameters
    ----------
    result : femlib.workflow.FEMResult
        The run's results.
    out : str or pathlib.Path
        The output folder; its parent must exist.
    overwrite : bool
        Replace an existing non-empty ``out`` whole (default: refuse it).
    command : list of str or None
        The command line, quoted in ``report.html``.
    label : str or None
        How the summary names ``out`` (default ``str(out)``).

    Returns
    -------
    str
        The summary, ending with the line that names the files written.

    Raises
    ------
    UsageError
        ``out`` cannot be written (see :func:`check_out`), the disk is full, or another
        run wrote ``out`` meanwhile.

    Examples
    --------
    >>> import tempfile, pathlib, femlib
    >>> r = femlib.workflow.run_fem(synthetic_shape=(6, 6), npt=12, seed=1)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "o"
    >>> print(write_outputs(r, out, label="o").splitlines()[-1])
      wrote o/: report.html, variance.csv, variance.hspy, peaks.csv and 3 PNG figures
    """
    out = Path(out)
    check_out(out, overwrite)
    parent = out.absolute().parent
    tmp = None
    try:
        with _signals_blocked():  # created and known to the clean-up at once
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=_TMP_SUFFIX,
                                        dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # as a plain mkdir would (mkdtemp gives 0700)
        try:
            summary = _write_all(result, tmp, label or str(out), command)
        except OSError as exc:
            what = exc.strerror or str(exc)
            if exc.errno == errno.ENOSPC and what == "No space left on device":
                what = "no space left on the device"
            raise UsageError(f"cannot write the outputs for --out {out}: {what} (nothing "
                             "written)") from None
        _commit(tmp, out, overwrite)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


# Room for the figures, the CSV files and the report beside the .hspy file.
_OTHER_BYTES = 2 << 20


def _hspy_bytes(var):
    """An upper estimate of the size of ``variance.hspy``: V(k), its standard error and
    jackknife replicates in float64, and the metadata."""
    jack = var.metadata.get_item("FEM.jackknife")
    n = np.size(var.data) * (2 + (np.size(jack) // max(np.size(var.data), 1)
                                  if jack is not None else 0))
    return 8 * n + (256 << 10)


def _check_space(folder, var):
    """Refuse to start writing without room for the outputs: HDF5 on a full disk fails
    in ways that cannot be cleaned up (errors at deallocation, even a crash)."""
    need = _hspy_bytes(var) + _OTHER_BYTES
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OSError(errno.ENOSPC, f"not enough space on the device ({free / 1e6:.2f} MB "
                      f"free, about {need / 1e6:.1f} MB needed)")


def _write_all(result, folder, label, command):
    var = result.variance
    _check_space(folder, var)
    _write_csv(folder / "variance.csv", var)
    try:
        var.save(folder / "variance.hspy", overwrite=True)
    except RuntimeError as exc:  # h5py reports a failed write as RuntimeError
        if "errno = 28" in str(exc) or "No space left" in str(exc):
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise
    # UTF-8 whatever the locale: the bin labels hold an en dash.
    (folder / "peaks.csv").write_text(result.peak_table.to_csv(), encoding="utf-8")
    figures = _figures(folder, result)
    lines = summary_lines(result)
    lines.append(f"  wrote {label}/: report.html, variance.csv, variance.hspy, peaks.csv "
                 f"and {len(figures)} PNG figures")
    summary = "\n".join(lines)
    write_report(folder / "report.html", summary=summary, figures=figures,
                 calibration=_calibration_rows(result),
                 bins=_bin_rows(var, relative=result.annulus is not None)
                 if result.binned else None,
                 peaks=_peak_rows(result.peak_table, result.signal_units),
                 peaks_note=_peaks_note(result.peak_table, result.binned), command=command)
    return summary


def summary_lines(result):
    """The lines of the command's summary (all but the last, which names the files).

    Parameters
    ----------
    result : femlib.workflow.FEMResult

    Returns
    -------
    list of str

    Examples
    --------
    >>> import femlib
    >>> r = femlib.workflow.run_fem(synthetic_shape=(6, 6), npt=12, seed=1)
    >>> summary_lines(r)[0]
    'femlib fem: synthetic dataset (36 patterns)'
    """
    r, units = result, result.signal_units
    center = r.center
    lines = [
        f"femlib fem: {r.source} ({r.n_total} patterns)",
        f"  patterns used: {r.n_used} of {r.n_total}",
        f"  centre (x, y): ({center[1]:.3f}, {center[0]:.3f}) px"
        + (" (given)" if r.ellipse is None else ""),
    ]
    if r.truth:
        tc = r.truth["center"]
        lines.append(f"  true centre (x, y): ({tc[0]:.3f}, {tc[1]:.3f}) px")
    if r.noise is None:
        gain = r.gain
        shot = f"gain: {'none (no shot-noise correction)' if gain is None else f'{gain:g}'}"
    else:
        shot = f"noise kernel: gain {r.noise.gain:.4g}, k0 {r.noise.k0:.4g}"
    ratio, _ = _ellipse_ratio(r.affine)
    if r.ellipse is not None:
        lines.append(f"  ellipticity: {ratio - 1:.4%} (axis ratio {ratio:.5f})")
    else:
        lines.append("  ellipticity: not corrected (centre given, no ellipse fit)")
    lines += [
        f"  mask: {_mask_text(r)}",
        f"  {r.screening.left_out_line(r.n_total)}",
        f"  {r.screening.descan_line()}",
        f"  radial range: {r.radial_range[0]:.4g}-{r.radial_range[1]:.4g} {units}, {shot}",
    ]
    if r.noise is not None:
        lines.append(f"  noise kernel from {_noise_source(r.noise, r.options, units)}")
    if r.annulus is not None:
        lines.append(f"  thickness: relative, from the patterns' mean intensity in "
                     f"{r.annulus[0]:.4g}-{r.annulus[1]:.4g} {units}")
    if r.bins_line:
        lines.append(f"  {r.bins_line}")
    label = ("combined over thickness bins" if r.binned
             else ", ".join(map(str, r.variance.metadata.FEM.methods)))
    lines += _peak_lines(r.peaks, label, units)
    return lines


def _mask_text(r, long=False):
    bad = r.screening.bad_pixel_mask
    n = int(r.mask.sum() if bad is None else (r.mask & ~bad).sum())
    parts = []
    if r.options.mask is not None:
        name = r.options.mask if isinstance(r.options.mask, str | Path) else "an array"
        parts.append(f"from {name}")
    if r.threshold is not None:
        parts.append(f"below {r.threshold:.6g}" if long else f"below {r.threshold:.4g}")
    where = " or ".join(parts) if len(parts) < 2 else f"{parts[0]}, or {parts[1]}"
    what = f"{n} of {r.mask.size} px ({n / r.mask.size:.2%})" if long else f"{n} pixels"
    text = f"{what} {where}" + (" in the summed pattern" if r.threshold is not None else "")
    n_bad = r.screening.n_bad_pixels
    return text + (f", and {n_bad} bad pixels" if n_bad else "")


def _ellipse_ratio(affine):
    import femlib

    return femlib.ellipse.affine_to_ellipse(affine)


def _units(axis):
    from femlib.workflow import _units as units

    return units(axis)


def _noise_source(noise, opts, units):
    """Where the noise kernel came from, for the summary and the report."""
    info = noise.info
    if info.get("method") == "flat_field":
        text = f"{info['n_frames']} flat-field frames in {opts.flat_field}"
        if opts.dark is not None:
            text += f", dark {opts.dark}"
        elif opts.offset is not None:
            text += f", offset {opts.offset:g}"
        return text
    lo, hi = info["radial_range"]
    outer = "the corners" if not np.isfinite(hi) else f"{hi:.4g} {units}"
    return (f"the scan ({info['n_pairs']} pairs of neighbouring patterns, {lo:.4g} {units} "
            f"to {outer})")


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


def _figures(out, result):
    """Write the PNG figures; return their file names in the order written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    r = result
    summed, mask, params, pos, center = r.summed.data, r.mask, r.ellipse, r.points, r.center
    polar, radial_range, curve = r.polar, r.radial_range, r.curve
    per_bin = r.variance if r.binned else None
    truth, noise = (r.truth or None), r.noise

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
    if params is not None:
        ax.plot(pos[:, 1], pos[:, 0], ".", ms=2, color="c",
                label=f"picked points ({len(pos)})")
        ring = femlib.ellipse.ellipse_points(params, num=360)
        ax.plot(np.append(ring[:, 1], ring[0, 1]), np.append(ring[:, 0], ring[0, 0]), "-",
                color="lime", lw=1.2, label="fitted ellipse")
        ax.plot(params[1], params[0], "+", color="lime", ms=12, mew=2, label="ellipse centre")
    ax.plot(center[1], center[0], "x", color="w", ms=9, mew=1.5,
            label="refined centre" if params is not None else "given centre")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title("Summed pattern and fitted ring ellipse" if params is not None
                 else "Summed pattern and the given centre")
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
    sc = result.screening
    if sc.bad_pixel_mask is not None:
        save(_bad_pixel_figure(plt, result), "bad_pixels.png")
    if sc.outliers is not None:
        save(_outlier_figure(plt, result), "outliers.png")
    if sc.centers is not None:
        fig = femlib.screening.plot_descan(sc.centers)
        fig.suptitle(f"Descan: {sc.descan_line()[len('descan: '):]}", fontsize="medium")
        fig.tight_layout()
        save(fig, "descan.png")
    return written


def _categories(plt, ax, codes, names, title):
    """An image of integer categories 0..n (0 = kept, white) with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colours = ["white", "tab:red", "tab:blue", "tab:orange", "tab:purple"][: len(names) + 1]
    ax.imshow(codes, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1,
              interpolation="nearest")
    ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(colours[1:], names,
                                                                strict=True)],
              loc="upper right", fontsize="small", framealpha=0.8)
    ax.set_title(title, fontsize="medium")


def _first_reason(reason_map, bits):
    """Category index (1-based, in ``bits`` order) of the lowest reason bit set; 0 none."""
    codes = np.zeros(np.shape(reason_map), int)
    for i, bit in reversed(list(enumerate(bits.values(), start=1))):
        codes[(np.asarray(reason_map) & bit) > 0] = i
    return codes


def _bad_pixel_figure(plt, r):
    sc = r.screening
    fig, ax = plt.subplots(figsize=(6, 5))
    if sc.bad_pixels is not None:
        md = sc.bad_pixels.metadata.Screening.bad_pixels
        bits = md.reason_bits.as_dictionary()
        codes = _first_reason(np.where(sc.bad_pixel_mask, md.reason_map, 0), bits)
        names = list(bits)
    else:
        codes, names = sc.bad_pixel_mask.astype(int), ["from --bad-pixels"]
    beam = r.mask & ~sc.bad_pixel_mask
    _categories(plt, ax, codes, names, f"Detector mask: {sc.pixels_text()}")
    ax.imshow(np.where(beam, 1.0, np.nan), cmap="gray", vmin=0, vmax=2,
              interpolation="nearest")
    rows, cols = np.nonzero(sc.bad_pixel_mask)
    ax.plot(cols, rows, "o", mfc="none", mec="k", ms=8, mew=0.8)  # single pixels stay seen
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    return fig


def _outlier_figure(plt, r):
    sc = r.screening
    md = sc.outliers.metadata.Screening.outliers
    bits = md.reason_bits.as_dictionary()
    codes = _first_reason(md.reason, bits)
    score = np.asarray(md.crystal_score, dtype=float)
    if codes.ndim == 1:  # a line scan: one row
        codes, score = codes[None], score[None]
    names = {"crystalline": "crystalline", "dose": "dose", "nonfinite": "NaN or inf"}
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    _categories(plt, ax[0], codes, [names.get(k, k) for k in bits],
                f"Left out of V(k): {sc.positions_text(r.n_total)}")
    im = ax[1].imshow(score, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax[1], label="crystalline score (robust SD)")
    ax[1].set_title(f"Crystalline score (threshold {md.thresholds.crystal:g})",
                    fontsize="medium")
    for a in ax:
        a.set_xlabel("scan x (steps)")
        a.set_ylabel("scan y (steps)")
    fig.tight_layout()
    return fig


def _calibration_rows(r):
    """(name, value) pairs of the calibration and settings used, for the report."""
    opts, units = r.options, r.signal_units
    ratio, rotation = _ellipse_ratio(r.affine)
    matrix = "\n".join("  ".join(f"{x: .6f}" for x in row) for row in np.asarray(r.affine))
    if r.truth:
        shape = opts.synthetic_shape or (40, 40)
        source = (f"synthetic dataset (femlib.data.synthetic_fem, seed {opts.seed or 0}, "
                  f"scan {shape[0]} x {shape[1]})")
    else:
        source = r.input_path or r.source
        if opts.reader is not None or opts.signal is not None:
            source += "".join([f", reader {opts.reader}" if opts.reader else "",
                               f", signal {opts.signal}" if opts.signal is not None else ""])
    mask, center = r.mask, r.center
    ellipse = (f"axis ratio {ratio:.5f} (ellipticity {ratio - 1:.4%}), major axis at "
               f"{np.degrees(rotation):.2f}° from +x" if r.ellipse is not None
               else "not fitted: centre given (--center), identity affine")
    rows = [
        ("input", source),
        ("detector", f"{mask.shape[1]} x {mask.shape[0]} px, {r.detector_scale:.6g} {units} "
         "per px" + (" (--scale)" if opts.scale is not None else "")),
        ("centre (x, y)", f"({center[1]:.3f}, {center[0]:.3f}) px"),
        ("ellipse", ellipse),
        ("affine", matrix),
        ("mask", _mask_text(r, long=True)),
        ("radial range", f"{r.radial_range[0]:.6g} to {r.radial_range[1]:.6g} {units}, "
         f"{opts.npt} bins"),
        ("method", str(opts.method)),
    ]
    if r.noise is None:
        rows.append(("gain", "none (no shot-noise correction)" if r.gain is None
                     else f"{r.gain:g}"))
    else:
        ny, nx = r.noise.size
        rows += [
            ("gain", f"{r.noise.gain:.6g} (sum of the noise kernel)"),
            ("noise kernel", f"K(0) = {r.noise.k0:.6g}, window {ny} x {nx} px, from "
             f"{_noise_source(r.noise, opts, units)}"),
        ]
    if r.annulus is not None:
        rows.append(("thickness", "relative (mean 1), from the mean intensity of the patterns "
                     f"in {r.annulus[0]:.6g} to {r.annulus[1]:.6g} {units}"))
    elif opts.thickness_bins is not None:
        black = opts.black_level if opts.black_level is not None else r.truth["black_level"]
        slope = opts.slope if opts.slope is not None else r.truth["slope"]
        haadf = "--haadf " + str(opts.haadf) if isinstance(opts.haadf, str | Path) else (
            "metadata.HAADF.intensity")
        rows.append(("thickness", f"from {haadf}: (HAADF - {black:.6g}) / {slope:.6g} nm"))
    rows.append(("patterns used", f"{r.n_used} of {r.n_total}" + (
        f" ({r.n_nonfinite} with NaN or infinite values left out)" if r.n_nonfinite else "")))
    rows += _screening_rows(r)
    if r.truth:
        tc = r.truth["center"]
        rows.append(("true centre (x, y)", f"({tc[0]:.3f}, {tc[1]:.3f}) px"))
    return rows


def _screening_rows(r):
    """Report rows of the screening steps (--bad-pixels, --outliers, --descan)."""
    sc, opts = r.screening, r.options
    source = {"auto": "searched (--bad-pixels auto)", "none": "not searched (--bad-pixels "
              "none)"}.get(sc.bad_pixel_source, f"from --bad-pixels {sc.bad_pixel_source}")
    rows = [("bad pixels", f"{source}: {sc.pixels_text()}")]
    if sc.bad_pixels is not None:
        md = sc.bad_pixels.metadata.Screening.bad_pixels
        th = md.thresholds
        rows[-1] = (rows[-1][0], rows[-1][1] + f"; thresholds hot {th.hot:g}x and noisy "
                    f"{th.noisy:g}x the prediction ({md.model}), {th.min_z:g} standard "
                    "errors")
    if opts.outliers == "none":
        rows.append(("outlier patterns", "not searched (--outliers none)"))
    elif sc.outliers is None:
        rows.append(("outlier patterns", sc.positions_text(r.n_total)))
    else:
        md = sc.outliers.metadata.Screening.outliers
        counts = {k: int(v) for k, v in md.counts.as_dictionary().items()}
        rows.append(("outlier patterns", f"{md.n_outliers} of {md.n_positions} "
                     f"(crystalline {counts['crystalline']}, dose {counts['dose']}, NaN or "
                     f"inf {counts['nonfinite']}); thresholds crystalline "
                     f"{md.thresholds.crystal:g} and dose {md.thresholds.dose:g} robust "
                     "standard deviations"))
    text = sc.descan_line()[len("descan: "):]
    if sc.centers is not None:
        md = sc.centers.metadata.Screening.descan
        text += (f"; {md.model} fit to {int(np.sum(md.tile_ok))} tiles of {md.tiles[0]} x "
                 f"{md.tiles[1]} positions, rms residual {md.rms_residual:.3f} px")
    rows.append(("descan", text))
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
                 f"fewer than {MIN_PEAK_PATTERNS} patterns are not fitted.")
    return text


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
        ``femlib.report.FIGURES`` (unknown names get no caption).
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
