r"""FEM variance estimators from moments accumulated in one pass over the frames.

Notation (Daulton et al. 2010): ``D_n(p)`` is the intensity of pixel ``p`` in frame ``n``
(detector units), ``w_kp`` the pixel-splitting weights of ring ``k`` with ``A_k = sum_p
w_kp``, ``S_n(k) = sum_p w_kp D_n(p)`` the ring sum (``S / A`` the ring mean), ``<.>_n`` the
mean over the ``N`` frames of a group, ``m_p = <D(p)>_n`` the mean pattern. The noise model
enters through ``k0 = Var(D_p) / <D_p>`` and the shot weights ``s_kp`` of the shot ring sum
``Q_n(k) = sum_p s_kp D_n(p)``; ``gain=G`` is the counting model, ``k0 = G`` and ``s = G
w^2`` (``D = G N``, ``N`` Poisson).

==========  ========================================  ============================================
method      estimator                                 corrected (gain or noise model given)
==========  ========================================  ============================================
``Omega``   ``<S^2>_n / <S>_n^2 - 1``                 less ``(1 - 1/N) <Q>_n / <S>_n^2``
``r``       ``< <D^2>_k / <D>_k^2 - 1 >_n``           ``< A (J_n - k0 S_n) / (S_n^2 - Q_n) >_n - 1``
``re``      ``<D^2>_{n,k} / <D>_{n,k}^2 - 1``         ``A (<J> - k0 <S>) / (<S>^2 - <Q> / N) - 1``
``VImage``  ring mean of ``var_n D(p) / m_p^2``       less ring mean of ``(1 - 1/N) k0 / m_p``
==========  ========================================  ============================================

``<.>_k`` is the weighted mean in ring ``k``, ``J_n = sum_p w_kp D_n(p)^2``; ``VImage``'s
ring mean runs over the pixels with ``m_p > 0``. For Poisson counts (counting model) the
corrections are exact for finite ``N``: ``Omega`` and ``VImage`` have expectation 0 on
structure-free data for any weights (conditioning on each pixel's total over the frames
makes the frames multinomial). ``r`` and ``re`` are ratios of unbiased products:
``E[J - G S] = sum_p w mu_p^2`` and ``E[S^2 - Q] = (sum_p w mu_p)^2`` for any weights and any
frame intensities ``mu``; for hard bins the ratio is exact too, uniform ring or not (given
the frame's ring sum, resp. the ring's total: multinomial cells); with split pixels the
remaining ratio bias is second order in ``1 / S``. A frame (for ``re``: a group) with less
than two electrons' worth of signal in a ring (``S^2 < 2 Q``) uses the first-order form
``A J / S^2 - 1 - k0 A / S + Q / S^2``, exact for hard uniform rings. For a general noise
kernel ``k0`` and ``Q`` make every numerator and denominator unbiased when the mean pattern
is locally flat; with a PSF's ``curvature`` the per-pixel variance of ``r``, ``re`` and
``VImage`` is ``k0 (m + c lap m)``, second order; ``VImage`` then leaves out the pixels
next to a masked pixel (``estimate``'s ``mask``), where a hidden step of the electrons'
mean breaks the expansion. The derivations are in the user guide (estimators and noise
pages).

Static ring non-uniformity (reported with ``r`` and ``re``, optionally subtracted from them):

    ``NU_k = A (sum_p w m_p^2 - k0 S / N) / (S^2 - <Q>_n / N) - 1``, ``S = sum_p w m_p``

the within-ring non-uniformity of the mean pattern less its own shot-noise content. ``re -
NU`` then carries ``A sum_p w (var_n D(p) - (1 - 1/N) k0 m_p) / (S^2 - <Q> / N)``, exact for
any weights and any static mean pattern (Poisson, counting model).

One pass
--------
The moments come from :func:`femlib.moments.accumulate_moments`, one streaming read of the
frames: per frame the ring sums ``I = W D``, ``J = W D^2`` (``r``, ``re``) and ``Q`` with the
shot weights of the noise model, and ``U = J A / I^2``, ``V = A / I``, ``Y = Q / I^2`` and
``r``'s products ``P = A J / (I^2 - Q)``, ``H = A I / (I^2 - Q)``; per
*state* (group x jackknife block) the frame count, the means of those, the centred second
moment of ``I``, the per-pixel means (``VImage`` and the ring non-uniformity of ``r`` and
``re``) and, for ``VImage``, the per-pixel centred second moments
(:class:`femlib.moments.Moments`, merged exactly with Chan's formulas).

Standard error
--------------
Delete-a-group jackknife over probe positions: the ``i``-th frame of each group belongs to
block ``i mod B`` (``B = 20`` by default, independent of chunking). Each estimator is
recomputed with one block left out, from the same moments, and
``se^2 = (B-1)/B sum_b (V_(b) - mean_b V_(b))^2``. It covers every method, the shot-noise
term and the thickness-combined result alike. It is never below the first-order error of
the shot noise alone (with few counts the blocks scatter too little), and where ``V``
rests on fewer than :data:`MIN_PAIRS` expected coincident electron pairs it is flagged as
not trustworthy (``standard_error_trusted``; :func:`warn_undefined` warns).

References
----------
Daulton, Bondi & Kelton, Ultramicroscopy 110 (2010) 1279.
Hwang & Voyles, Microsc. Microanal. 17 (2011) 67. Li et al., Microsc. Microanal. 20 (2014)
1605.
"""

