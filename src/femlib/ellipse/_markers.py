"""HyperSpy markers of fitted ellipses and their points."""

import numpy as np

from femlib.ellipse._fit import _check_params, _params_from_quadratic, _quadratic_from_params


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


def _ellipse_shapes(e, signal):
    """Offsets (M, 2), widths, heights, angles (deg) of (M, 5) ellipses, in plot units."""
    if signal is None:
        return np.column_stack([e[:, 1], e[:, 0]]), 2 * e[:, 2], 2 * e[:, 3], np.degrees(e[:, 4])
    (cx, cy), (sx, sy) = _pixel_to_calibrated(signal, e[:, 0], e[:, 1])
    s = np.diag([1 / sx, 1 / sy])
    shapes = []
    for params in e:
        # the scaled ellipse q' = S^-1 q S^-1 of the quadratic form in (x, y)
        q = s @ _quadratic_from_params(params) @ s
        shapes.append(_params_from_quadratic(q, (0.0, 0.0))[2:])
    shapes = np.asarray(shapes).reshape(-1, 3)
    return (
        np.column_stack([cx, cy]),
        2 * shapes[:, 0],
        2 * shapes[:, 1],
        np.degrees(shapes[:, 2]),
    )


def _point_offsets(points, signal, name="points"):
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(
            f"{name} must be an (N, 2) array of (row, col) pixels, got shape {p.shape}"
        )
    if signal is None:
        return np.column_stack([p[:, 1], p[:, 0]])
    (px, py), _ = _pixel_to_calibrated(signal, p[:, 0], p[:, 1])
    return np.column_stack([px, py])


def _is_ragged(ellipse_array):
    """True for per-position ellipses: an object array, or numbers of shape (..., M, 5)."""
    if isinstance(ellipse_array, np.ndarray) and ellipse_array.dtype == object:
        return True
    try:
        return np.asarray(ellipse_array, dtype=float).ndim > 2
    except (TypeError, ValueError):
        raise ValueError(
            "ellipse_array must be [row_c, col_c, semi_axis_0, semi_axis_1, rotation] (shape "
            "(5,) or (M, 5)), or per probe position an object array (navigation shaped) of "
            "such arrays or None; got a ragged sequence: use an object array for ragged "
            "per-position ellipses"
        ) from None


def _ragged_markers(ellipse_array, points, inlier, signal, style):
    import hyperspy.api as hs

    arr = np.asarray(ellipse_array) if not isinstance(ellipse_array, np.ndarray) else ellipse_array
    if arr.dtype != object:
        arr = np.asarray(arr, dtype=float)
        nav = arr.shape[:-1] if arr.shape[-1] == 5 else None
        if nav is None:
            raise ValueError(
                f"per-position ellipse_array must end in 5 parameters, got shape {arr.shape}"
            )
        cells = np.empty(nav, dtype=object)
        for i in np.ndindex(nav):
            cells[i] = arr[i]
        arr = cells
    offsets, widths, heights, angles = (np.empty(arr.shape, dtype=object) for _ in range(4))
    for i in np.ndindex(arr.shape):
        if arr[i] is None:
            e = np.zeros((0, 5))
        else:
            e = _check_params(arr[i], f"ellipse_array[{i}]")
        if len(e):
            offsets[i], widths[i], heights[i], angles[i] = _ellipse_shapes(e, signal)
        else:
            offsets[i], widths[i], heights[i], angles[i] = (
                np.zeros((0, 2)),
                np.zeros(0),
                np.zeros(0),
                np.zeros(0),
            )
    # HyperSpy indexes variable markers by axes_manager.navigation_shape, which lists the
    # navigation axes in the reverse of the data's order
    el = hs.plot.markers.Ellipses(
        offsets=offsets.T, widths=widths.T, heights=heights.T, angles=angles.T, **style
    )
    if points is None:
        if inlier is not None:
            raise ValueError("inlier needs points: give the points the flags belong to")
        return el
    pts = np.asarray(points) if not isinstance(points, np.ndarray) else points
    if pts.dtype != object or pts.shape != arr.shape:
        raise ValueError(
            "with per-position ellipses, points must be an object array of the same "
            f"navigation shape {arr.shape} holding (N, 2) arrays, got "
            f"{pts.dtype} array of shape {pts.shape}"
        )
    if inlier is None:
        xy = np.empty(arr.shape, dtype=object)
        for i in np.ndindex(arr.shape):
            xy[i] = _point_offsets(pts[i], signal, f"points[{i}]")
        return el, hs.plot.markers.Points(offsets=xy.T, color="lime", sizes=4)
    flags = inlier
    if not isinstance(flags, np.ndarray) or flags.dtype != object or flags.shape != arr.shape:
        raise ValueError(
            f"with per-position ellipses, inlier must be an object array of shape {arr.shape}"
        )
    xy_in, xy_out = np.empty(arr.shape, dtype=object), np.empty(arr.shape, dtype=object)
    for i in np.ndindex(arr.shape):
        xy = _point_offsets(pts[i], signal, f"points[{i}]")
        f = _check_flags(flags[i], len(xy))
        xy_in[i], xy_out[i] = xy[f], xy[~f]
    return (
        el,
        hs.plot.markers.Points(offsets=xy_in.T, color="lime", sizes=4),
        hs.plot.markers.Points(offsets=xy_out.T, color="red", sizes=4),
    )


