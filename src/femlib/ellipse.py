"""Elliptical distortion of diffraction rings: point picking, ellipse fits, affine, markers.

Real diffraction rings are ellipses (projector-lens distortion, detector tilt) and their
centre is never the middle pixel. This module finds the centre and the affine that makes the
rings circular, so that the azimuthal average does not smear the peaks.

Conventions
-----------
* Points ``pos`` are ``(row, col)`` pixel coordinates; pixel ``i`` covers
  ``[i - 1/2, i + 1/2]`` and its centre is at ``i``. Inside the fits ``x = col`` and
  ``y = row``.
* An ellipse is ``params = [row_c, col_c, semi_axis_0, semi_axis_1, rotation]`` in pixels
  and radians, with ``semi_axis_0 >= semi_axis_1`` (major first) and ``rotation`` the
  direction of the major axis, measured from ``+x`` (``+col``) toward ``+y`` (``+row``),
  wrapped to ``(-pi/2, pi/2]``. On an image displayed with ``y`` pointing down this is a
  clockwise angle. A circle has an arbitrary ``rotation`` (0 is returned only by chance).
* Centres returned by this module are ``(row, col)``; :class:`femlib.calibration.Calibration`
  takes ``(x, y)``, hence ``s.calibration.center = center[::-1]``.
* The affine ``A`` (3x3) acts on homogeneous pixel offsets ``(x - cx, y - cy, 1)`` and has
  no translation part. With ``ratio = semi_axis_0 / semi_axis_1`` and ``R(t)`` the rotation
  by ``t``::

      A = R(rotation) @ diag(1, ratio) @ R(-rotation)    (embedded in 3x3)

  It stretches the minor axis to the length of the major one: the ellipse is mapped onto
  the circle of radius ``semi_axis_0`` about the centre, and the corrected radius of a
  pixel ``p`` is ``|A (p - c)|`` pixels (times the axis scale in calibrated units), which
  is what ``s.calibration.affine`` and the integration engine expect. ``A`` is the
  identity for a circle.

The fits are the direct least-squares fit [1]_ in its numerically stable form [2]_, and
random sample consensus [3]_ with residuals measured by the Sampson distance [4]_.
The module is pure: numpy, scipy and (lazily, for markers only) ``hyperspy.api``.

References
----------
.. [1] A. Fitzgibbon, M. Pilu, R. B. Fisher, "Direct least square fitting of ellipses",
   IEEE Trans. Pattern Anal. Mach. Intell. 21 (1999) 476-480.
.. [2] R. Halir, J. Flusser, "Numerically stable direct least squares fitting of
   ellipses", Proc. WSCG (1998) 125-132.
.. [3] M. A. Fischler, R. C. Bolles, "Random sample consensus", Commun. ACM 24 (1981)
   381-395.
.. [4] P. D. Sampson, "Fitting conic sections to 'very scattered' data", Comput. Graph.
   Image Process. 18 (1982) 97-108.
"""

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "EllipseFitError",
    "affine_to_ellipse",
    "determine_ellipse",
    "ellipse_points",
    "ellipse_residuals",
    "ellipse_to_affine",
    "ellipse_to_markers",
    "fit_ellipse",
    "fit_ellipse_ransac",
    "refine_center_affine",
    "ring_peak_radii",
]

_MIN_POINTS = 5


class EllipseFitError(ValueError):
    """An ellipse fit failed: degenerate points, no ellipse through them, or no RANSAC model.

    A subclass of :class:`ValueError`, so ``except ValueError`` also catches it.
    """


# --------------------------------------------------------------------------- helpers


def _check_points(pos, name="pos"):
    """Return ``pos`` as a finite (N, 2) float array with N >= 5, or raise."""
    p = np.asarray(pos, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(
            f"{name} must be an (N, 2) array of (row, col) pixel coordinates, "
            f"got an array of shape {p.shape}"
        )
    if p.shape[0] < _MIN_POINTS:
        raise ValueError(
            f"{name} must hold at least {_MIN_POINTS} points to fit an ellipse, got {p.shape[0]}"
        )
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite, got NaN or inf coordinates")
    return p


def _check_params(params, name="ellipse_array"):
    """Return ellipse parameters as an (M, 5) float array, or raise."""
    e = np.asarray(params, dtype=float)
    if e.ndim == 1:
        e = e[np.newaxis]
    if e.ndim != 2 or e.shape[1] != 5:
        raise ValueError(
            f"{name} must be [row_c, col_c, semi_axis_0, semi_axis_1, rotation] "
            f"(shape (5,) or (M, 5)), got an array of shape {np.shape(params)}"
        )
    if not np.all(np.isfinite(e)) or np.any(e[:, 2:4] <= 0):
        raise ValueError(f"{name} must be finite with positive semi-axes, got {e.tolist()}")
    return e


def _as_image(signal, name="signal"):
    """2D float64 array from a 2D array or a 2D HyperSpy signal (dask is computed)."""
    data = getattr(signal, "data", signal)
    if hasattr(data, "compute"):
        data = data.compute()
    img = np.asarray(data, dtype=float)
    if img.ndim != 2:
        raise ValueError(
            f"{name} must be a 2D array or a 2D signal (one diffraction pattern, e.g. "
            f"s.sum() of a 4D dataset), got {img.ndim} dimensions with shape {img.shape}"
        )
    return img


def _as_mask(mask, shape, name="mask"):
    """Boolean (rows, cols) mask (True = excluded) from an array or a boolean signal."""
    if mask is None:
        return np.zeros(shape, dtype=bool)
    data = getattr(mask, "data", mask)
    if hasattr(data, "compute"):
        data = data.compute()
    m = np.asarray(data)
    if m.dtype != bool:
        if np.issubdtype(m.dtype, np.integer) and np.isin(m, (0, 1)).all():
            m = m.astype(bool)
        else:
            raise TypeError(
                f"{name} must be a boolean array or signal (True = excluded pixel), "
                f"got dtype {m.dtype}"
            )
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape} but the pattern is {tuple(shape)}")
    return m


