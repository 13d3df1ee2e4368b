"""Sub-pixel refinement of a centre and affine from the ring's peak radius per azimuth."""

import math

import numpy as np
from scipy import ndimage

from femlib.calibration import check_affine, check_center
from femlib.ellipse._fit import (
    EllipseFitError,
    _check_normalize,
    _direct_fit,
    ellipse_residuals,
    ellipse_to_affine,
)
from femlib.ellipse._picking import _MARGIN, _as_image, _bad_pixels, _dark, _ring_range

_UNITS = ("calibrated", "pixel")


def _check_center_affine(center, affine):
    """(row, col) centre and 3x3 affine, validated by femlib.calibration."""
    try:
        c = check_center(np.asarray(center, dtype=float)[::-1])[::-1]
    except (TypeError, ValueError):
        raise ValueError(
            f"center must be a finite (row, col) pair of pixels, got {center!r}"
        ) from None
    a = check_affine(affine)
    return c.copy(), (np.eye(3) if a is None else a)


def _scale(signal, units):
    """Pixels -> ``units`` factor: the signal-axis scale, or 1 for pixels and plain arrays."""
    if units not in _UNITS:
        raise ValueError(f"units must be 'calibrated' or 'pixel', got {units!r}")
    axes = getattr(getattr(signal, "axes_manager", None), "signal_axes", None)
    if units == "pixel" or not axes:
        return 1.0  # a plain array has no calibration: its unit is the pixel
    sx, sy = abs(axes[0].scale), abs(axes[1].scale)
    if not np.isclose(sx, sy, rtol=1e-6) or not sx > 0:
        raise ValueError(f"units='calibrated' needs equal signal-axis scales, got {sx} and {sy}")
    return float(sx)


def _radial_range_px(radial_range, factor):
    """radial_range as (r0, r1) in pixels."""
    try:
        r0, r1 = (float(v) for v in radial_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"radial_range must be a pair (r_min, r_max), got {radial_range!r}"
        ) from None
    if not (np.isfinite(r0) and np.isfinite(r1) and 0 <= r0 < r1):
        raise ValueError(
            f"radial_range must be finite with 0 <= r_min < r_max, got {radial_range!r}"
        )
    r0, r1 = r0 / factor, r1 / factor
    if r1 - r0 < 2:
        raise ValueError(
            f"radial_range must span at least 2 pixels around the ring, got {r1 - r0:.3g} px"
        )
    return r0, r1


_KERNEL = []
_summed = _clip = _sample = None  # compiled helpers, set by _peak_kernel


