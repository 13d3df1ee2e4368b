"""Points on the brightest ring of a pattern, and :func:`determine_ellipse`."""

import numpy as np
from scipy import ndimage

from femlib.calibration import check_mask
from femlib.ellipse._fit import (
    EllipseFitError,
    _check_normalize,
    _check_points,
    _direct_fit,
    ellipse_to_affine,
    fit_ellipse,
)
from femlib.ellipse._ransac import fit_ellipse_ransac

_RANSAC_KWARGS = {
    "residual_threshold",
    "max_trials",
    "rng",
    "stop_probability",
    "center_tolerance",
    "axis_bounds",
    "max_axis_ratio",
    "min_inliers",
    "min_samples",
    "center_guess",
    "radius_guess",
}
_DARK = 0.02  # pixels below this fraction of the median are a beam stop or dead
_MARGIN = 2  # pixels excluded around masked and dark ones (their bright rim)
_DR = 0.25  # radial step of the rays, pixels


def _as_image(signal_, name="signal"):
    """2D float64 array from a 2D array or a 2D HyperSpy signal (dask is computed)."""
    data = getattr(signal_, "data", signal_)
    if hasattr(data, "compute"):
        data = data.compute()
    img = np.asarray(data, dtype=float)
    if img.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D array or a 2D signal (one diffraction pattern, e.g. "
            f"s.sum() of a 4D dataset), got {img.ndim} dimensions with shape {img.shape}"
        )
    return img


def _bad_pixels(image, mask):
    """Pixels that carry no usable value: masked (True) or not finite; raises if all are."""
    m = check_mask(mask, image.shape)
    finite = np.isfinite(image)
    if not finite.any():
        raise ValueError(
            f"signal is NaN or inf at every one of its {image.size} pixels. A single NaN "
            "frame makes s.sum() NaN everywhere: sum with s.nansum() or leave the frame out"
        )
    bad = ~finite if m is None else (m | ~finite)
    if bad.all():
        raise ValueError("mask excludes every pixel that is finite: no points to fit an ellipse to")
    return bad


def _dark(image, bad):
    """Pixels below 2 % of the median of the good ones: a beam stop or dead pixels."""
    level = np.median(image[~bad])
    if not level > 0:
        return np.zeros(image.shape, bool)
    return ~bad & (image <= _DARK * level)


def _excluded(image, bad):
    """Bad and dark pixels (beam stop, dead pixels) and a margin around them.

    The rim of a beam stop is as bright as the first ring on many detectors: the margin
    keeps its pixels out of the rough fit and the ring search.
    """
    out = bad | _dark(image, bad)
    if out.any() and not out.all():
        out = ndimage.binary_dilation(out, iterations=_MARGIN)
    return out


def _corrected(rows, cols, center, lin):
    """Corrected offsets (u, v) in pixels of pixel positions, ``lin`` the 2x2 affine."""
    dx, dy = cols - center[1], rows - center[0]
    return lin[0, 0] * dx + lin[0, 1] * dy, lin[1, 0] * dx + lin[1, 1] * dy


def _find_ring(image, excluded, center, lin):
    """Radius and Gaussian width (corrected pixels) of the most prominent ring.

    The ring is the peak of the azimuthal mean profile (0.5 px bins, lightly smoothed)
    with the largest prominence measured within a window of a quarter of the detector: a
    local measure, so that the decaying background and the edge of the beam stop do not
    count. Returns None when the profile has no peak.
    """
    # scipy.signal takes longer to import than the rest of femlib's first call needs.
    from scipy.signal import find_peaks, peak_widths

    rows, cols = np.indices(image.shape)
    u, v = _corrected(rows, cols, center, lin)
    rho = np.hypot(u, v)[~excluded]
    idx = np.floor(rho / 0.5).astype(int)
    counts = np.bincount(idx)
    sums = np.bincount(idx, weights=image[~excluded])
    # bins with few pixels (the centre, the corners) are noisy: drop them
    enough = counts >= 6
    if enough.sum() < 8:
        return None
    r = (np.flatnonzero(enough) + 0.5) * 0.5
    prof = ndimage.gaussian_filter1d(sums[enough] / counts[enough], 1.0)
    wlen = max(9, int(min(image.shape) / 4 / 0.5))
    peaks, props = find_peaks(prof, prominence=0, wlen=wlen)
    if len(peaks) == 0:
        return None
    best = np.argmax(props["prominences"])
    i = peaks[best]
    # width from the half-prominence crossing (scipy's peak_widths), as a Gaussian sigma
    widths = peak_widths(
        prof,
        [i],
        rel_height=0.5,
        prominence_data=(
            props["prominences"][[best]],
            props["left_bases"][[best]],
            props["right_bases"][[best]],
        ),
    )[0]
    sigma = max(float(widths[0]) * 0.5 / 2.355, 0.5)
    return float(r[i]), sigma


