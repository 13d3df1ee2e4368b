"""Robust ellipse fit: femlib's ellipse model driven by :func:`skimage.measure.ransac`."""

import math
import warnings

import numpy as np
from skimage.measure import ransac

from femlib.ellipse._fit import (
    _MIN_POINTS,
    EllipseFitError,
    _check_points,
    _direct_fit,
    ellipse_residuals,
)

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


class EllipseRansacModel:
    """Ellipse model for :func:`skimage.measure.ransac`: direct fit, Sampson residuals.

    ``from_estimate(pos)`` fits :func:`~femlib.ellipse.fit_ellipse` (the direct
    least-squares fit of Fitzgibbon et al. in Halir & Flusser's stable form, at least 5
    points) and ``residuals(pos)`` returns the absolute first-order (Sampson) distances of
    :func:`~femlib.ellipse.ellipse_residuals`, in pixels. A model whose fit failed (collinear
    or coincident points, a conic that is not an ellipse) is falsy, which tells ``ransac`` to
    skip it.

    Parameters
    ----------
    params : (5,) array_like or None
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``, or None for a failed fit.

    Attributes
    ----------
    params : (5,) ndarray or None
        The ellipse.

    Examples
    --------
    >>> from skimage.measure import ransac
    >>> from femlib.ellipse import EllipseRansacModel, ellipse_points
    >>> pts = ellipse_points([64.0, 60.0, 31.0, 30.0, 0.5], num=40)
    >>> pts[::8] += 12.0  # 5 outliers
    >>> model, inlier = ransac(pts, EllipseRansacModel, min_samples=5, residual_threshold=1.0,
    ...                        rng=0)
    >>> model.params.round(6), int(inlier.sum())
    (array([64. , 60. , 31. , 30. ,  0.5]), 35)
    """

    def __init__(self, params=None):
        self.params = None if params is None else np.asarray(params, dtype=float)

    def __bool__(self):
        return self.params is not None

    @classmethod
    def from_estimate(cls, pos):
        """Fit the model to ``(N, 2)`` ``(row, col)`` points; a falsy model if that fails."""
        try:
            return cls(_direct_fit(np.asarray(pos, dtype=float)))
        except EllipseFitError:
            return cls(None)

    def estimate(self, pos):
        """Fit in place and return whether it worked (scikit-image < 0.26 calls this)."""
        self.params = type(self).from_estimate(pos).params
        return self.params is not None

    def residuals(self, pos):
        """Absolute Sampson distances (pixels) of ``(N, 2)`` points from the ellipse."""
        return np.abs(ellipse_residuals(pos, self.params))


def _default_threshold(p):
    """Inlier distance scaled to the width of the band of points along the ring.

    Twice the robust standard deviation of the points' distances from their mean point,
    at least one pixel. For a Gaussian band that keeps about 95 % of it; for a flat band of
    width W (std W / sqrt(12)) it keeps all of it. Points far from the ring do not inflate
    it (median and MAD).
    """
    d = np.hypot(*(p - p.mean(axis=0)).T)
    return max(1.0, 2 * _MAD_TO_SIGMA * float(np.median(np.abs(d - np.median(d)))))