import numbers
import warnings

import numpy as np

from femlib.moments import _H, _I, _J, _P, _Q, _U, _merge_arrays

__all__ = [
    "METHODS",
    "MIN_PAIRS",
    "estimate",
    "check_method",
    "check_gain",
    "warn_undefined",
]

METHODS = ("Omega", "r", "re", "VImage")


def check_method(method):
    """Validate ``method``: one of :data:`METHODS`, ``"all"`` or a list of them.

    Parameters
    ----------
    method : str or sequence of str

    Returns
    -------
    tuple of str

    Raises
    ------
    ValueError
        For an unknown method name.

    Examples
    --------
    >>> check_method("all")
    ('Omega', 'r', 're', 'VImage')
    >>> check_method(["Omega", "VImage"])
    ('Omega', 'VImage')
    """
    names = METHODS if method == "all" else (method,) if isinstance(method, str) else method
    try:
        names = tuple(names)
    except TypeError:
        names = (method,)
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ValueError(
            f"method must be one of {', '.join(METHODS)} or 'all' (or a list of them), "
            f"got {method!r}"
        )
    return names


def check_gain(gain, name="gain"):
    """Validate ``gain``: None (no shot-noise correction) or a positive finite number.

    Parameters
    ----------
    gain : int, float, NumPy real scalar or None
        Detector units per electron. Booleans and strings (even ``"4.2"``) are refused:
        ``gain=True`` would silently mean 1.
    name : str
        The argument's name in the messages (``"k0"`` for :func:`estimate`'s ``k0``).

    Returns
    -------
    float or None

    Raises
    ------
    ValueError
        For ``gain <= 0``, NaN or infinity.
    TypeError
        For a boolean, a string or any other non-numeric gain.

    Examples
    --------
    >>> check_gain(4)
    4.0
    >>> check_gain("4.2")
    Traceback (most recent call last):
    ...
    TypeError: gain must be a positive number or None, got '4.2'
    """
    if gain is None:
        return None
    value = gain[()] if isinstance(gain, np.ndarray) and gain.ndim == 0 else gain
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number or None, got {gain!r}")
    g = float(value)
    if not np.isfinite(g) or g <= 0:
        raise ValueError(
            f"{name} must be a positive finite number (detector units per electron) or None, "
            f"got {gain!r}"
        )
    return g


def _reduce(count, mean, m2, pm, pq, axis):
    """Merge all states along ``axis`` (sequential Chan merges)."""
    take = lambda a, i: None if a is None else np.take(a, i, axis=axis)  # noqa: E731
    n, m, q = take(count, 0), take(mean, 0), take(m2, 0)
    p, pp = take(pm, 0), take(pq, 0)
    for i in range(1, count.shape[axis]):
        n2, m, q = _merge_arrays(n, m, q, take(count, i), take(mean, i), take(m2, i), True)
        if p is not None:
            _, p, pp = _merge_arrays(n, p, pp, take(count, i), take(pm, i), take(pq, i))
        n = n2
    return n, m, q, p, pp


def _leave_one_out(count, mean, m2, pm, pq):
    """Moments with each block (axis 1) left out in turn, via prefix/suffix merges."""
    nb = count.shape[1]
    zero = lambda a: None if a is None else np.zeros_like(np.take(a, 0, axis=1))  # noqa: E731
    take = lambda a, i: None if a is None else a[:, i]  # noqa: E731

    def combine(x, y):
        n, m, q = _merge_arrays(x[0], x[1], x[2], y[0], y[1], y[2], ring=True)
        p = pp = None
        if x[3] is not None:
            _, p, pp = _merge_arrays(x[0], x[3], x[4], y[0], y[3], y[4])
        return (n, m, q, p, pp)

    empty = (zero(count), zero(mean), zero(m2), zero(pm), zero(pq))
    blocks = [(count[:, i], mean[:, i], m2[:, i], take(pm, i), take(pq, i)) for i in range(nb)]
    prefix = [empty]
    for blk in blocks:
        prefix.append(combine(prefix[-1], blk))
    suffix = [empty]
    for blk in reversed(blocks):
        suffix.append(combine(blk, suffix[-1]))
    suffix = suffix[::-1]
    out = [combine(prefix[i], suffix[i + 1]) for i in range(nb)]
    stack = lambda j: None if out[0][j] is None else np.stack([o[j] for o in out], 1)  # noqa: E731
    return tuple(stack(j) for j in range(5))


def _ring(wc, x):
    """Weighted ring sums ``sum_p w_kp x_p`` of per-pixel arrays ``(..., P')`` -> ``(..., K)``."""
    lead = x.shape[:-1]
    return (wc @ x.reshape(-1, x.shape[-1]).T).T.reshape(lead + (-1,))


