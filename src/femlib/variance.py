r"""FEM variance estimators from moments accumulated in one pass over the frames.

Notation (Daulton et al. 2010): ``D_n(p)`` is the intensity of pixel ``p`` in frame ``n``
(detector units), ``w_kp`` the pixel-splitting weights of ring ``k`` with ``A_k = sum_p
w_kp``, ``S_n(k) = sum_p w_kp D_n(p)`` the ring sum (``S / A`` the ring mean), ``<.>_n`` the
mean over the ``N`` frames of a group, ``m_p = <D(p)>_n`` the mean pattern. The noise model
enters through ``k0 = Var(D_p) / <D_p>`` and the shot weights ``s_kp`` of the shot ring sum
``Q_n(k) = sum_p s_kp D_n(p)``; ``gain=G`` is the counting model, ``k0 = G`` and ``s = G
w^2`` (``D = G N``, ``N`` Poisson).

==========  ========================================  ============================================
method      estimator                                 shot-noise term (subtracted: gain or k0)
==========  ========================================  ============================================
``Omega``   ``<S^2>_n / <S>_n^2 - 1``                 ``(1 - 1/N) <Q>_n / <S>_n^2``
``r``       ``< <D^2>_k / <D>_k^2 - 1 >_n``           ``< k0 A / S_n - Q_n / S_n^2 >_n``
``re``      ``<D^2>_{n,k} / <D>_{n,k}^2 - 1``         ``k0 A / <S>_n - <Q>_n / (N <S>_n^2)``
``VImage``  ring mean of ``var_n D(p) / m_p^2``       ring mean of ``(1 - 1/N) k0 / m_p``
==========  ========================================  ============================================

``<.>_k`` is the weighted mean in ring ``k``; ``VImage``'s ring mean runs over the pixels
with ``m_p > 0``. For Poisson counts (counting model) the terms are the exact finite-``N``
expectations of the uncorrected estimators on structure-free data: ``Omega`` and ``VImage``
for any weights (conditioning on each pixel's total over the frames makes the frames
multinomial), ``r`` and ``re`` for hard bins on a uniform ring (conditioning on the frame's
ring sum, resp. on the ring's total). With split pixels ``r`` and ``re`` are right to first
order in ``1 / S``; for a general noise kernel every term is the exact expectation of the
numerator and first order for the ratio. The derivations are in the user guide
(estimators page).

Static ring non-uniformity (reported with ``r`` and ``re``, optionally subtracted from them):

    ``NU_k = A sum_p w m_p^2 / (sum_p w m_p)^2 - 1 - (k0 A / <S>_n - <Q>_n / <S>_n^2) / N``

the within-ring non-uniformity of the mean pattern less its own shot-noise content. ``re -
NU`` then carries ``(1 - 1/N) k0 A / <S>_n`` in all, exact for any weights and any static
mean pattern (Poisson, counting model).

One pass
--------
For each frame the streaming kernel returns the ring sums ``I = W D`` and ``J = W D^2``;
the shot ring sums ``Q`` (shot weights times ``D``) follow per frame for ``r`` and from
the pixel sums otherwise, and the per-frame quantities ``U = J A / I^2``, ``V = A / I`` and
``Y = Q / I^2``. A :class:`Moments` holds, per *state* (thickness group x jackknife block),
the frame count, the means of ``(I, Q, J, U, V, Y)``, the centred second moment of ``I``,
the per-pixel means (for ``VImage`` and the ring non-uniformity of ``r`` and ``re``) and,
for ``VImage``, the per-pixel centred second moments. Moments of two chunks merge exactly with
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

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

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
_I, _Q, _J, _U, _V, _Y = range(6)
N_COLUMNS = 6


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


@dataclass
class Moments:
    """Mergeable one-pass moments, per state ``s = group * n_blocks + block``.

    Attributes
    ----------
    count : (S,) ndarray
        Number of frames per state.
    mean : (S, 6, K) ndarray
        Means of the ring sums ``I = sum_p w D``, ``Q = sum_p s D`` (shot weights ``s``),
        ``J = sum_p w D^2`` and of the per-frame ``U = J A / I^2``, ``V = A / I``,
        ``Y = Q / I^2`` (columns in this order; ``J``, ``U``, ``V``, ``Y`` only with
        ``squares``).
    m2 : (S, K) ndarray
        Centred sum of squares of ``I``.
    pix_mean : (S, P') ndarray or None
        Per touched pixel mean (with ``pixels`` or ``squares``: ``VImage``, and the ring
        non-uniformity of ``r`` and ``re``).
    pix_m2 : (S, P') ndarray or None
        Per touched pixel centred sum of squares (``VImage`` only).
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

    Examples
    --------
    >>> frame_states(5, groups=[0, 1, 0, -1, 0], n_groups=2, n_blocks=2)
    array([ 0,  2,  1, -1,  0])
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
    frames, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False, squares=True,
    shot_weights=None,
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
        Also accumulate the ring sums of ``D^2`` (needed by ``r`` and ``re``), the
        per-frame ``Y = Q / I^2`` of ``r``'s shot-noise term and the per-pixel means (the
        ring non-uniformity of ``r`` and ``re``).
    shot_weights : scipy.sparse matrix, shape (K, P), or None
        Shot weights ``s_kp`` of the shot ring sums ``Q = sum_p s_kp D(p)``; the
        sparsity of ``weights.matrix``. None: ``W**2`` (the counting model per unit gain;
        :func:`estimate` multiplies by ``gain``). A noise model's shot weights are in
        detector units (use :func:`estimate` with ``k0``).

    Returns
    -------
    Moments
        Frames with a NaN or infinite value in a weighted (unmasked, in-range) pixel are
        left out and counted in ``n_nonfinite``.

    Examples
    --------
    >>> import numpy as np
    >>> from femlib import integration
    >>> w = integration.build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    >>> frames = np.random.default_rng(0).poisson(5.0, size=(10, 8, 8))
    >>> m = accumulate(frames, w, frame_states(10), squares=True)
    >>> m.n_frames, m.mean.shape, m.pix_mean.shape == (N_BLOCKS, w.touched.size)
    (10, (20, 6, 2), True)
    """
    flat = as_native_frames(frames, weights.detector_shape)
    states = np.asarray(states, dtype=np.int64).ravel()
    if states.size != flat.shape[0]:
        raise ValueError(f"states has {states.size} entries for {flat.shape[0]} frames")
    nstates = n_groups * n_blocks
    k = weights.area.size
    if shot_weights is None:
        shot = weights.compact_squared
    else:
        shot = sp.csr_array(shot_weights)[:, weights.touched]
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
    mean = np.full((nstates, N_COLUMNS, k), np.nan)
    m2 = np.zeros((nstates, k))
    ring = sums[0]
    if squares:
        j = sums[1]
        # Per-frame shot ring sums for r's Y = Q / I^2 (a second product over the chunk
        # already in memory; the kernel returns only W D and W D^2).
        q = (shot @ flat[:, weights.touched].T).T if flat.shape[0] else np.zeros((0, k))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = np.where(ring > 0, weights.area / ring, np.nan)
            inv2 = inv * inv / weights.area**2
            per_frame = np.stack(
                [ring, j, j * inv2 * weights.area, inv, q * inv2], axis=1
            )
        cols = [_I, _J, _U, _V, _Y]
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
    # Mean of the shot ring sum Q per state, from the pixel sums.
    with np.errstate(invalid="ignore", divide="ignore"):
        mean[:, _Q] = (shot @ pixsum.T).T / count[:, None]
    mean[~seen] = 0.0
    pix_mean = pix_m2 = None
    if pixels or squares:
        safe = np.maximum(count, 1.0)[:, None]
        pix_mean = pixsum / safe
    if pixels:
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

    Examples
    --------
    >>> import numpy as np
    >>> from femlib import integration
    >>> w = integration.build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    >>> frames = np.random.default_rng(0).poisson(5.0, size=(10, 8, 8))
    >>> st = frame_states(10)
    >>> whole = accumulate(frames, w, st)
    >>> halves = merge(accumulate(frames[:4], w, st[:4]), accumulate(frames[4:], w, st[4:]))
    >>> bool(np.allclose(halves.m2, whole.m2) and np.allclose(halves.mean, whole.mean))
    True
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
    if qa is None or qb is None:  # per-pixel means without second moments (r, re)
        return n, mean, None
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


def _ring(wc, x):
    """Weighted ring sums ``sum_p w_kp x_p`` of per-pixel arrays ``(..., P')`` -> ``(..., K)``."""
    lead = x.shape[:-1]
    return (wc @ x.reshape(-1, x.shape[-1]).T).T.reshape(lead + (-1,))


def _parts(n, mean, m2, pm, pq, method, k0, qs, area, wc):
    """Uncorrected estimator and its finite-N shot-noise term, each ``(..., K)``.

    ``k0`` is the noise kernel at zero lag and ``qs`` the factor that turns the stored
    shot ring sums ``Q`` and ``Y`` into detector units (``gain`` for the counting model,
    whose ``Q`` holds ``sum w^2 D``; 1 for a noise model's shot weights; 0: no term).
    The derivations are in the estimators page of the user guide.
    """
    nn = n[..., None]
    mi = mean[..., _I, :]
    q = qs * mean[..., _Q, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "Omega":
            # Exact for Poisson given the per-pixel totals (multinomial frames).
            return m2 / nn / mi**2, (1.0 - 1.0 / nn) * q / mi**2
        if method == "r":
            # Exact for hard bins and a uniform ring given the frame's ring sum.
            return mean[..., _U, :] - 1.0, k0 * mean[..., _V, :] - qs * mean[..., _Y, :]
        if method == "re":
            # Exact for hard bins and a uniform ring given the ring's total over frames.
            return mean[..., _J, :] * area / mi**2 - 1.0, k0 * area / mi - q / (nn * mi**2)
        # VImage: ring mean over the pixels with a positive mean; exact given each
        # pixel's total over the frames.
        ok = pm > 0
        raw = np.where(ok, pq / nn / pm**2, 0.0)
        term = np.where(ok, (1.0 - 1.0 / nn) * k0 / pm, 0.0)
        den = _ring(wc, ok.astype(float))
        return _ring(wc, raw) / den, _ring(wc, term) / den


def _nonuniformity(n, mean, pm, k0, qs, area, wc):
    """Static ring non-uniformity of the mean pattern, less its own shot-noise content.

    ``NU = A sum_p w m_p^2 / (sum_p w m_p)^2 - 1`` of the per-pixel means ``m``, minus
    ``(k0 A / <I> - <Q> / <I>^2) / N`` (0 without a correction); ``(..., K)``.
    """
    nn = n[..., None]
    s1 = _ring(wc, pm)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = area * _ring(wc, pm * pm) / s1**2 - 1.0
        shot = (k0 * area / s1 - qs * mean[..., _Q, :] / s1**2) / nn
    return raw - shot


def _estimators(n, mean, m2, pm, pq, method, k0, qs, area, wc, subtract=False):
    """One corrected estimator on merged moments with leading dims ``(...)``: ``(..., K)``."""
    raw, term = _parts(n, mean, m2, pm, pq, method, k0, qs, area, wc)
    v = raw - term
    if subtract and method in ("r", "re"):
        v = v - _nonuniformity(n, mean, pm, k0, qs, area, wc)
    return v


def estimate(moments, weights, methods=("Omega",), gain=None, k0=None,
             subtract_nonuniformity=False):
    """Compute FEM variance estimators, their jackknife standard errors, per group and combined.

    Every shot-noise term is the exact finite-``N`` expectation for Poisson counts where
    one exists (``N`` = frames of the group): ``Omega`` and ``VImage`` for any weights,
    ``r`` and ``re`` for hard bins on a uniform ring, ``re`` with
    ``subtract_nonuniformity`` for any weights and any static mean pattern; first order
    otherwise. See the module docstring and the estimators page of the user guide.

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
        ``gain * W**2`` (the moments' ``Q`` accumulated with the default
        ``shot_weights=None`` of :func:`accumulate`). None: no shot-noise correction
        unless ``k0`` is given.
    k0 : float or None
        A noise model's kernel at zero lag (``Var(D_p) / <D_p>``, detector units); the
        moments' ``Q`` must then have been accumulated with that model's shot weights
        (in detector units). Not together with ``gain``.
    subtract_nonuniformity : bool
        Subtract the static ring non-uniformity (``ring_nonuniformity`` below) from
        ``r`` and ``re``; the other methods are unchanged.

    Returns
    -------
    dict
        ``variance``, ``standard_error``: ``(G, M, K)`` per group, method and bin;
        ``counts``: ``(G,)`` frames per group; ``combined``, ``combined_standard_error``:
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
        the moments lack what a method needs.
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
    >>> from femlib import integration, variance
    >>> rng = np.random.default_rng(0)
    >>> frames = 3.0 * rng.poisson(20.0, size=(200, 16, 16))
    >>> w = integration.build_weights((16, 16), (7.5, 7.5), npt=3, radial_range=(2.0, 7.0))
    >>> m = variance.accumulate(frames, w, variance.frame_states(200), pixels=True)
    >>> res = variance.estimate(m, w, variance.METHODS, gain=3.0)
    >>> res["variance"].shape
    (1, 4, 3)
    >>> bool(np.all(np.abs(res["variance"]) < 4 * res["standard_error"]))
    True
    """
    methods = check_method(methods)
    gain = check_gain(gain)
    k0 = check_gain(k0, "k0")
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
    loo = _leave_one_out(count, mean, m2, pm, pq)
    counts = full[0]
    used = counts >= 2
    if not used.any():
        raise ValueError("no group holds two or more frames: the variance is undefined")
    wc = weights.matrix[:, weights.touched] if pm is not None else None
    area = weights.area
    sub = bool(subtract_nonuniformity)
    args = (kk, qs, area, wc)
    v = np.stack([_estimators(*full, m, *args, sub) for m in methods], axis=1)
    vj = np.stack([_estimators(*loo, m, *args, sub) for m in methods], axis=2)
    # vj: (G, B, M, K); a block with no frame in a group does not count for that group.
    present = count > 0  # (G, B)
    se = _jackknife_se(vj, present)
    comb, comb_se, comb_j = _combine(v, vj, counts, count, used, present)
    out = {
        "variance": v,
        "standard_error": se,
        "counts": counts.astype(int),
        "combined": comb,
        "combined_standard_error": comb_se,
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
        nu = _nonuniformity(full[0], full[1], full[3], kk, qs, area, wc)[:, None]
        nuj = _nonuniformity(loo[0], loo[1], loo[3], kk, qs, area, wc)[:, :, None]
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
    """Warn about NaN values in an estimate, naming the method and the cause.

    One warning per method with undefined values (e.g. ``Omega`` on a ring that never
    received a count, ``r`` where a frame's ring mean is <= 0), and one where a value is
    defined but its standard error is not. Groups left out for having fewer than two
    frames are not looked at.

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
    >>> from femlib import integration, variance
    >>> w = integration.build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    >>> m = variance.accumulate(np.zeros((4, 8, 8)), w, variance.frame_states(4))
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


def accumulate_dask(
    darr, weights, states, n_groups=1, n_blocks=N_BLOCKS, pixels=False, squares=True,
    shot_weights=None,
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
    pixels, squares, shot_weights
        As :func:`accumulate`.

    Returns
    -------
    dask.delayed.Delayed
        Computing it gives the merged :class:`Moments` of all frames. Peak memory is a
        few chunks: each chunk is reduced to its moments as soon as it is read.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from femlib import integration
    >>> w = integration.build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    >>> frames = np.random.default_rng(0).poisson(5.0, size=(4, 3, 8, 8)).astype(float)
    >>> st = frame_states(12).reshape(4, 3)
    >>> lazy = accumulate_dask(da.from_array(frames, chunks=(2, 3, 8, 8)), w, st)
    >>> bool(np.allclose(lazy.compute().m2, accumulate(frames, w, st).m2))
    True
    """
    import dask.array as da

    from femlib.integration import prepare_chunks

    darr = prepare_chunks(darr)
    nav = darr.ndim - 2
    states = np.asarray(states, dtype=np.int64).reshape(darr.shape[:nav])
    sblocks = da.from_array(states, chunks=darr.chunks[:nav]).to_delayed().ravel()
    fblocks = darr.to_delayed().reshape(-1)
    return accumulate_tree(
        fblocks, sblocks, weights, n_groups, n_blocks, pixels, squares, shot_weights
    )


def accumulate_tree(frames, states, weights, n_groups=1, n_blocks=N_BLOCKS, pixels=False,
                    squares=True, shot_weights=None):
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
    pixels, squares, shot_weights
        As :func:`accumulate`.

    Returns
    -------
    dask.delayed.Delayed
        Computing it gives the merged :class:`Moments`.

    Examples
    --------
    >>> import numpy as np
    >>> from femlib import integration
    >>> w = integration.build_weights((8, 8), (3.5, 3.5), npt=2, radial_range=(1.0, 3.0))
    >>> frames = np.random.default_rng(0).poisson(5.0, size=(6, 8, 8)).astype(float)
    >>> st = frame_states(6)
    >>> tree = accumulate_tree([frames[:3], frames[3:]], [st[:3], st[3:]], w)
    >>> tree.compute(scheduler="sync").n_frames
    6
    """
    import dask

    shared = dask.delayed(weights, pure=True)
    shot = None if shot_weights is None else dask.delayed(shot_weights, pure=True)
    part = dask.delayed(_accumulate_block, pure=False)
    parts = [
        part(f, s, shared, n_groups, n_blocks, pixels, squares, shot)
        for f, s in zip(frames, states, strict=True)
    ]
    combine = dask.delayed(merge, pure=True)
    while len(parts) > 1:
        nxt = [combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            nxt.append(parts[-1])
        parts = nxt
    return parts[0]


def _accumulate_block(frames, states, weights, n_groups, n_blocks, pixels, squares,
                      shot_weights=None):
    return accumulate(frames, weights, states, n_groups, n_blocks, pixels, squares,
                      shot_weights)