def _peak_kernel():
    """The compiled core of :func:`_peak_radii` (built on first use)."""
    if _KERNEL:
        return _KERNEL[0]
    from femlib._jit import njit
    from femlib._pairwise import pairwise_sum

    # The helpers are module globals, not closure variables, so that numba caches the
    # kernels that call them; _summed adds in numpy's order.
    global _summed, _clip, _sample
    _summed = pairwise_sum()

    @njit(cache=True, nogil=True)
    def _clip_impl(x, lo, hi):  # pragma: no cover - compiled
        if x != x:
            return x
        return lo if x < lo else (hi if x > hi else x)

    @njit(cache=True, nogil=True)
    def _sample_impl(image, y, x, cval):  # pragma: no cover - compiled
        # The bilinear value of scipy.ndimage.map_coordinates(order=1, mode="constant"),
        # to the last bit: cval off the grid, weights 1 - t and 1 - (1 - t), the four
        # terms value * wy * wx added in row-major order.
        ny, nx = image.shape
        if not (y >= 0 and y <= ny - 1 and x >= 0 and x <= nx - 1):
            return cval
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        y1, x1 = min(y0 + 1, ny - 1), min(x0 + 1, nx - 1)
        wy0, wx0 = 1.0 - (y - y0), 1.0 - (x - x0)
        wy1, wx1 = 1.0 - wy0, 1.0 - wx0
        t = 0.0
        t += image[y0, x0] * wy0 * wx0
        t += image[y0, x1] * wy0 * wx1
        t += image[y1, x0] * wy1 * wx0
        t += image[y1, x1] * wy1 * wx1
        return t

    _clip, _sample = _clip_impl, _sample_impl

    @njit(cache=True, nogil=True, error_model="numpy")
    def peaks(image, bad, cy, cx, inv, cos, sin, ang, phi, r, dr, k, half, out_phi,
              out_peak, n_ok):  # pragma: no cover - compiled
        # The same numbers as the numpy code this replaces, in the same order: bilinear
        # rays (a ray touching a bad pixel or leaving the detector dropped), the sector
        # profiles, a straight background through the ends, the re-centred centroid.
        na, ns = ang.shape
        nr = r.size
        prof = np.empty((na, nr))
        vals = np.empty((ns, nr))
        ok = np.empty(ns, np.bool_)
        tmp = np.empty(max(nr, ns))
        for a in range(na):
            for j in range(ns):
                good = True
                for i in range(nr):
                    qx, qy = cos[a, j] * r[i], sin[a, j] * r[i]
                    x = cx + inv[0, 0] * qx + inv[0, 1] * qy
                    y = cy + inv[1, 0] * qx + inv[1, 1] * qy
                    vals[j, i] = _sample(image, y, x, 0.0)
                    if _sample(bad, y, x, 1.0) > 1e-9:
                        good = False
                ok[j] = good
            cnt = 0
            for j in range(ns):
                cnt += 1 if ok[j] else 0
            n_ok[a] = cnt
            for i in range(nr):
                s = 0.0
                for j in range(ns):
                    s += vals[j, i] * (1.0 if ok[j] else 0.0)
                prof[a, i] = s / cnt
            for j in range(ns):
                tmp[j] = ang[a, j] * (1.0 if ok[j] else 0.0)
            out_phi[a] = _summed(tmp, 0, ns) / cnt if cnt > 0 else phi[a]
        rl = _summed(r, 0, k) / k
        rr = _summed(r, nr - k, k) / k
        peak = np.empty(na)
        for a in range(na):
            left = _summed(prof[a], 0, k) / k
            right = _summed(prof[a], nr - k, k) / k
            best = -np.inf
            at = 0
            for i in range(nr):
                prof[a, i] = prof[a, i] - (left + (right - left) * (r[i] - rl) / (rr - rl))
                v = prof[a, i] if np.isfinite(prof[a, i]) else -np.inf
                if v > best or (i == 0 and not v < best):
                    best = v
                    at = i
            peak[a] = r[at]
        new = np.empty(na)
        w = np.empty(nr)
        wr = np.empty(nr)
        for _ in range(20):
            for a in range(na):
                for i in range(nr):
                    win = _clip((half - abs(r[i] - peak[a])) / dr + 0.5, 0.0, 1.0)
                    p = prof[a, i]
                    w[i] = win * (p if (p != p or p >= 0) else 0.0)
                    wr[i] = w[i] * r[i]
                total = _summed(w, 0, nr)
                new[a] = _summed(wr, 0, nr) / total if total > 0 else np.nan
            close = True
            for a in range(na):
                x, y = new[a], peak[a]
                if x != x or y != y:
                    close = close and (x != x and y != y)
                elif not abs(x - y) <= 1e-4 + 1e-5 * abs(y):
                    close = False
            for a in range(na):
                peak[a] = new[a]
            if close:
                break
        for a in range(na):
            out_peak[a] = peak[a]

    @njit(cache=True, nogil=True)
    def bilinear(image, y, x, cval, out):  # pragma: no cover - compiled
        for i in range(y.size):
            out[i] = _sample(image, y[i], x[i], cval)

    _KERNEL.extend([peaks, bilinear])
    return peaks


