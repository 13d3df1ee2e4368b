"""Peak fitting of V(k) curves with HyperSpy's model machinery (Gaussian peaks + background).

Each curve is fitted on its own (a one-curve signal carrying the curve's squared standard
errors as ``metadata.Signal.Noise_properties.variance``, which HyperSpy's least-squares fit
uses as weights), so a curve whose fit fails is reported on its own row instead of leaving
NaNs in a shared parameter map.
"""

import csv
import importlib.util
import io
import math
import warnings

import numpy as np

__all__ = ["PeakTable", "fit_peaks", "guess_peaks"]

FIELDS = (
    "curve",
    "label",
    "peak",
    "position",
    "position_se",
    "height",
    "height_se",
    "fwhm",
    "fwhm_se",
    "converged",
    "message",
)


class PeakTable(list):
    """Rows of a peak table: a list of dicts with the keys of :data:`FIELDS`.

    ``print(table)`` shows an aligned text table; :meth:`to_csv` writes it as CSV.
    """

    fields = FIELDS

    def to_csv(self, path=None):
        """Write the table as UTF-8 CSV (header + one row per peak).

        Parameters
        ----------
        path : str, path-like or None
            File to write; None returns the CSV text instead.

        Returns
        -------
        str or None
        """
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.fields), lineterminator="\n")
        writer.writeheader()
        for row in self:
            writer.writerow({k: _csv_value(row[k]) for k in self.fields})
        if path is None:
            return buf.getvalue()
        with open(path, "w", newline="", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
        return None

    def __str__(self):
        head = ["curve", "label", "peak", "position", "height", "fwhm", "converged"]
        lines = [head]
        for r in self:
            lines.append(
                [
                    str(r["curve"]),
                    str(r["label"]),
                    str(r["peak"]),
                    _pm(r["position"], r["position_se"]),
                    _pm(r["height"], r["height_se"]),
                    _pm(r["fwhm"], r["fwhm_se"]),
                    "yes" if r["converged"] else f"NO: {r['message']}",
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )

    def _repr_pretty_(self, p, cycle):  # IPython shows the text table
        p.text(str(self))


def _csv_value(x):
    if isinstance(x, float):
        return repr(x)
    return x


def _pm(value, se):
    if not (np.isfinite(value) and np.isfinite(se)):
        return f"{value:.4g} +- {se:.2g}"
    digits = max(0, 1 - int(math.floor(math.log10(se)))) if se > 0 else 4
    if abs(value) < 1e-2 or abs(value) >= 1e4:
        return f"{value:.3e} +- {se:.1e}"
    return f"{value:.{digits}f} +- {se:.{digits}f}"


def guess_peaks(k, v, se, n_peaks=None, min_significance=3.0):
    """Initial peak positions, heights and FWHMs from the local maxima of one curve.

    Parameters
    ----------
    k, v, se : (K,) ndarray
        k (the radius), V(k) and its standard error.
    n_peaks : int or None
        Keep the ``n_peaks`` most prominent maxima (all significant ones when None).
    min_significance : float
        A maximum counts when its prominence exceeds this many standard errors.

    Returns
    -------
    list of (position, height, fwhm)
        Sorted by position.
    """
    from scipy.signal import find_peaks, peak_widths

    finite = np.isfinite(v)
    vv = np.where(finite, v, np.nanmin(v) if finite.any() else 0.0)
    idx, props = find_peaks(vv, prominence=(None, None))
    if idx.size == 0:
        return []
    prom = props["prominences"]
    scale = np.where(np.isfinite(se[idx]) & (se[idx] > 0), se[idx], np.inf)
    keep = prom > min_significance * scale if n_peaks is None else np.ones(idx.size, bool)
    idx, prom = idx[keep], prom[keep]
    order = np.argsort(prom)[::-1]
    if n_peaks is not None:
        order = order[:n_peaks]
    idx = np.sort(idx[order])
    if idx.size == 0:
        return []
    widths = peak_widths(vv, idx, rel_height=0.5)[0]
    step = k[1] - k[0] if k.size > 1 else 1.0
    return [
        (float(k[i]), float(vv[i]), float(max(w, 2.0) * step))
        for i, w in zip(idx, widths, strict=True)
    ]


def guess_at_positions(k, v, positions):
    """Starting values ``(position, height, fwhm)`` for peaks near given positions.

    The height is the curve at the nearest sample above the curve's minimum and the FWHM is
    measured there (at least two samples).
    """
    from scipy.signal import peak_widths

    finite = np.isfinite(v)
    vv = np.where(finite, v, np.nanmin(v) if finite.any() else 0.0)
    step = k[1] - k[0] if k.size > 1 else 1.0
    out = []
    for pos in positions:
        i = int(np.clip(np.rint((pos - k[0]) / step), 0, k.size - 1))
        with warnings.catch_warnings():
            # A given position need not be a local maximum: fall back to two samples.
            warnings.simplefilter("ignore")
            width = peak_widths(vv, [i], rel_height=0.5)[0][0]
        out.append((float(pos), float(vv[i] - vv.min()), float(max(width, 2.0) * step)))
    return out


_PARAMS = (("position", "centre"), ("height", "height"), ("fwhm", "fwhm"))


def fit_peaks(signal_axis, v, se, guesses, background_order=1, k_range=None, replicates=None):
    """Fit one curve with Gaussian peaks plus a polynomial background (HyperSpy model).

    The model is ``V(k) = b(k) + sum_i h_i exp(-4 ln2 (k - k_i)^2 / f_i^2)`` (HyperSpy's
    ``GaussianHF`` components, height ``h``, centre ``k``, FWHM ``f``; ``b`` an
    ``Offset`` or ``Polynomial``), fitted by Levenberg-Marquardt with weights ``1 / se**2``.

    Parameters
    ----------
    signal_axis : dict
        HyperSpy axis dictionary of the ``k`` (radius) axis.
    v, se : (K,) ndarray
        The curve and its standard errors.
    guesses : list of (position, height, fwhm)
        One entry per peak: the starting values.
    background_order : int
        Order of the polynomial background (0 = constant offset).
    k_range : (float, float) or None
        Fit only inside this radial range.
    replicates : (B, K) ndarray or None
        Jackknife (leave-one-block-out) curves. When given, every replicate is refitted
        from the best fit and the parameters' standard errors are their jackknife spread,
        ``se^2 = (B-1)/B sum_b (p_b - mean p)^2``, which accounts for errors that are
        correlated across k; otherwise they are HyperSpy's (covariance of the weighted fit
        scaled by the reduced chi-square, which treats the points as independent).

    Returns
    -------
    rows : list of dict
        One dict per peak with ``position``, ``height``, ``fwhm``, their ``_se`` and
        ``converged``/``message``.
    """
    from hyperspy.components1d import GaussianHF, Offset, Polynomial
    from hyperspy.signals import Signal1D

    # HyperSpy's expression components evaluate with numexpr by default and log a warning
    # on stdout for every component when it is not installed: name the module instead.
    module = "numexpr" if importlib.util.find_spec("numexpr") is not None else "numpy"
    good = np.isfinite(v) & np.isfinite(se) & (se > 0)
    sig = Signal1D(np.where(good, v, 0.0), axes=[dict(signal_axis, navigate=False)])
    sig.metadata.set_item("Signal.Noise_properties.variance", np.where(good, se, 1.0) ** 2)
    model = sig.create_model()
    base = float(np.nanmin(v[good])) if good.any() else 0.0
    if background_order == 0:
        bg = Offset(offset=base)
    else:
        bg = Polynomial(order=background_order, module=module)
        for p in bg.parameters:
            p.value = base if p.name == "a0" else 0.0
    bg.name = "background"
    model.append(bg)
    peaks = []
    for i, (pos, height, fwhm) in enumerate(guesses):
        g = GaussianHF(height=height, centre=pos, fwhm=fwhm, module=module)
        g.name = f"peak_{i}"
        model.append(g)
        peaks.append(g)
    if k_range is not None:
        model.set_signal_range(*k_range)
    # Unusable channels (NaN V or error) are switched off, not weighted.
    model._channel_switches[~good] = False
    n_used = int(model._channel_switches.sum())
    n_free = sum(len(c.free_parameters) for c in model)
    if n_used <= n_free:
        return _failed(peaks, f"{n_used} usable points for {n_free} free parameters")
    ok, message = _fit(model)
    if not ok:
        return _failed(peaks, message)
    best = {name: [getattr(g, attr).value for g in peaks] for name, attr in _PARAMS}
    fit_se = {name: [getattr(g, attr).std for g in peaks] for name, attr in _PARAMS}
    se_out = fit_se
    if replicates is not None:
        params = [p for c in model for p in c.free_parameters]
        start = [p.value for p in params]
        reps = []
        for rep in replicates:
            if not np.isfinite(rep[good]).all():
                continue  # a block with no frame in this curve's group
            model.signal.data[:] = np.where(good, rep, 0.0)
            for p, val in zip(params, start, strict=True):
                p.value = val
            rok, rmsg = _fit(model)
            if not rok:
                return _failed(peaks, f"jackknife refit: {rmsg}", best)
            reps.append([[getattr(g, attr).value for g in peaks] for _, attr in _PARAMS])
        if len(reps) < 2:
            return _failed(peaks, "fewer than 2 jackknife replicates", best)
        reps = np.asarray(reps)  # (B, 3, n_peaks)
        nb = reps.shape[0]
        spread = np.sqrt((nb - 1) / nb * ((reps - reps.mean(0)) ** 2).sum(0))
        se_out = {name: spread[j] for j, (name, _) in enumerate(_PARAMS)}
    lo = signal_axis["offset"]
    hi = lo + signal_axis["scale"] * (signal_axis["size"] - 1)
    rows = []
    for i in range(len(peaks)):
        row = {}
        for name, _ in _PARAMS:
            val, err = best[name][i], se_out[name][i]
            row[name] = float("nan") if val is None else float(val)
            row[name + "_se"] = float("nan") if err is None else float(err)
        row["fwhm"] = abs(row["fwhm"])
        ok, message = True, ""
        if not all(np.isfinite(x) for x in row.values()):
            ok, message = False, "standard errors could not be estimated"
        elif not lo <= row["position"] <= hi:
            ok, message = False, "the peak left the radial range"
        row.update(converged=ok, message=message)
        rows.append(row)
    return rows


def _fit(model):
    """Least-squares fit; (success, message)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            info = model.fit(optimizer="lm", return_info=True)
        except Exception as err:  # any failure is reported on the curve's rows
            return False, f"fit failed: {err}"
    if info is not None and not getattr(info, "success", True):
        return False, f"fit did not converge: {getattr(info, 'message', '')}".strip()
    return True, ""


def empty_row():
    """A row with NaN values, for a curve with no peak to fit."""
    row = {}
    for name, _ in _PARAMS:
        row[name] = float("nan")
        row[name + "_se"] = float("nan")
    row.update(converged=False, message="")
    return row


def _failed(peaks, message, best=None):
    rows = []
    for i in range(len(peaks)):
        row = {}
        for name, _ in _PARAMS:
            row[name] = float(best[name][i]) if best is not None else float("nan")
            row[name + "_se"] = float("nan")
        row.update(converged=False, message=message)
        rows.append(row)
    return rows
