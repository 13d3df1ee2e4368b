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
For each frame the streaming kernel returns the ring sums ``I = W D``, ``Q = W^2 D`` and
``J = W D^2``; the per-frame quantities ``u = J A / I^2`` and ``v = A / I`` follow. A
:class:`Moments` holds, per *state* (thickness group x jackknife block), the frame count,
the means of ``(I, Q, J, u, v)``, the centred second moment of ``I`` and, for ``VImage``,
the per-pixel mean and centred second moment. Moments of two chunks merge exactly with
Chan's pairwise formulas (:func:`merge`), so chunks can be reduced in any order or tree
(dask, a distributed cluster) and centred sums never lose the small variance in float32.

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
from dataclasses import dataclass

import numpy as np

from femlib import _kernels
from femlib.integration import as_native_frames

__all__ = [
    "METHODS",
    "Moments",
    "accumulate",
    "accumulate_dask",
    "accumulate_tree",
    "merge",
    "frame_states",
    "estimate",
    "check_method",
    "check_gain",
    "warn_undefined",
]

METHODS = ("Omega", "r", "re", "VImage")
N_BLOCKS = 20
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


@dataclass
class Moments:
    """Mergeable one-pass moments, per state ``s = group * n_blocks + block``.

    Attributes
    ----------
    count : (S,) ndarray
        Number of frames per state.
    mean : (S, 5, K) ndarray
        Means of the ring sums ``I``, ``Q``, ``J`` and of ``u = J A / I^2``, ``v = A / I``.
    m2 : (S, K) ndarray
        Centred sum of squares of ``I``.
    pix_mean, pix_m2 : (S, P') ndarray or None
        Per touched pixel mean and centred sum of squares (``VImage`` only).
    n_groups, n_blocks : int
    n_nonfinite : int
        Frames left out because a weighted pixel was NaN or infinite.
    squares : bool
        Whether the ring sums of ``D^2`` (``J``, ``u``, ``v``) were accumulated.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    pix_mean: np.ndarray | None
    pix_m2: np.ndarray | None
    n_groups: int
    n_blocks: int
    n_nonfinite: int = 0
    squares: bool = True

    @property
    def n_frames(self):
        """Total number of frames accumulated."""
        return int(self.count.sum())


def frame_states(n_frames, groups=None, n_groups=1, n_blocks=N_BLOCKS):
    """State of every frame: ``group * n_blocks + block``, -1 for excluded frames.

    The ``i``-th frame of a group (in scan order) goes to jackknife block ``i mod
    n_blocks``, so every group with ``n >= n_blocks`` frames fills all blocks evenly,
    whatever the scan shape or how the groups fall on the scan; the assignment is fixed
    before the pass and does not depend on chunking.

    Parameters
    ----------
    n_frames : int
    groups : (n_frames,) int array or None
        Group (thickness bin) of each frame, -1 = excluded. None = all in group 0.
    n_groups : int
    n_blocks : int
        Jackknife blocks.

    Returns
    -------
    (n_frames,) ndarray of int64
    """
    g = np.zeros(n_frames, np.int64) if groups is None else np.asarray(groups, np.int64)
    if g.shape != (n_frames,):
        raise ValueError(f"groups must have one entry per frame ({n_frames}), got {g.shape}")
    if g.max(initial=-1) >= n_groups:
        raise ValueError(f"groups must be < n_groups={n_groups}")
    rank = np.zeros(n_frames, np.int64)
    for group in range(n_groups):
        members = np.flatnonzero(g == group)
        rank[members] = np.arange(members.size)
    return np.where(g >= 0, g * n_blocks + rank % n_blocks, -1)


def accumulate(
    frames, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False, squares=True
):
    """Moments of one chunk of frames (one read of the chunk).

    Parameters
    ----------
    frames : ndarray, shape (..., rows, columns)
        Any real dtype (integers are converted to float64 before any square).
    weights : femlib.integration.AzimuthalWeights
    states : int array, shape (...)
        State of each frame (:func:`frame_states`), -1 = excluded.
    n_groups, n_blocks : int
    pixels : bool
        Also accumulate per-pixel second moments (needed by ``VImage``).
    squares : bool
        Also accumulate the ring sums of ``D^2`` (needed by ``r`` and ``re``).

    Returns
    -------
    Moments
        Frames with a NaN or infinite value in a weighted (unmasked, in-range) pixel are
        left out and counted in ``n_nonfinite``.
    """
    flat = as_native_frames(frames, weights.detector_shape)
    states = np.asarray(states, dtype=np.int64).ravel()
    if states.size != flat.shape[0]:
        raise ValueError(f"states has {states.size} entries for {flat.shape[0]} frames")
    nstates = n_groups * n_blocks
    k = weights.area.size
    args = (flat, weights.touched, weights.colptr, weights.rowidx, weights.wdata, k)
    sums, pixsum, pixsq = _kernels.ring_moments(*args, states, nstates, squares, pixels)
    # A NaN/inf in any weighted pixel poisons the frame: leave the frame out, count it
    # (rare: the chunk's pixel sums are then taken again without those frames).
    nonfinite = ~np.isfinite(sums).all(axis=(0, 2))
    n_nonfinite = int((nonfinite & (states >= 0)).sum())
    if n_nonfinite:
        states = np.where(nonfinite, -1, states)
        _, pixsum, pixsq = _kernels.ring_moments(*args, states, nstates, False, pixels)
    count = np.bincount(states[states >= 0], minlength=nstates).astype(float)
    mean = np.full((nstates, 5, k), np.nan)
    m2 = np.zeros((nstates, k))
    ring = sums[0]
    if squares:
        j = sums[1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = np.where(ring > 0, weights.area / ring, np.nan)
            per_frame = np.stack([ring, j, j * inv * inv / weights.area, inv], axis=1)
        cols = [_I, _J, _U, _V]
    else:
        per_frame = ring[:, None, :]
        cols = [_I]
    # Per-state sums over frames sorted by state (reduceat: no Python loop over states, and
    # no BLAS call whose own threads would compete with dask's).
    valid = np.flatnonzero(states >= 0)
    order = valid[np.argsort(states[valid], kind="stable")]
    seen = count > 0
    if order.size:
        present = np.flatnonzero(seen)
        starts = np.concatenate([[0], np.cumsum(count[present])[:-1]]).astype(np.int64)
        x = per_frame[order]
        means = np.add.reduceat(x, starts, axis=0) / count[present, None, None]
        mean[np.ix_(present, cols)] = means
        dev = x[:, 0] - np.repeat(means[:, 0], count[present].astype(np.int64), axis=0)
        m2[present] = np.add.reduceat(dev * dev, starts, axis=0)
    mean[~seen] = 0.0
    # Mean of W^2 D per state, from the pixel sums: the shot-noise term of Omega.
    with np.errstate(invalid="ignore", divide="ignore"):
        mean[:, _Q] = (weights.compact_squared @ pixsum.T).T / count[:, None]
    mean[~seen] = 0.0
    pix_mean = pix_m2 = None
    if pixels:
        safe = np.maximum(count, 1.0)[:, None]
        pix_mean = pixsum / safe
        pix_m2 = np.maximum(pixsq - pixsum * pix_mean, 0.0)
    return Moments(count, mean, m2, pix_mean, pix_m2, n_groups, n_blocks, n_nonfinite, squares)


def merge(a, b):
    """Merge the moments of two disjoint sets of frames (exact, order-independent).

    Parameters
    ----------
    a, b : Moments

    Returns
    -------
    Moments
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError("cannot merge moments of different geometries or groupings")
    n, mean, m2 = _merge_arrays(a.count, a.mean, a.m2, b.count, b.mean, b.m2, ring=True)
    pm = pq = None
    if a.pix_mean is not None and b.pix_mean is not None:
        _, pm, pq = _merge_arrays(a.count, a.pix_mean, a.pix_m2, b.count, b.pix_mean, b.pix_m2)
    return Moments(
        n, mean, m2, pm, pq, a.n_groups, a.n_blocks, a.n_nonfinite + b.n_nonfinite,
        a.squares and b.squares,
    )