def _map_bilinear(image, y, x, cval):
    """``scipy.ndimage.map_coordinates(image, [y, x], order=1, mode="constant",
    cval=cval)`` (the same numbers), compiled: y and x of any one shape."""
    _peak_kernel()
    y = np.ascontiguousarray(y, dtype=np.float64)
    out = np.empty(y.shape)
    _KERNEL[1](np.ascontiguousarray(image, dtype=np.float64), y.ravel(),
               np.ascontiguousarray(x, dtype=np.float64).ravel(), float(cval), out.ravel())
    return out


def _peak_radii(image, bad, center, affine, r0, r1, n_azimuth, peak_width, dr=0.25):
    """Per-sector peak radius (px, corrected coordinates) of a ring; NaN where dropped.

    Rays sampled bilinearly (as ``scipy.ndimage.map_coordinates(order=1,
    mode="constant")``), sector profiles, background and centroid in one compiled pass.
    """
    r = np.arange(r0, r1 + dr / 2, dr)
    n_sub = max(1, math.ceil(2 * np.pi * r1 / n_azimuth / 0.5))  # sub-rays <= 0.5 px apart
    phi = -np.pi + (np.arange(n_azimuth) + 0.5) * (2 * np.pi / n_azimuth)
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    ang = phi[:, None] + sub[None, :] * (2 * np.pi / n_azimuth)  # (n_azimuth, n_sub)
    inv = np.linalg.inv(affine[:2, :2])
    # a sub-ray is dropped entirely if any of its samples touches a masked pixel or leaves
    # the detector: a partial profile would bias its peak; the sector's azimuth is the
    # mean of the rays kept in it; a local linear background through the two ends of the
    # radial range (k samples each) is removed; the peak is the centroid in a window
    # re-centred on it (it converges to the point where the window is balanced: the peak
    # of a symmetric profile, unbiased by the window edges), a box window whose edge
    # samples count fractionally, so that the iteration has a fixed point.
    k = max(2, len(r) // 10)
    out_phi, peak, n_ok = np.empty(n_azimuth), np.empty(n_azimuth), np.empty(n_azimuth, np.int64)
    _peak_kernel()(np.ascontiguousarray(image, dtype=np.float64),
                   np.ascontiguousarray(bad, dtype=np.float64), float(center[0]),
                   float(center[1]), np.ascontiguousarray(inv), np.cos(ang), np.sin(ang),
                   ang, phi, r, float(dr), k, peak_width / 2, out_phi, peak, n_ok)
    # a peak pinned on the range edge is not a peak inside the range
    valid = (n_ok > 0) & np.isfinite(peak) & (peak > r0 + dr) & (peak < r1 - dr)
    return out_phi, np.where(valid, peak, np.nan)


def _prepare(signal, mask):
    """Image with unusable pixels zeroed, and those pixels.

    Unusable: masked, NaN/inf, and dark (below 2 % of the median: beam stop, dead pixels,
    also when no mask is given) with a 2-pixel margin, as in :func:`determine_ellipse`.
    """
    image = _as_image(signal)
    bad = _bad_pixels(image, mask)
    dark = _dark(image, bad)
    if dark.any():
        bad = bad | ndimage.binary_dilation(dark, iterations=_MARGIN)
    return np.where(bad, 0.0, image), bad


def _check_n_azimuth(n_azimuth):
    if isinstance(n_azimuth, bool) or int(n_azimuth) != n_azimuth or n_azimuth < 8:
        raise ValueError(f"n_azimuth must be an integer >= 8, got {n_azimuth!r}")
    return int(n_azimuth)


def _check_peak_width(peak_width, r0, r1, factor):
    if peak_width is None:
        return (r1 - r0) / 2
    w = float(peak_width) / factor
    if not np.isfinite(w) or w <= 0:
        raise ValueError(f"peak_width must be a positive number, got {peak_width!r}")
    return w


def _suggest(image, bad, center, affine, factor):
    """' Try radial_range=(...)' around the ring found about ``center``, or ''."""
    try:
        found = _ring_range(image, bad, center, affine[:2, :2])
    except (ValueError, np.linalg.LinAlgError):
        found = None
    if found is None:
        return ""
    lo, hi = found[0] * factor, found[1] * factor
    return f" The brightest ring about this centre suggests radial_range=({lo:.4g}, {hi:.4g})."


def _resolve_range(image, bad, center, affine, radial_range, factor):
    """(r0, r1) in pixels: the given range, or one around the ring found about ``center``."""
    if radial_range is not None:
        return _radial_range_px(radial_range, factor)
    found = _ring_range(image, bad, center, affine[:2, :2])
    if found is None:
        raise EllipseFitError(
            "radial_range=None but no ring shows in the azimuthal mean of the pattern about "
            f"(row, col) = ({center[0]:.1f}, {center[1]:.1f}); give radial_range"
        )
    return found


def ring_peak_radii(
    signal,
    center,
    affine,
    radial_range=None,
    mask=None,
    n_azimuth=90,
    peak_width=None,
    units="calibrated",
):
    """Peak radius of one ring as a function of azimuth, in corrected coordinates.

    The pattern is resampled by bilinear interpolation on a polar grid in corrected
    coordinates (radius ``|A (p - c)|``, step 0.25 px; each azimuthal sector is the mean of
    rays no more than 0.5 px apart). In each sector a straight background through the two
    ends of ``radial_range`` is subtracted and the peak is the centroid of the profile in a
    window of ``peak_width`` re-centred on it until it converges.

    With the right centre and affine the radius is the same at every azimuth; its spread is
    the figure of merit of a distortion calibration.

    Parameters
    ----------
    signal : (rows, cols) ndarray or 2D HyperSpy signal
        Diffraction pattern, e.g. ``s.sum()``.
    center : (2,) array_like
        ``(row, col)`` centre in pixels (as returned by :func:`determine_ellipse`).
    affine : (3, 3) array_like or None
        Distortion correction (module convention); None is the identity.
    radial_range : (float, float), optional
        Radii bracketing the ring peak, in ``units``. Default: the brightest ring of the
        azimuthal mean about ``center`` (as :func:`determine_ellipse` finds it), plus and
        minus three times its Gaussian width (at least 3 px).
    mask : (rows, cols) bool array or boolean signal, optional
        True excludes a pixel. Rays touching a masked (or NaN) pixel or leaving the detector
        are dropped; a sector with no ray left gives NaN.
    n_azimuth : int
        Number of azimuthal sectors over ``(-pi, pi]``.
    peak_width : float, optional
        Width of the centroid window, in ``units``; default half the range.
    units : {"calibrated", "pixel"}
        Units of ``radial_range``, ``peak_width`` and the returned radii: the signal's
        calibrated units (corrected pixels times the axis scale, as in the integration
        engine; for a plain array, whose unit is the pixel, the same as "pixel") or
        corrected pixels.

    Returns
    -------
    phi : (n_azimuth,) ndarray
        Azimuth of each sector in radians, in ``(-pi, pi)``, 0 along ``+x``, toward ``+y``
        (the mean angle of the rays kept in it).
    radius : (n_azimuth,) ndarray
        Peak radius per sector (NaN where dropped or the peak is on the range edge).

    Raises
    ------
    ValueError
        If an argument is invalid (see :func:`refine_center_affine`).

    Examples
    --------
    >>> import numpy as np
    >>> from femlib.ellipse import ring_peak_radii
    >>> rows, cols = np.mgrid[:96, :96]
    >>> image = np.exp(-(np.hypot(rows - 47.3, cols - 48.6) - 25) ** 2 / 8)
    >>> phi, radius = ring_peak_radii(image, (47.3, 48.6), None, (18, 32))
    >>> round(float(radius.mean()), 2), bool(radius.std() < 0.01)
    (25.0, True)
    """
    image, bad = _prepare(signal, mask)
    center, affine = _check_center_affine(center, affine)
    factor = _scale(signal, units)
    r0, r1 = _resolve_range(image, bad, center, affine, radial_range, factor)
    n_azimuth = _check_n_azimuth(n_azimuth)
    width = _check_peak_width(peak_width, r0, r1, factor)
    phi, radius = _peak_radii(image, bad.astype(float), center, affine, r0, r1, n_azimuth, width)
    return phi, radius * factor


def refine_center_affine(
    signal,
    center,
    affine,
    radial_range=None,
    mask=None,
    n_azimuth=90,
    peak_width=None,
    max_iter=5,
    tol=1e-3,
    units="calibrated",
    return_params=False,
    normalize="major",
):
    """Polish a centre and affine so that a ring's peak radius is constant over azimuth.

    Point picking (:func:`determine_ellipse`) sits on the ring's maximum, which the
    background slope under the ring shifts. This instead measures the sub-pixel peak radius
    of the ring in each azimuthal sector of the polar transform in the current corrected
    coordinates (:func:`ring_peak_radii`), maps the peaks back to detector pixels, fits an
    ellipse to them (:func:`fit_ellipse`, after dropping peaks further than 4 robust
    standard deviations from a first fit) and takes its centre and affine. This repeats
    until the centre moves less than ``tol`` pixels and the axis ratio less than
    ``tol / 100``, or ``max_iter`` times. Any bias of the peak estimator that is the same at
    all azimuths (background slope, window) then cancels, as the profiles become identical.
    During the iterations the affine is scaled so that the ring keeps the corrected radius
    it has under the starting affine (the range stays on it whatever that affine's
    normalisation); the returned affine is normalised by ``normalize``.

    Parameters
    ----------
    signal : (rows, cols) ndarray or 2D HyperSpy signal
        Diffraction pattern, e.g. ``s.sum()``; lazy data is computed.
    center : (2,) array_like
        Starting ``(row, col)`` centre in pixels, e.g. from :func:`determine_ellipse`.
    affine : (3, 3) array_like or None
        Starting affine (module convention), or None for the identity.
    radial_range : (float, float), optional
        Radii bracketing one ring in corrected coordinates ``|A (p - c)|``, in ``units``;
        it should contain the whole peak and some background on both sides. Default: the
        brightest ring of the azimuthal mean about the starting centre (the ring
        :func:`determine_ellipse` picks), plus and minus three times its Gaussian width (at
        least 3 px).
    mask : (rows, cols) bool array or boolean signal, optional
        True excludes a pixel (beam stop, dead pixels): rays crossing it are dropped.
    n_azimuth : int
        Number of azimuthal sectors (>= 8).
    peak_width : float, optional
        Centroid window, in ``units``; default half the range.
    max_iter : int
        Largest number of measure-and-fit iterations.
    tol : float
        Convergence tolerance on the centre, pixels.
    units : {"calibrated", "pixel"}
        Units of ``radial_range`` and ``peak_width``: the signal's calibrated units (as
        every radial range in femlib; a plain array's unit is the pixel) or pixels.
    return_params : bool
        Also return the ellipse parameters and the ring peaks that were fitted.
    normalize : {"major", "minor", "area"}
        Which radius of the fitted ellipse keeps its length under the returned affine (see
        :func:`ellipse_to_affine`); "major" keeps pyxem's k axis.

    Returns
    -------
    center : (2,) ndarray
        ``(row, col)`` centre in pixels; ``s.calibration.center = center[::-1]``.
    affine : (3, 3) ndarray
        Affine mapping the fitted ring onto a circle (radius set by ``normalize``).
    params : (5,) ndarray
        Only with ``return_params``: ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``
        of the ring peak, pixels.
    pos : (M, 2) ndarray
        Only with ``return_params``: ``(row, col)`` detector positions of the per-sector
        peaks of the last iteration that were fitted.

    Raises
    ------
    ValueError
        If ``signal`` is not 2D or NaN everywhere, ``mask`` has the wrong shape,
        ``center``/``affine`` are not finite (or the affine is singular), ``radial_range``
        is reversed, negative or narrower than 2 pixels, or an option is invalid.
    TypeError
        If ``mask`` is not boolean.
    EllipseFitError
        If fewer than 8 sectors give a peak (the ring is outside ``radial_range``, off the
        detector or masked; the message says how many did and suggests a range) or no
        ellipse fits the peaks.

    Examples
    --------
    A 4 % elliptical ring around (row, col) = (63.4, 62.1) on a sloping background; the
    start is 1 px off and circular:

    >>> import numpy as np
    >>> from femlib.ellipse import affine_to_ellipse, ellipse_to_affine, refine_center_affine
    >>> rows, cols = np.mgrid[:128, :128]
    >>> lin = ellipse_to_affine(30.0, 30.0 / 1.04, -0.7)[:2, :2]
    >>> dx, dy = cols - 62.1, rows - 63.4
    >>> rho = np.hypot(lin[0, 0] * dx + lin[0, 1] * dy, lin[1, 0] * dx + lin[1, 1] * dy)
    >>> image = 1000 * np.exp(-(rho - 30) ** 2 / 8) + 3000 * np.exp(-rho / 15)
    >>> center, affine = refine_center_affine(image, (64.0, 61.3), None)
    >>> center.round(3), round(affine_to_ellipse(affine)[0], 4)
    (array([63.4, 62.1]), 1.04)
    """
    image, bad = _prepare(signal, mask)
    center, affine = _check_center_affine(center, affine)
    _check_normalize(normalize)
    factor = _scale(signal, units)
    r0, r1 = _resolve_range(image, bad, center, affine, radial_range, factor)
    n_azimuth = _check_n_azimuth(n_azimuth)
    width = _check_peak_width(peak_width, r0, r1, factor)
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    sv = np.linalg.svd(affine[:2, :2], compute_uv=False)
    ratio = sv[0] / sv[1]
    badf = bad.astype(float)
    for _ in range(int(max_iter)):
        phi, radius = _peak_radii(image, badf, center, affine, r0, r1, n_azimuth, width)
        ok = np.isfinite(radius)
        if ok.sum() < 8:
            raise EllipseFitError(
                f"only {int(ok.sum())} of {n_azimuth} azimuthal sectors show a peak inside "
                f"radial_range=({r0 * factor:.4g}, {r1 * factor:.4g}) ({units}); at least 8 "
                "are needed: check the range, the mask and the starting centre."
                + _suggest(image, bad, center, affine, factor)
            )
        q = np.column_stack([radius[ok] * np.cos(phi[ok]), radius[ok] * np.sin(phi[ok])])
        d = q @ np.linalg.inv(affine[:2, :2]).T  # corrected -> detector offsets (x, y)
        pos = np.column_stack([center[0] + d[:, 1], center[1] + d[:, 0]])
        params = _direct_fit(pos)
        res = ellipse_residuals(pos, params)
        sigma = 1.4826 * np.median(np.abs(res - np.median(res)))
        keep = np.abs(res) <= 4 * max(sigma, 1e-3)
        if keep.sum() >= 8 and not keep.all():
            pos = pos[keep]
            params = _direct_fit(pos)
        new_center = params[:2].copy()
        # keep the ring at the corrected radius it was measured at, so the range stays on it
        new_affine = ellipse_to_affine(*params[2:]) * (np.median(radius[ok]) / params[2])
        new_affine[2, 2] = 1.0
        new_ratio = params[2] / params[3]
        shift = math.hypot(*(new_center - center))
        converged = shift < tol and abs(new_ratio - ratio) < tol / 100
        center, affine, ratio = new_center, new_affine, new_ratio
        if converged:
            break
    affine = ellipse_to_affine(*params[2:], normalize=normalize)
    if return_params:
        return center, affine, params, pos
    return center, affine