def _pairs(mi, q, nn):
    """Unbiased square of the ring sum, ``<S>^2 - q / N`` (``q``: the shot variance of one
    frame's ring sum, detector units), and where it is used: at least two electrons' worth of
    signal, ``<S>^2 >= 2 q / N`` (for hard bins: two electrons in the ring)."""
    den = mi * mi - q / nn
    return den, (mi > 0) & (den >= q / nn)


def _parts(n, mean, m2, pm, pq, method, k0, qs, area, wc, lap=None):
    """Uncorrected estimator and its finite-N shot-noise term, each ``(..., K)``.

    ``k0`` is the noise kernel at zero lag and ``qs`` the factor that turns the stored shot
    ring sums ``Q`` into detector units (``gain`` for the counting model, whose ``Q`` holds
    ``sum w^2 D``; 1 for a noise model's shot weights; 0: no term). ``lap``: None, or the
    second-order term of a PSF (:class:`_Curvature`): the per-pixel variance is then
    ``k0 (m_p + c lap m_p)``, not ``k0 m_p``. The term is the uncorrected value less the
    corrected one. The derivations are in the estimators page of the user guide.
    """
    nn = n[..., None]
    mi = mean[..., _I, :]
    q = qs * mean[..., _Q, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "Omega":
            # Exact for Poisson given the per-pixel totals (multinomial frames).
            return m2 / nn / mi**2, (1.0 - 1.0 / nn) * q / mi**2
        kb = _k0_bins(k0, pm, wc, lap)
        if method == "r":
            # Per-frame unbiased products (moments.py): exact for hard bins given the
            # frame's ring sum, uniform ring or not; second order with split pixels.
            raw = mean[..., _U, :] - 1.0
            if not (qs or np.any(k0)):
                return raw, np.zeros_like(raw)
            return raw, mean[..., _U, :] - mean[..., _P, :] + kb * mean[..., _H, :]
        if method == "re":
            # The same products pooled over the frames: exact for hard bins given the
            # ring's total, uniform or not.
            raw = mean[..., _J, :] * area / mi**2 - 1.0
            den, good = _pairs(mi, q, nn)
            first = kb * area / mi - q / (nn * mi**2)
            pooled = raw + 1.0 - area * (mean[..., _J, :] - kb * mi) / np.where(good, den, 1.0)
            return raw, np.where(good, pooled, first)
        # VImage: ring mean over the pixels with a positive mean; exact given each
        # pixel's total over the frames. With a PSF's term, not next to masked pixels.
        var = pm if lap is None else pm + lap(pm)  # the pixel's noise variance / k0

        def ring_means(ok):
            raw = np.where(ok, pq / nn / pm**2, 0.0)
            term = np.where(ok, (1.0 - 1.0 / nn) * k0 * var / pm**2, 0.0)
            den = _ring(wc, ok.astype(float))
            return _ring(wc, raw) / den, _ring(wc, term) / den

        return _vimage_select(pm, wc, lap, ring_means)


def _vimage_select(pm, wc, lap, f):
    """``f(ok)`` over ``VImage``'s pixels: those with ``m_p > 0`` and, with a PSF's term
    (:class:`_Curvature` with a mask), not next to a masked pixel, in every bin that keeps
    such a pixel (else all of the bin's pixels). ``f`` returns a tuple of ``(..., K)``."""
    ok = pm > 0
    if lap is None or lap.keep is None:
        return f(ok)
    guarded = ok & lap.keep
    use = _ring(wc, guarded.astype(float)) > 0
    return tuple(np.where(use, a, b) for a, b in zip(f(guarded), f(ok), strict=True))


def _k0_bins(k0, pm, wc, lap):
    """``k0``, or per bin ``k0 sum_p w (m + c lap m) / sum_p w m`` with a PSF's term."""
    if lap is None or pm is None:
        return k0
    return k0 * (1.0 + _ring(wc, lap(pm)) / _ring(wc, pm))


class _Curvature:
    """``c_y d^2m/dy^2 + c_x d^2m/dx^2`` of per-touched-pixel means ``m`` (``(..., P')``).

    Second differences over the touched pixels only (masked pixels and those outside the
    radial range have no mean): centred where both neighbours are touched, else the
    one-sided stencil of the next pixel inward, else 0.

    ``keep`` (bool over the touched pixels, or None without a ``mask``): False for the
    pixels with a masked pixel among their 8 neighbours, which ``VImage`` leaves out (the
    expansion fails there: the mask hides a step of the electrons' mean, user guide).
    """

    def __init__(self, coeffs, touched, shape, mask=None):
        self.coeffs = tuple(float(c) for c in coeffs)
        ny, nx = shape
        self.keep = None
        if mask is not None and mask.any():
            from scipy.ndimage import binary_dilation

            near = binary_dilation(mask, structure=np.ones((3, 3), bool))
            self.keep = ~near.ravel()[touched]
        pos = np.full(ny * nx, -1, np.int64)
        pos[touched] = np.arange(touched.size)
        r, c = np.divmod(touched.astype(np.int64), nx)
        self.stencils = []
        for dy, dx, size in ((1, 0, ny), (0, 1, nx)):
            along = r if dy else c

            def at(k, along=along, dy=dy, dx=dx, size=size):
                inside = (along + k >= 0) & (along + k < size)
                flat = (r + k * dy) * nx + (c + k * dx)
                return np.where(inside, pos[np.clip(flat, 0, ny * nx - 1)], -1)

            m2, m1, p1, p2 = at(-2), at(-1), at(1), at(2)
            here = np.arange(touched.size)
            centred = (m1 >= 0) & (p1 >= 0)
            forward = ~centred & (p1 >= 0) & (p2 >= 0)
            backward = ~centred & ~forward & (m1 >= 0) & (m2 >= 0)
            a = np.select([centred, forward, backward], [m1, here, m2], here)
            b = np.select([centred, forward, backward], [here, p1, m1], here)
            cc = np.select([centred, forward, backward], [p1, p2, here], here)
            self.stencils.append((a, b, cc))

    def __call__(self, pm):
        out = 0.0
        for coeff, (a, b, c) in zip(self.coeffs, self.stencils, strict=True):
            out = out + coeff * (pm[..., a] - 2.0 * pm[..., b] + pm[..., c])
        return out


def _nonuniformity(n, mean, pm, k0, qs, area, wc, lap=None):
    """Static ring non-uniformity of the mean pattern, less its own shot-noise content.

    ``NU = A (sum_p w m_p^2 - k0 S / N) / (S^2 - Q / N) - 1`` of the per-pixel means ``m``
    (``S = sum_p w m_p``, ``Q`` the mean shot ring sum): unbiased numerator and denominator
    (first-order form ``A sum w m^2 / S^2 - 1 - (k0 A / S - Q / S^2) / N`` below two
    electrons' worth of signal); ``(..., K)``.
    """
    nn = n[..., None]
    s1 = _ring(wc, pm)
    s2 = _ring(wc, pm * pm)
    q = qs * mean[..., _Q, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        k0 = _k0_bins(k0, pm, wc, lap)
        raw = area * s2 / s1**2 - 1.0
        first = raw - (k0 * area / s1 - q / s1**2) / nn
        # The same branch as re's (from the ring sums): re - NU then cancels exactly.
        den, good = _pairs(mean[..., _I, :], q, nn)
        pooled = area * (s2 - k0 * s1 / nn) / np.where(good, s1 * s1 - q / nn, 1.0) - 1.0
    return np.where(good, pooled, first)


def _estimators(n, mean, m2, pm, pq, method, k0, qs, area, wc, lap=None, subtract=False):
    """One corrected estimator on merged moments with leading dims ``(...)``: ``(..., K)``."""
    raw, term = _parts(n, mean, m2, pm, pq, method, k0, qs, area, wc, lap)
    v = raw - term
    if subtract and method in ("r", "re"):
        v = v - _nonuniformity(n, mean, pm, k0, qs, area, wc, lap)
    return v


#: Fewest expected same-pixel (``Omega``: same-ring) pairs of electrons of one frame,
#: summed over the frames, below which a standard error is flagged as not trustworthy
#: (``standard_error_trusted``): ``V`` then rests on a handful of coincidences and its
#: distribution is far from normal. Measured (``benchmarks/estimator_accuracy.py lowdose``).
MIN_PAIRS = 10.0


def _shot_floor(n, mean, pm, method, k0, qs, area, wc, w2c, ring_geometry=None, lap=None):
    """The standard error that the shot noise alone gives ``V``, and the expected number of
    electron pairs it rests on, each ``(..., K)``.

    To first order in the relative shot noise, a corrected estimator on ``N`` independent
    values of ``n_e`` electrons each has variance ``2 / ((N - 1) n_e^2)``: the sample
    variance's own kurtosis term (``1 / (N n_e)`` relative) cancels against the shot-noise
    term's dependence on the same mean. ``Omega``: the ring sums (``n_e = <S>^2 / Q``);
    ``VImage``: every pixel (``m_p / k0`` electrons), ring-averaged with the weights; ``r``
    and ``re``: the ``P = A^2 / sum w^2`` effective pixels of a ring (``<S> / (k0 A)``
    electrons each), over ``N`` frames. The pairs: ``N n_e^2 / 2`` (``Omega``) and
    ``N sum_p w_p (m_p / k0)^2 / 2`` (the others). Zero floor and infinite pairs without a
    correction (the electrons are then unknown).
    """
    nn = n[..., None]
    mi = mean[..., _I, :]
    q = qs * mean[..., _Q, :]
    if not (qs or np.any(k0)):
        inf = np.full(mi.shape, np.inf)
        return np.zeros(mi.shape), inf, inf
    dof = np.maximum(nn - 1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ne = mi * mi / q  # electrons per ring per frame (the ring sum's Poisson equivalent)
        if method == "Omega":
            return np.sqrt(2.0 / dof) / ne, nn * ne * ne / 2.0, ne
        if pm is None:  # per-position centres: no per-pixel table (descan, r and re only)
            floor, pairs = _ring_shot_floor(mi, k0, dof, nn, ring_geometry)
            return floor, pairs, ne
        lam = pm / k0  # electrons per pixel per frame
        pairs = nn * _ring(wc, lam * lam) / 2.0
        if method == "VImage":

            def floor(ok):
                var_p = np.where(ok, 2.0 / dof / lam**2, 0.0)
                return (np.sqrt(_ring(w2c, var_p)) / _ring(wc, ok.astype(float)),)

            return _vimage_select(pm, wc, lap, floor)[0], pairs, ne
        lam_k = mi / (k0 * area)
        p_eff = area * area / np.asarray(w2c.sum(axis=1)).ravel()
        return np.sqrt(2.0 / (p_eff * dof)) / lam_k, pairs, ne


def _ring_shot_floor(mi, k0, dof, nn, ring_geometry):
    """``r``/``re`` shot floor from ring means alone (per-position centres keep no per-pixel
    table; ``mi`` are then ring means per pixel): the ring's ``P = A^2 / sum w^2`` effective
    pixels of ``mi / k0`` electrons each, ``A`` and ``sum w^2`` those of the reference
    geometry ``ring_geometry = (A, sum w^2)``."""
    if ring_geometry is None:
        return np.zeros(mi.shape), np.full(mi.shape, np.inf)
    area, sq = ring_geometry
    lam_k = mi / k0
    p_eff = area * area / sq
    return np.sqrt(2.0 / (p_eff * dof)) / lam_k, nn * area * lam_k * lam_k / 2.0


def estimate(moments, weights, methods=("Omega",), gain=None, k0=None,
             subtract_nonuniformity=False, curvature=None, mask=None):
    """Compute FEM variance estimators, their jackknife standard errors, per group and combined.

    Every corrected estimator has expectation 0 on structure-free Poisson data where a
    closed form exists (``N`` = frames of the group): ``Omega`` and ``VImage`` for any
    weights, ``r`` and ``re`` for hard bins (uniform ring or not; on structured data they
    then estimate the noise-free value without bias), ``re`` with
    ``subtract_nonuniformity`` for any weights and any static mean pattern; second order in
    the relative shot noise otherwise. See the module docstring and the estimators page of
    the user guide.

    Parameters
    ----------
    moments : Moments
        Merged moments of all frames.
    weights : femlib.integration.AzimuthalWeights
        The weights the moments were accumulated with.
    methods : sequence of str
        Any of :data:`METHODS`.
    gain : float or None
        Counting model: detector units per electron, ``k0 = gain`` and shot weights
        ``gain * W**2`` (the moments accumulated with ``shot_weights=weights.squared`` and,
        for ``r``, ``shot_scale=gain``: :func:`femlib.moments.accumulate_moments`). None:
        no shot-noise correction unless ``k0`` is given.
    k0 : float or None
        A noise model's kernel at zero lag (``Var(D_p) / <D_p>``, detector units); the
        moments' ``Q`` must then have been accumulated with that model's shot weights
        (in detector units, ``shot_scale=1``). Not together with ``gain``.
    subtract_nonuniformity : bool
        Subtract the static ring non-uniformity (``ring_nonuniformity`` below) from
        ``r`` and ``re``; the other methods are unchanged.
    curvature : (float, float) or None
        A noise model's second-order term ``(c_y, c_x)`` (pixels^2, e.g.
        :attr:`femlib.noise.DetectorNoise.curvature`): the per-pixel noise variance of
        ``r``, ``re`` and ``VImage`` is then ``k0 (m_p + c_y d^2 m / dy^2 + c_x d^2 m /
        dx^2)`` of the measured mean pattern ``m``, not ``k0 m_p``. None or zeros: the
        locally flat form.
    mask : (rows, cols) bool array or None
        The detector mask the weights were built with. Used only with ``curvature``:
        ``VImage`` then leaves out the pixels with a masked pixel among their 8
        neighbours, where the second-order term fails (the mask may hide a step of the
        electrons' mean, e.g. a beam-stop edge; user guide, noise page), unless that
        would leave a bin without pixels.

    Returns
    -------
    dict
        ``variance``, ``standard_error``: ``(G, M, K)`` per group, method and bin;
        ``standard_error`` is the larger of ``jackknife_standard_error`` (delete-a-block)
        and ``shot_standard_error`` (what the shot noise alone gives, first order; see
        the estimators page of the user guide); ``standard_error_trusted``
        ``(G, M, K)``: False where ``V`` rests on fewer than :data:`MIN_PAIRS` expected
        coincident electron pairs (``shot_pairs``; ``shot_electrons``: electrons per bin
        and frame), so that its distribution is far from normal and no standard error
        describes it (always True without a correction); ``counts``: ``(G,)`` frames per
        group; ``combined``,
        ``combined_standard_error`` (and ``combined_standard_error_trusted``):
        ``(M, K)``, the frame-weighted mean over the groups with at least 2 frames;
        ``used_groups``: bool ``(G,)``; ``methods``; ``jackknife`` ``(G, B, M, K)`` and
        ``combined_jackknife`` ``(B, M, K)``: the leave-one-block-out estimates (NaN where a
        group has no frame in a block), for the standard error of anything derived from V;
        ``ring_nonuniformity`` and its ``ring_nonuniformity_standard_error`` ``(G, K)``,
        ``combined_ring_nonuniformity`` and ``combined_ring_nonuniformity_standard_error``
        ``(K,)``: the within-ring non-uniformity of the mean pattern less its shot-noise
        content, present (else None) when the moments hold per-pixel means.

    Raises
    ------
    ValueError
        If no group has two or more frames, if both ``gain`` and ``k0`` are given, or if
        the moments lack what a method needs (or hold ``r``'s products for another gain).
    TypeError
        For a non-numeric ``gain`` or ``k0`` or a non-boolean ``subtract_nonuniformity``.

    Warns
    -----
    RuntimeWarning
        When the shot-noise correction of a method exceeds 10 times its uncorrected
        value (summed over the bins): the gain is then almost certainly wrong.

    Examples
    --------
    Pure Poisson frames (gain 3): every corrected estimator is zero within its error.

    >>> import numpy as np
    >>> from femlib import integration, moments, variance
    >>> rng = np.random.default_rng(0)
    >>> frames = 3.0 * rng.poisson(20.0, size=(200, 16, 16))
    >>> w = integration.build_weights((16, 16), (7.5, 7.5), npt=3, radial_range=(2.0, 7.0))
    >>> m = moments.accumulate_moments(frames, w, shot_weights=w.squared,
    ...                                methods=variance.METHODS, shot_scale=3.0)
    >>> res = variance.estimate(m, w, variance.METHODS, gain=3.0)
    >>> res["variance"].shape
    (1, 4, 3)
    >>> bool(np.all(np.abs(res["variance"]) < 4 * res["standard_error"]))
    True
    """
    methods = check_method(methods)
    gain = check_gain(gain)
    k0 = check_gain(k0, "k0")
    if curvature is not None:
        try:
            curvature = tuple(float(c) for c in curvature)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"curvature must be None or two numbers (c_y, c_x), got {curvature!r}"
            ) from err
        if len(curvature) != 2 or not np.all(np.isfinite(curvature)):
            raise ValueError(
                f"curvature must be None or two finite numbers (c_y, c_x), got {curvature!r}"
            )
    if mask is not None:
        shape = tuple(weights.detector_shape)
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != shape:
            raise ValueError(
                f"mask must be a boolean array of the detector shape {shape}, got "
                f"{mask.dtype} of shape {mask.shape}"
            )
    if gain is not None and k0 is not None:
        raise ValueError(
            "give gain (the counting model) or k0 (a noise model's kernel at zero lag), "
            "not both"
        )
    if not isinstance(subtract_nonuniformity, (bool, np.bool_)):
        raise TypeError(
            f"subtract_nonuniformity must be True or False, got {subtract_nonuniformity!r}"
        )
    if "VImage" in methods and moments.pix_m2 is None:
        raise ValueError("VImage needs per-pixel moments: accumulate with pixels=True")
    ring_methods = {"r", "re"} & set(methods)
    if ring_methods and not moments.squares:
        raise ValueError("r and re need the ring sums of D^2: accumulate with squares=True")
    if subtract_nonuniformity and ring_methods and moments.pix_mean is None:
        raise ValueError(
            "subtract_nonuniformity needs the per-pixel means: accumulate with squares=True"
        )
    # k0 multiplies the per-pixel (A / I) terms; qs turns the stored Q into detector units.
    kk, qs = (gain, gain) if gain is not None else (k0, 1.0) if k0 is not None else (0.0, 0.0)
    if "r" in methods and qs:
        if not moments.ratio:
            raise ValueError(
                "r with a shot-noise correction needs the per-frame products of the pass: "
                "accumulate with shot weights and methods including 'r'"
            )
        if moments.shot_scale != qs:
            raise ValueError(
                f"the moments hold r's per-frame products for shot_scale="
                f"{moments.shot_scale:g}, but estimate was given "
                + (f"gain={gain:g}" if gain is not None else "k0 (shot_scale 1)")
                + ": accumulate with shot_scale equal to the gain (1 for a noise model)"
            )
    gcount = moments.count.reshape(moments.n_groups, moments.n_blocks)
    shape_ring = (moments.n_groups, moments.n_blocks)
    count = gcount
    mean = moments.mean.reshape(shape_ring + moments.mean.shape[1:])
    m2 = moments.m2.reshape(shape_ring + moments.m2.shape[1:])
    pm = pq = None
    if moments.pix_mean is not None:
        pm = moments.pix_mean.reshape(shape_ring + moments.pix_mean.shape[1:])
    if moments.pix_m2 is not None:
        pq = moments.pix_m2.reshape(shape_ring + moments.pix_m2.shape[1:])
    full = _reduce(count, mean, m2, pm, pq, axis=1)
    _check_range(full[1], kk, qs, gain, k0)
    loo = _leave_one_out(count, mean, m2, pm, pq)
    counts = full[0]
    used = counts >= 2
    if not used.any():
        raise ValueError("no group holds two or more frames: the variance is undefined")
    wc = weights.matrix[:, weights.touched] if pm is not None else None
    area = weights.area
    sub = bool(subtract_nonuniformity)
    lap = None
    if curvature is not None and kk and pm is not None and np.any(curvature):
        lap = _Curvature(curvature, weights.touched, weights.detector_shape, mask)
    args = (kk, qs, area, wc, lap)
    v = np.stack([_estimators(*full, m, *args, sub) for m in methods], axis=1)
    vj = np.stack([_estimators(*loo, m, *args, sub) for m in methods], axis=2)
    # vj: (G, B, M, K); a block with no frame in a group does not count for that group.
    present = count > 0  # (G, B)
    # The jackknife, but never below what the shot noise alone gives (with few frames or
    # few counts the leave-one-block-out values scatter too little; user guide).
    w2c = weights.squared[:, weights.touched] if pm is not None else None
    floor, pairs, electrons = (
        np.stack(x, axis=1)  # (G, M, K)
        for x in zip(*(_shot_floor(full[0], full[1], full[3], m, kk, qs, area, wc, w2c,
                                   getattr(weights, "ring_geometry", None), lap)
                       for m in methods), strict=True)
    )
    se_jk = _jackknife_se(vj, present)
    se = np.fmax(se_jk, floor)
    comb, comb_se, comb_j = _combine(v, vj, counts, count, used, present)
    wg = np.where(used, counts, 0.0) / np.where(used, counts, 0.0).sum()
    comb_floor = np.sqrt(np.tensordot(wg**2, np.where(used[:, None, None], floor, 0.0) ** 2,
                                      axes=(0, 0)))
    comb_pairs = np.where(used[:, None, None], pairs, 0.0).sum(axis=0)
    out = {
        "variance": v,
        "standard_error": se,
        "standard_error_trusted": pairs >= MIN_PAIRS,
        "jackknife_standard_error": se_jk,
        "shot_standard_error": floor,
        "shot_pairs": pairs,
        "shot_electrons": electrons,
        "counts": counts.astype(int),
        "combined": comb,
        "combined_standard_error": np.fmax(comb_se, comb_floor),
        "combined_standard_error_trusted": comb_pairs >= MIN_PAIRS,
        "used_groups": used,
        "methods": methods,
        "jackknife": np.where(present[:, :, None, None], vj, np.nan),
        "combined_jackknife": np.where(present.any(0)[:, None, None], comb_j, np.nan),
        "ring_nonuniformity": None,
        "ring_nonuniformity_standard_error": None,
        "combined_ring_nonuniformity": None,
        "combined_ring_nonuniformity_standard_error": None,
    }
    if pm is not None:
        nu = _nonuniformity(full[0], full[1], full[3], kk, qs, area, wc, lap)[:, None]
        nuj = _nonuniformity(loo[0], loo[1], loo[3], kk, qs, area, wc, lap)[:, :, None]
        nu_comb, nu_comb_se, _ = _combine(nu, nuj, counts, count, used, present)
        out.update(
            ring_nonuniformity=nu[:, 0],
            ring_nonuniformity_standard_error=_jackknife_se(nuj, present)[:, 0],
            combined_ring_nonuniformity=nu_comb[0],
            combined_ring_nonuniformity_standard_error=nu_comb_se[0],
        )
    if qs or kk:
        _warn_large_correction(full, methods, used, args, gain, k0)
    return out


def _check_range(mean, kk, qs, gain, k0):
    """Refuse a gain (or data) so large that the shot-noise terms overflow float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        mi, q = np.abs(mean[..., _I, :]), np.abs(mean[..., _Q, :])
        ok = np.isfinite(mi * mi) & np.isfinite(qs * q) & np.isfinite(kk * mi)
        ok &= np.isfinite(qs * q * mi) & (mi * mi < 1e300)
    if not ok.all():
        what = (f"gain={gain:g}" if gain is not None else f"k0={k0:g}" if k0 is not None
                else "the data")
        raise ValueError(
            f"{what} with ring sums up to {float(np.nanmax(mi)):.3g} overflows float64 in "
            "the shot-noise terms: the gain must be in detector units per electron (at "
            "most the data's own scale) and the data must not exceed about 1e150"
        )


def _combine(v, vj, counts, count, used, present):
    """Frame-weighted mean over the used groups of ``v`` (G, M, K), with its jackknife error
    and leave-one-block-out values ``(B, M, K)``."""
    wfull = np.where(used, counts, 0.0)
    v_used = np.where(used[:, None, None], v, 0.0)  # unused groups hold NaN, weight 0
    comb = np.tensordot(wfull, v_used, axes=(0, 0)) / wfull.sum()
    wloo = np.where(used[:, None], counts[:, None] - count, 0.0)  # (G, B)
    comb_j = np.einsum("gb,gbmk->bmk", wloo, np.nan_to_num(vj)) / wloo.sum(0)[:, None, None]
    comb_se = _jackknife_se(comb_j[None], present.any(0)[None])[0]
    return comb, comb_se, comb_j


def _warn_large_correction(full, methods, used, args, gain, k0):
    """Warn when a shot-noise term is more than 10 times the uncorrected variance."""
    for method in methods:
        raw, term = _parts(*full, method, *args)
        raw, term = raw[used], term[used]
        ok = np.isfinite(raw) & np.isfinite(term)
        t, r = np.abs(term[ok]).sum(), np.abs(raw[ok]).sum()
        if t > 10 * r:
            what = f"gain ({gain:g})" if gain is not None else f"noise model (k0 = {k0:g})"
            size = f"{t / r:.3g} times its uncorrected variance" if r else (
                "non-zero while its uncorrected variance is 0"
            )
            warnings.warn(
                f"the shot-noise correction of method {method!r} is {size} (summed over the "
                f"radial bins): the {what} is probably wrong; it must be in detector units "
                "per electron (the counts one electron gives)",
                RuntimeWarning,
                stacklevel=3,
            )


def _jackknife_se(vj, present):
    """Delete-a-group jackknife standard error over axis 1 (blocks) of ``vj``."""
    p = present[:, :, None, None].astype(float)
    nb = p.sum(axis=1)  # (G, 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.nan_to_num(vj) * p).sum(axis=1) / nb
        dev = np.where(p > 0, vj - mean[:, None], 0.0)
        return np.sqrt((nb - 1) / nb * (dev**2).sum(axis=1))


_UNDEFINED_CAUSE = {
    "Omega": "the ring has no intensity (its mean over the frames is 0)",
    "r": "a frame's ring mean is <= 0",
    "re": "the ring has no intensity (its mean over the frames is 0)",
    "VImage": "no pixel of the ring has a positive mean",
}


def warn_undefined(result, radial_centers):
    """Warn about NaN values and untrustworthy standard errors, naming method and cause.

    One warning per method with undefined values (e.g. ``Omega`` on a ring that never
    received a count, ``r`` where a frame's ring mean is <= 0), one where a value is
    defined but its standard error is not, and one where the standard error cannot be
    trusted (``standard_error_trusted`` False: fewer than :data:`MIN_PAIRS` expected
    coincident electron pairs), naming the electrons per bin and frame. Groups left out
    for having fewer than two frames are not looked at.

    Parameters
    ----------
    result : dict
        As returned by :func:`estimate`.
    radial_centers : (K,) ndarray
        Radii of the bins, named in the warning.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from femlib import integration, moments, variance
    >>> w = integration.build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    >>> m = moments.accumulate_moments(np.zeros((4, 8, 8)), w)
    >>> res = variance.estimate(m, w, ["Omega"])
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     variance.warn_undefined(res, w.radial_centers)
    >>> print(str(caught[0].message).split(":")[0])
    V(k) is undefined (NaN) in 2 radial bin(s) (radius 1.5, 2.5) for method 'Omega'
    >>> len(caught)  # nothing about r or VImage, which were not asked for
    1
    """
    used = result["used_groups"]
    v = result["variance"][used]
    se = result["standard_error"][used]

    def radii(k):
        more = "..." if k.size > 5 else ""
        return ", ".join(f"{r:.3g}" for r in radial_centers[k][:5]) + more

    for i, method in enumerate(result["methods"]):
        bad = ~np.isfinite(v[:, i])
        if bad.any():
            k = np.unique(np.nonzero(bad)[-1])
            warnings.warn(
                f"V(k) is undefined (NaN) in {k.size} radial bin(s) (radius {radii(k)}) "
                f"for method {method!r}: {_UNDEFINED_CAUSE[method]}",
                RuntimeWarning,
                stacklevel=3,
            )
        trusted = result.get("standard_error_trusted")
        shaky = ~bad & np.isfinite(se[:, i])
        shaky &= np.zeros_like(shaky) if trusted is None else ~trusted[used][:, i]
        if shaky.any():
            k = np.unique(np.nonzero(shaky)[-1])
            e = result["shot_electrons"][used][:, i][shaky]
            p = result["shot_pairs"][used][:, i][shaky]
            warnings.warn(
                f"the standard error of V(k) is not trustworthy in {k.size} radial bin(s) "
                f"(radius {radii(k)}) for method {method!r}: V rests on {p.min():.2g}-"
                f"{p.max():.2g} expected coincident electron pairs ({e.min():.2g}-"
                f"{e.max():.2g} electrons per bin per frame), fewer than {MIN_PAIRS:g}; "
                "use more patterns, wider bins or Omega",
                RuntimeWarning,
                stacklevel=3,
            )
        bad_se = ~bad & ~np.isfinite(se[:, i])
        if bad_se.any():
            k = np.unique(np.nonzero(bad_se)[-1])
            warnings.warn(
                f"the standard error of V(k) is undefined (NaN) in {k.size} radial bin(s) "
                f"(radius {radii(k)}) for method {method!r}: leaving out one jackknife "
                "block leaves the ring without intensity (too few counts)",
                RuntimeWarning,
                stacklevel=3,
            )