def _merge_arrays(na, ma, qa, nb, mb, qb, ring=False):
    n = na + nb
    safe = np.where(n > 0, n, 1.0)
    fb = (nb / safe).reshape(n.shape + (1,) * (ma.ndim - n.ndim))
    delta = mb - ma
    mean = ma + delta * fb
    d = delta[..., _I, :] if ring else delta
    w = (na * nb / safe).reshape(n.shape + (1,) * (d.ndim - n.ndim))
    return n, mean, qa + qb + d * d * w


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
        ``used_groups``: bool ``(G,)``; ``jackknife`` ``(G, B, M, K)`` and
        ``combined_jackknife`` ``(B, M, K)``: the leave-one-block-out estimates (NaN where a
        group has no frame in a block), for the standard error of anything derived from V.

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
        "jackknife": np.where(present[:, :, None, None], vj, np.nan),
        "combined_jackknife": np.where(present.any(0)[:, None, None], comb_j, np.nan),
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


def accumulate_dask(
    darr, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False, squares=True
):
    """Lazy :func:`accumulate` over a dask array: one task per chunk, merged as a tree.

    Parameters
    ----------
    darr : dask.array.Array, shape (..., rows, columns)
        Frames; detector dimensions are rechunked whole if needed.
    weights : femlib.integration.AzimuthalWeights
        Embedded once in the graph and shared by every task.
    states : int ndarray, shape nav
        State of each frame (:func:`frame_states`, reshaped to the navigation shape).
    n_groups, n_blocks : int
    pixels, squares : bool
        As :func:`accumulate`.

    Returns
    -------
    dask.delayed.Delayed
        Computing it gives the merged :class:`Moments` of all frames. Peak memory is a
        few chunks: each chunk is reduced to its moments as soon as it is read.
    """
    import dask.array as da

    from femlib.integration import prepare_chunks

    darr = prepare_chunks(darr)
    nav = darr.ndim - 2
    states = np.asarray(states, dtype=np.int64).reshape(darr.shape[:nav])
    sblocks = da.from_array(states, chunks=darr.chunks[:nav]).to_delayed().ravel()
    fblocks = darr.to_delayed().reshape(-1)
    return accumulate_tree(fblocks, sblocks, weights, n_groups, n_blocks, pixels, squares)