def _check_flags(inlier, n):
    flags = np.asarray(inlier)
    if flags.shape != (n,) or flags.dtype != bool:
        raise ValueError(
            f"inlier must be a bool array of shape ({n},) (one flag per point), got "
            f"dtype {flags.dtype} and shape {flags.shape}"
        )
    return flags


def ellipse_to_markers(ellipse_array, points=None, inlier=None, signal=None):
    """HyperSpy markers drawing fitted ellipses (and the fitted points) on a pattern.

    Parameters
    ----------
    ellipse_array : (5,) or (M, 5) array_like, or per probe position
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]`` in pixels and radians, as
        returned by :func:`determine_ellipse` with ``return_params=True``. Per probe
        position: a numeric array of shape ``(*nav, 5)``, or an object array of shape
        ``nav`` holding ``(5,)`` / ``(M, 5)`` arrays or None (no ellipse there), ``nav``
        in the data's order (``s.data.shape[:-2]``); the markers are then HyperSpy's
        variable (per-position) markers, their arrays transposed to HyperSpy's
        ``axes_manager.navigation_shape`` order.
    points : (N, 2) array_like, optional
        ``(row, col)`` pixel positions to draw as points (e.g. ``pos``); per position an
        object array of navigation shape holding such arrays.
    inlier : (N,) array_like of bool, optional
        Inlier flags of ``points`` (RANSAC); inliers are drawn green, outliers red. Per
        position an object array like ``points``.
    signal : HyperSpy signal, optional
        When given, the markers are placed in this signal's calibrated coordinates,
        ``x = offset_x + col * scale_x`` and ``y = offset_y + row * scale_y`` (the ellipse
        shape is transformed exactly, also for unequal or negative scales). Otherwise they
        are in pixels, which is right for a signal with uncalibrated axes (scale 1, offset
        0) only. Pass the signal the markers will be added to as soon as its axes carry a
        centre (``s.calibration.center``) or a scale.

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
    >>> import hyperspy.api as hs
    >>> import numpy as np
    >>> from femlib.ellipse import ellipse_points, ellipse_to_markers
    >>> params = np.array([50.0, 70.0, 31.0, 24.0, 0.5])
    >>> pos = ellipse_points(params, num=12)
    >>> summed = hs.signals.Signal2D(np.zeros((128, 128)))
    >>> el, in_points = ellipse_to_markers(ellipse_array=params, points=pos)
    >>> el.kwargs["offsets"], el.kwargs["widths"], el.kwargs["heights"]
    (array([[70., 50.]]), array([62.]), array([48.]))
    >>> summed.add_marker([el, in_points], permanent=True)
    """
    style = {"facecolor": "none", "edgecolor": "cyan", "linewidth": 1.5}
    if _is_ragged(ellipse_array):
        return _ragged_markers(ellipse_array, points, inlier, signal, style)

    import hyperspy.api as hs

    e = _check_params(ellipse_array)
    offsets, widths, heights, angles = _ellipse_shapes(e, signal)
    el = hs.plot.markers.Ellipses(
        offsets=offsets, widths=widths, heights=heights, angles=angles, **style
    )
    if points is None:
        if inlier is not None:
            raise ValueError("inlier needs points: give the points the flags belong to")
        return el
    xy = _point_offsets(points, signal)
    if inlier is None:
        return el, hs.plot.markers.Points(offsets=xy, color="lime", sizes=4)
    flags = _check_flags(inlier, len(xy))
    in_points = hs.plot.markers.Points(offsets=xy[flags], color="lime", sizes=4)
    out_points = hs.plot.markers.Points(offsets=xy[~flags], color="red", sizes=4)
    return el, in_points, out_points
