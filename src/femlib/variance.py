r"""FEM variance estimators from moments accumulated in one pass over the frames.

Notation (Daulton et al. 2010): ``D_n(p)`` is the intensity of pixel ``p`` in frame ``n``,
``w_kp`` the pixel-splitting weights of ring ``k`` with ``A_k = sum_p w_kp``, ``I_n(k) =
sum_p w_kp D_n(p) / A_k`` the ring mean, ``<.>_n`` the mean over frames and ``G`` the gain
(detector units per electron, ``D = G N`` with ``N`` Poisson).

==========  =========================================  ==========================================
method      estimator                                  shot-noise term (subtracted if gain given)
==========  =========================================  ==========================================
``Omega``   ``<I^2>_n / <I>_n^2 - 1``                  ``G sum_p w^2 <D>_n / (sum_p w <D>_n)^2``
``r``       ``< <D^2>_k / <D>_k^2 - 1 >_n``            ``(1 - c_k) < G / I_n(k) >_n``
``re``      ``<D^2>_{n,k} / <D>_{n,k}^2 - 1``          ``G / <I(k)>_n``
``VImage``  ring mean of ``<D^2>_n / <D>_n^2 - 1``     ring mean of ``G / <D(p)>_n``
==========  =========================================  ==========================================

``<.>_k`` is the weighted mean in ring ``k`` and ``c_k = sum_p w_kp^2 / A_k^2``.

Deviation from the seed formula (design.md): for ``r`` the shot-noise term carries the factor
``(1 - c_k)``. A frame's within-ring sample is finite, so the expectation of
``<D^2>_k / <D>_k^2 - 1`` for Poisson pixels is ``G (1 - c_k) / I_n(k)`` to first order
(``c_k`` is one over the number of pixels for hard bins); subtracting ``G / I_n(k)`` leaves a
bias of ``-c_k G / I`` that is many standard errors at realistic doses.

With hard bins (``w`` in {0, 1}) the ``Omega`` term reduces to ``G / <S(k)>_n`` (``S`` the
ring sum); with pixel splitting the ``sum w^2`` form is the correct variance of a split ring
sum of Poisson pixels (the ``G / <S>`` form over-subtracts and drives V negative).

One pass
--------
The moments come from :func:`femlib.moments.accumulate_moments`, one streaming read of the
frames: per frame the ring sums ``I = W D``, ``J = W D^2`` (``r``, ``re``) and ``Q`` with the
shot weights of the noise model, and ``u = J A / I^2``, ``v = A / I``; per *state* (group x
jackknife block) the frame count, the means of those, the centred second moment of ``I``
and, for ``VImage``, the per-pixel mean and centred second moment
(:class:`femlib.moments.Moments`, merged exactly with Chan's formulas).

Standard error
--------------
Delete-a-group jackknife over probe positions: the ``i``-th frame of each group belongs to
block ``i mod B`` (``B = 20`` by default, independent of chunking). Each estimator is
recomputed with one block left out, from the same moments, and
``se^2 = (B-1)/B sum_b (V_(b) - mean_b V_(b))^2``. It covers every method, the shot-noise
term and the thickness-combined result alike.

References
----------
Daulton, Bondi & Kelton, Ultramicroscopy 110 (2010) 1279.
Hwang & Voyles, Microsc. Microanal. 17 (2011) 67. Li et al., Microsc. Microanal. 20 (2014)
1605.
"""

import warnings

import numpy as np

# Moments, merge and frame_states are re-exported for callers of femlib 0.1.
from femlib.moments import N_BLOCKS, Moments, _merge_arrays, frame_states, merge  # noqa: F401
from femlib.moments import accumulate as _accumulate_chunk

__all__ = [
    "METHODS",
    "accumulate",
    "accumulate_dask",
    "estimate",
    "check_method",
    "check_gain",
    "warn_undefined",
]

METHODS = ("Omega", "r", "re", "VImage")
_I, _Q, _J, _U, _V = range(5)


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


def check_gain(gain):
    """Validate ``gain``: None (no shot-noise correction) or a positive finite number.

    Parameters
    ----------
    gain : float or None
        Detector units per electron.

    Returns
    -------
    float or None

    Raises
    ------
    ValueError
        For ``gain <= 0``, NaN or infinity.
    TypeError
        For a non-numeric gain.
    """
    if gain is None:
        return None
    try:
        g = float(gain)
    except (TypeError, ValueError):
        raise TypeError(f"gain must be a positive number or None, got {gain!r}") from None
    if not np.isfinite(g) or g <= 0:
        raise ValueError(
            f"gain must be a positive finite number (detector units per electron) or None, "
            f"got {gain!r}"
        )
    return g