def accumulate_tree(frames, states, weights, n_groups=1, n_blocks=N_BLOCKS, pixels=False,
                    squares=True):
    """One dask task per block of frames, their moments merged pairwise as a tree.

    Parameters
    ----------
    frames : sequence of ndarray or dask Delayed
        Blocks of frames, each ``(..., rows, columns)``; numpy blocks are used in place
        (not hashed, not copied), so eager data run on dask's threaded scheduler as is.
    states : sequence of int ndarray or dask Delayed
        The matching blocks of frame states.
    weights : femlib.integration.AzimuthalWeights
        Embedded once in the graph and shared by every task.
    n_groups, n_blocks : int
    pixels, squares : bool
        As :func:`accumulate`.

    Returns
    -------
    dask.delayed.Delayed
        Computing it gives the merged :class:`Moments`.
    """
    import dask

    shared = dask.delayed(weights, pure=True)
    part = dask.delayed(_accumulate_block, pure=False)
    parts = [
        part(f, s, shared, n_groups, n_blocks, pixels, squares)
        for f, s in zip(frames, states, strict=True)
    ]
    combine = dask.delayed(merge, pure=True)
    while len(parts) > 1:
        nxt = [combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _accumulate_block(frames, states, weights, n_groups, n_blocks, pixels, squares):
    return accumulate(frames, weights, states, n_groups, n_blocks, pixels, squares)