def _ray_peaks(image, excluded, center, lin, radius, half, n_rays):
    """Peak of the ring on ``n_rays`` rays; (row, col) of the peaks and a validity flag.

    Each ray is sampled every 0.25 px (bilinear) over ``radius +- half`` in corrected
    coordinates; a ray touching an excluded pixel or leaving the detector gives no point.
    A straight background through the two ends is removed and the peak is the middle of
    the two half-maximum crossings around the maximum (a ray without both gives no point).
    """
    r = np.arange(max(radius - half, 0.0), radius + half + _DR / 2, _DR)
    phi = (np.arange(n_rays) + 0.5) * (2 * np.pi / n_rays) - np.pi
    qx = np.cos(phi)[:, None] * r
    qy = np.sin(phi)[:, None] * r
    inv = np.linalg.inv(lin)
    x = center[1] + inv[0, 0] * qx + inv[0, 1] * qy
    y = center[0] + inv[1, 0] * qx + inv[1, 1] * qy
    from femlib.ellipse._refine import _map_bilinear  # (it imports this module)

    # bilinear samples, as scipy.ndimage.map_coordinates(order=1, mode="constant")
    values = _map_bilinear(image, y, x, 0.0)
    touched = _map_bilinear(excluded.astype(float), y, x, 1.0)
    ok = ~(touched > 1e-9).any(axis=1)
    slope = (values[:, -1:] - values[:, :1]) / (r[-1] - r[0])
    values = values - (values[:, :1] + slope * (r - r[0]))
    i = np.argmax(values, axis=1)
    half_max = values[np.arange(n_rays), i] / 2
    below = values < half_max[:, None]
    idx = np.arange(len(r))
    # last sample below half maximum before the maximum, first one after it
    left = np.where(below & (idx < i[:, None]), idx, -1).max(axis=1)
    right = np.where(below & (idx > i[:, None]), idx, len(r)).min(axis=1)
    ok &= (left >= 0) & (right < len(r)) & (half_max > 0)
    left, right = np.clip(left, 0, len(r) - 2), np.clip(right, 1, len(r) - 1)
    rays = np.arange(n_rays)

    def crossing(j0, j1):
        v0, v1 = values[rays, j0], values[rays, j1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.clip((half_max - v0) / (v1 - v0), 0.0, 1.0)
        return r[j0] + np.nan_to_num(f) * (r[j1] - r[j0])

    # the middle of the half-maximum crossings: the peak of a symmetric ring, and the
    # middle of a flat-topped one, where a parabola through the maximum would sit on noise
    peak = 0.5 * (crossing(left, left + 1) + crossing(right - 1, right))
    px, py = peak * np.cos(phi), peak * np.sin(phi)
    pos = np.column_stack(
        [center[0] + inv[1, 0] * px + inv[1, 1] * py, center[1] + inv[0, 0] * px + inv[0, 1] * py]
    )
    return pos, ok


def _rough_center(image, excluded, num_points):
    """Centre of the direct fit to the brightest pixels outside the excluded ones."""
    valid = ~excluded & np.isfinite(image)
    n = min(int(num_points), int(valid.sum()))
    if n >= 5:
        flat = np.where(valid, image, -np.inf).ravel()
        idx = np.argpartition(-flat, n - 1)[:n]
        pts = np.column_stack(np.unravel_index(idx, image.shape)).astype(float)
        try:
            c = _direct_fit(pts)[:2]
            if 0 <= c[0] < image.shape[0] and 0 <= c[1] < image.shape[1]:
                return c
        except EllipseFitError:
            pass
    w = np.where(valid, np.clip(image, 0, None), 0.0)
    rows, cols = np.indices(image.shape)
    return np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()


def _pick_ring_points(image, bad, num_points, iterations=3):
    """``num_points`` points on the brightest ring and the ring's width (pixels)."""
    excluded = _excluded(image, bad)
    if excluded.all():
        excluded = bad
    center = _rough_center(image, excluded, num_points)
    lin = np.eye(2)
    ring = _find_ring(image, excluded, center, lin)
    if ring is None:
        raise EllipseFitError(
            "no ring found: the azimuthal mean of the pattern around "
            f"(row, col) = ({center[0]:.1f}, {center[1]:.1f}) has no peak; give the points "
            "with pos= instead"
        )
    radius, sigma = ring
    n_rays = 2 * int(num_points)
    for it in range(iterations):
        # the first pass also has to absorb the error of the rough centre
        half = 3 * sigma + (4.0 if it == 0 else 1.0)
        pos, ok = _ray_peaks(image, excluded, center, lin, radius, half, n_rays)
        if ok.sum() < 5:
            raise EllipseFitError(
                f"only {int(ok.sum())} of {n_rays} rays from (row, col) = ({center[0]:.1f}, "
                f"{center[1]:.1f}) show the ring at {radius:.1f} px: it is masked or off the "
                "detector"
            )
        params = _direct_fit(pos[ok])
        center = params[:2]
        lin = ellipse_to_affine(*params[2:])[:2, :2]
        radius = params[2]
    keep = np.flatnonzero(ok)
    if len(keep) > num_points:
        keep = keep[np.round(np.linspace(0, len(keep) - 1, int(num_points))).astype(int)]
    return pos[keep], sigma


def determine_ellipse(
    signal=None,
    pos=None,
    mask=None,
    num_points=1000,
    use_ransac=False,
    guess_starting_params=True,
    return_params=False,
    normalize="major",
    **kwargs,
):
    """Centre and affine of the brightest diffraction ring, from points on it.

    Picks ``num_points`` points on the brightest ring of a pattern (or uses ``pos``), fits
    an ellipse to them by algebraic least squares (:func:`fit_ellipse`) or by RANSAC
    (:func:`fit_ellipse_ransac`), and returns its centre and the affine that maps it onto a
    circle (:func:`ellipse_to_affine`).

    **Point picking.** Masked pixels, NaN/inf pixels, dark pixels (below 2 % of the median:
    a beam stop or dead pixels, also when no mask is given) and a 2-pixel margin around
    them are left out, so the bright rim of a beam stop is never picked. A rough centre
    comes from a fit to the brightest remaining pixels; the ring is the most prominent peak
    of the azimuthal mean profile around it (prominence measured within a quarter of the
    detector, so the decaying background does not count). Then ``2 * num_points`` rays
    cross the ring, each ray's radial profile (background line through its ends removed)
    gives one sub-pixel peak, an ellipse is fitted to the peaks, and the rays are cast
    again from that ellipse (three passes). ``num_points`` of the rays that reach the ring
    unobstructed, evenly spread in azimuth, are returned (all of them if fewer do).

    The peaks sit on the ring's maximum, slightly inside it where the background slopes
    (about 0.1 px on :func:`femlib.data.synthetic_fem`); :func:`refine_center_affine`
    removes that.

    Parameters
    ----------
    signal : (rows, cols) ndarray or 2D HyperSpy signal, optional
        A diffraction pattern, typically ``s.sum()`` of a 4D dataset. Lazy data is computed.
        Pixels that are NaN or inf are left out.
    pos : (N, 2) array_like, optional
        ``(row, col)`` points to fit instead of picking them from ``signal``.
    mask : (rows, cols) bool array or boolean signal, optional
        True excludes a pixel (beam stop, dead pixels). Only with ``signal``.
    num_points : int
        Number of points to pick on the ring (>= 5).
    use_ransac : bool
        Fit with RANSAC (robust to outlying points) instead of plain least squares.
    guess_starting_params : bool
        With RANSAC, bound the candidate models around an ellipse guessed from the points
        (see :func:`fit_ellipse_ransac`). Ignored by the plain least-squares fit.
    return_params : bool
        Also return the ellipse parameters and the points (and the inlier flags with
        RANSAC).
    normalize : {"major", "minor", "area"}
        Which radius of the ellipse keeps its length under the affine (see
        :func:`ellipse_to_affine`); "major" keeps pyxem's k axis.
    **kwargs
        RANSAC options of :func:`fit_ellipse_ransac`: ``residual_threshold`` (px, default
        scaled to the width of the band of points), ``max_trials`` (1000), ``rng`` (int seed
        or Generator, default 0, so results are the same at every call),
        ``stop_probability`` (0.999), ``center_tolerance`` (0.5), ``axis_bounds``
        ((0.5, 2.0)), ``max_axis_ratio``, ``min_inliers``, ``min_samples`` (5),
        ``center_guess``, ``radius_guess``.

    Returns
    -------
    center : (2,) ndarray
        ``(row, col)`` centre in pixels. ``s.calibration.center = center[::-1]``.
    affine : (3, 3) ndarray
        Maps offsets ``(x - cx, y - cy, 1)`` so that the ellipse becomes a circle;
        ``s.calibration.affine = affine``.
    params : (5,) ndarray
        Only with ``return_params``: ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``.
    pos : (N, 2) ndarray
        Only with ``return_params``: the ``(row, col)`` points that were fitted.
    inlier : (N,) bool ndarray
        Only with ``return_params`` and ``use_ransac``: inlier flag of each point.

    Raises
    ------
    ValueError
        If neither or both of ``signal`` and ``pos`` are given, ``signal`` is not 2D or is
        NaN everywhere, ``mask`` has the wrong shape or excludes everything, there are
        fewer than 5 points or an option is invalid.
    TypeError
        If ``mask`` is not boolean or an unknown keyword argument is given.
    EllipseFitError
        (a ``ValueError``) if no ring is found, no ellipse fits the points or RANSAC finds
        no model.

    See Also
    --------
    refine_center_affine, ellipse_to_markers

    Examples
    --------
    A ring of radius 30 px, 3 % elliptical, around (row, col) = (61.2, 66.7), on a
    decaying background, with a beam stop:

    >>> import numpy as np
    >>> from femlib.ellipse import determine_ellipse, ellipse_to_affine
    >>> rows, cols = np.mgrid[:128, :128]
    >>> lin = ellipse_to_affine(30.0, 30.0 / 1.03, 0.4)[:2, :2]
    >>> dx, dy = cols - 66.7, rows - 61.2
    >>> rho = np.hypot(lin[0, 0] * dx + lin[0, 1] * dy, lin[1, 0] * dx + lin[1, 1] * dy)
    >>> image = 1000 * np.exp(-(rho - 30) ** 2 / 8) + 3000 * np.exp(-rho / 15)
    >>> image[rho < 8] = 0.0  # beam stop
    >>> center, affine, params, pos = determine_ellipse(
    ...     image, return_params=True, num_points=500, use_ransac=False)
    >>> center.round(1), params[2:4].round(1), pos.shape
    (array([61.2, 66.7]), array([30. , 29.1]), (500, 2))
    """
    unknown = set(kwargs) - _RANSAC_KWARGS
    if unknown:
        raise TypeError(
            f"determine_ellipse got unexpected keyword argument(s) {sorted(unknown)}; "
            f"accepted: {sorted(_RANSAC_KWARGS)}"
        )
    if kwargs and not use_ransac:
        raise TypeError(f"keyword argument(s) {sorted(kwargs)} only apply with use_ransac=True")
    _check_normalize(normalize)
    if (signal is None) == (pos is None):
        raise ValueError(
            "give either signal (a 2D pattern to pick points from) or pos (an (N, 2) array "
            "of (row, col) points), not " + ("neither" if signal is None else "both")
        )
    if pos is None:
        image = _as_image(signal)
        if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 5:
            raise ValueError(f"num_points must be an integer >= 5, got {num_points!r}")
        bad = _bad_pixels(image, mask)
        points, _ = _pick_ring_points(image, bad, int(num_points))
    else:
        if mask is not None:
            raise ValueError(
                "mask is only used to pick points from signal; with pos, remove the masked "
                "points yourself"
            )
        points = _check_points(pos)

    if use_ransac:
        params, inlier = fit_ellipse_ransac(
            points, guess_starting_params=guess_starting_params, **kwargs
        )
    else:
        params, inlier = fit_ellipse(points), None
    center = params[:2].copy()
    affine = ellipse_to_affine(params[2], params[3], params[4], normalize=normalize)
    if not return_params:
        return center, affine
    if use_ransac:
        return center, affine, params, points, inlier
    return center, affine, params, points


def _ring_range(image, bad, center, lin):
    """Default radial range (corrected pixels) around the ring found about ``center``."""
    excluded = _excluded(image, bad)
    if excluded.all():
        excluded = bad
    ring = _find_ring(image, excluded, center, lin)
    if ring is None:
        return None
    radius, sigma = ring
    half = max(3 * sigma, 3.0)
    return max(radius - half, 0.0), radius + half