def accumulate(frames, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False,
               squares=True):
    """Moments of one chunk with the shot sums ``Q = W^2 D`` (gain 1 counting model).

    Kept for callers of femlib 0.1; the pass is :func:`femlib.moments.accumulate_moments`.

    Parameters
    ----------
    frames : ndarray, shape (..., rows, columns)
    weights : femlib.integration.AzimuthalWeights
    states : int array, shape (...)
        :func:`femlib.moments.frame_states`, -1 = excluded.
    n_groups, n_blocks : int
    pixels, squares : bool
        Per-pixel moments (``VImage``); ``J, U, V`` (``r``, ``re``).

    Returns
    -------
    femlib.moments.Moments

    Examples
    --------
    >>> from femlib.integration import build_weights
    >>> w = build_weights((16, 16), (7.5, 7.5), npt=4, radial_range=(1, 7))
    >>> m = accumulate(np.full((4, 16, 16), 2.0), w, frame_states(4, n_blocks=2), n_blocks=2)
    >>> bool(np.allclose(m.mean[0, 1], 2.0 * w.squared.sum(axis=1)))  # Q = W^2 D
    True
    """
    return _accumulate_chunk(frames, weights, states, n_groups, n_blocks, pixels, squares,
                             shot_weights=weights.squared)


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


