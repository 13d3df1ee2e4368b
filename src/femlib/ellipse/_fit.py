"""Ellipse fits and the ellipse <-> affine conversions (module conventions in the package doc)."""

import math

import numpy as np

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


NORMALIZE = ("major", "minor", "area")


def _check_normalize(normalize):
    if normalize not in NORMALIZE:
        raise ValueError(
            f"normalize must be one of {', '.join(repr(n) for n in NORMALIZE)} (the ellipse "
            f"radius that keeps its length), got {normalize!r}"
        )
    return normalize


def ellipse_to_affine(major, minor, rotation, normalize="major"):
    """Affine transformation that makes an ellipse circular.

    With ``u`` the unit vector across ``rotation`` (the minor-axis direction) the 2x2 part is
    ``s * (I + (major / minor - 1) u u^T) = s * R(rotation) @ diag(1, major / minor) @
    R(-rotation)``, embedded in a 3x3 matrix without translation. It acts on pixel offsets
    ``(x - cx, y - cy, 1)`` (``x`` = column, ``y`` = row) and maps the ellipse with
    semi-axis ``major`` along ``rotation`` and ``minor`` across it onto a circle whose
    radius is chosen by ``normalize``:

    ============  ======================  ============================
    normalize     circle radius           ``s``
    ============  ======================  ============================
    ``"major"``   ``major``               1
    ``"minor"``   ``minor``               ``minor / major``
    ``"area"``    ``sqrt(major minor)``   ``sqrt(minor / major)``
    ============  ======================  ============================

    The radius of a pixel, and with it the k axis of every integral, follows the same
    choice. ``"major"`` (the default) is what pyxem's ``determine_ellipse`` affine gives: its
    integration maps corrected coordinates onto the detector with ``diag(1, minor / major)``
    in the ellipse frame, so the ring keeps the length of its major semi-axis.

    Parameters
    ----------
    major : float
        Semi-axis along ``rotation`` (pixels; only the ratio matters).
    minor : float
        Semi-axis perpendicular to ``rotation`` (pixels). ``minor > major`` is allowed;
        :func:`affine_to_ellipse` reports the ellipse major axis first.
    rotation : float
        Direction of ``major`` in radians, from ``+x`` toward ``+y`` (``+row``).
    normalize : {"major", "minor", "area"}
        Which radius of the ellipse keeps its length (see the table).

    Returns
    -------
    (3, 3) ndarray of float64
        The affine; the identity when ``major == minor``.

    Raises
    ------
    ValueError
        If a semi-axis is not a positive finite number, ``rotation`` is not finite or
        ``normalize`` is unknown.

    Examples
    --------
    >>> from femlib.ellipse import ellipse_to_affine
    >>> A = ellipse_to_affine(31.0, 30.0, 0.0)
    >>> A[:2, :2] @ [0.0, 30.0]  # the minor-axis vertex lands on the circle of radius 31
    array([ 0., 31.])
    >>> A = ellipse_to_affine(31.0, 30.0, 0.0, normalize="minor")
    >>> A[:2, :2] @ [31.0, 0.0]  # the major-axis vertex lands on the circle of radius 30
    array([30.,  0.])
    """
    for name, v in (("major", major), ("minor", minor)):
        if not (np.isscalar(v) or np.ndim(v) == 0) or not np.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not (np.isscalar(rotation) or np.ndim(rotation) == 0) or not np.isfinite(rotation):
        raise ValueError(f"rotation must be a finite angle in radians, got {rotation!r}")
    _check_normalize(normalize)
    ratio = float(major) / float(minor)
    # R diag(1, ratio) R^T = I + (ratio - 1) u u^T, u the minor-axis direction: exactly
    # symmetric, and exactly the identity for a circle
    u = np.array([-math.sin(rotation), math.cos(rotation)])
    affine = np.eye(3)
    affine[:2, :2] += (ratio - 1.0) * np.outer(u, u)
    if normalize == "minor":
        affine[:2, :2] /= ratio
    elif normalize == "area":
        affine[:2, :2] /= math.sqrt(ratio)
    return affine


def affine_to_ellipse(affine, radius=None):
    """Ellipse that an affine maps onto a circle: the inverse of :func:`ellipse_to_affine`.

    The points ``p`` with ``|A p| = radius`` form an ellipse whose semi-axes are
    ``radius / s_min`` (major) and ``radius / s_max`` (minor), ``s`` the singular values of
    the 2x2 part of ``A``. Any invertible matrix is accepted (e.g. one with a rotation
    part); for the matrices of :func:`ellipse_to_affine` with ``normalize="major"``
    ``s_min = 1``, so the major semi-axis equals ``radius``.

    Parameters
    ----------
    affine : (3, 3) or (2, 2) array_like
        The affine, acting on pixel offsets ``(x - cx, y - cy[, 1])``, whatever its
        normalisation.
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
    >>> from femlib.ellipse import affine_to_ellipse, ellipse_to_affine
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
    >>> from femlib.ellipse import ellipse_points
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

    Examples
    --------
    >>> from femlib.ellipse import ellipse_residuals
    >>> ellipse_residuals([[0.0, 32.0], [22.5, 0.0], [0.0, -28.0]], [0, 0, 30, 20, 0])
    array([ 2. ,  2.5, -2. ])
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
    >>> from femlib.ellipse import ellipse_points, fit_ellipse
    >>> pts = ellipse_points([64.0, 60.0, 31.0, 30.0, 0.5], num=50)
    >>> fit_ellipse(pts).round(6)
    array([64. , 60. , 31. , 30. ,  0.5])
    """
    return _direct_fit(_check_points(pos))