def _wrap_half_turn(angle):
    """Wrap an angle (rad) to (-pi/2, pi/2]; -pi/2 (within rounding) becomes pi/2."""
    a = np.mod(angle, np.pi)
    return np.where(a > np.pi / 2 + 1e-12, a - np.pi, a)


def _rotation(theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _params_from_quadratic(q, centre_xy):
    """Ellipse params from the quadratic form ``(p - c)^T q (p - c) = 1`` (p = (x, y))."""
    lam, vec = np.linalg.eigh(q)  # ascending: the smaller eigenvalue is the major axis
    if not np.all(np.isfinite(lam)) or lam[0] <= 0:
        raise EllipseFitError("the fitted conic is not an ellipse")
    a, b = 1 / np.sqrt(lam)
    theta = float(_wrap_half_turn(math.atan2(vec[1, 0], vec[0, 0])))
    return np.array([centre_xy[1], centre_xy[0], a, b, theta])


def _quadratic_from_params(params):
    """2x2 matrix ``q`` of the ellipse ``(p - c)^T q (p - c) = 1`` in (x, y) pixel offsets."""
    _, _, a, b, theta = params
    r = _rotation(theta)
    return r @ np.diag([1 / a**2, 1 / b**2]) @ r.T


# --------------------------------------------------------------------------- affine


def ellipse_to_affine(major, minor, rotation):
    """Affine transformation that makes an ellipse circular.

    ``A = R(rotation) @ diag(1, major / minor) @ R(-rotation)``, embedded in a 3x3 matrix
    without translation. It acts on pixel offsets ``(x - cx, y - cy, 1)`` (``x`` = column,
    ``y`` = row) and maps the ellipse with semi-axis ``major`` along ``rotation`` and
    ``minor`` across it onto the circle of radius ``major``.

    Parameters
    ----------
    major : float
        Semi-axis along ``rotation`` (pixels; only the ratio matters).
    minor : float
        Semi-axis perpendicular to ``rotation`` (pixels). ``minor > major`` is allowed and
        gives a contraction, but :func:`affine_to_ellipse` reports the normalised form.
    rotation : float
        Direction of ``major`` in radians, from ``+x`` toward ``+y`` (``+row``).

    Returns
    -------
    (3, 3) ndarray of float64
        The affine; the identity when ``major == minor``.

    Raises
    ------
    ValueError
        If a semi-axis is not a positive finite number or ``rotation`` is not finite.

    Examples
    --------
    >>> A = ellipse_to_affine(31.0, 30.0, 0.0)
    >>> A[:2, :2] @ [0.0, 30.0]  # the minor-axis vertex lands on the circle of radius 31
    array([ 0., 31.])
    """
    for name, v in (("major", major), ("minor", minor)):
        if not (np.isscalar(v) or np.ndim(v) == 0) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not np.isfinite(rotation):
        raise ValueError(f"rotation must be a finite angle in radians, got {rotation!r}")
    # R diag(1, ratio) R^T = I + (ratio - 1) u u^T, u the minor-axis direction: exactly
    # symmetric, and exactly the identity for a circle
    u = np.array([-math.sin(rotation), math.cos(rotation)])
    affine = np.eye(3)
    affine[:2, :2] += (float(major) / float(minor) - 1.0) * np.outer(u, u)
    return affine


def affine_to_ellipse(affine, radius=None):
    """Ellipse that an affine maps onto a circle: the inverse of :func:`ellipse_to_affine`.

    The points ``p`` with ``|A p| = radius`` form an ellipse whose semi-axes are
    ``radius / s_min`` (major) and ``radius / s_max`` (minor), ``s`` the singular values of
    the 2x2 part of ``A``. Any invertible matrix is accepted (e.g. one with a rotation
    part); for the matrices of :func:`ellipse_to_affine` ``s_min = 1`` so the major
    semi-axis equals ``radius``.

    Parameters
    ----------
    affine : (3, 3) or (2, 2) array_like
        The affine, acting on pixel offsets ``(x - cx, y - cy[, 1])``.
    radius : float, optional
        Radius of the circle in corrected coordinates (pixels).

    Returns
    -------
    ratio, rotation : float, float
        When ``radius`` is None: ``ratio = major / minor >= 1`` and ``rotation`` (rad) of
        the major axis, from ``+x`` toward ``+y``, in ``(-pi/2, pi/2]``.
    major, minor, rotation : float, float, float
        When ``radius`` is given: the semi-axes in pixels and the rotation.

    Raises
    ------
    ValueError
        If ``affine`` is not a finite, invertible 2x2 or 3x3 matrix, or has a translation
        part, or ``radius`` is not positive.

    Examples
    --------
    >>> ratio, rotation = affine_to_ellipse(ellipse_to_affine(31.0, 30.0, 0.3))
    >>> round(ratio, 6), round(rotation, 6)
    (1.033333, 0.3)
    """
    a = np.asarray(affine, dtype=float)
    if a.shape not in ((2, 2), (3, 3)):
        raise ValueError(f"affine must be a 3x3 (or 2x2) matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("affine must be finite, got a matrix containing NaN or inf")
    if a.shape == (3, 3) and (np.any(a[:2, 2] != 0) or np.any(a[2] != (0, 0, 1))):
        raise ValueError(
            "affine must act on offsets from the centre: its last row must be (0, 0, 1) and "
            f"its translation column zero, got {a.tolist()}"
        )
    lin = a[:2, :2]
    _, s, vt = np.linalg.svd(lin)
    if s[-1] < 1e-12 * max(s[0], 1e-300):
        raise ValueError("affine must be invertible, got a singular matrix")
    # The right singular vector with the smallest singular value is the least stretched
    # direction, i.e. the major axis of the ellipse mapped onto the circle.
    v = vt[-1]
    rotation = float(_wrap_half_turn(math.atan2(v[1], v[0])))
    if radius is None:
        return float(s[0] / s[1]), rotation
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    return float(radius / s[1]), float(radius / s[0]), rotation


def ellipse_points(params, num=360):
    """Points on an ellipse, evenly spaced in the parametric angle.

    Parameters
    ----------
    params : (5,) array_like
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]`` (pixels, radians).
    num : int
        Number of points.

    Returns
    -------
    (num, 2) ndarray
        ``(row, col)`` pixel coordinates.

    Examples
    --------
    >>> ellipse_points([64, 60, 31, 30, 0], num=4).round(6)
    array([[64., 91.],
           [94., 60.],
           [64., 29.],
           [34., 60.]])
    """
    row_c, col_c, a, b, theta = _check_params(params, "params")[0]
    if int(num) < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    t = np.linspace(0, 2 * np.pi, int(num), endpoint=False)
    c, s = math.cos(theta), math.sin(theta)
    x = col_c + a * np.cos(t) * c - b * np.sin(t) * s
    y = row_c + a * np.cos(t) * s + b * np.sin(t) * c
    return np.column_stack([y, x])


def ellipse_residuals(pos, params):
    """Approximate signed geometric distance of points from an ellipse.

    The first-order (Sampson) distance of the corrected radius
    ``f(p) = |A (p - c)|``: ``d = (f - a) / |grad f|``, with ``A`` from
    :func:`ellipse_to_affine` and ``a`` the major semi-axis. Exact on the axes of the
    ellipse and accurate to first order in ``d`` elsewhere.

    Parameters
    ----------
    pos : (N, 2) array_like
        ``(row, col)`` pixel coordinates.
    params : (5,) array_like
        Ellipse ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``.

    Returns
    -------
    (N,) ndarray
        Distances in pixels, positive outside the ellipse.
    """
    p = np.asarray(pos, dtype=float).reshape(-1, 2)
    row_c, col_c, a, b, theta = _check_params(params, "params")[0]
    lin = ellipse_to_affine(a, b, theta)[:2, :2]
    d = np.column_stack([p[:, 1] - col_c, p[:, 0] - row_c])
    q = d @ lin.T
    f = np.hypot(q[:, 0], q[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        n = q / f[:, None]
        grad = np.hypot(*(n @ lin).T)
        res = (f - a) / grad
    # at the centre itself the gradient is undefined: the distance is at least b
    return np.where(f > 0, res, -b)


# --------------------------------------------------------------------------- fits


def _direct_fit(pos):
    """Halir-Flusser direct ellipse fit; returns params or raises EllipseFitError."""
    y = pos[:, 0]
    x = pos[:, 1]
    # Centre and scale the points first (the design matrix is badly conditioned in raw
    # pixel coordinates), fit there, and undo the normalisation on the geometric params.
    mx, my = x.mean(), y.mean()
    u, v = x - mx, y - my
    scale = math.sqrt(np.mean(u**2 + v**2))
    if not scale > 0:
        raise EllipseFitError("all points coincide: cannot fit an ellipse")
    u /= scale
    v /= scale
    # [2], eq. (9)-(16): conic a1 = (A, B, C) quadratic part, a2 = (D, E, F) linear part.
    d1 = np.column_stack([u * u, u * v, v * v])
    d2 = np.column_stack([u, v, np.ones_like(u)])
    s1 = d1.T @ d1
    s2 = d1.T @ d2
    s3 = d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)  # eq. (14)
    except np.linalg.LinAlgError:
        raise EllipseFitError("the points are collinear: cannot fit an ellipse") from None
    m = s1 + s2 @ t  # reduced scatter matrix, eq. (15)
    # premultiply by inv(C1), C1 = [[0, 0, 2], [0, -1, 0], [2, 0, 0]] (eq. (16))
    m = np.vstack([m[2] / 2, -m[1], m[0] / 2])
    if not np.all(np.isfinite(m)):
        raise EllipseFitError("the points are degenerate: cannot fit an ellipse")
    w, vecs = np.linalg.eig(m)
    vecs = np.real(vecs)
    cond = 4 * vecs[0] * vecs[2] - vecs[1] ** 2  # ellipse constraint 4AC - B^2 > 0
    ok = (cond > 0) & (np.abs(np.imag(w)) <= 1e-8 * max(np.abs(w).max(), 1e-300))
    if not ok.any():
        raise EllipseFitError("no ellipse fits these points (the best conic is not one)")
    a1 = vecs[:, np.flatnonzero(ok)[np.argmin(np.abs(np.real(w[ok])))]]
    a2 = t @ a1
    ca, cb, cc = a1
    cd, ce, cf = a2
    q = np.array([[ca, cb / 2], [cb / 2, cc]])
    try:
        centre = np.linalg.solve(2 * q, -np.array([cd, ce]))
    except np.linalg.LinAlgError:
        raise EllipseFitError("the fitted conic has no centre (a parabola)") from None
    f0 = cf + 0.5 * (cd * centre[0] + ce * centre[1])  # conic value at the centre
    if not np.isfinite(f0) or f0 == 0:
        raise EllipseFitError("the fitted conic is degenerate")
    params = _params_from_quadratic(q / -f0, centre)
    params[:2] = (my + scale * params[0], mx + scale * params[1])
    params[2:4] *= scale
    if not np.all(np.isfinite(params)):
        raise EllipseFitError("the fitted ellipse is not finite")
    return params


def fit_ellipse(pos):
    """Algebraic least-squares ellipse fit (direct, ellipse-specific) of points.

    Minimises the algebraic distance ``sum_i (a x_i^2 + b x_i y_i + c y_i^2 + d x_i
    + e y_i + f)^2`` under ``4 a c - b^2 = 1``, which always yields an ellipse [1]_, with the
    numerically stable partitioned solution of [2]_. The points are centred and scaled to
    unit rms radius before the fit and the normalisation is undone afterwards.

    Parameters
    ----------
    pos : (N, 2) array_like
        ``(row, col)`` pixel coordinates, ``N >= 5``.

    Returns
    -------
    (5,) ndarray
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]`` (pixels, radians), see the
        module conventions.

    Raises
    ------
    ValueError
        If ``pos`` is not an (N, 2) finite array with ``N >= 5``.
    EllipseFitError
        If the points are degenerate (collinear, coincident) or no ellipse fits them.

    References
    ----------
    .. [1] Fitzgibbon, Pilu & Fisher, IEEE TPAMI 21 (1999) 476.
    .. [2] Halir & Flusser, WSCG (1998) 125.

    Examples
    --------
    >>> pts = ellipse_points([64.0, 60.0, 31.0, 30.0, 0.5], num=50)
    >>> fit_ellipse(pts).round(6)
    array([64. , 60. , 31. , 30. ,  0.5])
    """
    return _direct_fit(_check_points(pos))


def _ransac_trials_needed(inlier_fraction, min_samples, stop_probability):
    """Trials after which an all-inlier sample was drawn with ``stop_probability``."""
    if inlier_fraction >= 1:
        return 0
    p_good = inlier_fraction**min_samples
    if p_good <= 0:
        return np.inf
    return math.ceil(math.log(1 - stop_probability) / math.log1p(-p_good))


def fit_ellipse_ransac(
    pos,
    residual_threshold=3.0,
    max_trials=1000,
    rng=0,
    stop_probability=0.999,
    guess_starting_params=True,
    center_tolerance=0.5,
    axis_bounds=(0.5, 2.0),
    min_inliers=None,
):
    """Robust ellipse fit by random sample consensus (RANSAC).

    Each trial fits :func:`fit_ellipse` to 5 random points and counts the inliers
    (``|ellipse_residuals| < residual_threshold``); the model with most inliers wins (ties:
    smallest sum of squared inlier residuals). The number of trials adapts to the inlier
    fraction found so far. The winner is refitted to its inliers, and the refit repeated with
    the inliers of the new model until they no longer change (at most 3 times).

    Parameters
    ----------
    pos : (N, 2) array_like
        ``(row, col)`` pixel coordinates, ``N >= 5``.
    residual_threshold : float
        Largest distance from the ellipse (pixels) of an inlier. It should be about half the
        width of the band of points along the ring: much smaller and the inlier set cuts
        the band unevenly (biasing the fit), much larger and outliers near the ring count.
    max_trials : int
        Largest number of random samples.
    rng : int, numpy.random.Generator or None
        Seed or generator of the random samples; the default seed makes results
        reproducible. None draws fresh entropy.
    stop_probability : float in (0, 1)
        Stop once an all-inlier sample has been drawn with this probability.
    guess_starting_params : bool
        Guess the ellipse from the points (centre = median point, radius = median distance
        to it) and reject candidate models outside bounds around the guess (below).
    center_tolerance : float
        Largest distance of a candidate centre from the guessed one, as a fraction of the
        guessed radius.
    axis_bounds : (float, float)
        Smallest minor and largest major semi-axis of a candidate, as fractions of the
        guessed radius.
    min_inliers : int, optional
        Fewest inliers for a model to count as found (default: 5 and 10 % of the points).

    Returns
    -------
    params : (5,) ndarray
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``.
    inlier : (N,) ndarray of bool
        Inlier flag of each point.

    Raises
    ------
    ValueError
        If ``pos`` or an option is invalid.
    EllipseFitError
        If no model with ``min_inliers`` inliers (inside the bounds) was found.

    References
    ----------
    .. [3] Fischler & Bolles, Commun. ACM 24 (1981) 381.

    Examples
    --------
    >>> pts = ellipse_points([64.0, 60.0, 31.0, 30.0, 0.5], num=70)
    >>> pts[::7] += 15.0  # 10 outliers
    >>> params, inlier = fit_ellipse_ransac(pts, rng=1)
    >>> params.round(6), int(inlier.sum())
    (array([64. , 60. , 31. , 30. ,  0.5]), 60)
    """
    p = _check_points(pos)
    n = len(p)
    if not np.isfinite(residual_threshold) or residual_threshold <= 0:
        raise ValueError(
            f"residual_threshold must be a positive number of pixels, got {residual_threshold!r}"
        )
    if int(max_trials) != max_trials or max_trials < 1:
        raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}")
    if not 0 < stop_probability < 1:
        raise ValueError(f"stop_probability must be in (0, 1), got {stop_probability!r}")
    lo_ax, hi_ax = (float(v) for v in axis_bounds)
    if not 0 <= lo_ax < hi_ax:
        raise ValueError(
            f"axis_bounds must be (low, high) fractions with 0 <= low < high, got {axis_bounds!r}"
        )
    if min_inliers is None:
        min_inliers = max(_MIN_POINTS, math.ceil(0.1 * n))
    rng = np.random.default_rng(rng)

    if guess_starting_params:
        centre_guess = np.median(p, axis=0)
        radius_guess = float(np.median(np.hypot(*(p - centre_guess).T)))

        def valid(params):
            return (
                math.hypot(params[0] - centre_guess[0], params[1] - centre_guess[1])
                <= center_tolerance * radius_guess
                and params[2] <= hi_ax * radius_guess
                and params[3] >= lo_ax * radius_guess
            )

    else:

        def valid(params):
            return True

    best_count, best_ssr, best_inlier = 0, np.inf, None
    needed = int(max_trials)
    trial = 0
    while trial < min(needed, int(max_trials)):
        trial += 1
        sample = rng.choice(n, _MIN_POINTS, replace=False)
        try:
            params = _direct_fit(p[sample])
        except EllipseFitError:
            continue
        if not valid(params):
            continue
        res = ellipse_residuals(p, params)
        inlier = np.abs(res) < residual_threshold
        count = int(inlier.sum())
        ssr = float(np.sum(res[inlier] ** 2))
        if count > best_count or (count == best_count and ssr < best_ssr):
            best_count, best_ssr, best_inlier = count, ssr, inlier
            needed = _ransac_trials_needed(count / n, _MIN_POINTS, stop_probability)
    if best_inlier is None or best_count < min_inliers:
        bounded = ", inside the guessed bounds" if guess_starting_params else ""
        raise EllipseFitError(
            f"RANSAC found no ellipse with at least {min_inliers} inliers in {trial} trials "
            f"(best: {best_count} of {n} points within residual_threshold="
            f"{residual_threshold} px{bounded}"
            "); try a larger residual_threshold or max_trials, or guess_starting_params=False"
        )
    inlier = best_inlier
    for _ in range(3):
        params = _direct_fit(p[inlier])
        new_inlier = np.abs(ellipse_residuals(p, params)) < residual_threshold
        if new_inlier.sum() < _MIN_POINTS or np.array_equal(new_inlier, inlier):
            break
        inlier = new_inlier
    # report the inliers of the returned model
    final = np.abs(ellipse_residuals(p, params)) < residual_threshold
    return params, final if final.sum() >= _MIN_POINTS else inlier


# --------------------------------------------------------------------------- determine


_RANSAC_KWARGS = {
    "residual_threshold",
    "max_trials",
    "rng",
    "random_state",
    "stop_probability",
    "center_tolerance",
    "axis_bounds",
    "min_inliers",
}


def _pick_points(image, mask, num_points):
    """(row, col) of the ``num_points`` most intense unmasked, finite pixels."""
    valid = ~mask & np.isfinite(image)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("mask excludes every pixel: no points to fit an ellipse to")
    if num_points > n_valid:
        raise ValueError(
            f"num_points={num_points} but only {n_valid} pixels are unmasked and finite; "
            "use a smaller num_points"
        )
    flat = np.where(valid, image, -np.inf).ravel()
    # argpartition + stable sort keeps ties deterministic (lowest flat index first)
    idx = np.argpartition(-flat, num_points - 1)[:num_points]
    idx = idx[np.lexsort((idx, -flat[idx]))]
    rows, cols = np.unravel_index(idx, image.shape)
    return np.column_stack([rows, cols]).astype(float)


def determine_ellipse(
    signal=None,
    pos=None,
    mask=None,
    num_points=1000,
    use_ransac=False,
    guess_starting_params=True,
    return_params=False,
    **kwargs,
):
    """Centre and affine of an elliptical diffraction ring, from its brightest pixels.

    Picks the ``num_points`` most intense unmasked pixels of a pattern (or uses ``pos``),
    fits an ellipse to their centres by algebraic least squares (:func:`fit_ellipse`) or by
    RANSAC (:func:`fit_ellipse_ransac`), and returns its centre and the affine that maps
    it onto a circle (:func:`ellipse_to_affine`).

    Point picking is biased by the background slope under the ring (the brightest pixels
    sit on the inner flank); polish the result with :func:`refine_center_affine`.

    Parameters
    ----------
    signal : (rows, cols) ndarray or 2D HyperSpy signal, optional
        A diffraction pattern, typically ``s.sum()`` of a 4D dataset. Lazy data is computed.
        Pixels that are NaN or inf are never picked.
    pos : (N, 2) array_like, optional
        ``(row, col)`` points to fit instead of picking them from ``signal``.
    mask : (rows, cols) bool array or boolean signal, optional
        True excludes a pixel from picking (beam stop, dead pixels). Only with ``signal``.
    num_points : int
        Number of pixels to pick (>= 5).
    use_ransac : bool
        Fit with RANSAC (robust to hot pixels and other outliers) instead of plain least
        squares.
    guess_starting_params : bool
        With RANSAC, bound the candidate models around an ellipse guessed from the points
        (see :func:`fit_ellipse_ransac`). Ignored by the plain least-squares fit, which has
        no starting point.
    return_params : bool
        Also return the ellipse parameters and the points (and the inlier flags with
        RANSAC).
    **kwargs
        RANSAC options: ``residual_threshold`` (px, default 3), ``max_trials`` (1000),
        ``rng`` or its alias ``random_state`` (int seed or Generator, default 0, so results
        are reproducible), ``stop_probability`` (0.999), ``center_tolerance`` (0.5),
        ``axis_bounds`` ((0.5, 2.0)), ``min_inliers``.

    Returns
    -------
    center : (2,) ndarray
        ``(row, col)`` centre in pixels. ``s.calibration.center = center[::-1]``.
    affine : (3, 3) ndarray
        Maps offsets ``(x - cx, y - cy, 1)`` so that the ellipse becomes the circle of
        radius ``semi_axis_0``; ``s.calibration.affine = affine``.
    params : (5,) ndarray
        Only with ``return_params``: ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``.
    pos : (N, 2) ndarray
        Only with ``return_params``: the ``(row, col)`` points that were fitted.
    inlier : (N,) bool ndarray
        Only with ``return_params`` and ``use_ransac``: inlier flag of each point.

    Raises
    ------
    ValueError
        If neither or both of ``signal`` and ``pos`` are given, ``signal`` is not 2D,
        ``mask`` has the wrong shape or excludes everything, there are fewer than 5 points
        or an option is invalid.
    TypeError
        If ``mask`` is not boolean or an unknown keyword argument is given.
    EllipseFitError
        (a ``ValueError``) if no ellipse fits the points or RANSAC finds no model.

    See Also
    --------
    refine_center_affine, ellipse_to_markers

    Examples
    --------
    >>> summed = s.sum()  # doctest: +SKIP
    >>> center, affine, params, pos = determine_ellipse(
    ...     summed, mask=summed < 10000, num_points=500, return_params=True)  # doctest: +SKIP
    >>> s.calibration.center = center[::-1]  # doctest: +SKIP
    >>> s.calibration.affine = affine  # doctest: +SKIP
    """
    unknown = set(kwargs) - _RANSAC_KWARGS
    if unknown:
        raise TypeError(
            f"determine_ellipse got unexpected keyword argument(s) {sorted(unknown)}; "
            f"accepted: {sorted(_RANSAC_KWARGS)}"
        )
    if "random_state" in kwargs:
        if "rng" in kwargs:
            raise TypeError("give either rng or its alias random_state, not both")
        kwargs["rng"] = kwargs.pop("random_state")
    if kwargs and not use_ransac:
        raise TypeError(f"keyword argument(s) {sorted(kwargs)} only apply with use_ransac=True")
    if (signal is None) == (pos is None):
        raise ValueError(
            "give either signal (a 2D pattern to pick points from) or pos (an (N, 2) array "
            "of (row, col) points), not " + ("neither" if signal is None else "both")
        )
    if pos is None:
        image = _as_image(signal)
        m = _as_mask(mask, image.shape)
        if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 5:
            raise ValueError(f"num_points must be an integer >= 5, got {num_points!r}")
        points = _pick_points(image, m, int(num_points))
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
    affine = ellipse_to_affine(params[2], params[3], params[4])
    if not return_params:
        return center, affine
    if use_ransac:
        return center, affine, params, points, inlier
    return center, affine, params, points


# --------------------------------------------------------------------------- refinement


def _check_center_affine(center, affine):
    c = np.asarray(center, dtype=float)
    if c.shape != (2,) or not np.all(np.isfinite(c)):
        raise ValueError(
            f"center must be a finite (row, col) pair of pixels, got {np.asarray(center)!r}"
        )
    a = np.eye(3) if affine is None else np.asarray(affine, dtype=float)
    if a.shape == (2, 2):
        full = np.eye(3)
        full[:2, :2] = a
        a = full
    if a.shape != (3, 3) or not np.all(np.isfinite(a)):
        raise ValueError(f"affine must be a finite 3x3 (or 2x2) matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:2, :2])) < 1e-12:
        raise ValueError("affine must be invertible, got a singular matrix")
    return c, a


def _radial_range_px(signal, radial_range, units):
    """radial_range as (r0, r1) pixels, and the factor from pixels back to its units."""
    if units not in ("pixel", "calibrated"):
        raise ValueError(f"units must be 'pixel' or 'calibrated', got {units!r}")
    try:
        r0, r1 = (float(v) for v in radial_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"radial_range must be a pair (r_min, r_max), got {radial_range!r}"
        ) from None
    factor = 1.0
    if units == "calibrated":
        axes = getattr(getattr(signal, "axes_manager", None), "signal_axes", None)
        if not axes or len(axes) != 2:
            raise ValueError(
                "units='calibrated' needs a 2D HyperSpy signal (for its axis scale); "
                "with an array give radial_range in pixels"
            )
        sx, sy = abs(axes[0].scale), abs(axes[1].scale)
        if not np.isclose(sx, sy, rtol=1e-6) or not sx > 0:
            raise ValueError(
                f"units='calibrated' needs equal signal-axis scales, got {sx} and {sy}"
            )
        factor = sx
    if not (np.isfinite(r0) and np.isfinite(r1) and 0 <= r0 < r1):
        raise ValueError(
            f"radial_range must be finite with 0 <= r_min < r_max, got {radial_range!r}"
        )
    r0, r1 = r0 / factor, r1 / factor
    if r1 - r0 < 2:
        raise ValueError(
            f"radial_range must span at least 2 pixels around the ring, got {r1 - r0:.3g} px"
        )
    return r0, r1, factor


def _peak_radii(image, bad, center, affine, r0, r1, n_azimuth, peak_width, dr=0.25):
    """Per-sector peak radius (px, corrected coordinates) of a ring; NaN where dropped."""
    r = np.arange(r0, r1 + dr / 2, dr)
    n_sub = max(1, math.ceil(2 * np.pi * r1 / n_azimuth / 0.5))  # sub-rays <= 0.5 px apart
    phi = -np.pi + (np.arange(n_azimuth) + 0.5) * (2 * np.pi / n_azimuth)
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    ang = phi[:, None] + sub[None, :] * (2 * np.pi / n_azimuth)  # (n_azimuth, n_sub)
    qx = np.cos(ang)[..., None] * r  # (n_azimuth, n_sub, n_r) in corrected coordinates
    qy = np.sin(ang)[..., None] * r
    inv = np.linalg.inv(affine[:2, :2])
    x = center[1] + inv[0, 0] * qx + inv[0, 1] * qy
    y = center[0] + inv[1, 0] * qx + inv[1, 1] * qy
    coords = np.stack([y.ravel(), x.ravel()])
    values = ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    touched = ndimage.map_coordinates(bad, coords, order=1, mode="constant", cval=1.0)
    values = values.reshape(x.shape)
    # a sub-ray is dropped entirely if any of its samples touches a masked pixel or leaves
    # the detector: a partial profile would bias its peak
    ray_ok = ~(touched.reshape(x.shape) > 1e-9).any(axis=-1)
    n_ok = ray_ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = (values * ray_ok[..., None]).sum(axis=1) / n_ok[:, None]
        # the sector's azimuth is the mean of the rays kept in it
        phi = np.where(n_ok > 0, (ang * ray_ok).sum(axis=1) / n_ok, phi)
    # local linear background through the two ends of the radial range
    k = max(2, len(r) // 10)
    left, right = prof[:, :k].mean(axis=1), prof[:, -k:].mean(axis=1)
    rl, rr = r[:k].mean(), r[-k:].mean()
    prof = prof - (left[:, None] + (right - left)[:, None] * (r - rl) / (rr - rl))
    # centroid in a window re-centred on the centroid (converges to the point where the
    # window is balanced: the peak of a symmetric profile, unbiased by the window edges)
    half = peak_width / 2
    peak = r[np.argmax(np.where(np.isfinite(prof), prof, -np.inf), axis=1)]
    for _ in range(20):
        # box window whose edge samples count fractionally: the centroid is then a
        # continuous function of the window centre and the iteration has a fixed point
        win = np.clip((half - np.abs(r[None, :] - peak[:, None])) / dr + 0.5, 0.0, 1.0)
        w = win * np.clip(prof, 0, None)
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            new = (w * r).sum(axis=1) / total
        new = np.where(total > 0, new, np.nan)
        if np.allclose(new, peak, atol=1e-4, equal_nan=True):
            peak = new
            break
        peak = new
    # a peak pinned on the range edge is not a peak inside the range
    valid = (n_ok > 0) & np.isfinite(peak) & (peak > r0 + dr) & (peak < r1 - dr)
    return phi, np.where(valid, peak, np.nan)


def _prepare(signal, mask):
    image = _as_image(signal)
    bad = _as_mask(mask, image.shape) | ~np.isfinite(image)
    image = np.where(bad, 0.0, image)
    return image, bad.astype(float)


def ring_peak_radii(
    signal,
    center,
    affine,
    radial_range,
    mask=None,
    n_azimuth=90,
    peak_width=None,
    units="pixel",
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
    radial_range : (float, float)
        Radii bracketing the ring peak, in corrected pixels (``units="pixel"``) or in the
        signal's calibrated units (``units="calibrated"``, e.g. nm^-1: corrected pixels
        times the axis scale, as in the integration engine).
    mask : (rows, cols) bool array or boolean signal, optional
        True excludes a pixel. Rays touching a masked pixel (or leaving the detector) are
        dropped; a sector with no ray left gives NaN.
    n_azimuth : int
        Number of azimuthal sectors over ``(-pi, pi]``.
    peak_width : float, optional
        Width of the centroid window, in the units of ``radial_range``; default half the
        range.
    units : {"pixel", "calibrated"}
        Units of ``radial_range``, ``peak_width`` and the returned radii.

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
    """
    image, bad = _prepare(signal, mask)
    center, affine = _check_center_affine(center, affine)
    r0, r1, factor = _radial_range_px(signal, radial_range, units)
    n_azimuth = _check_n_azimuth(n_azimuth)
    width = _check_peak_width(peak_width, r0, r1, factor)
    phi, radius = _peak_radii(image, bad, center, affine, r0, r1, n_azimuth, width)
    return phi, radius * factor


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


def refine_center_affine(
    signal,
    center,
    affine,
    radial_range,
    mask=None,
    n_azimuth=90,
    peak_width=None,
    max_iter=5,
    tol=1e-3,
    units="pixel",
    return_params=False,
):
    """Polish a centre and affine so that a ring's peak radius is constant over azimuth.

    Point picking (:func:`determine_ellipse`) is biased by the background slope under the
    ring. This instead measures the sub-pixel peak radius of the ring in each azimuthal
    sector of the polar transform in the current corrected coordinates
    (:func:`ring_peak_radii`), maps the peaks back to detector pixels, fits an ellipse to
    them (:func:`fit_ellipse`, after dropping peaks further than 4 robust standard
    deviations from a first fit) and takes its centre and affine. This repeats until the
    centre moves less than ``tol`` pixels and the axis ratio less than ``tol / 100``, or
    ``max_iter`` times. Any bias of the peak estimator that is the same at all azimuths
    (background slope, window) then cancels, as the profiles become identical.

    Parameters
    ----------
    signal : (rows, cols) ndarray or 2D HyperSpy signal
        Diffraction pattern, e.g. ``s.sum()``; lazy data is computed.
    center : (2,) array_like
        Starting ``(row, col)`` centre in pixels, e.g. from :func:`determine_ellipse`.
    affine : (3, 3) array_like or None
        Starting affine (module convention), or None for the identity.
    radial_range : (float, float)
        Radii bracketing one ring, in corrected pixels ``|A (p - c)|`` (``units="pixel"``,
        default) or in the signal's calibrated units (``units="calibrated"``). The range
        should contain the whole peak and some background on both sides.
    mask : (rows, cols) bool array or boolean signal, optional
        True excludes a pixel (beam stop, dead pixels): rays crossing it are dropped.
    n_azimuth : int
        Number of azimuthal sectors (>= 8).
    peak_width : float, optional
        Centroid window, in the units of ``radial_range``; default half the range.
    max_iter : int
        Largest number of measure-and-fit iterations.
    tol : float
        Convergence tolerance on the centre, pixels.
    units : {"pixel", "calibrated"}
        Units of ``radial_range`` and ``peak_width``.
    return_params : bool
        Also return the ellipse parameters and the ring peaks that were fitted.

    Returns
    -------
    center : (2,) ndarray
        ``(row, col)`` centre in pixels; ``s.calibration.center = center[::-1]``.
    affine : (3, 3) ndarray
        Affine mapping the fitted ring onto a circle of radius ``semi_axis_0``.
    params : (5,) ndarray
        Only with ``return_params``: ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``
        of the ring peak.
    pos : (M, 2) ndarray
        Only with ``return_params``: ``(row, col)`` detector positions of the per-sector
        peaks of the last iteration that were fitted.

    Raises
    ------
    ValueError
        If ``signal`` is not 2D, ``mask`` has the wrong shape, ``center``/``affine`` are not
        finite (or the affine is singular), ``radial_range`` is reversed, negative or
        narrower than 2 pixels, or an option is invalid.
    EllipseFitError
        If fewer than 8 sectors give a peak (the ring is outside ``radial_range``, off the
        detector or masked) or no ellipse fits the peaks.

    Examples
    --------
    >>> center, affine = determine_ellipse(summed, mask=mask)  # doctest: +SKIP
    >>> center, affine = refine_center_affine(summed, center, affine, (25, 37),
    ...                                       mask=mask)  # doctest: +SKIP
    """
    image, bad = _prepare(signal, mask)
    center, affine = _check_center_affine(center, affine)
    r0, r1, factor = _radial_range_px(signal, radial_range, units)
    n_azimuth = _check_n_azimuth(n_azimuth)
    width = _check_peak_width(peak_width, r0, r1, factor)
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    sv = np.linalg.svd(affine[:2, :2], compute_uv=False)
    ratio = sv[0] / sv[1]
    for _ in range(int(max_iter)):
        phi, radius = _peak_radii(image, bad, center, affine, r0, r1, n_azimuth, width)
        ok = np.isfinite(radius)
        if ok.sum() < 8:
            raise EllipseFitError(
                f"only {int(ok.sum())} of {n_azimuth} azimuthal sectors show a peak inside "
                f"radial_range={tuple(radial_range)}: check the range, the mask and the "
                "starting centre"
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
        new_affine = ellipse_to_affine(params[2], params[3], params[4])
        new_ratio = params[2] / params[3]
        shift = np.hypot(*(new_center - center))
        converged = shift < tol and abs(new_ratio - ratio) < tol / 100
        center, affine, ratio = new_center, new_affine, new_ratio
        if converged:
            break
    if return_params:
        return center, affine, params, pos
    return center, affine


# --------------------------------------------------------------------------- markers


def _pixel_to_calibrated(signal, rows, cols):
    """Calibrated (x, y) of pixel (row, col) positions on the signal's two signal axes."""
    axes = getattr(getattr(signal, "axes_manager", None), "signal_axes", None)
    if not axes or len(axes) != 2:
        raise ValueError(
            "signal must be a HyperSpy signal with two signal axes (or None for pixel "
            f"coordinates), got {type(signal).__name__}"
        )
    ax_x, ax_y = axes
    return (
        ax_x.offset + np.asarray(cols) * ax_x.scale,
        ax_y.offset + np.asarray(rows) * ax_y.scale,
    ), (ax_x.scale, ax_y.scale)


def ellipse_to_markers(ellipse_array, points=None, inlier=None, signal=None):
    """HyperSpy markers drawing fitted ellipses (and the fitted points) on a pattern.

    Parameters
    ----------
    ellipse_array : (5,) or (M, 5) array_like
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]`` in pixels and radians, as
        returned by :func:`determine_ellipse` with ``return_params=True``.
    points : (N, 2) array_like, optional
        ``(row, col)`` pixel positions to draw as points (e.g. ``pos``).
    inlier : (N,) array_like of bool, optional
        Inlier flags of ``points`` (RANSAC); inliers are drawn green, outliers red.
    signal : HyperSpy signal, optional
        When given, the markers are placed in this signal's calibrated coordinates,
        ``x = offset_x + col * scale_x`` and ``y = offset_y + row * scale_y`` (the ellipse
        shape is transformed exactly, also for unequal or negative scales). Otherwise they
        are in pixels, which is right for a signal with uncalibrated axes (scale 1, offset
        0) or one plotted in pixels. Pass the signal the markers will be added to as soon
        as its axes carry a centre (``s.calibration.center``) or a scale.

    Returns
    -------
    el : hyperspy.api.plot.markers.Ellipses
        When ``points`` is None.
    el, points : Ellipses, Points
        When ``points`` is given without ``inlier`` (points drawn in lime).
    el, in_points, out_points : Ellipses, Points, Points
        When ``inlier`` is given.

    Raises
    ------
    ValueError
        If the ellipse parameters, the points or the inlier flags have the wrong shape, or
        ``inlier`` is given without ``points``.

    Notes
    -----
    The ellipse is drawn with ``units="xy"``: widths, heights and angle are in data
    coordinates, the angle measured from ``+x`` toward ``+y``. On an image (``y`` pointing
    down) that is the module's ``rotation`` convention, so the drawn ellipse passes through
    :func:`ellipse_points`.

    Examples
    --------
    >>> el, in_points = ellipse_to_markers(ellipse_array=params, points=pos)  # doctest: +SKIP
    >>> summed.add_marker(el, plot_marker=True)  # doctest: +SKIP
    """
    import hyperspy.api as hs

    e = _check_params(ellipse_array)
    if signal is None:
        cx, cy = e[:, 1], e[:, 0]
        widths, heights, angles = 2 * e[:, 2], 2 * e[:, 3], e[:, 4]
    else:
        (cx, cy), (sx, sy) = _pixel_to_calibrated(signal, e[:, 0], e[:, 1])
        s = np.diag([1 / sx, 1 / sy])
        widths, heights, angles = [], [], []
        for params in e:
            # the scaled ellipse q' = S^-1 q S^-1 of the quadratic form in (x, y)
            q = s @ _quadratic_from_params(params) @ s
            _, _, a, b, theta = _params_from_quadratic(q, (0.0, 0.0))
            widths.append(2 * a)
            heights.append(2 * b)
            angles.append(theta)
    el = hs.plot.markers.Ellipses(
        offsets=np.column_stack([cx, cy]),
        widths=np.asarray(widths, dtype=float),
        heights=np.asarray(heights, dtype=float),
        angles=np.degrees(angles),
        facecolor="none",
        edgecolor="cyan",
        linewidth=1.5,
    )
    if points is None:
        if inlier is not None:
            raise ValueError("inlier needs points: give the points the flags belong to")
        return el
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(
            f"points must be an (N, 2) array of (row, col) pixels, got shape {p.shape}"
        )
    if signal is None:
        xy = np.column_stack([p[:, 1], p[:, 0]])
    else:
        (px, py), _ = _pixel_to_calibrated(signal, p[:, 0], p[:, 1])
        xy = np.column_stack([px, py])
    if inlier is None:
        return el, hs.plot.markers.Points(offsets=xy, color="lime", sizes=4)
    flags = np.asarray(inlier)
    if flags.shape != (len(p),) or flags.dtype != bool:
        raise ValueError(
            f"inlier must be a bool array of shape ({len(p)},) (one flag per point), got "
            f"dtype {flags.dtype} and shape {flags.shape}"
        )
    in_points = hs.plot.markers.Points(offsets=xy[flags], color="lime", sizes=4)
    out_points = hs.plot.markers.Points(offsets=xy[~flags], color="red", sizes=4)
    return el, in_points, out_points