def _estimators(n, mean, m2, pm, pq, method, gain, area, sq_area, wc):
    """One estimator on merged moments with leading dims ``(...)``; returns ``(..., K)``."""
    g = 0.0 if gain is None else gain
    mi = mean[..., _I, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "Omega":
            nn = n[..., None]
            return (m2 / nn - g * mean[..., _Q, :]) / mi**2
        if method == "r":
            # The within-ring sample of a frame has finite size: E[u] - 1 = (G / I) (1 - c)
            # with c = sum_p w^2 / A^2 (1 / pixels for hard bins), to first order.
            c = sq_area / area**2
            return mean[..., _U, :] - 1.0 - g * (1.0 - c) * mean[..., _V, :]
        if method == "re":
            return mean[..., _J, :] * area / mi**2 - 1.0 - g * area / mi
        # VImage: ring mean over pixels with a positive mean of the per-pixel estimate.
        pv = (pq / n[..., None]) / pm**2 - g / pm
        ok = pm > 0
        pv = np.where(ok, pv, 0.0)
        lead = pv.shape[:-1]
        num = (wc @ pv.reshape(-1, pv.shape[-1]).T).T
        den = (wc @ ok.reshape(-1, ok.shape[-1]).T.astype(float)).T
        return (num / den).reshape(lead + (-1,))


def estimate(moments, weights, methods=("Omega",), gain=None):
    """Compute FEM variance estimators, their jackknife standard errors, per group and combined.

    Parameters
    ----------
    moments : Moments
        Merged moments of all frames.
    weights : femlib.integration.AzimuthalWeights
        The weights the moments were accumulated with.
    methods : sequence of str
        Any of :data:`METHODS`.
    gain : float or None
        Detector units per electron; None = no shot-noise correction.

    Returns
    -------
    dict
        ``variance``, ``standard_error``: ``(G, M, K)`` per group, method and bin;
        ``counts``: ``(G,)`` frames per group; ``combined``, ``combined_standard_error``:
        ``(M, K)``, the frame-weighted mean over the groups with at least 2 frames;
        ``used_groups``: bool ``(G,)``.

    Raises
    ------
    ValueError
        If no group has two or more frames.
    """
    methods = check_method(methods)
    gain = check_gain(gain)
    if "VImage" in methods and moments.pix_mean is None:
        raise ValueError("VImage needs per-pixel moments: accumulate with pixels=True")
    if {"r", "re"} & set(methods) and not moments.squares:
        raise ValueError("r and re need the ring sums of D^2: accumulate with squares=True")
    gcount = moments.count.reshape(moments.n_groups, moments.n_blocks)
    shape_ring = (moments.n_groups, moments.n_blocks)
    count = gcount
    mean = moments.mean.reshape(shape_ring + moments.mean.shape[1:])
    m2 = moments.m2.reshape(shape_ring + moments.m2.shape[1:])
    pm = pq = None
    if moments.pix_mean is not None:
        pm = moments.pix_mean.reshape(shape_ring + moments.pix_mean.shape[1:])
        pq = moments.pix_m2.reshape(shape_ring + moments.pix_m2.shape[1:])
    full = _reduce(count, mean, m2, pm, pq, axis=1)
    loo = _leave_one_out(count, mean, m2, pm, pq)
    counts = full[0]
    used = counts >= 2
    if not used.any():
        raise ValueError("no group holds two or more frames: the variance is undefined")
    wc = weights.matrix[:, weights.touched] if "VImage" in methods else None
    area = weights.area
    sq_area = np.asarray(weights.squared.sum(axis=1)).ravel()
    v = np.stack([_estimators(*full, m, gain, area, sq_area, wc) for m in methods], axis=1)
    vj = np.stack([_estimators(*loo, m, gain, area, sq_area, wc) for m in methods], axis=2)
    # vj: (G, B, M, K); a block with no frame in a group does not count for that group.
    present = count > 0  # (G, B)
    se = _jackknife_se(vj, present)
    # Combined over used groups, weighted by frame counts (leave-one-out counts likewise).
    wfull = np.where(used, counts, 0.0)
    v_used = np.where(used[:, None, None], v, 0.0)  # unused groups hold NaN, weight 0
    comb = np.tensordot(wfull, v_used, axes=(0, 0)) / wfull.sum()
    wloo = np.where(used[:, None], counts[:, None] - count, 0.0)  # (G, B)
    comb_j = np.einsum("gb,gbmk->bmk", wloo, np.nan_to_num(vj)) / wloo.sum(0)[:, None, None]
    comb_se = _jackknife_se(comb_j[None], present.any(0)[None])[0]
    return {
        "variance": v,
        "standard_error": se,
        "counts": counts.astype(int),
        "combined": comb,
        "combined_standard_error": comb_se,
        "used_groups": used,
        "methods": methods,
    }


def _jackknife_se(vj, present):
    """Delete-a-group jackknife standard error over axis 1 (blocks) of ``vj``."""
    p = present[:, :, None, None].astype(float)
    nb = p.sum(axis=1)  # (G, 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (np.nan_to_num(vj) * p).sum(axis=1) / nb
        dev = np.where(p > 0, vj - mean[:, None], 0.0)
        return np.sqrt((nb - 1) / nb * (dev**2).sum(axis=1))


def warn_undefined(result, radial_centers):
    """Warn about NaN values in an estimate (e.g. ``r`` where a ring has zero counts).

    Groups left out for having fewer than two frames are not looked at.

    Parameters
    ----------
    result : dict
        As returned by :func:`estimate`.
    radial_centers : (K,) ndarray
        Radii of the bins, named in the warning.
    """
    bad = ~np.isfinite(result["variance"][result["used_groups"]])
    if bad.any():
        k = np.unique(np.nonzero(bad)[-1])
        warnings.warn(
            f"V(k) is undefined (NaN) in {k.size} radial bin(s) "
            f"(radius {', '.join(f'{r:.3g}' for r in radial_centers[k][:5])}"
            f"{'...' if k.size > 5 else ''}): a frame's ring mean is <= 0 (method 'r'), "
            "or no pixel of the ring has a positive mean (method 'VImage')",
            RuntimeWarning,
            stacklevel=3,
        )


def accumulate_dask(darr, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False,
                    squares=True):
    """Lazy :func:`accumulate` over a dask array (one task per chunk, merged as a tree).

    Kept for callers of femlib 0.1; the pass is :func:`femlib.moments.accumulate_moments`.

    Parameters
    ----------
    darr : dask.array.Array, shape (..., rows, columns)
    weights : femlib.integration.AzimuthalWeights
    states : int ndarray, shape nav
        :func:`femlib.moments.frame_states`, reshaped to the navigation shape.
    n_groups, n_blocks : int
    pixels, squares : bool
        As :func:`accumulate`.

    Returns
    -------
    dask.delayed.Delayed
        Computing it gives the merged :class:`femlib.moments.Moments`.
    """
    import dask.array as da

    from femlib import moments as _m
    from femlib.integration import prepare_chunks

    darr = prepare_chunks(darr)
    nav = darr.ndim - 2
    states = np.asarray(states, dtype=np.int64).reshape(darr.shape[:nav])
    sblocks = da.from_array(states, chunks=darr.chunks[:nav]).to_delayed().ravel()
    plan = _m._Plan(n_groups, n_blocks, bool(squares), False, bool(pixels), bool(pixels))
    sdata = _m._shot_data(weights, weights.squared)
    return _m._accumulate_tree(darr.to_delayed().reshape(-1), sblocks, weights, sdata, plan)