def fit_ellipse_ransac(
    pos,
    residual_threshold=None,
    max_trials=1000,
    rng=0,
    stop_probability=0.999,
    guess_starting_params=True,
    center_tolerance=0.5,
    axis_bounds=(0.5, 2.0),
    max_axis_ratio=None,
    min_inliers=None,
    min_samples=_MIN_POINTS,
    center_guess=None,
    radius_guess=None,
):
    """Robust ellipse fit by random sample consensus (RANSAC).

    :func:`skimage.measure.ransac` draws ``min_samples`` points at a time, fits them with
    :class:`EllipseRansacModel` and counts the inliers (Sampson distance below
    ``residual_threshold``); the model with most inliers wins (ties: smallest sum of squared
    residuals), and the number of trials adapts to the inlier fraction found so far
    (``stop_probability``). The winner is refitted to its inliers, and the refit repeated
    with the inliers of the new model until they no longer change (at most 3 times). The
    limits (centre and semi-axes around the guess, axis ratio) are checked on every sample
    model and again on every refit: a refit that breaks them is not returned.

    Parameters
    ----------
    pos : (N, 2) array_like
        ``(row, col)`` pixel coordinates, ``N >= min_samples``.
    residual_threshold : float, optional
        Largest distance from the ellipse (pixels) of an inlier. Default: twice the robust
        standard deviation of the points' distances from their mean point, at least 1 px:
        the half-width of the band of points along the ring. Much smaller cuts the band
        unevenly (biasing the fit); much larger lets outliers near the ring count.
    max_trials : int
        Largest number of random samples.
    rng : int, numpy.random.Generator or None
        Seed or generator of the random samples; the default seed makes the result the same
        at every call. None draws fresh entropy.
    stop_probability : float in (0, 1]
        Stop once an all-inlier sample has been drawn with this probability.
    guess_starting_params : bool
        Bound the candidate models around a guessed ellipse: centre ``center_guess`` and
        radius ``radius_guess`` (by default the mean point and the median distance of the
        points from it; the mean, as points spread round a ring average to its centre).
    center_tolerance : float
        Largest distance of a candidate centre from the guessed one, as a fraction of the
        guessed radius.
    axis_bounds : (float, float)
        Smallest minor and largest major semi-axis of a candidate, as fractions of the
        guessed radius.
    max_axis_ratio : float, optional
        Largest ``semi_axis_0 / semi_axis_1`` of a candidate (checked with or without the
        guess).
    min_inliers : int, optional
        Fewest inliers for a model to count as found (default: ``min_samples`` and 10 % of
        the points).
    min_samples : int
        Points per random sample (>= 5, the minimum of the direct fit).
    center_guess : (2,) array_like, optional
        ``(row, col)`` of the guessed centre, instead of the mean point.
    radius_guess : float, optional
        Guessed radius in pixels, instead of the median distance from the guessed centre.

    Returns
    -------
    params : (5,) ndarray
        ``[row_c, col_c, semi_axis_0, semi_axis_1, rotation]``.
    inlier : (N,) ndarray of bool
        Inlier flag of each point, for the returned model.

    Raises
    ------
    ValueError
        If ``pos`` or an option is invalid.
    EllipseFitError
        If no model with ``min_inliers`` inliers inside the limits was found, or its refit
        breaks the limits.

    References
    ----------
    .. [3] Fischler & Bolles, Commun. ACM 24 (1981) 381.

    Examples
    --------
    >>> from femlib.ellipse import ellipse_points, fit_ellipse_ransac
    >>> pts = ellipse_points([64.0, 60.0, 31.0, 30.0, 0.5], num=70)
    >>> pts[::7] = 0.5 * pts[::7] + [32.0, 30.0]  # 10 outliers, halfway to the centre
    >>> params, inlier = fit_ellipse_ransac(pts, rng=1)
    >>> params.round(6), int(inlier.sum())
    (array([64. , 60. , 31. , 30. ,  0.5]), 60)
    """
    p = _check_points(pos)
    n = len(p)
    if isinstance(min_samples, bool) or int(min_samples) != min_samples or min_samples < 5:
        raise ValueError(f"min_samples must be an integer >= 5, got {min_samples!r}")
    min_samples = int(min_samples)
    if min_samples > n:
        raise ValueError(f"min_samples={min_samples} but pos holds only {n} points")
    if residual_threshold is None:
        residual_threshold = _default_threshold(p)
    elif not np.isfinite(residual_threshold) or residual_threshold <= 0:
        raise ValueError(
            f"residual_threshold must be a positive number of pixels, got {residual_threshold!r}"
        )
    if isinstance(max_trials, bool) or int(max_trials) != max_trials or max_trials < 1:
        raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}")
    if not 0 < stop_probability <= 1:
        raise ValueError(f"stop_probability must be in (0, 1], got {stop_probability!r}")
    lo_ax, hi_ax = (float(v) for v in axis_bounds)
    if not 0 <= lo_ax < hi_ax:
        raise ValueError(
            f"axis_bounds must be (low, high) fractions with 0 <= low < high, got {axis_bounds!r}"
        )
    if max_axis_ratio is not None and not max_axis_ratio >= 1:
        raise ValueError(f"max_axis_ratio must be a number >= 1, got {max_axis_ratio!r}")
    if min_inliers is None:
        min_inliers = max(min_samples, math.ceil(0.1 * n))
    rng = np.random.default_rng(rng)

    checks = []
    if guess_starting_params:
        c0 = p.mean(axis=0) if center_guess is None else np.asarray(center_guess, float)
        if c0.shape != (2,) or not np.all(np.isfinite(c0)):
            raise ValueError(f"center_guess must be a finite (row, col) pair, got {center_guess!r}")
        r0 = float(np.median(np.hypot(*(p - c0).T))) if radius_guess is None else radius_guess
        if not np.isfinite(r0) or r0 <= 0:
            raise ValueError(f"radius_guess must be a positive number, got {radius_guess!r}")
        checks.append(
            lambda e: (
                math.hypot(e[0] - c0[0], e[1] - c0[1]) <= center_tolerance * r0
                and e[2] <= hi_ax * r0
                and e[3] >= lo_ax * r0
            )
        )
    if max_axis_ratio is not None:
        checks.append(lambda e: e[2] <= max_axis_ratio * e[3])

    def valid(params):
        return params is not None and all(check(params) for check in checks)

    trials = [0]

    def count_trial(sample):
        trials[0] += 1
        return True

    with warnings.catch_warnings():
        # "no inliers" / "model not valid" are reported below as EllipseFitError
        warnings.simplefilter("ignore", UserWarning)
        model, inlier = ransac(
            p,
            EllipseRansacModel,
            min_samples=min_samples,
            residual_threshold=float(residual_threshold),
            is_data_valid=count_trial,
            is_model_valid=lambda m, sample: valid(m.params),
            max_trials=int(max_trials),
            stop_probability=stop_probability,
            rng=rng,
        )
    best = 0 if inlier is None else int(np.count_nonzero(inlier))
    bounded = ", inside the limits" if checks else ""
    if best < min_inliers:
        raise EllipseFitError(
            f"RANSAC found no ellipse with at least {min_inliers} inliers in {trials[0]} trials "
            f"(best: {best} of {n} points within residual_threshold={residual_threshold:g} px"
            f"{bounded}); try a larger residual_threshold or max_trials"
            + (", or guess_starting_params=False" if guess_starting_params else "")
        )
    # skimage refits the winner to its inliers without re-checking the limits: re-check
    # that refit and each further one, and return the last that respects them
    params = model.params if model else None
    chosen = params if valid(params) else None
    for _ in range(3):
        if params is None:
            break
        new_inlier = np.abs(ellipse_residuals(p, params)) < residual_threshold
        if new_inlier.sum() < _MIN_POINTS or np.array_equal(new_inlier, inlier):
            break
        inlier = new_inlier
        params = EllipseRansacModel.from_estimate(p[inlier]).params
        if valid(params):
            chosen = params
    if chosen is None:
        raise EllipseFitError(
            f"RANSAC's best model refitted to its {best} inliers breaks the limits "
            "(center_tolerance, axis_bounds, max_axis_ratio); try a larger max_trials, a "
            "smaller residual_threshold or wider limits"
        )
    final = np.abs(ellipse_residuals(p, chosen)) < residual_threshold
    return chosen, final
